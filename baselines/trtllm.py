"""TensorRT-LLM's batch manager: a capacity scheduler picks the requests whose KV fits, then the
micro-batch scheduler fits them to the step's token budget. The capacity policies are the
registered schedulers ``trtllm-no-evict`` (``baselines/trtllm_no_evict.py``) and
``trtllm-max-util`` (``baselines/trtllm_max_util.py``); this module holds what they share.

Source: NVIDIA/TensorRT-LLM. Code read: ``cpp/tensorrt_llm/batch_manager/microBatchScheduler.cpp``
(``MicroBatchScheduler::operator()``, ``setCtxRequestsChunkSize`` with
``kFIRST_COME_FIRST_SERVED``), ``capacityScheduler.cpp``, ``scheduledBlocksManager.h`` and
``kvCacheManager.cpp`` (``getRemainingBlocksToCompletion``, ``getNeededBlocksOneStep``). Both
policies read each request's ``max_tokens`` (TensorRT-LLM's ``maxNewTokens``), never its true
output length.

Micro-batch rules (per step, token budget = ``max_num_tokens``, default the engine's step
budget): the capacity scheduler's requests in its order; a generation request takes 1 token and
one that does not fit the budget left stops the batch; a context request (waiting, or a prefill
in progress) without chunking (TensorRT-LLM's default) takes its whole remaining prompt, and one
that does not fit stops the batch; with ``chunked_prefill=True`` context requests are collected
and, if they do not all fit, given chunks first come first served: min(rest, tokens left),
rounded down to whole KV blocks when cut. The batch also stops at ``max_num_seqs`` requests.

Active requests are in arrival order (TensorRT-LLM's ``activeRequests`` list, in which a paused
request keeps its place). A prompt longer than the budget without chunking raises
``PromptExceedsBudget``.
"""
from __future__ import annotations

from llmsched_env.plan import BatchPlan

from .plan_builder import whole_prompt


class TRTLLMScheduler:
    """Base class: subclasses implement ``capacity(engine, active)``.

    Args:
        chunked_prefill: chunk context requests to the token budget (TensorRT-LLM's
            ``enable_chunked_context``; default False, its default).
        token_budget: ``max_num_tokens`` per step, tokens (None = the engine's).
    """

    def __init__(self, chunked_prefill: bool = False, token_budget: int | None = None):
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        self.chunked_prefill = chunked_prefill
        self.token_budget = token_budget

    def reset(self) -> None:
        pass

    def capacity(self, engine, active: list) -> tuple[list, list]:
        """(requests that fit, in scheduling order; running requests to pause)."""
        raise NotImplementedError

    def schedule(self, engine) -> BatchPlan:
        active = sorted((*engine.running.values(), *engine.iter_waiting()), key=lambda r: (r.arrival_s, r.rid))
        fitting, paused = self.capacity(engine, active)
        return BatchPlan(self._micro_batch(engine, fitting), {r.rid for r in paused})

    def _micro_batch(self, engine, fitting: list) -> dict[int, int]:
        cfg = engine.config
        budget = cfg.max_num_batched_tokens if self.token_budget is None else min(
            self.token_budget, cfg.max_num_batched_tokens)
        tokens: dict[int, int] = {}
        contexts = []
        used = ctx_tokens = 0
        for req in fitting:
            if req.is_prefilling:
                if self.chunked_prefill:
                    contexts.append(req)
                    ctx_tokens += req.remaining_prefill
                else:
                    n = whole_prompt(req, budget, self.name)
                    if used + n > budget:
                        break
                    tokens[req.rid] = n
                    used += n
            else:
                if used + 1 > budget:
                    break
                tokens[req.rid] = 1
                used += 1
            if len(tokens) + len(contexts) >= cfg.max_num_seqs:
                break
        left = budget - used
        unit = cfg.block_size
        for req in contexts:
            n = req.remaining_prefill
            if ctx_tokens > budget - used and n > left:
                n = left // unit * unit
            if n > 0:
                tokens[req.rid] = n
                left -= n
        return tokens
