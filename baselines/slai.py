"""SLAI: SLO-aware scheduling of decodes by last schedulable time, shortest prompts first.

Source: Bari, Hegde and de Veciana, "Optimal Scheduling Algorithms for LLM Inference: Theory and
Practice" (SLAI), arXiv 2508.01002, 2025. Code read: the authors' Sarathi-Serve fork agrimUT/SLAI
(commit 5098a7a), ``sarathi/core/scheduler/slai_scheduler.py`` (``SLAIScheduler._schedule``,
``_post_batch_processing``, ``set_last_batch_times``), its block manager
(``slai_scheduler_space_manager.py`` = Sarathi's: whole prompt allocated at admission, a 1%
watermark in ``can_allocate``, ``can_append_slot`` = one free block) and its configurations
(``config_path_yml_files/llama8b_relaxed.yml``: token budget 512, 128 decodes, offsets 5 / 10
switching at 96% KV use, shortest prompt first with user priority).

Rules, per step (token budget default 512 tokens, at most 128 decodes):

* After each batch, every decode that ran in it is queued with a last schedulable time
  LST = end of that batch + its TBT target - Theta x mean batch time, fixed until it runs again;
  Theta = 5 while KV use (after the batch) is below 96%, else 10; the mean is over every batch
  executed so far (seconds; 0 before the first).
1. Critical decodes: while the budget and the decode cap allow and the earliest LST has passed
   (LST <= now), that decode gets its token.
2. Partial prefills from earlier steps, in admission order, while the budget allows, chunk =
   min(rest of the prompt, budget left).
3. New requests ordered by tier (priority value), then prompt length (prompt + generated after a
   preemption), ties in queue order; admitted with a chunk of min(prompt, budget left) while the
   free blocks minus the whole prompt's stay >= 1% of the cache, the sequence cap allows and the
   chunk is not empty; the first that fails stops admission. This happens also in a step that
   preempted (Sarathi's rule, not vLLM's): a victim of this step takes its place in that order
   (the source would re-admit it if it fits; this engine cannot preempt and schedule one request
   in one step, so admission stops there). Decision: the watermark is waived while nothing is
   resident, so no request is blocked forever.
4. The other decodes, earliest LST first, while the budget and the decode cap allow.
* A decode needs a free block (the "no free block" rule, even when its own block has room; an
  admitted prompt's blocks count as allocated). When none is free the most recently admitted
  partial prefill from an earlier step not yet scheduled this step is preempted (recompute); when
  there is none, the decode preempts itself.

``window=N`` (a named option, not the source's) uses the mean of the last N batches instead.
"""
from __future__ import annotations

from collections import deque

from llmsched_env.plan import BatchPlan
from llmsched_env.scheduler import register


@register("slai")
class SLAIScheduler:
    """SLAI (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (default 512).
        max_decodes: most decodes per step (default 128).
        theta_low, theta_high: Theta below / at or above ``kv_threshold`` KV use (5, 10).
        kv_threshold: KV-use share switching Theta (0.96).
        kv_reserve: share of the cache kept free at admission (0.01, the block manager's watermark).
        window: batches in the mean batch time (None = all executed batches, the source's).
    """

    def __init__(self, token_budget: int | None = 512, max_decodes: int = 128, theta_low: float = 5.0,
                 theta_high: float = 10.0, kv_threshold: float = 0.96, kv_reserve: float = 0.01,
                 window: int | None = None):
        if (max_decodes < 1 or (window is not None and window < 1) or not 0 <= kv_reserve < 1
                or not 0 < kv_threshold <= 1):
            raise ValueError("slai needs max_decodes >= 1, window None or >= 1, 0 <= kv_reserve < 1 and "
                             f"0 < kv_threshold <= 1 (got {max_decodes}, {window}, {kv_reserve}, {kv_threshold})")
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        self.token_budget = token_budget
        self.max_decodes = max_decodes
        self.theta_low, self.theta_high = theta_low, theta_high
        self.kv_threshold = kv_threshold
        self.kv_reserve = kv_reserve
        self.window = window
        self.reset()

    def reset(self) -> None:
        self._batch_times: deque[float] = deque(maxlen=self.window)
        self._sum_s = 0.0
        self._num_batches = 0
        self._last_busy = 0.0
        self._lst: dict[int, tuple[int, float]] = {}  # rid -> (tokens emitted when queued, LST s)

    def mean_batch_s(self) -> float:
        """Mean executed batch time, seconds (0 before the first batch)."""
        if self.window is not None:
            return sum(self._batch_times) / len(self._batch_times) if self._batch_times else 0.0
        return self._sum_s / self._num_batches if self._num_batches else 0.0

    def last_schedulable_s(self, rid: int) -> float:
        """The LST a resident decode was queued with, seconds (as of the last ``schedule``)."""
        return self._lst[rid][1]

    def admission_key(self, req, now: float) -> tuple:
        """Order of new admissions (rule 3): tier (priority value), then prompt length (prompt +
        generated, what a preempted request recomputes); ties keep queue order. ``now``
        (seconds) is for variants whose order depends on time."""
        return (req.priority, req.prompt_len + req.num_generated)

    def _observe(self, engine) -> None:
        latency = engine.busy_s - self._last_busy
        self._last_busy = engine.busy_s
        if latency > 0:
            self._batch_times.append(latency)
            self._sum_s += latency
            self._num_batches += 1
        cfg = engine.config
        theta = self.theta_low if engine.used_blocks < self.kv_threshold * cfg.num_kv_blocks else self.theta_high
        slack = theta * self.mean_batch_s()
        old, lst = self._lst, {}
        for r in engine.running.values():
            if r.is_prefilling:
                continue
            entry = old.get(r.rid)
            if entry is None or entry[0] != r.num_generated:  # ran in the last batch: queued anew
                entry = (r.num_generated, r.token_times[-1] + r.tbt_slo_s - slack)
            lst[r.rid] = entry
        self._lst = lst

    def schedule(self, engine) -> BatchPlan:
        self._observe(engine)
        cfg = engine.config
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens if self.token_budget is None else min(
            self.token_budget, cfg.max_num_batched_tokens)
        now = engine.now_s
        running = list(engine.running.values())
        paused = [r for r in running if r.is_prefilling]  # partial prefills, admission order
        promise = {r.rid: max(0, -(-r.prefill_target // bs) - r.num_blocks) for r in paused}
        pool = engine.free_blocks - sum(promise.values())  # free blocks in the source's manager
        decodes = sorted((self._lst[r.rid][1], r.arrival_s, r.rid, r) for r in running if not r.is_prefilling)
        tokens: dict[int, int] = {}
        preempt: list = []
        used = 0
        n_dec = 0

        def decode(req) -> bool:
            """Give decode ``req`` its token, preempting paused prefills (or itself) for a block."""
            nonlocal pool, used
            need = -(-(req.num_computed + 1) // bs) - req.num_blocks
            while pool < max(need, 1):
                if not paused:
                    preempt.append(req)
                    pool += req.num_blocks
                    return False
                victim = paused.pop()
                preempt.append(victim)
                pool += victim.num_blocks + promise[victim.rid]
            tokens[req.rid] = 1
            used += 1
            pool -= need
            return True

        i = 0
        while i < len(decodes) and used < budget and n_dec < self.max_decodes:  # 1. critical decodes
            if decodes[i][0] > now:
                break
            n_dec += decode(decodes[i][3])
            i += 1
        while paused and used < budget:  # 2. partial prefills from earlier steps
            req = paused.pop(0)
            n = min(req.remaining_prefill, budget - used)
            need = -(-(req.num_computed + n) // bs) - req.num_blocks
            own = min(need, promise[req.rid])
            if need - own > pool:
                continue  # only when another scheduler produced this state (no promise kept)
            tokens[req.rid] = n
            used += n
            pool -= need - own

        # 3. new requests, shortest prompt first; this step's victims head the queue
        queue = [*reversed(preempt), *engine.iter_waiting()]
        victims = {r.rid for r in preempt}
        order = sorted(range(len(queue)), key=lambda k: (self.admission_key(queue[k], now), k))
        resident = len(running) - len(preempt)
        reserve = int(self.kv_reserve * cfg.num_kv_blocks) if running else 0
        for k in order:
            req = queue[k]
            if req.rid in victims:
                break
            gate = -(-max(req.prefill_target, req.num_computed + 1) // bs)  # swapped out: its KV + 1
            n = min(req.tokens_owed, budget - used)
            if pool - gate < reserve or resident >= cfg.max_num_seqs or n < 1:
                break
            tokens[req.rid] = n
            used += n
            resident += 1
            pool -= gate
        for _, _, _, req in decodes[i:]:  # 4. the other decodes, LST order
            if used >= budget or n_dec >= self.max_decodes:
                break
            n_dec += decode(req)
        return BatchPlan(tokens, {r.rid for r in preempt})
