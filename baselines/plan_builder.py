"""PlanBuilder: the bookkeeping every heuristic repeats while it builds one BatchPlan.

It tracks, for the step being planned, the token budget left (tokens), the free KV blocks left
(blocks, after the planned chunks and preemptions), and the resident count (requests holding KV
after the step, the quantity ``max_num_seqs`` limits). It never touches the engine: a scheduler
reads the engine, asks the builder what fits, and returns ``builder.plan()``.
"""
from __future__ import annotations

from llmsched_env.plan import BatchPlan
from llmsched_env.request import RUNNING
from llmsched_env.scheduler import WorkloadNotServable


class PromptExceedsBudget(WorkloadNotServable):
    """A whole-prompt scheduler met a prefill longer than its per-step token budget."""


class PlanBuilder:
    """Mutable draft of one step's plan.

    Args:
        engine: the engine (read only).
        token_budget: tokens this step (None = the engine's ``max_num_batched_tokens``; a larger
            value is capped to it).
    """

    __slots__ = ("engine", "bs", "budget", "free", "resident", "max_seqs", "tokens", "preempt")

    def __init__(self, engine, token_budget: int | None = None):
        cfg = engine.config
        self.engine = engine
        self.bs = cfg.block_size
        self.budget = cfg.max_num_batched_tokens if token_budget is None else min(
            token_budget, cfg.max_num_batched_tokens)
        self.free = engine.free_blocks
        self.resident = len(engine.running)
        self.max_seqs = cfg.max_num_seqs
        self.tokens: dict[int, int] = {}
        self.preempt: set[int] = set()

    # ------------------------------------------------------------------ queries
    def blocks_needed(self, req, n: int) -> int:
        """Extra KV blocks ``req`` needs to process ``n`` more tokens, blocks."""
        return -(-(req.num_computed + n) // self.bs) - req.num_blocks

    def chunk(self, req) -> int:
        """What ``req`` is owed (rest of its prefill, or 1 decode token), capped by the budget."""
        return min(req.tokens_owed, self.budget)

    def fits(self, req, n: int, reserve_blocks: int = 0) -> bool:
        """True if ``n`` tokens of ``req`` fit the budget, the sequence cap (for a waiting request)
        and the free KV minus ``reserve_blocks``."""
        if n < 1 or n > self.budget:
            return False
        if req.status != RUNNING and self.resident >= self.max_seqs:
            return False
        return self.blocks_needed(req, n) <= self.free - reserve_blocks

    # ---------------------------------------------------------------- mutations
    def add(self, req, n: int) -> None:
        """Schedule ``n`` tokens of ``req`` (the caller checked ``fits``)."""
        self.tokens[req.rid] = n
        self.budget -= n
        self.free -= self.blocks_needed(req, n)
        if req.status != RUNNING:
            self.resident += 1

    def try_add(self, req, n: int | None = None, reserve_blocks: int = 0) -> bool:
        """``add`` if it fits; ``n`` defaults to ``chunk(req)``. Returns whether it was added."""
        n = self.chunk(req) if n is None else n
        if not self.fits(req, n, reserve_blocks):
            return False
        self.add(req, n)
        return True

    def evict(self, req) -> None:
        """Preempt running ``req`` (recompute); if already scheduled this step it gives its tokens
        and blocks back."""
        n = self.tokens.pop(req.rid, None)
        if n is not None:
            self.budget += n
            self.free += self.blocks_needed(req, n)
        self.free += req.num_blocks
        self.preempt.add(req.rid)
        self.resident -= 1

    def add_or_preempt(self, req, n: int, pick_victim) -> bool:
        """Schedule running ``req`` for ``n`` tokens, preempting ``pick_victim()`` (a running request,
        possibly ``req`` itself, or None when there is none) until its blocks fit. Returns False if
        ``req`` was preempted or no victim was left."""
        while self.blocks_needed(req, n) > self.free:
            victim = pick_victim()
            if victim is None:
                return False
            self.evict(victim)
            if victim is req:
                return False
        self.add(req, n)
        return True

    def plan(self) -> BatchPlan:
        return BatchPlan(self.tokens, self.preempt)


def whole_prompt(req, budget: int, scheduler: str) -> int:
    """The whole remaining prefill of ``req``, tokens; raises PromptExceedsBudget when it can never
    fit one step's token budget (vLLM v0 refuses to start with max_num_batched_tokens <
    max_model_len for the same reason)."""
    n = req.remaining_prefill
    if n > budget:
        raise PromptExceedsBudget(
            f"{scheduler} schedules whole prompts, but request {req.rid} needs a {n}-token prefill > "
            f"token budget {budget}; raise the token budget (--token-budget) to at least the model's "
            "max_model_len, as vLLM v0 requires, or use a chunked-prefill scheduler (vllm-v1, sarathi)")
    return n
