"""FastServe: skip-join multi-level feedback queue (MLFQ) with preemption.

Source: Wu et al., "Fast Distributed Inference Serving for Large Language Models" (FastServe),
arXiv 2305.05920, 2023. Code read: the authors' LLMServe/FastServe (commit 6da4b75),
``fastserve/scheduler.py`` (class ``MLFQ``: ``add_request``, ``pop_finished_requests``,
``get_next_batch``, ``reserve_free_blocks``, ``prevent_starvation``), and the MLFQ the LTR authors
reimplemented in vLLM, hao-ai-lab/vllm-ltr ``vllm/core/mlfq_scheduler.py`` (same rules, with
vLLM's chunked prefill). Constants are FastServe's: base quantum 0.01 s, doubling per level
(``threshold = 2``); every 1000 iterations, requests idle >= 3.0 s are promoted to the top.

Rules:
  * Levels 0, 1, ... (0 = highest priority), quantum(k) = base_quantum_s x 2^k seconds, as many
    as needed (``num_levels`` caps them, None = unbounded as in the source).
  * Skip-join: a new request joins the first level whose quantum is at least its prefill time,
    estimated with the engine's cost model (its whole prompt alone in a batch).
  * Service: a request is charged the latency of every step it runs in; once the charge exceeds
    its level's quantum it drops one level and the charge restarts.
  * Starvation: every ``starve_every`` scheduling steps, each request not scheduled for
    ``starve_s`` seconds (since its last step, or since arrival) is promoted to level 0.
  * Batch: requests in (level, arrival) order fill the step by the loop of
    ``baselines/ranked.py`` (chunked prefill, token budget = the engine's). Lower-ranked
    resident requests that get no budget keep their KV. When a selected request lacks KV blocks
    (or a sequence slot), the lowest-ranked resident requests outside it are evicted, lowest
    first (``reserve_free_blocks``: swap-out from the lowest-priority queue): a higher-priority
    arrival displaces lower-priority residents. FastServe swaps the victims' KV to host memory,
    so this is the default when the engine preempts by swap (``EngineConfig.preemption_mode ==
    "swap"``). Under recompute a displaced resident loses its KV and displacing thrashes
    (splitwise_conv, 1000 requests from row 0, rate scale 4, 3000 KV blocks: 28,380 preemptions,
    749 GPU-s, SLO 0.072 with displacement against 266, 101 GPU-s, 0.270 without), so by default
    waiting requests are then admitted into free KV and seats only; ``displace=True`` / ``False``
    forces either. A preempted request keeps its level.
Not modelled: FastServe's proactive swap-in and its headroom of ``max_batch_size`` free blocks
for arrivals, which only matter with swapping; its per-level queue order (requests that ran go to
the front of their level) is replaced by arrival order within a level.
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
        num_levels: number of queues (None = unbounded, the source's).
        starve_s: wait after which a request is promoted to the top, seconds (default 3.0).
        starve_every: scheduling steps between starvation checks (default 1000).
        displace: a selected waiting request may evict lower-priority residents (None = when the
            engine preempts by swap, see the module docstring).
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    def __init__(self, base_quantum_s: float = 0.01, num_levels: int | None = None, starve_s: float = 3.0,
                 starve_every: int = 1000, displace: bool | None = None, token_budget: int | None = None):
        super().__init__(token_budget)
        if (not base_quantum_s > 0 or (num_levels is not None and num_levels < 1) or not starve_s > 0
                or starve_every < 1):
            raise ValueError("fastserve needs base_quantum_s > 0 s, num_levels None or >= 1, starve_s > 0 s "
                             f"and starve_every >= 1 (got {base_quantum_s}, {num_levels}, {starve_s}, "
                             f"{starve_every})")
        self.base_quantum_s = base_quantum_s
        self.num_levels = num_levels
        self.starve_s = starve_s
        self.starve_every = starve_every
        self.displace = displace
        self.reset()

    def reset(self) -> None:
        self._level: dict[int, int] = {}
        self._charge: dict[int, float] = {}
        self._last_run: list[int] = []
        self._last_busy = 0.0
        self._steps = 0

    def quantum(self, level: int) -> float:
        """Quantum of ``level``, seconds."""
        return self.base_quantum_s * 2 ** level

    def join_level(self, prompt_len: int, engine) -> int:
        """Skip-join: the first level whose quantum is at least the prompt's prefill time."""
        t = engine.cost_model.batch_time(BatchShape.from_requests(prefills=[(prompt_len, 0)],
                                                                  completed_prefills=1))
        k = 0
        while self.quantum(k) < t and (self.num_levels is None or k < self.num_levels - 1):
            k += 1
        return k

    def level(self, rid: int) -> int:
        return self._level[rid]

    def _observe(self, engine) -> None:
        swap = engine.config.preemption_mode == "swap"
        self.preempt_for_waiting = swap if self.displace is None else self.displace
        latency = engine.busy_s - self._last_busy
        self._last_busy = engine.busy_s
        if latency > 0:
            for rid in self._last_run:
                if rid not in self._level:
                    continue
                c = self._charge[rid] + latency
                k = self._level[rid]
                if c > self.quantum(k):
                    if self.num_levels is None or k < self.num_levels - 1:
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
