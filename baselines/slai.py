"""SLAI: SLO-aware scheduling of decodes by last schedulable time, shortest prompts first.

Source: Bari, Hegde and de Veciana, "Optimal Scheduling Algorithms for LLM Inference: Theory and
Practice" (SLAI), arXiv 2508.01002, 2025. Only the abstract was available: SLAI "uses real-time
measurements to prioritize decode requests that are close to missing their TBT deadlines and
reorders prefill requests based on known prompt lengths". The rules below are this project's
reading (issue 3); every constant is an argument.

Rules, per step (token budget default 512, at most 128 decodes per step):

* Each resident decode has a last schedulable time
  LST = end of its previous batch (its last token's time) + its TBT target - Theta x mean batch
  time, with Theta = 5 while KV use < 96%, else 10, and the mean over the last 64 executed
  batches (seconds; 0 before the first batch).
1. Decodes whose LST has passed (LST <= now), earliest LST first.
2. Ongoing partial prefills (admission order), chunk = min(owed, budget left).
3. If nothing was preempted this step: new requests by tier (priority value) then shortest
   prefill first, then arrival, with a chunk of min(prefill, budget left), while the KV blocks of
   the whole prefill fit the free blocks minus a 1% reserve of the cache minus the blocks promised
   to unfinished prefills (the reserve is waived while nothing is resident); the first that
   does not fit stops admission.
4. Leftover budget to the other decodes, earliest LST first.
* KV shortage in 1, 2 or 4: preempt (recompute) the most recently admitted partial prefill
  (possibly the requester itself); if there is none, the request that needs the block preempts
  itself. Nothing is admitted in a step that preempted in 1 or 2 (vLLM's rule, kept for
  consistency); a leftover decode of 4 may still preempt a partial prefill after admissions,
  which the 1% reserve makes rare.
"""
from __future__ import annotations

from collections import deque

from llmsched_env.scheduler import register

from .plan_builder import PlanBuilder


@register("slai")
class SLAIScheduler:
    """SLAI (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (default 512).
        max_decodes: most decodes per step (default 128).
        theta_low, theta_high: Theta below / at or above ``kv_threshold`` KV use (5, 10).
        kv_threshold: KV-use share switching Theta (0.96).
        kv_reserve: share of the cache kept free at admission (0.01).
        window: executed batches in the running mean batch time (64).
    """

    def __init__(self, token_budget: int | None = 512, max_decodes: int = 128, theta_low: float = 5.0,
                 theta_high: float = 10.0, kv_threshold: float = 0.96, kv_reserve: float = 0.01,
                 window: int = 64):
        if max_decodes < 1 or window < 1 or not 0 <= kv_reserve < 1 or not 0 < kv_threshold <= 1:
            raise ValueError("slai needs max_decodes >= 1, window >= 1, 0 <= kv_reserve < 1 and "
                             f"0 < kv_threshold <= 1 (got {max_decodes}, {window}, {kv_reserve}, {kv_threshold})")
        self.token_budget = token_budget
        self.max_decodes = max_decodes
        self.theta_low, self.theta_high = theta_low, theta_high
        self.kv_threshold = kv_threshold
        self.kv_reserve = kv_reserve
        self.window = window
        self.reset()

    def reset(self) -> None:
        self._batch_times: deque[float] = deque(maxlen=self.window)
        self._last_busy = 0.0

    def mean_batch_s(self) -> float:
        return sum(self._batch_times) / len(self._batch_times) if self._batch_times else 0.0

    def admission_key(self, req, now: float) -> tuple:
        """Order of new admissions (rule 3): tier (priority value), then shortest prefill, then
        arrival. ``now`` (seconds) is for variants whose order depends on time."""
        return (req.priority, req.prefill_target, req.arrival_s, req.rid)

    def schedule(self, engine):
        latency = engine.busy_s - self._last_busy
        self._last_busy = engine.busy_s
        if latency > 0:
            self._batch_times.append(latency)
        cfg = engine.config
        theta = self.theta_low if engine.used_blocks < self.kv_threshold * cfg.num_kv_blocks else self.theta_high
        slack = theta * self.mean_batch_s()
        now = engine.now_s
        b = PlanBuilder(engine, self.token_budget)
        running = list(engine.running.values())
        prefills = [r for r in running if r.is_prefilling]
        decodes = sorted((r.token_times[-1] + r.tbt_slo_s - slack, r.arrival_s, r.rid, r)
                         for r in running if not r.is_prefilling)

        def victim_for(req):
            def pick():
                for r in reversed(running):
                    if r.is_prefilling and r.rid not in b.preempt:
                        return r
                return req
            return pick

        n_dec = 0
        for lst, _, _, req in decodes:  # 1. urgent decodes
            if lst > now or n_dec >= self.max_decodes or b.budget <= 0:
                break
            if req.rid not in b.preempt and b.add_or_preempt(req, 1, victim_for(req)):
                n_dec += 1
        for req in prefills:  # 2. ongoing prefills
            if b.budget <= 0:
                break
            if req.rid not in b.preempt:
                b.add_or_preempt(req, b.chunk(req), victim_for(req))
        if not b.preempt:  # 3. new requests, shortest prefill first
            bs = cfg.block_size
            # The reserve is waived while nothing is resident, so no request is blocked for good.
            promised = int(self.kv_reserve * cfg.num_kv_blocks) if running else 0
            for r in prefills:
                promised += max(0, -(-r.prefill_target // bs) - -(-(r.num_computed + b.tokens.get(r.rid, 0)) // bs))
            for req in sorted(engine.iter_waiting(), key=lambda r: self.admission_key(r, now)):
                if b.budget <= 0:
                    break
                n = b.chunk(req)
                if -(-req.prefill_target // bs) > b.free - promised or not b.fits(req, n):
                    break
                b.add(req, n)
                promised += -(-req.prefill_target // bs) - -(-n // bs)
        for _, _, _, req in decodes:  # 4. leftover budget, LST order
            if n_dec >= self.max_decodes or b.budget <= 0:
                break
            if req.rid in b.tokens or req.rid in b.preempt:
                continue
            if b.add_or_preempt(req, 1, victim_for(req)):
                n_dec += 1
        return b.plan()
