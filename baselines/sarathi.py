"""Sarathi-Serve: stall-free batching with chunked prefills under a fixed token budget.

Source: Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve",
OSDI 2024; code microsoft/sarathi-serve, read for this module: ``sarathi/core/scheduler/
sarathi_scheduler.py`` (``SarathiScheduler._schedule``), ``base_scheduler.py`` (``_preempt``
re-queues at the head), ``policy.py`` (FCFS = by arrival), and the block manager it uses
(``block_space_manager/base_block_space_manager.py`` via ``vllm_block_space_manager.py``):
``can_allocate`` = free blocks - the blocks of the request's whole prompt >= ``int(0.01 x all
blocks)`` (the watermark); ``allocate`` takes the whole prompt's blocks at admission;
``can_append_slot`` = at least one free block.

Rules, per step, with a chunk size (token budget, default 512 tokens):

1. Running requests sorted by arrival (FCFS). Decodes, in that order, each get one token; decodes
   are not limited by the chunk size (only, here, by the engine's ``max_num_batched_tokens``).
   Before each decode the block manager must have a free block, whether or not this decode
   needs a new one ("no free block" is the reason to preempt); the free blocks are those not
   allocated, and an admitted prompt's blocks are all allocated at admission. While none is
   free, the victim is the latest-arrived running request not yet visited this step (the back of
   the sorted list); when there is none the decode preempts itself. Victims are recomputed.
2. Ongoing partial prefills, in that order, get min(rest of the prompt, chunk size - tokens so
   far) (their blocks were allocated at admission).
3. New requests in waiting-queue order (preempted first, most recent first, then arrivals) are
   admitted with a chunk of min(prompt, chunk size - tokens so far) while the free blocks minus
   the blocks of the whole prompt stay >= the watermark, the sequence cap allows and the chunk is
   not empty; the first that fails stops admission. Decision: the watermark is waived while
   nothing is resident, so a prompt needing more than 99% of the cache is not blocked forever.

This engine allocates KV as it is computed, so a partial prefill's not-yet-computed prompt blocks
are counted as allocated ("promised") in the rules above. Sarathi admits in a step that
preempted, but its victims head the waiting queue and a victim needs at least the blocks it just
released, so admission stops at it; this engine also forbids preempting and scheduling a request
in one step, so no request is admitted in a step that preempted.

Subclasses change one rule each: the order of the running list (``_running_order``, whose back
supplies the victims), the tokens the admission gate requires (``_admit_tokens``), the tokens a
resident request's KV is promised to (``_future_tokens``), and whether a decode needs a free
block when its own block has room (``decode_needs_free_block``).
"""
from __future__ import annotations

from collections import deque

from llmsched_env.plan import BatchPlan
from llmsched_env.scheduler import register


@register("sarathi")
class SarathiScheduler:
    """Sarathi-Serve stall-free batching (see the module docstring).

    Args:
        token_budget: chunk size: prefill tokens per step, decodes included, tokens (default
            512, Sarathi-Serve's; None = the engine's ``max_num_batched_tokens``).
        watermark: share of all KV blocks that must stay free after an admission (0.01, the
            block manager's default).
    """

    decode_needs_free_block = True

    def __init__(self, token_budget: int | None = 512, watermark: float = 0.01):
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be a share of the KV cache in [0, 1), not {watermark!r}")
        self.token_budget = token_budget
        self.watermark = watermark

    def reset(self) -> None:
        pass

    # ------------------------------------------------------------------ rules
    def _running_order(self, engine) -> list:
        """Running requests in the order they are served; victims come from the back."""
        return sorted(engine.running.values(), key=lambda r: (r.arrival_s, r.rid))

    def _victim(self, unvisited: deque, req):
        """Remove and return the victim when decode ``req`` lacks a free block: the back of the
        running requests not yet visited this step, or ``req`` itself when none is left."""
        return unvisited.pop() if unvisited else req

    def _admit_tokens(self, req) -> int:
        """Tokens whose blocks must be free for a waiting request to be admitted: its whole
        prefill target (or its KV plus the next token, for one swapped out while decoding)."""
        return max(req.prefill_target, req.num_computed + 1)

    def _future_tokens(self, req) -> int:
        """Tokens whose blocks a resident request holds (Sarathi: its whole prompt)."""
        return req.prefill_target

    def _observe(self, engine) -> None:
        """Hook: learn from the engine before planning (read only)."""

    # --------------------------------------------------------------- planning
    def schedule(self, engine) -> BatchPlan:
        self._observe(engine)
        cfg = engine.config
        bs = cfg.block_size
        cap = cfg.max_num_batched_tokens
        chunk = cap if self.token_budget is None else min(self.token_budget, cap)
        order = self._running_order(engine)
        promise = {r.rid: max(0, -(-self._future_tokens(r) // bs) - r.num_blocks) for r in order}
        free = engine.free_blocks                  # really free after the plan, blocks
        pool = free - sum(promise.values())        # free in the source's block manager, blocks
        tokens: dict[int, int] = {}
        preempt: set[int] = set()
        used = 0
        unvisited = deque(order)
        prefills = []
        while unvisited:
            req = unvisited.popleft()
            if req.is_prefilling:
                prefills.append(req)
                continue
            if used >= cap:
                continue
            need = -(-(req.num_computed + 1) // bs) - req.num_blocks
            own = min(need, promise[req.rid])
            while pool < need - own or (self.decode_needs_free_block and pool < 1):
                victim = self._victim(unvisited, req)
                if victim is req:
                    preempt.add(req.rid)
                    pool += req.num_blocks + promise[req.rid]
                    free += req.num_blocks
                    break
                preempt.add(victim.rid)
                pool += victim.num_blocks + promise[victim.rid]
                free += victim.num_blocks
            else:
                tokens[req.rid] = 1
                used += 1
                pool -= need - own
                promise[req.rid] -= own
                free -= need
        for req in prefills:
            n = min(req.remaining_prefill, chunk - used)
            if n < 1:
                continue
            need = -(-(req.num_computed + n) // bs) - req.num_blocks
            own = min(need, promise[req.rid])
            if need > free or need - own > pool:
                continue  # only when another scheduler produced this state (no promise kept)
            tokens[req.rid] = n
            used += n
            pool -= need - own
            promise[req.rid] -= own
            free -= need
        if preempt:
            return BatchPlan(tokens, preempt)

        resident = len(engine.running)
        watermark = int(self.watermark * cfg.num_kv_blocks) if engine.running else 0
        for req in engine.iter_waiting():
            gate = -(-self._admit_tokens(req) // bs)
            n = min(req.tokens_owed, chunk - used)
            if pool - gate < watermark or resident >= cfg.max_num_seqs or n < 1:
                break
            tokens[req.rid] = n
            used += n
            resident += 1
            pool -= max(-(-self._future_tokens(req) // bs), -(-(req.num_computed + n) // bs))
        return BatchPlan(tokens, preempt)
