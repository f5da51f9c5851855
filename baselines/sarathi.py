"""Sarathi-Serve: stall-free batching with chunked prefills under a fixed token budget.

Source: Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve",
OSDI 2024; code microsoft/sarathi-serve (``SarathiScheduler``), built on vLLM v0's block manager,
which allocates a prompt's KV blocks in full at admission.

Rules, per step, with a token budget (default 512 tokens, capped by the engine's):

1. Every running decode gets its one token (admission order).
2. Ongoing partial prefills (running, prefill incomplete) get the next chunk, up to what they are
   owed and the budget left (admission order).
3. New requests (waiting queue order: preempted first, then FCFS) are admitted with a chunk of
   min(prefill, budget left) while the sequence cap allows and the KV blocks of the *whole*
   prefill fit the free blocks not already promised to the unfinished prefills of 2 (the
   allocate-the-whole-prompt rule of its vLLM v0 block manager). The first that does not fit stops
   admission.
4. KV shortage in 1 or 2: preempt (recompute) the latest-arrived running request; a request that
   is itself the latest preempts itself. As in vLLM, nothing is admitted in a step that preempted.

Subclasses change one rule each: the victim (``_victim``), the tokens the admission gate requires
(``_admit_tokens``), and the tokens a running request keeps reserved (``_future_tokens``).
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .plan_builder import PlanBuilder


@register("sarathi")
class SarathiScheduler:
    """Sarathi-Serve stall-free batching (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (default 512, Sarathi-Serve's chunk size).
    """

    def __init__(self, token_budget: int | None = 512):
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        self.token_budget = token_budget

    def reset(self) -> None:
        pass

    # ------------------------------------------------------------------ rules
    def _victim(self, candidates: list, req):
        """Victim among running, not yet preempted ``candidates`` when ``req`` lacks KV."""
        return max(candidates, key=lambda r: (r.arrival_s, r.rid))

    def _admit_tokens(self, req) -> int:
        """Tokens whose blocks must be free for a waiting request to be admitted."""
        return req.prefill_target

    def _future_tokens(self, req) -> int:
        """Tokens a resident request's KV is promised to grow to (kept out of admission)."""
        return req.prefill_target

    def _observe(self, engine) -> None:
        """Hook: learn from the engine before planning (read only)."""

    # --------------------------------------------------------------- planning
    def schedule(self, engine):
        self._observe(engine)
        b = PlanBuilder(engine, self.token_budget)
        running = list(engine.running.values())
        decodes = [r for r in running if not r.is_prefilling]
        prefills = [r for r in running if r.is_prefilling]
        for group in (decodes, prefills):
            for req in group:
                if b.budget <= 0:
                    break
                if req.rid in b.preempt:
                    continue

                def pick(req=req):
                    cands = [r for r in running if r.rid not in b.preempt]
                    return self._victim(cands, req) if cands else None

                b.add_or_preempt(req, b.chunk(req), pick)
        if b.preempt:
            return b.plan()

        bs = engine.config.block_size
        promised = 0
        for req in running:
            after = -(-(req.num_computed + b.tokens.get(req.rid, 0)) // bs)
            promised += max(0, -(-self._future_tokens(req) // bs) - after)
        for req in engine.iter_waiting():
            if b.budget <= 0:
                break
            n = b.chunk(req)
            gate = -(-self._admit_tokens(req) // bs)
            if gate > b.free - promised or not b.fits(req, n):
                break
            b.add(req, n)
            promised += max(0, -(-self._future_tokens(req) // bs) - -(-n // bs))
        return b.plan()
