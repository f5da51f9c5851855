"""The reward: SLO attainment minus lambda times GPU cost, credited densely and exactly.

Objective of an episode (what the undiscounted return equals, to floating-point rounding):

    J = (requests that met their SLO) - lambda x (GPU busy seconds x GPUs per replica)

with "met" exactly as ``metrics.request_metrics`` defines it (finished, TTFT <= target, P99 of
the TBT gaps <= target) and GPU busy seconds as ``metrics.summarize`` reports them
(``gpu_busy_s``). Requests unfinished at truncation count as missed, as in the metrics summary.

Per-step reward, for the engine step that ran from t to t + dt:

    r = S - lambda x g x dt          (g = GPUs per replica; dt = 0 for an idle step)

    S =  + 1 for each request whose first token came out in this step within its TTFT target
         - 1 for each such credited request whose SLO miss became certain in this step
         - 1 (on the final step of a truncated episode) for each credited request not finished

Nothing is shaped: S only moves credit earlier in time, and each request nets 1 if it meets its
SLO and 0 otherwise, so the return is J. When a credited request's miss becomes certain:
  * TBT: a request will emit M = output_len - 1 gaps (the true output length is known to the
    environment, not to the agent), and numpy's P99 interpolates between the order statistics
    at positions floor(0.99 (M - 1)) and the next, so it exceeds the target once
    k = M - floor(0.99 (M - 1)) gaps exceed it, whatever comes later. When k gaps are above the
    target (by more than one part in 1e9, to stay clear of rounding), the -1 is given at once.
  * Otherwise at the step the request finishes, by calling ``metrics.slo_met`` itself, so the
    sum is exact by construction (a miss decided early is re-checked there; should the early
    decision ever disagree, the difference is corrected in that step and counted in
    ``reconciled``).
A TTFT miss is never credited (the +1 is simply never earned), so it needs no penalty.
"""
from __future__ import annotations

import math

from .metrics import slo_met

TBT_MARGIN = 1.0 + 1e-9  # a gap counts as over the TBT target only beyond rounding


def objective(summary: dict, lam: float) -> float:
    """The episode objective of a metrics summary: requests meeting their SLO - lambda x
    GPU-seconds (``gpu_busy_s`` already counts every GPU of the replica)."""
    return summary["num_slo_met"] - lam * summary["gpu_busy_s"]


def true_output_len(req) -> int:
    return req.output_len


class SLOReward:
    """Tracks per-request SLO credit for one episode.

    Attributes:
        lam: lambda, satisfied requests per GPU-second.
        num_gpus: GPUs per replica.
        alive: rid -> False once a request certainly misses its SLO (for observations).
        slo_total, gpu_total: sums of the two reward parts so far.
        reconciled: corrections made at finish (expected 0).
    """

    def __init__(self, lam: float, num_gpus: int, output_len=None):
        self.lam = lam
        self.num_gpus = num_gpus
        # request -> its output length, tokens (default: the true one, known in simulation)
        self.output_len = output_len or true_output_len
        self.reset()

    def reset(self) -> None:
        self.credited: set[int] = set()
        self.debited: set[int] = set()
        self.over: dict[int, int] = {}
        self.need: dict[int, int] = {}
        self.alive: dict[int, bool] = {}
        self.slo_total = 0.0
        self.gpu_total = 0.0
        self.reconciled = 0

    @staticmethod
    def gaps_to_miss(output_len: int) -> int:
        """k: TBT gaps above the target that make the P99 miss certain."""
        m = output_len - 1
        return m - math.floor(0.99 * (m - 1)) if m >= 1 else 1 << 62

    def step(self, engine, result) -> tuple[float, float]:
        """(SLO part, GPU part) of the reward for the step ``result`` just taken."""
        slo = 0
        if result.emitted:
            reqs = engine.requests
            credited, debited, alive = self.credited, self.debited, self.alive
            for rid in result.emitted:
                req = reqs[rid]
                tt = req.token_times
                if len(tt) == 1:
                    if tt[0] - req.arrival_s <= req.ttft_slo_s:
                        credited.add(rid)
                        slo += 1
                    else:
                        alive[rid] = False
                elif rid in credited and rid not in debited:
                    if tt[-1] - tt[-2] > req.tbt_slo_s * TBT_MARGIN:
                        c = self.over.get(rid, 0) + 1
                        self.over[rid] = c
                        need = self.need.get(rid)
                        if need is None:
                            need = self.need[rid] = self.gaps_to_miss(self.output_len(req))
                        if c >= need:
                            debited.add(rid)
                            alive[rid] = False
                            slo -= 1
            for rid in result.finished:
                if rid not in credited:
                    continue
                met = slo_met(reqs[rid])
                if rid in debited:
                    if met:
                        self.reconciled += 1
                        debited.discard(rid)
                        slo += 1
                elif not met:
                    debited.add(rid)
                    slo -= 1
                alive[rid] = met
        gpu = -self.lam * self.num_gpus * result.latency_s
        self.slo_total += slo
        self.gpu_total += gpu
        return float(slo), gpu

    def truncate(self, engine) -> float:
        """SLO part owed at truncation: -1 per credited request that has not finished."""
        owed = 0
        for rid in self.credited:
            if rid not in self.debited and engine.requests[rid].finish_s is None:
                self.debited.add(rid)
                self.alive[rid] = False
                owed -= 1
        self.slo_total += owed
        return float(owed)
