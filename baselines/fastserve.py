"""FastServe: skip-join multi-level feedback queue (MLFQ) with preemption.

Source: Wu et al., "Fast Distributed Inference Serving for Large Language Models" (FastServe),
arXiv 2305.05920, 2023: skip-join MLFQ "leverages the input length information to assign an
appropriate initial queue for each arrival job to join. The higher priority queues than the
joined queue are skipped to reduce demotions." Its quanta are not published in the abstract; the
defaults follow the MLFQ reimplementation of Fu et al. (hao-ai-lab/vllm-ltr): base quantum
0.01 s, doubling per level; every 100 iterations, requests idle >= 3.0 s are promoted to the top.

Rules:
  * Levels 0..L-1 (0 = highest priority), quantum(k) = base_quantum_s x 2^k seconds.
  * Skip-join: a new request joins the highest level whose quantum exceeds its prefill time,
    estimated with the engine's cost model (its whole prompt alone in a batch); the last level
    when none does.
  * Service: a request is charged the latency of every step it runs in; once the charge reaches
    its level's quantum it drops one level (the last level keeps it) and the charge restarts.
  * Starvation: every ``starve_every`` scheduling steps, each request not scheduled for
    ``starve_s`` seconds (since its last step, or since arrival) is promoted to level 0.
  * Ranking: (level, arrival); the batch is filled in rank order by the loop of
    ``baselines/ranked.py`` (chunked prefill, token budget = the engine's): FastServe preempts at
    token granularity, i.e. lower-ranked resident requests simply do not run when the budget is
    spent, and keep their KV. KV is evicted (recompute) only when a resident request lacks
    blocks, lowest rank first; waiting requests are admitted into free KV and seats only
    (``preempt_for_waiting = False``: FastServe swaps KV to host memory instead of discarding
    it, which this engine does not model, and evicting residents for every demotion thrashes
    under recompute; see ``baselines/ranked.py``). A preempted request keeps its level.
"""
from __future__ import annotations

from llmsched_env.cost_model import BatchShape
from llmsched_env.scheduler import register

from .ranked import RankedScheduler


@register("fastserve")
class FastServeScheduler(RankedScheduler):
    """Skip-join MLFQ (see the module docstring).

    Args:
        base_quantum_s: quantum of level 0, seconds (default 0.01).
        num_levels: number of queues (default 8: quanta 0.01 .. 1.28 s).
        starve_s: wait after which a request is promoted to the top, seconds (default 3.0).
        starve_every: scheduling steps between starvation checks (default 100).
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    preempt_for_waiting = False

    def __init__(self, base_quantum_s: float = 0.01, num_levels: int = 8, starve_s: float = 3.0,
                 starve_every: int = 100, token_budget: int | None = None):
        super().__init__(token_budget)
        if not base_quantum_s > 0 or num_levels < 1 or not starve_s > 0 or starve_every < 1:
            raise ValueError("fastserve needs base_quantum_s > 0 s, num_levels >= 1, starve_s > 0 s and "
                             f"starve_every >= 1 (got {base_quantum_s}, {num_levels}, {starve_s}, {starve_every})")
        self.quanta = [base_quantum_s * 2 ** k for k in range(num_levels)]
        self.starve_s = starve_s
        self.starve_every = starve_every
        self.reset()

    def reset(self) -> None:
        self._level: dict[int, int] = {}
        self._charge: dict[int, float] = {}
        self._last_run: list[int] = []
        self._last_busy = 0.0
        self._steps = 0

    def join_level(self, prompt_len: int, engine) -> int:
        """Skip-join: the highest level whose quantum exceeds the prompt's prefill time."""
        t = engine.cost_model.batch_time(BatchShape.from_requests(prefills=[(prompt_len, 0)],
                                                                  completed_prefills=1))
        for k, q in enumerate(self.quanta):
            if q > t:
                return k
        return len(self.quanta) - 1

    def level(self, rid: int) -> int:
        return self._level[rid]

    def _observe(self, engine) -> None:
        latency = engine.busy_s - self._last_busy
        self._last_busy = engine.busy_s
        last = len(self.quanta) - 1
        if latency > 0:
            for rid in self._last_run:
                if rid not in self._level:
                    continue
                c = self._charge[rid] + latency
                k = self._level[rid]
                if c >= self.quanta[k]:
                    if k < last:
                        self._level[rid] = k + 1
                    c = 0.0
                self._charge[rid] = c
        for req in (*engine.iter_waiting(), *engine.running.values()):
            if req.rid not in self._level:
                self._level[req.rid] = self.join_level(req.prompt_len, engine)
                self._charge[req.rid] = 0.0
        self._steps += 1
        if self._steps % self.starve_every == 0:
            now = engine.now_s
            for req in list(engine.running.values()) + list(engine.iter_waiting()):
                since = req.last_scheduled_s if req.last_scheduled_s is not None else req.arrival_s
                if now - since >= self.starve_s:
                    self._level[req.rid] = 0
                    self._charge[req.rid] = 0.0

    def key(self, req, engine):
        return self._level[req.rid]

    def _after_plan(self, engine, order, plan) -> None:
        self._last_run = list(plan.tokens)
