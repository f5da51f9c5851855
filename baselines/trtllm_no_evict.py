"""TensorRT-LLM GUARANTEED_NO_EVICT: admit a request only when the KV of its whole ``max_tokens``
is free after the running requests' own, so nothing is ever evicted.

Source: NVIDIA/TensorRT-LLM ``cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp``
(``GuaranteedNoEvictScheduler::impl``), ``scheduledBlocksManager.h``
(``NoEvictScheduledBlocksManager``) and ``kvCacheManager.cpp``
(``getRemainingBlocksToCompletion``); TensorRT-LLM's default capacity policy. The micro-batch
step is ``baselines/trtllm.py``'s.

Rules, per step: available = free blocks. In arrival order, every request in generation (a
running decode) is scheduled and its remaining blocks to completion are subtracted: blocks of
min(prompt + max_tokens, window) minus the blocks it holds, window = min(max_model_len, KV
capacity) (TensorRT-LLM's max attention window). Then context requests (prefills in progress and
waiting requests) in arrival order are scheduled while their remaining
blocks to completion fit what is left, each subtracting its own; the first that does not fit
stops admission; at most ``max_num_seqs`` requests. It reads ``max_tokens`` (what a practical
server knows), not the true output length, so unlike ``no-preempt`` it is not an oracle: it
reserves for the cap and never preempts.
"""
from __future__ import annotations

from llmsched_env.request import RUNNING
from llmsched_env.scheduler import register

from .trtllm import TRTLLMScheduler


def remaining_blocks_to_completion(req, engine) -> int:
    """Blocks ``req`` may still need to reach ``max_tokens``, blocks (none below 0)."""
    cfg = engine.config
    window = min(cfg.max_model_len, cfg.kv_capacity_tokens)
    return max(0, engine.blocks_for(min(req.prompt_len + req.max_tokens, window)) - req.num_blocks)


@register("trtllm-no-evict")
class TRTLLMNoEvictScheduler(TRTLLMScheduler):
    """TensorRT-LLM GUARANTEED_NO_EVICT (see the module docstring); options as ``TRTLLMScheduler``'s."""

    def capacity(self, engine, active):
        cap = engine.config.max_num_seqs
        available = engine.free_blocks
        scheduled, pending = [], []
        for req in active:
            if len(scheduled) >= cap:
                break
            if req.status == RUNNING and not req.is_prefilling:
                scheduled.append(req)
                available -= remaining_blocks_to_completion(req, engine)
            else:
                pending.append(req)
        for req in pending:
            if len(scheduled) >= cap:
                break
            need = remaining_blocks_to_completion(req, engine)
            if need > available:
                break
            scheduled.append(req)
            available -= need
        return scheduled, []
