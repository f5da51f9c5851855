"""SRPT and SJF: shortest remaining (or total) output length first.

Source: the classic size-based policies (Schrage 1968, SRPT; SJF), as applied to LLM serving
with predicted output lengths, e.g. Qiu et al., "Efficient Interactive LLM Serving with Proxy
Model-based Sequence Length Prediction" (SSJF, 2024) and Fu et al., "Efficient LLM Scheduling by
Learning to Rank" (2024). The limited-preemption rule is TRAIL's (Shahout et al., "Don't Stop Me
Now: Embedding Based Scheduling for LLMs", ICLR 2025, arXiv 2410.01035): its SRPT variant allows
preemption early in a request's execution and forbids it once the request is a fraction of the
way through its predicted length. Only the paper was read (no TRAIL code was found in the public
code index); the fraction is this module's ``preempt_limit``.

Rules: the rank loop of ``baselines/ranked.py`` (rank all waiting + running requests each step,
fill the token budget in rank order with chunked prefill, preempt lower-ranked running requests
when a higher-ranked one lacks KV or a sequence slot), with key:
  * ``srpt``: estimated remaining output = max(estimate - generated, 0) tokens;
  * ``sjf``: estimated total output tokens (fixed per request).
The estimate comes from ``baselines/length_predictor.py`` (default ``oracle``: the true length,
making these ORACLE baselines; ``noisy`` with ``error`` or ``workload`` predictions otherwise).
Limited preemption (``preempt_limit=f``): a running request that has generated at least f x its
estimate is never chosen as a victim (None = no limit); the rank loop's progress guard may still
preempt it when nothing else could run.
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .length_predictor import LengthPredictor
from .ranked import RankedScheduler


@register("srpt")
class SRPTScheduler(RankedScheduler):
    """Shortest remaining predicted output first (see the module docstring).

    Args:
        predictor: "oracle" (default), "noisy", "workload" or "auto".
        error: relative lognormal std of the noisy predictor.
        seed: seed of the noisy predictor.
        preempt_limit: fraction of its estimate after which a request is not preempted (None = off).
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    remaining = True

    def __init__(self, predictor: str = "oracle", error: float = 0.5, seed: int = 0,
                 preempt_limit: float | None = None, token_budget: int | None = None):
        super().__init__(token_budget)
        if preempt_limit is not None and not preempt_limit >= 0:
            raise ValueError(f"preempt_limit must be a fraction >= 0 or None, not {preempt_limit!r}")
        self.predict = LengthPredictor(predictor, error, seed)
        self.preempt_limit = preempt_limit

    def reset(self) -> None:
        self.predict.reset()

    def key(self, req, engine):
        est = self.predict(req)
        return max(est - req.num_generated, 0) if self.remaining else est

    def preemptible(self, req) -> bool:
        return self.preempt_limit is None or req.num_generated < self.preempt_limit * self.predict(req)


@register("sjf")
class SJFScheduler(SRPTScheduler):
    """Shortest (predicted) job first: rank by total estimated output length."""

    remaining = False
