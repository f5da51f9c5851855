"""TensorRT-LLM MAX_UTILIZATION: schedule as many requests as the KV of the next step allows,
pausing (evicting) the most recently arrived started request when it runs out.

Source: NVIDIA/TensorRT-LLM ``cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp``
(``MaxUtilizationScheduler::operator()``, ``trySchedulingRequestMaxUtilization``),
``scheduledBlocksManager.h`` (``MaxUtilizationScheduledBlocksManager``) and ``kvCacheManager.cpp``
(``getNeededBlocksOneStep``: a first context chunk allocates its whole prompt, a generation
step the blocks of one more token). The micro-batch step is ``baselines/trtllm.py``'s.

Rules, per step: in arrival order, each request is scheduled if the blocks scheduled so far plus
its one-step need fit the free blocks (a waiting request: its whole prompt; a prefill in
progress: none, its prompt was allocated at its first chunk; a decode: the blocks of its next
token) and fewer than ``max_num_seqs`` are scheduled. When one does not fit, the last started
(running) request from it to the end of the list is paused (preempted: its KV freed, recomputed
later; it keeps its place in the order), everything from it on is dropped for this step, and
the request is tried again; when no started request is left there, scheduling stops. It reads
``max_tokens`` only through the micro-batch budget, never the true output length.
"""
from __future__ import annotations

from llmsched_env.request import RUNNING
from llmsched_env.scheduler import register

from .trtllm import TRTLLMScheduler


@register("trtllm-max-util")
class TRTLLMMaxUtilScheduler(TRTLLMScheduler):
    """TensorRT-LLM MAX_UTILIZATION (see the module docstring); options as ``TRTLLMScheduler``'s."""

    def capacity(self, engine, active):
        cfg = engine.config
        bs = cfg.block_size
        promise = {r.rid: max(0, -(-r.prefill_target // bs) - r.num_blocks)
                   for r in active if r.status == RUNNING and r.is_prefilling}
        pool = engine.free_blocks - sum(promise.values())  # free with whole prompts allocated
        scheduled, paused = [], []
        used = 0
        i, end = 0, len(active)
        while i < end:
            req = active[i]
            if req.status != RUNNING:
                need = -(-max(req.prefill_target, req.num_computed + 1) // bs)  # swapped out: KV + 1
            elif req.is_prefilling:
                need = 0
            else:
                need = -(-(req.num_computed + 1) // bs) - req.num_blocks
            if len(scheduled) < cfg.max_num_seqs and used + need <= pool:
                scheduled.append(req)
                used += need
                i += 1
                continue
            j = next((k for k in range(end - 1, i - 1, -1) if active[k].status == RUNNING), None)
            if j is None:
                break
            victim = active[j]
            paused.append(victim)
            pool += victim.num_blocks + promise.get(victim.rid, 0)
            end = j
        return scheduled, paused
