"""FasterTransformer: request-level static batching.

Source: NVIDIA FasterTransformer (GPT decoding with a static batch: the KV buffer is allocated as
batch size x max sequence length, and a batch runs until all of its sequences finish); described
as request-level batching in Yu et al., Orca (OSDI 2022) and Kwon et al., vLLM (SOSP 2023).

Rules:

1. While a batch is resident, every member decodes one token per step; nothing joins until the
   last member finishes (finished members simply leave their slot empty).
2. When no request is resident, a new batch is formed from the waiting queue FCFS: whole prompts,
   all prefilled in the first step, while the prompts fit the token budget, the batch fits
   ``max_batch_size`` (default ``max_num_seqs``), and the static KV buffer fits the cache:
   batch size x blocks(max sequence length) <= KV blocks (max sequence length as in
   ``baselines/orca.py``). Never preempts.

Prompts longer than the token budget raise ``PromptExceedsBudget`` (see ``baselines/vllm_v0.py``).
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .orca import max_seq_blocks
from .plan_builder import PlanBuilder, whole_prompt


@register("faster-transformer")
class FasterTransformerScheduler:
    """Request-level static batches (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (None = the engine's).
        max_batch_size: most requests per batch (None = the engine's max_num_seqs).
    """

    def __init__(self, token_budget: int | None = None, max_batch_size: int | None = None):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size!r}")
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size

    def reset(self) -> None:
        pass

    def schedule(self, engine):
        b = PlanBuilder(engine, self.token_budget)
        if engine.running:
            for req in engine.running.values():
                if b.budget <= 0:
                    break
                b.add(req, b.chunk(req))  # within the static buffer: always fits
            return b.plan()
        per_req = max_seq_blocks(engine)
        cap = engine.config.max_num_seqs if self.max_batch_size is None else self.max_batch_size
        full_budget = b.budget
        for req in engine.iter_waiting():
            n = whole_prompt(req, full_budget, self.name)
            if (b.resident >= cap or (b.resident + 1) * per_req > engine.config.num_kv_blocks
                    or not b.try_add(req, n)):
                break
        return b.plan()
