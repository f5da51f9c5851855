"""No-preempt: reserve a request's whole lifetime KV at admission, so nothing is ever preempted.

Source: InferMax (Kim et al., "The Effect of Scheduling and Preemption on the Efficiency of LLM
Inference Serving", 2024), the "avoid preemption" baseline. Code read: the InferMax Vidur fork as
published in ValerioL29/infermax (commit f18ad5a), ``vidur/vidur/scheduler/replica_scheduler/
test_replica_scheduler.py`` with ``no_evict``: a new request needs ``ceil((total_tokens - 1) /
block_size)`` blocks (prompt + output - 1: the most KV a request ever holds), allocated at
admission. It reads the true output length, so it is an ORACLE.

Rules: Sarathi-Serve's stall-free batching (``baselines/sarathi.py``: decodes, then partial
prefills, then FCFS admission under a token budget, default 512), except that a request is
admitted only if the blocks of prompt + output - 1 tokens fit the free blocks not promised to
resident requests (and the admission watermark of ``baselines/sarathi.py``, 1% of the cache, the
InferMax block manager's default), and every resident request keeps its lifetime blocks
promised. A decode then always gets its block from its own reservation (the "no free block"
rule does not apply: InferMax's no-evict ``_can_allocate_request`` always grants a resident
request); a shortage would be a bug and raises RuntimeError.
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .sarathi import SarathiScheduler


@register("no-preempt")
class NoPreemptScheduler(SarathiScheduler):
    """Sarathi order with lifetime KV reservation (oracle; see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (default 512).
        watermark: share of all KV blocks kept free at admission (0.01).
    """

    decode_needs_free_block = False  # a decode's blocks come from its own reservation

    def _lifetime(self, req) -> int:
        return req.prompt_len + req.output_len - 1

    def _admit_tokens(self, req) -> int:
        return max(req.prefill_target, self._lifetime(req))

    def _future_tokens(self, req) -> int:
        return max(req.prefill_target, self._lifetime(req))

    def _victim(self, unvisited, req):
        raise RuntimeError(f"no-preempt: request {req.rid} lacks a KV block although its lifetime KV "
                           "was reserved at admission (reservation accounting bug)")
