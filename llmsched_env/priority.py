"""Priority rules and the one plan builder that turns request scores into a feasible BatchPlan.

A **rule** scores every visible request (running and waiting) with a weighted sum of scale-free
request features (``REQUEST_FEATURES``), and sets three global knobs: a token budget, a KV reserve
and an admission threshold. ``PriorityPlanner.plan`` builds the batch from the scores alone:

1. Candidates (every running and waiting request) are visited in score order, highest first
   (ties: running before waiting, then queue order).
2. Every token counts against the step's budget ``min(rule.token_budget, engine budget)``: a
   decode takes 1, a prefilling request ``min(rest of its prefill, budget left)``.
3. A running request that needs KV blocks it cannot get evicts (preempts, recompute) resident
   requests that are not scheduled this step and score lower, lowest first; when that is not
   enough a prefill chunk shrinks to the blocks it can have, and a decode waits.
4. A waiting request is admitted only when the blocks of its whole prefill fit the free blocks
   after what is planned so far, minus the blocks the rest of the partial prefills will take,
   minus ``kv_reserve`` x capacity (Sarathi's and SLAI's gate), its score is at least
   ``admit_threshold``, and the sequence cap allows; the first waiting request that fails stops
   admission for the step (head-of-line, as vLLM and Sarathi do). A waiting request never evicts.
   Reserve and threshold are waived while nothing is resident, so the engine never idles with
   work queued.
5. Progress: when that leaves the batch empty while requests are resident, the highest-scored
   resident request that fits runs anyway (a rule cannot stall the engine).

Every rule gives a feasible plan by construction (tested with hypothesis). FCFS, SJF, EDF,
Sarathi- and SLAI-like orders are points of this space (``HEURISTIC_RULES``; reproduction
tolerances in ``tests/test_priority.py``). Units: tokens, blocks, seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from .plan import BatchPlan
from .request import RUNNING

#: Per-request features, in the order of ``Rule.weights``. All are scale-free (flags, fractions,
#: slack relative to the request's own target, log-lengths), so a rule means the same on a small
#: cache and on a full GPU's.
REQUEST_FEATURES: tuple[str, ...] = (
    "waiting",           # 1 if in the waiting queue (new or preempted)
    "decoding",          # 1 if running and past its prefill
    "partial_prefill",   # 1 if running and still prefilling (a chunk from an earlier step)
    "due",               # 1 if decoding and its next token is due: now >= last token + TBT target - theta x mean batch
    "tbt_slack",         # decoding: (last token + TBT target - now) / TBT target, clipped to [-1, 4]; else 0
    "ttft_slack",        # no first token yet: (arrival + TTFT target - now) / TTFT target, clipped to [-1, 4]; else 0
    "late",              # 1 if its SLO is already certainly missed (TTFT passed, or enough TBT misses)
    "ttft_at_risk",      # 1 if no first token, not late, and under theta mean batches of TTFT slack left
    "priority",          # the request's priority value (lower = more important), clipped to [0, 4]
    "queue_pos",         # arrival rank among the visible requests / (count - 1): 0 oldest, 1 newest
    "prefill_left",      # log2(1 + prefill tokens left) / 16
    "prefill_progress",  # computed tokens / prefill target (1 when decoding)
    "predicted_output",  # log2(1 + predicted output tokens, else max_tokens) / 16
    "context",           # log2(1 + tokens with resident KV) / 16
    "preempted",         # 1 if preempted before
)
NUM_FEATURES = len(REQUEST_FEATURES)
_F = {name: i for i, name in enumerate(REQUEST_FEATURES)}


@dataclass(frozen=True)
class Rule:
    """A point of the action space: request-score weights and three global knobs.

    Attributes:
        weights: one weight per ``REQUEST_FEATURES`` entry; score = weights . features.
        token_budget: tokens per step (capped by the engine's ``max_num_batched_tokens``).
        kv_reserve: share of the KV cache kept free at admission, in [0, 1).
        admit_threshold: lowest score a waiting request needs to be admitted (-inf: none).
    """

    weights: tuple[float, ...]
    token_budget: int = 512
    kv_reserve: float = 0.01
    admit_threshold: float = -math.inf

    def __post_init__(self) -> None:
        if len(self.weights) != NUM_FEATURES:
            raise ValueError(f"Rule needs {NUM_FEATURES} weights ({', '.join(REQUEST_FEATURES)}), "
                             f"got {len(self.weights)}")
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"Rule weights must be finite, got {self.weights}")
        if not isinstance(self.token_budget, int) or self.token_budget < 1:
            raise ValueError(f"token_budget={self.token_budget!r} must be an integer >= 1 (tokens)")
        if not 0.0 <= self.kv_reserve < 1.0:
            raise ValueError(f"kv_reserve={self.kv_reserve!r} must be a share of the cache in [0, 1)")
        if math.isnan(self.admit_threshold):
            raise ValueError("admit_threshold is NaN")

    @classmethod
    def of(cls, weights: Mapping[str, float], **knobs) -> "Rule":
        """A rule from named weights (the rest 0), e.g. ``Rule.of({"queue_pos": -1})``."""
        unknown = set(weights) - set(_F)
        if unknown:
            raise ValueError(f"unknown request feature(s) {sorted(unknown)}; known: {', '.join(REQUEST_FEATURES)}")
        w = [0.0] * NUM_FEATURES
        for name, value in weights.items():
            w[_F[name]] = float(value)
        return cls(tuple(w), **knobs)

    def named_weights(self) -> dict[str, float]:
        return dict(zip(REQUEST_FEATURES, self.weights))


def _log16(n: float) -> float:
    return math.log2(1.0 + n) / 16.0


def request_features(req, now_s: float, rank: float, late: bool, due_slack_s: float) -> list[float]:
    """The ``REQUEST_FEATURES`` of one request (a list in that order).

    Args:
        req: an engine request (``llmsched_env.request.Request`` or a view with its fields).
        now_s: the engine clock, seconds.
        rank: ``queue_pos`` (0 oldest .. 1 newest of the visible requests).
        late: whether its SLO is already certainly missed (``agent.SLOTracker``).
        due_slack_s: theta x mean batch time, seconds (how early a decode counts as due).
    """
    running = req.status == RUNNING
    target = req.prefill_target
    computed = req.num_computed
    left = target - computed
    decoding = running and left <= 0
    tt = req.token_times
    f = [0.0] * NUM_FEATURES
    if not running:
        f[0] = 1.0
    elif decoding:
        f[1] = 1.0
    else:
        f[2] = 1.0
    if decoding and tt:
        slack = tt[-1] + req.tbt_slo_s - now_s
        f[3] = 1.0 if slack <= due_slack_s else 0.0
        f[4] = min(4.0, max(-1.0, slack / req.tbt_slo_s)) if req.tbt_slo_s < math.inf else 4.0
    if not tt:
        slack = req.arrival_s + req.ttft_slo_s - now_s
        f[5] = min(4.0, max(-1.0, slack / req.ttft_slo_s)) if req.ttft_slo_s < math.inf else 4.0
        f[7] = 1.0 if (not late and slack < due_slack_s) else 0.0
    f[6] = 1.0 if late else 0.0
    f[8] = min(4.0, max(0.0, float(req.priority)))
    f[9] = rank
    f[10] = _log16(max(left, 0))
    f[11] = min(1.0, computed / target) if target > 0 else 1.0
    pred = req.predicted_output_len if req.predicted_output_len is not None else req.max_tokens
    f[12] = _log16(pred) if pred is not None else 1.0
    f[13] = _log16(computed)
    f[14] = 1.0 if req.num_preemptions else 0.0
    return f


def running_state(engine) -> list[tuple]:
    """``(request, num_computed, prefill_target, num_blocks)`` of each running request in
    admission order. Read once per engine step and passed on: an engine view (the vLLM hook's)
    computes these fields on each read."""
    return [(r, r.num_computed, r.prefill_target, r.num_blocks) for r in engine.running.values()]


class PriorityPlanner:
    """Turns a ``Rule`` into a feasible BatchPlan on any engine view (see the module docstring).

    The view needs ``running`` (dict in admission order), ``iter_waiting()`` (queue order),
    ``free_blocks``, ``config`` (``block_size``, ``num_kv_blocks``, ``max_num_batched_tokens``,
    ``max_num_seqs``) and ``now_s``; the Engine and the vLLM hook's view both have them.
    """

    #: skip scoring waiting requests in a step where none can be admitted (``_admission_closed``)
    skip_closed_queue = True

    def scores(self, engine, rule: Rule, late: Callable[[object], bool], due_slack_s: float,
               waiting: bool = True) -> list[tuple]:
        """``(score, position, request)`` for every visible request, best first, ties by position
        (with ``waiting=False`` the running ones only, their ``queue_pos`` still among every
        visible request). ``position`` is the request's index in running (admission order) then
        waiting (queue order), so ``position < len(engine.running)`` is a running request."""
        ranked = self._ranked(engine, running_state(engine), rule, late, due_slack_s, waiting)
        return [(-neg, i, r) for neg, i, r in ranked]

    @staticmethod
    def _ranked(engine, running: list[tuple], rule: Rule, late: Callable[[object], bool],
                due_slack_s: float, waiting: bool) -> list[tuple]:
        """``scores`` as ``(-score, position, request)``, best first, with the running requests'
        state as ``running_state`` read it."""
        now = engine.now_s
        n_run = len(running)
        queue = list(engine.iter_waiting())
        n = n_run + len(queue)
        if n == 0:
            return []
        keys = [(row[0].arrival_s, row[0].rid) for row in running] + [(r.arrival_s, r.rid) for r in queue]
        rank = [0.0] * n
        denom = max(1, n - 1)
        for pos, i in enumerate(sorted(range(n), key=keys.__getitem__)):
            rank[i] = pos / denom
        rows = running + [(r, r.num_computed, r.prefill_target, 0) for r in queue] if waiting else running
        # request_features inlined (the hot loop of every engine step; tested equal to it), its
        # min/max clips as comparisons (the same numbers, without the builtin calls); the
        # running requests come first in ``rows``, so ``i < n_run`` is ``status == RUNNING``
        (w_wait, w_dec, w_part, w_due, w_tbt, w_ttft, w_late, w_risk, w_prio, w_rank, w_left, w_prog,
         w_pred, w_ctx, w_pre) = rule.weights
        log2, inf = math.log2, math.inf
        out = []
        for i, (r, computed, target, _) in enumerate(rows):
            left = target - computed
            tt = r.token_times
            is_late = late(r)
            s = w_rank * rank[i]
            if i >= n_run:
                s += w_wait
            elif left <= 0:
                s += w_dec
                if tt:
                    tbt = r.tbt_slo_s
                    slack = tt[-1] + tbt - now
                    if slack <= due_slack_s:
                        s += w_due
                    f = slack / tbt if tbt < inf else 4.0
                    s += w_tbt * ((f if f < 4.0 else 4.0) if f > -1.0 else -1.0)
            else:
                s += w_part
            if not tt:
                ttft = r.ttft_slo_s
                slack = r.arrival_s + ttft - now
                f = slack / ttft if ttft < inf else 4.0
                s += w_ttft * ((f if f < 4.0 else 4.0) if f > -1.0 else -1.0)
                if not is_late and slack < due_slack_s:
                    s += w_risk
            if is_late:
                s += w_late
            prio = r.priority
            s += w_prio * (0.0 if prio <= 0 else 4.0 if prio >= 4 else float(prio))
            if left > 0:
                s += w_left * log2(1.0 + left) / 16.0
            s += w_prog * ((computed / target if computed < target else 1.0) if target > 0 else 1.0)
            pred = r.predicted_output_len
            if pred is None:
                pred = r.max_tokens
            s += w_pred * (log2(1.0 + pred) / 16.0 if pred is not None else 1.0)
            if computed:
                s += w_ctx * log2(1.0 + computed) / 16.0
            if r.num_preemptions:
                s += w_pre
            out.append((-s, i, r))
        out.sort()  # best first, ties by position (positions are distinct: requests are never compared)
        return out

    def plan(self, engine, rule: Rule, late: Callable[[object], bool] = lambda r: False,
             due_slack_s: float = 0.0, running: Optional[list[tuple]] = None) -> BatchPlan:
        """The plan ``rule`` means for ``engine`` now. ``late(request)``: whether its SLO is
        already certainly missed; ``due_slack_s``: how early a decode counts as due, seconds;
        ``running``: ``running_state(engine)`` when already read this step."""
        cfg = engine.config
        bs = cfg.block_size
        budget = min(rule.token_budget, cfg.max_num_batched_tokens)
        if running is None:
            running = running_state(engine)
        n_run = len(running)
        closed = self.skip_closed_queue and self._admission_closed(engine, budget, running)
        ranked = self._ranked(engine, running, rule, late, due_slack_s, waiting=not closed)
        free = engine.free_blocks
        resident = n_run
        reserve = int(rule.kv_reserve * cfg.num_kv_blocks) if resident else 0
        threshold = rule.admit_threshold if resident else -math.inf
        tokens: dict[int, int] = {}
        preempt: set[int] = set()
        # residents that may still be evicted, lowest score last (popped from the end)
        evictable = [running[i] for _, i, _ in ranked if i < n_run]
        pos = {row[0].rid: k for k, row in enumerate(evictable)}
        # blocks the rest of each partial prefill will take (held back from admissions)
        promise = {r.rid: -(-target // bs) - blocks
                   for r, computed, target, blocks in running if computed < target}
        promised = sum(promise.values())
        used = 0
        admitting = True

        def evict_below(k: int, need: int) -> int:
            """Preempt unscheduled residents ranked below position ``k`` until ``need`` blocks
            are free (or none is left); returns the free blocks."""
            nonlocal free, resident, promised
            while free < need and len(evictable) > k + 1:
                victim, _, _, victim_blocks = evictable.pop()
                if victim.rid in tokens or victim.rid in preempt:
                    continue
                preempt.add(victim.rid)
                free += victim_blocks
                promised -= promise.pop(victim.rid, 0)
                resident -= 1
            return free

        for neg_score, i, req in ranked:
            if used >= budget:
                break
            rid = req.rid
            if rid in preempt:
                continue
            if i < n_run:
                _, computed, target, blocks = running[i]
                left = target - computed
                n = min(left, budget - used) if left > 0 else 1
                need = -(-(computed + n) // bs) - blocks
                if need > free:
                    evict_below(pos[rid], need)
                if need > free:
                    if left <= 0:
                        continue
                    n = min(n, (blocks + free) * bs - computed)
                    if n < 1:
                        continue
                    need = -(-(computed + n) // bs) - blocks
                tokens[rid] = n
                used += n
                free -= need
                if rid in promise:
                    kept = min(need, promise[rid])
                    promise[rid] -= kept
                    promised -= kept
            elif admitting:
                computed = req.num_computed  # > 0 for a request swapped out with its KV
                target = req.prefill_target
                gate = -(-max(target, computed + 1) // bs)
                n = min(target - computed if target > computed else 1, budget - used)  # tokens_owed
                if (-neg_score < threshold or free - promised - gate < reserve or resident >= cfg.max_num_seqs
                        or n < 1):
                    admitting = False
                    continue
                tokens[rid] = n
                used += n
                resident += 1
                taken = -(-(computed + n) // bs)
                free -= taken
                promised += gate - taken
                reserve = int(rule.kv_reserve * cfg.num_kv_blocks)
                threshold = rule.admit_threshold
        if not tokens and n_run:
            self._progress(engine, running, ranked, preempt, tokens, budget)
        return BatchPlan(tokens, preempt)

    @staticmethod
    def _admission_closed(engine, budget: int, running: list[tuple]) -> bool:
        """True when no waiting request can be admitted this step, whatever the rule: every
        sequence slot is taken, and the free blocks cover what each running request could take
        (its rest of prefill up to the budget, or one decode token), so no eviction can open a
        slot. The plan is then the same without scoring the queue (tested), which keeps a step
        O(running) on a server with a long queue, as vLLM's own scheduler is. ``running`` is
        ``running_state(engine)``."""
        if len(running) < engine.config.max_num_seqs:
            return False
        bs = engine.config.block_size
        room = engine.free_blocks
        for _, computed, target, blocks in running:
            left = target - computed
            room -= -(-(computed + (min(left, budget) if left > 0 else 1)) // bs) - blocks
            if room < 0:
                return False
        return True

    @staticmethod
    def _progress(engine, running, ranked, preempt, tokens, budget) -> None:
        """Schedule the best resident request that fits without eviction (rule 5)."""
        bs = engine.config.block_size
        n_run = len(running)
        free = engine.free_blocks + sum(blocks for r, _, _, blocks in running if r.rid in preempt)
        for _, i, req in ranked:
            if i >= n_run or req.rid in preempt:
                continue
            _, computed, target, blocks = running[i]
            left = target - computed
            n = min(left, budget) if left > 0 else 1
            n = min(n, (blocks + free) * bs - computed)
            if n >= 1:
                tokens[req.rid] = n
                return


#: Heuristic orders as rules (weights by feature name). Reproduction tolerances against the real
#: schedulers are tested in tests/test_priority.py.
HEURISTIC_RULES: dict[str, Rule] = {
    # vLLM/Sarathi FCFS with a large budget: running first, then the queue, oldest first
    "fcfs": Rule.of({"decoding": 4, "partial_prefill": 4, "queue_pos": -2}, token_budget=8192),
    # earliest deadline first: least TTFT / TBT slack (relative to the target) first
    "edf": Rule.of({"tbt_slack": -1, "ttft_slack": -1, "queue_pos": -0.01}, token_budget=8192),
    # Sarathi-Serve: decodes, then partial prefills, then arrivals, FCFS, 512-token chunks
    "sarathi": Rule.of({"decoding": 4, "partial_prefill": 3, "queue_pos": -1}, token_budget=512),
    # SLAI: due decodes, partial prefills, new requests by tier then prompt length, the other decodes
    "slai": Rule.of({"decoding": -2, "due": 5, "tbt_slack": -0.1, "partial_prefill": 2.5, "waiting": 1.5,
                     "priority": -1, "prefill_left": -0.5}, token_budget=512),
}
