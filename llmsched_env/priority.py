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
        """``(score, tiebreak, request)`` for every visible request, best first (with
        ``waiting=False`` the running ones only, their ``queue_pos`` still among every visible
        request)."""
        now = engine.now_s
        n_run = len(engine.running)
        visible = [*engine.running.values(), *engine.iter_waiting()]
        n = len(visible)
        if n == 0:
            return []
        reqs = visible if waiting else visible[:n_run]
        keys = [(r.arrival_s, r.rid) for r in visible]
        rank = [0.0] * n
        denom = max(1, n - 1)
        for pos, i in enumerate(sorted(range(n), key=keys.__getitem__)):
            rank[i] = pos / denom
        # request_features inlined (the hot loop of every engine step; tested equal to it); the
        # running requests come first in ``reqs``, so ``i < n_run`` is ``status == RUNNING``
        (w_wait, w_dec, w_part, w_due, w_tbt, w_ttft, w_late, w_risk, w_prio, w_rank, w_left, w_prog,
         w_pred, w_ctx, w_pre) = rule.weights
        log2, inf = math.log2, math.inf
        out = []
        for i, r in enumerate(reqs):
            target = r.prefill_target
            computed = r.num_computed
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
                    s += w_tbt * (min(4.0, max(-1.0, slack / tbt)) if tbt < inf else 4.0)
            else:
                s += w_part
            if not tt:
                ttft = r.ttft_slo_s
                slack = r.arrival_s + ttft - now
                s += w_ttft * (min(4.0, max(-1.0, slack / ttft)) if ttft < inf else 4.0)
                if not is_late and slack < due_slack_s:
                    s += w_risk
            if is_late:
                s += w_late
            prio = r.priority
            s += w_prio * (0.0 if prio <= 0 else 4.0 if prio >= 4 else float(prio))
            if left > 0:
                s += w_left * log2(1.0 + left) / 16.0
            s += w_prog * (min(1.0, computed / target) if target > 0 else 1.0)
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
        return [(-ns, i, r) for ns, i, r in out]

    def plan(self, engine, rule: Rule, late: Callable[[object], bool] = lambda r: False,
             due_slack_s: float = 0.0) -> BatchPlan:
        cfg = engine.config
        bs = cfg.block_size
        budget = min(rule.token_budget, cfg.max_num_batched_tokens)
        running = engine.running
        closed = self.skip_closed_queue and self._admission_closed(engine, budget)
        ranked = self.scores(engine, rule, late, due_slack_s, waiting=not closed)
        free = engine.free_blocks
        resident = len(running)
        reserve = int(rule.kv_reserve * cfg.num_kv_blocks) if resident else 0
        threshold = rule.admit_threshold if resident else -math.inf
        tokens: dict[int, int] = {}
        preempt: set[int] = set()
        # residents that may still be evicted, lowest score last (popped from the end)
        evictable = [r for _, _, r in ranked if r.rid in running]
        pos = {r.rid: k for k, r in enumerate(evictable)}
        # blocks the rest of each partial prefill will take (held back from admissions)
        promise = {}
        for r in running.values():
            target = r.prefill_target
            if r.num_computed < target:
                promise[r.rid] = -(-target // bs) - r.num_blocks
        promised = sum(promise.values())
        used = 0
        admitting = True

        def evict_below(k: int, need: int) -> int:
            """Preempt unscheduled residents ranked below position ``k`` until ``need`` blocks
            are free (or none is left); returns the free blocks."""
            nonlocal free, resident, promised
            while free < need and len(evictable) > k + 1:
                victim = evictable.pop()
                if victim.rid in tokens or victim.rid in preempt:
                    continue
                preempt.add(victim.rid)
                free += victim.num_blocks
                promised -= promise.pop(victim.rid, 0)
                resident -= 1
            return free

        for score, _, req in ranked:
            if used >= budget:
                break
            rid = req.rid
            if rid in preempt:
                continue
            if rid in running:
                left = req.prefill_target - req.num_computed
                n = min(left, budget - used) if left > 0 else 1
                need = -(-(req.num_computed + n) // bs) - req.num_blocks
                if need > free:
                    evict_below(pos[rid], need)
                if need > free:
                    if left <= 0:
                        continue
                    n = min(n, (req.num_blocks + free) * bs - req.num_computed)
                    if n < 1:
                        continue
                    need = -(-(req.num_computed + n) // bs) - req.num_blocks
                tokens[rid] = n
                used += n
                free -= need
                if rid in promise:
                    kept = min(need, promise[rid])
                    promise[rid] -= kept
                    promised -= kept
            elif admitting:
                computed = req.num_computed  # > 0 for a request swapped out with its KV
                gate = -(-max(req.prefill_target, computed + 1) // bs)
                n = min(req.tokens_owed, budget - used)
                if (score < threshold or free - promised - gate < reserve or resident >= cfg.max_num_seqs
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
        if not tokens and running:
            self._progress(engine, ranked, preempt, tokens, budget)
        return BatchPlan(tokens, preempt)

    @staticmethod
    def _admission_closed(engine, budget: int) -> bool:
        """True when no waiting request can be admitted this step, whatever the rule: every
        sequence slot is taken, and the free blocks cover what each running request could take
        (its rest of prefill up to the budget, or one decode token), so no eviction can open a
        slot. The plan is then the same without scoring the queue (tested), which keeps a step
        O(running) on a server with a long queue, as vLLM's own scheduler is."""
        running = engine.running
        if len(running) < engine.config.max_num_seqs:
            return False
        bs = engine.config.block_size
        room = engine.free_blocks
        for r in running.values():
            computed = r.num_computed
            left = r.prefill_target - computed
            room -= -(-(computed + (min(left, budget) if left > 0 else 1)) // bs) - r.num_blocks
            if room < 0:
                return False
        return True

    @staticmethod
    def _progress(engine, ranked, preempt, tokens, budget) -> None:
        """Schedule the best resident request that fits without eviction (rule 5)."""
        bs = engine.config.block_size
        free = engine.free_blocks + sum(engine.running[rid].num_blocks for rid in preempt)
        for _, _, req in ranked:
            if req.rid not in engine.running or req.rid in preempt:
                continue
            left = req.prefill_target - req.num_computed
            n = min(left, budget) if left > 0 else 1
            n = min(n, (req.num_blocks + free) * bs - req.num_computed)
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
