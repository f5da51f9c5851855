"""vLLM v0's default scheduler (chunked prefill off): prefill-first, whole prompts.

Source: vLLM v0 ``vllm/core/scheduler.py`` (``Scheduler._schedule_default``) and
``vllm/core/block_manager.py`` (``can_allocate`` with ``watermark=0.01``); Kwon et al., "Efficient
Memory Management for Large Language Model Serving with PagedAttention", SOSP 2023.

Rules, per step:

1. Prefill: waiting requests in queue order (preempted first, most recent first; then arrivals
   FCFS) are admitted with their whole prompt (after a preemption: prompt + generated tokens)
   while the prompt fits the token budget left, ``max_num_seqs``, and the KV cache with a
   watermark: free blocks - the prompt's blocks >= 1% of all blocks. The first that does not fit
   stops admission. If anything was admitted, the step is prefill-only. Decision: the watermark
   is waived while no request is resident, so a prompt needing more than 99% of the cache is not
   blocked forever (vLLM v0 would reject it as never schedulable).
2. Otherwise every running request decodes one token, in admission order. When one needs a block
   and none is free, the newest running request (the last admitted) is preempted by recompute and
   goes back to the head of the waiting queue; a request that is itself the newest preempts
   itself.

With the engine's ``preemption_mode="swap"`` (vLLM v0's ``preemption_mode="swap"``) victims go to
host memory (``Scheduler._preempt_by_swap``) and the source's swapped queue applies: while any
request is swapped out no new prompt is admitted (``_schedule_default``: ``if not self.swapped``);
after the decodes, if no request was preempted this step, swapped requests come back oldest
first (``_schedule_swapped``) while their blocks plus the watermark fit (``can_swap_in``) and the
budget lasts. A victim that does not fit the host space is recomputed by the engine (where vLLM v0
aborts) and waits as a prompt.

Prompts longer than the token budget: vLLM v0 refuses to start when ``max_num_batched_tokens <
max_model_len`` (and drops longer prompts with a warning). Here such a prompt raises
``PromptExceedsBudget`` naming the request, never a silent drop; the presets' default budget
(8192) equals Llama-3-8B's ``max_model_len``, so it does not arise with defaults.

Defaults: token budget = the engine's ``max_num_batched_tokens``; watermark 0.01.
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .plan_builder import PlanBuilder, whole_prompt


@register("vllm-v0")
class VLLMV0Scheduler:
    """vLLM v0, prefill-first (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (None = the engine's).
        watermark: share of all KV blocks kept free at admission (vLLM default 0.01).
    """

    def __init__(self, token_budget: int | None = None, watermark: float = 0.01):
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), not {watermark!r}")
        self.token_budget = token_budget
        self.watermark = watermark

    def reset(self) -> None:
        pass

    def schedule(self, engine):
        b = PlanBuilder(engine, self.token_budget)
        full_budget = b.budget
        # Waived while nothing is resident, so a prompt that fits the cache is never blocked for good.
        watermark_blocks = int(self.watermark * engine.config.num_kv_blocks) if engine.running else 0
        swapped = ([r for r in engine.iter_waiting() if r.host_blocks]
                   if engine.config.preemption_mode == "swap" else [])
        if not swapped:
            for req in engine.iter_waiting():
                n = whole_prompt(req, full_budget, self.name)
                if not b.try_add(req, n, reserve_blocks=watermark_blocks):
                    break
            if b.tokens:
                return b.plan()

        running = list(engine.running.values())

        def newest():
            return running.pop() if running else None

        i = 0
        while i < len(running) and b.budget > 0:
            req = running[i]
            if b.add_or_preempt(req, 1, newest):
                i += 1
        if swapped and not b.preempt:
            # Oldest swapped out first (vLLM's swapped queue is FIFO); the queue lists them newest first.
            for req in reversed(swapped):
                if not b.try_add(req, req.tokens_owed, reserve_blocks=watermark_blocks):
                    break
        return b.plan()
