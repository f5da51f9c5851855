"""Orca: iteration-level batching with whole prompts and max-length KV reservation.

Source: Yu et al., "Orca: A Distributed Serving System for Transformer-Based Generative Models",
OSDI 2022 (iteration-level scheduling, selective batching); its KV policy as characterised by
Kwon et al. (vLLM, SOSP 2023, "Orca (Max)"): each request reserves KV for the maximum sequence
length when it is admitted.

Rules, per step (token budget = the engine's ``max_num_batched_tokens``):

1. Every running request decodes one token (admission order); requests join and leave the batch
   at every iteration.
2. Waiting requests FCFS are admitted with their whole prompt (one step, no chunking) while the
   prompt fits the budget left, ``max_num_seqs`` allows, and the reservations fit the cache:
   (resident requests + 1) x blocks(max sequence length) <= KV blocks. The first that does not
   fit stops admission.
3. Never preempts: a resident request's KV can never outgrow its reservation.

Max sequence length = the engine's ``max_model_len`` capped at the KV capacity (the engine
rejects any request longer than either, so the reservation always suffices). Prompts longer than
the token budget raise ``PromptExceedsBudget`` (see ``baselines/vllm_v0.py``).
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .plan_builder import PlanBuilder, whole_prompt


def max_seq_blocks(engine) -> int:
    """KV blocks reserved per request: blocks of min(max_model_len, KV capacity in tokens)."""
    cfg = engine.config
    return engine.blocks_for(min(cfg.max_model_len, cfg.kv_capacity_tokens))


@register("orca")
class OrcaScheduler:
    """Orca (Max) iteration-level batching (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    def __init__(self, token_budget: int | None = None):
        self.token_budget = token_budget

    def reset(self) -> None:
        pass

    def schedule(self, engine):
        b = PlanBuilder(engine, self.token_budget)
        full_budget = b.budget
        for req in engine.running.values():
            if b.budget <= 0:
                break
            b.add(req, b.chunk(req))  # within its reservation: always fits
        per_req = max_seq_blocks(engine)
        for req in engine.iter_waiting():
            n = whole_prompt(req, full_budget, self.name)
            if (b.resident + 1) * per_req > engine.config.num_kv_blocks or not b.try_add(req, n):
                break
        return b.plan()
