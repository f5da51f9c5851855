"""InferMax SRF: Sarathi-Serve plus InferMax's eviction and (optional) reservation rules.

Source: Kim et al., "The Effect of Scheduling and Preemption on the Efficiency of LLM Inference
Serving" (InferMax), 2024; code in a Vidur fork (eviction policy "sortI", reservation "histogram").

Rules: Sarathi-Serve's stall-free batching (``baselines/sarathi.py``, token budget default 512),
with two changes:

* Eviction ("sortI", smallest-recompute-first): when a running request lacks KV, the victim is
  the *other* running request with the fewest computed tokens (cheapest to recompute; ties: the
  latest arrival); with no other candidate the request preempts itself.
* Reservation ("histogram", off by default, ``reserve=True``): finished requests are bucketed by
  int(log2(prompt tokens)); each bucket keeps the count and sum of their total tokens (prompt +
  output). A waiting request is admitted only if the free blocks cover max(prefill, ceil(average
  total of its bucket)) tokens (just the prefill when its bucket is empty). This only gates
  admission; the KV actually allocated is what the request computes. The histogram learns from
  requests as they finish (their generated count), never from the hidden output length.
"""
from __future__ import annotations

import math

from llmsched_env.scheduler import register

from .sarathi import SarathiScheduler


@register("infermax-srf")
class InferMaxSRFScheduler(SarathiScheduler):
    """Sarathi + fewest-computed-tokens eviction (+ histogram reservation).

    Args:
        token_budget: per-step token budget, tokens (default 512).
        reserve: gate admission on the bucket's average total length (InferMax "histogram").
        watermark: share of all KV blocks kept free at admission (0.01).
    """

    def __init__(self, token_budget: int | None = 512, reserve: bool = False, watermark: float = 0.01):
        super().__init__(token_budget, watermark)
        self.reserve = reserve
        self.reset()

    def reset(self) -> None:
        self._hist: dict[int, list[int]] = {}  # bucket -> [count, sum of total tokens]
        self._seen_finished = 0

    def _observe(self, engine) -> None:
        self._capacity_tokens = engine.config.kv_capacity_tokens
        if not self.reserve:
            return
        fin = engine.finished
        for req in fin[self._seen_finished:]:
            h = self._hist.setdefault(int(math.log2(req.prompt_len)), [0, 0])
            h[0] += 1
            h[1] += req.prompt_len + req.num_generated
        self._seen_finished = len(fin)

    def _admit_tokens(self, req) -> int:
        if not self.reserve:
            return req.prefill_target
        h = self._hist.get(int(math.log2(req.prompt_len)))
        if h is None:
            return req.prefill_target
        # Capped at the cache size: an average can never block an otherwise admissible request for good.
        return max(req.prefill_target, min(math.ceil(h[1] / h[0]), self._capacity_tokens))

    def _victim(self, unvisited, req):
        if not unvisited:
            return req
        victim = min(unvisited, key=lambda r: (r.num_computed, -r.arrival_s, -r.rid))
        unvisited.remove(victim)
        return victim
