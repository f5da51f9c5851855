"""What the agent sees: which requests occupy the K slots, and their features.

Slot assignment (deterministic, O(K) per step): slot 0.. hold the running requests in admission
order (the engine's ``running`` order; the environment caps the running set at
``K - waiting_slots`` so they always fit), then waiting requests in queue order (requests
preempted earlier first, most recently re-queued first, then new arrivals first come first
served) until the K slots are full. Requests beyond K are not visible and cannot be acted on
this step; the global features count them. Unused slots are all zeros (``present`` = 0).

Per-slot features (``SLOT_FEATURES``; scaled so typical values are O(1), clipped to [-10, 10]):
  present            1 for an occupied slot, else 0 (then every feature is 0).
  running            1 if the request holds KV (running), 0 if waiting.
  prefilling         1 while prefill tokens remain (a waiting request always prefills).
  prompt             prompt length / 1024 tokens.
  remaining_prefill  prefill tokens still to compute / 1024 tokens.
  computed           tokens with resident KV / 1024 tokens.
  generated          output tokens emitted so far / 256 tokens.
  age                time since arrival / 1 s.
  since_token        time since its last token (or since arrival before the first) / 0.1 s.
  ttft_slack         before the first token: (arrival + TTFT target - now) / TTFT target (< 0:
                     TTFT already missed); after it: (target - TTFT) / target, fixed.
  tbt_slack          after the first token: (last token + TBT target - now) / TBT target, the
                     slack to the next-token deadline; 1 before the first token.
  ttft_target        TTFT target / 1 s (infinite targets clip to 10).
  tbt_target         TBT target / 0.1 s.
  kv_blocks          KV blocks held / (KV capacity / K) (1 = a fair share of the cache).
  preemptions        times preempted so far / 2.
  pred_remaining     predicted output tokens still to come / 256 tokens, when the workload has a
                     length predictor; 0 otherwise (the global ``has_predictor`` says which).
  owed_vs_budget     tokens RUN would process (remaining prefill, or 1) / the token budget.
  slo_alive          1 while the request can still meet its SLO, 0 once a miss is certain.
  priority           priority value / 4 (lower = more important).

Global features (``GLOBAL_FEATURES``):
  kv_free            free KV blocks / capacity.
  running            running requests / max running (the cap).
  waiting            waiting requests / K.
  hidden_waiting     waiting requests beyond the slots / K.
  budget             the engine's token budget / 8192 tokens.
  last_latency       latency of the last busy step / 0.1 s.
  now                simulated time / 100 s.
  to_next_arrival    time to the next arrival / 1 s (10 when none is left).
  arrived            requests arrived / episode size.
  finished           requests finished / episode size.
  step               environment steps / truncation limit.
  has_predictor      1 when ``pred_remaining`` is informative.
"""
from __future__ import annotations

from itertools import islice

import numpy as np

from .request import RUNNING

SLOT_FEATURES = ("present", "running", "prefilling", "prompt", "remaining_prefill", "computed",
                 "generated", "age", "since_token", "ttft_slack", "tbt_slack", "ttft_target",
                 "tbt_target", "kv_blocks", "preemptions", "pred_remaining", "owed_vs_budget",
                 "slo_alive", "priority")
GLOBAL_FEATURES = ("kv_free", "running", "waiting", "hidden_waiting", "budget", "last_latency",
                   "now", "to_next_arrival", "arrived", "finished", "step", "has_predictor")
# What each feature is, in the units above (for export manifests and tools reading observations).
SLOT_SCALES = {
    "present": "1 if the slot holds a request, else 0", "running": "1 running / 0 waiting",
    "prefilling": "1 while prefill tokens remain", "prompt": "tokens / 1024",
    "remaining_prefill": "tokens / 1024", "computed": "tokens / 1024", "generated": "tokens / 256",
    "age": "seconds since arrival / 1", "since_token": "seconds / 0.1",
    "ttft_slack": "fraction of the TTFT target", "tbt_slack": "fraction of the TBT target",
    "ttft_target": "seconds / 1", "tbt_target": "seconds / 0.1",
    "kv_blocks": "blocks / (KV capacity / K)", "preemptions": "count / 2",
    "pred_remaining": "tokens / 256", "owed_vs_budget": "tokens / the engine's token budget",
    "slo_alive": "1 while the SLO can still be met", "priority": "priority / 4"}
GLOBAL_SCALES = {
    "kv_free": "free blocks / capacity", "running": "requests / max running",
    "waiting": "requests / K", "hidden_waiting": "requests / K", "budget": "tokens / 8192",
    "last_latency": "seconds / 0.1", "now": "seconds / 100", "to_next_arrival": "seconds / 1",
    "arrived": "requests / episode size", "finished": "requests / episode size",
    "step": "steps / truncation limit", "has_predictor": "0 or 1"}
CLIP = 10.0
_INV_1K = 1.0 / 1024.0
_INV_256 = 1.0 / 256.0


def assign_slots(engine, num_slots: int) -> list:
    """Requests in slot order (running first, then the head of the waiting queue), at most K."""
    slots = list(engine.running.values())
    if len(slots) < num_slots:
        slots.extend(islice(engine.iter_waiting(), num_slots - len(slots)))
    return slots[:num_slots]


class ObservationEncoder:
    """Builds the observation dict ``{"slots": (K * F,) float32, "global": (G,) float32}``
    (``slots`` is the (K, F) feature matrix flattened row by row)."""

    def __init__(self, num_slots: int, num_kv_blocks: int, max_running: int, budget: int):
        self.K = num_slots
        self.kv_share = num_kv_blocks / num_slots
        self.num_kv_blocks = num_kv_blocks
        self.max_running = max_running
        self.budget = budget
        self.F = len(SLOT_FEATURES)
        self.G = len(GLOBAL_FEATURES)
        self._zeros = [0.0] * (num_slots * self.F)
        self.reset()

    def reset(self) -> None:
        """Forget the per-request constants cached for the last workload."""
        self._static: dict[int, tuple] = {}

    @staticmethod
    def _static_row(r) -> tuple:
        big = 1e6  # stands in for an infinite target in the slack ratios
        ttft, tbt = r.ttft_slo_s, r.tbt_slo_s
        return (r.arrival_s, min(ttft, big), min(tbt, big), r.prompt_len * _INV_1K, ttft, tbt * 10.0)

    def encode(self, engine, slots: list, alive: dict, step: int, max_steps: int, num_requests: int,
               has_predictor: bool) -> dict:
        """Features of the slotted requests. ``alive`` maps rid -> False for requests whose SLO
        miss is certain (missing keys = still alive); a slotted request found past its TTFT
        target without a first token is marked there."""
        K, F = self.K, self.F
        now = engine.now_s
        kv_share = self.kv_share
        budget = self.budget
        flat: list[float] = []
        ext = flat.extend
        static = self._static
        for r in slots:
            st = static.get(r.rid)
            if st is None:
                st = static[r.rid] = self._static_row(r)
            arr, ttft_c, tbt_c, prompt, ttft, tbt10 = st
            tt = r.token_times
            rem = r.prefill_target - r.num_computed
            gen = r.num_generated
            if tt:
                last = tt[-1]
                since = now - last
                ttft_slack = (ttft_c - (tt[0] - arr)) / ttft_c
                tbt_slack = (last + tbt_c - now) / tbt_c
            else:
                since = now - arr
                ttft_slack = (arr + ttft_c - now) / ttft_c
                tbt_slack = 1.0
                if since > ttft:  # no first token yet and its TTFT target has passed
                    alive[r.rid] = False
            pred = r.predicted_output_len
            pos = rem > 0
            ext((1.0, r.status == RUNNING, pos, prompt, rem * _INV_1K if pos else 0.0,
                 r.num_computed * _INV_1K, gen * _INV_256, now - arr, since * 10.0, ttft_slack, tbt_slack,
                 ttft, tbt10, r.num_blocks / kv_share, r.num_preemptions * 0.5,
                 (max(pred - gen, 0) * _INV_256) if pred is not None else 0.0,
                 (rem if pos else 1) / budget, alive.get(r.rid, True), r.priority * 0.25))
        if len(slots) < K:
            ext(self._zeros[:(K - len(slots)) * F])
        out = np.fromiter(flat, dtype=np.float32, count=K * F)
        np.clip(out, -CLIP, CLIP, out=out)
        nw = engine.num_waiting
        nr = len(engine.running)
        nxt = engine.next_arrival_s
        g = np.array((engine.free_blocks / self.num_kv_blocks, nr / self.max_running, nw / K,
                      max(0, nw - (K - min(nr, K))) / K, budget / 8192.0,
                      engine.last_step_latency_s / 0.1, now / 100.0, 10.0 if nxt is None else nxt - now,
                      len(engine.requests) / num_requests, len(engine.finished) / num_requests,
                      step / max_steps, float(has_predictor)), dtype=np.float32)
        np.clip(g, -CLIP, CLIP, out=g)
        return {"slots": out, "global": g}
