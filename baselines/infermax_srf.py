"""InferMax SRF: Sarathi-Serve batching with InferMax's smallest-recompute-first eviction and its
(optional) histogram reservation.

Source: Kim et al., "The Effect of Scheduling and Preemption on the Efficiency of LLM Inference
Serving" (InferMax), 2024. Code read: the InferMax Vidur fork as published in ValerioL29/infermax
(commit f18ad5a), ``vidur/vidur/scheduler/replica_scheduler/test_replica_scheduler.py``
(``TestReplicaScheduler._get_next_batch`` with ``sortI``, ``_can_allocate_request`` with
``histogram``, ``on_batch_end``) and its run script ``vidur/run_exp_splitwise_test_sortI_histogram.sh``.

Rules, per step: those of ``baselines/sarathi.py`` (decodes, then partial prefills, then FCFS
admission; the 1% watermark and the "no free block" rule of its block manager), with:

* Order ("sortI"): every step the running requests are re-sorted by computed tokens, most
  first (ties: earlier arrival first), and decodes and partial prefills are served in that
  order.
* Eviction: when a decode finds no free block, the victim is the last of that order among the
  running requests not yet visited this step: the one with the fewest computed tokens (the
  cheapest to recompute), and the requester itself when none is left after it.
* Reservation ("histogram", off by default, ``reserve=True``): finished requests are bucketed by
  int(log2(prompt tokens)); each bucket keeps the count and sum of their total tokens (prompt +
  output). A waiting request is admitted only if the free blocks cover max(prefill, ceil(average
  total of its bucket)) tokens (just the prefill when its bucket is empty), capped at the cache.
  This only gates admission; the KV allocated is the prompt's. The histogram learns from
  requests as they finish (their generated count), never from the hidden output length.

The paper's configuration (the run script): ``paper=True`` = token budget 16,384, watermark 0,
``reserve=True``, on an engine with KV block size 1 and a 16,384-token step budget, e.g.
``llmsched compare --preset infermax-a100-llama3-70b-tp4 --block-size 1 --token-budget 16384
--schedulers infermax-srf:paper=true``; an engine that differs is refused with that command.
"""
from __future__ import annotations

import math

from llmsched_env.scheduler import register

from .sarathi import SarathiScheduler

PAPER_TOKEN_BUDGET = 16384  # the run script's chunk size C, tokens
PAPER_BLOCK_SIZE = 1        # the run script's block size, tokens


@register("infermax-srf")
class InferMaxSRFScheduler(SarathiScheduler):
    """Sarathi + fewest-computed-tokens order and eviction (+ histogram reservation).

    Args:
        token_budget: per-step token budget, tokens (default 512).
        reserve: gate admission on the bucket's average total length (InferMax "histogram").
        watermark: share of all KV blocks kept free at admission (0.01).
        paper: the paper's configuration (see the module docstring); overrides the three above.
    """

    def __init__(self, token_budget: int | None = 512, reserve: bool = False, watermark: float = 0.01,
                 paper: bool = False):
        if paper:
            token_budget, reserve, watermark = PAPER_TOKEN_BUDGET, True, 0.0
        super().__init__(token_budget, watermark)
        self.reserve = reserve
        self.paper = paper
        self.reset()

    def reset(self) -> None:
        self._hist: dict[int, list[int]] = {}  # bucket -> [count, sum of total tokens]
        self._seen_finished = 0

    def _observe(self, engine) -> None:
        cfg = engine.config
        if self.paper and (cfg.block_size != PAPER_BLOCK_SIZE or cfg.max_num_batched_tokens < PAPER_TOKEN_BUDGET):
            raise ValueError(
                f"infermax-srf:paper=true is InferMax's configuration: KV block size {PAPER_BLOCK_SIZE} and a "
                f"{PAPER_TOKEN_BUDGET}-token step budget, but this engine has block size {cfg.block_size} and "
                f"budget {cfg.max_num_batched_tokens}; run with --block-size {PAPER_BLOCK_SIZE} --token-budget "
                f"{PAPER_TOKEN_BUDGET} (or drop paper=true)")
        self._capacity_tokens = cfg.kv_capacity_tokens
        if not self.reserve:
            return
        fin = engine.finished
        for req in fin[self._seen_finished:]:
            h = self._hist.setdefault(int(math.log2(req.prompt_len)), [0, 0])
            h[0] += 1
            h[1] += req.prompt_len + req.num_generated
        self._seen_finished = len(fin)

    def _running_order(self, engine) -> list:
        return sorted(engine.running.values(), key=lambda r: (-r.num_computed, r.arrival_s, r.rid))

    def _admit_tokens(self, req) -> int:
        own = super()._admit_tokens(req)
        if not self.reserve:
            return own
        h = self._hist.get(int(math.log2(req.prompt_len)))
        if h is None:
            return own
        # Capped at the cache size: an average can never block an otherwise admissible request for good.
        return max(own, min(math.ceil(h[1] / h[0]), self._capacity_tokens))
