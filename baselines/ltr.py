"""LTR: learning-to-rank scheduling by predicted output length, with a starvation guard.

Source: Fu et al., "Efficient LLM Scheduling by Learning to Rank", NeurIPS 2024. Code read: the
authors' vLLM fork hao-ai-lab/vllm-ltr (commit 13bbf6f), ``vllm/core/scheduler.py``
(``_get_opt_ordered_requests``: starvation promotion and the (pri, -score) order;
``_general_schedule``: the ``idle`` / ``runs`` counters after each step). Each step all waiting and
running requests are ranked by a predictor's score and the batch is filled in rank order; a
request that has not been scheduled for S consecutive steps is boosted for its next P executed
runs (the authors' runs: S = 200, P = 10).

Rules: the rank loop of ``baselines/ranked.py`` (chunked prefill, token budget = the engine's,
lower-ranked running requests preempted when a higher-ranked one lacks KV or a slot; the source
swaps them out: run the engine with ``preemption_mode="swap"`` (CLI ``--preemption-mode swap``) for
that, the default recomputes), key (not boosted, score). The learned ranker is
replaced by a length predictor (``baselines/length_predictor.py``, default ``auto``: the
workload's predictions when present, else a simulated noisy predictor with lognormal error 0.5,
which scores a long/short pair in the right order far more often than not, like the paper's
ranker); score = predicted total output length (``score="remaining"``: predicted remaining).
Starvation: per request, ``idle`` counts consecutive steps in which it was not scheduled
(waiting or resident); at ``idle >= starve_steps`` it is boosted with ``boost_steps`` runs, which
count down only in steps that schedule it, and its counter restarts.
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .length_predictor import LengthPredictor
from .ranked import RankedScheduler


@register("ltr")
class LTRScheduler(RankedScheduler):
    """Rank by predicted output length with starvation boosting (see the module docstring).

    Args:
        predictor: "auto" (default), "noisy", "workload" or "oracle".
        error: relative lognormal std of the noisy predictor.
        seed: seed of the noisy predictor.
        score: "total" (default) or "remaining" predicted output tokens.
        starve_steps: idle steps before a boost (S, default 200).
        boost_steps: executed runs a boost lasts (P, default 10).
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    def __init__(self, predictor: str = "auto", error: float = 0.5, seed: int = 0, score: str = "total",
                 starve_steps: int = 200, boost_steps: int = 10, token_budget: int | None = None):
        super().__init__(token_budget)
        if score not in ("total", "remaining"):
            raise ValueError(f"score must be 'total' or 'remaining', not {score!r}")
        if starve_steps < 1 or boost_steps < 1:
            raise ValueError(f"starve_steps ({starve_steps}) and boost_steps ({boost_steps}) must be >= 1")
        self.predict = LengthPredictor(predictor, error, seed)
        self.score = score
        self.starve_steps = starve_steps
        self.boost_steps = boost_steps
        self.reset()

    def reset(self) -> None:
        self.predict.reset()
        self._idle: dict[int, int] = {}
        self._boost: dict[int, int] = {}  # rid -> boosted runs left

    def key(self, req, engine):
        est = self.predict(req)
        s = max(est - req.num_generated, 0) if self.score == "remaining" else est
        return (0 if self._boost.get(req.rid, 0) > 0 else 1, s)

    def _after_plan(self, engine, order, plan) -> None:
        idle, boost, tokens = self._idle, self._boost, plan.tokens
        for req in order:
            rid = req.rid
            if rid in tokens:
                left = boost.get(rid, 0)
                if left == 1:
                    del boost[rid]
                elif left > 1:
                    boost[rid] = left - 1
                idle[rid] = 0
                continue
            i = idle.get(rid, 0) + 1
            if i >= self.starve_steps:
                boost[rid] = self.boost_steps
                i = 0
            idle[rid] = i
        if len(idle) > 4 * len(order) + 1024:  # forget finished requests
            live = {r.rid for r in order}
            self._idle = {k: v for k, v in idle.items() if k in live}
