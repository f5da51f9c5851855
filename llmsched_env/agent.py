"""The agent interface: one object that the env, the learned-policy schedulers and the vLLM hook
share — SLO bookkeeping, the observation, the action decoder and the decision points.

**Action.** A vector in ``[-1, 1]^18`` (``ACTION_FIELDS``) that ``AgentSpec.rule_of`` maps to a
``priority.Rule``: 15 request-score weights (``weight_scale`` x a), the token budget (log-uniform
in ``budget_range``), the KV reserve (``max_reserve`` x (a + 1) / 2) and the admission threshold
(``weight_scale`` x a). The rule holds until the next decision; every engine step in between is
planned from it by ``priority.PriorityPlanner``, so every action is feasible by construction.
A veto of a request is a special case (a threshold above its score), not a second decoder.

**Decision points.** ``AgentInterface.sync`` is called before every engine step and says whether
the agent must decide: at the first step, when the number of running, waiting or prefilling
requests changed since the last decision (an arrival, a finish, an admission, a prefill that
completed, a preemption), or after ``max_interval`` steps without one.

**Observation.** 22 scale-free summaries of the engine (``OBS_FEATURES``; fractions of the KV
cache, of the sequence cap, of the visible requests; slack relative to each request's target;
log counts), in ``[-1, 4]``. Nothing grows with uptime or episode progress, and every resident
and waiting request is summarised (there is no slot cap), so a policy trained on a small cache
runs on a full GPU's cache with hundreds of running requests.

**SLO bookkeeping** (``SLOTracker``): the mean batch time (an EMA, seconds) and which requests
have certainly missed their SLO (TTFT passed; or enough TBT gaps over target that the P99 misses
for any output length up to ``max_tokens``), updated from token times in O(batch) per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .priority import NUM_FEATURES, REQUEST_FEATURES, PriorityPlanner, Rule, running_state
from .reward import TBT_MARGIN, SLOReward

ACTION_FIELDS: tuple[str, ...] = (*(f"w_{n}" for n in REQUEST_FEATURES), "token_budget", "kv_reserve",
                                  "admit_threshold")
ACTION_DIM = len(ACTION_FIELDS)

OBS_FEATURES: tuple[str, ...] = (
    "kv_used",            # used blocks / KV capacity
    "kv_promised",        # blocks the rest of partial prefills will take / capacity
    "running_frac",       # running requests / max_num_seqs
    "running_log",        # log2(1 + running) / 8
    "waiting_log",        # log2(1 + waiting) / 8
    "prefilling_frac",    # running requests still prefilling / running
    "due_frac",           # decodes whose next token is due / decodes
    "late_frac",          # visible requests that certainly miss their SLO / visible
    "at_risk_frac",       # requests without a first token close to their TTFT target / those without one
    "waiting_priority",   # mean priority value of waiting requests (clipped to 4) / 4
    "waiting_tokens_log",  # log2(1 + prefill tokens waiting) / 16
    "waiting_kv",         # blocks the waiting prefills need / KV capacity (clipped to 4)
    "ttft_slack_min",     # least TTFT slack (relative to target) of requests without a first token
    "ttft_slack_mean",    # mean of the same
    "tbt_slack_min",      # least TBT slack (relative to target) of decodes
    "tbt_slack_mean",     # mean of the same
    "batch_vs_tbt",       # mean batch time / mean TBT target of the decodes (clipped to 4)
    "last_vs_mean",       # last step latency / mean batch time (clipped to 4)
    "preempted_frac",     # waiting requests preempted before / waiting
    "prefill_progress",   # mean computed / target of partial prefills
    "decodes_log",        # log2(1 + decodes) / 8
    "strict_running",     # running requests with priority 0 / running
)
OBS_LOW, OBS_HIGH = -1.0, 4.0


@dataclass(frozen=True)
class AgentSpec:
    """How actions map to rules, and when the agent is asked.

    Attributes:
        weight_scale: a weight (and the threshold) is ``weight_scale`` x its action entry.
        budget_range: (low, high) token budget, tokens; the action maps log-uniformly.
        max_reserve: the largest KV reserve, a share of the cache.
        theta: a decode is due ``theta`` mean batch times before its TBT deadline (SLAI's Theta).
        max_interval: most engine steps between decisions.
        batch_ema: weight of the newest batch in the mean batch time (an EMA).
    """

    weight_scale: float = 5.0
    budget_range: tuple[int, int] = (64, 8192)
    max_reserve: float = 0.2
    theta: float = 5.0
    max_interval: int = 16
    batch_ema: float = 0.05

    def check(self) -> None:
        lo, hi = self.budget_range
        errs = []
        if not self.weight_scale > 0:
            errs.append(f"weight_scale={self.weight_scale!r} must be > 0")
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo < hi):
            errs.append(f"budget_range={self.budget_range!r} must be integers 1 <= low < high (tokens)")
        if not 0 <= self.max_reserve < 1:
            errs.append(f"max_reserve={self.max_reserve!r} must be in [0, 1)")
        if not isinstance(self.max_interval, int) or self.max_interval < 1:
            errs.append(f"max_interval={self.max_interval!r} must be an integer >= 1 (engine steps)")
        if not 0 < self.batch_ema <= 1:
            errs.append(f"batch_ema={self.batch_ema!r} must be in (0, 1]")
        if self.theta < 0:
            errs.append(f"theta={self.theta!r} must be >= 0")
        if errs:
            raise ValueError("invalid AgentSpec: " + "; ".join(errs))

    def rule_of(self, action) -> Rule:
        """The rule an action means (entries are clipped to [-1, 1]; NaN is an error)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action has shape {np.shape(action)}; expected ({ACTION_DIM},): "
                             f"{', '.join(ACTION_FIELDS)}")
        if not np.isfinite(a).all():
            bad = [ACTION_FIELDS[i] for i in np.flatnonzero(~np.isfinite(a))]
            raise ValueError(f"action has non-finite entries: {', '.join(bad)}")
        a = np.clip(a, -1.0, 1.0)
        lo, hi = self.budget_range
        u = (a[NUM_FEATURES] + 1.0) / 2.0
        budget = int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))
        reserve = min(self.max_reserve * (a[NUM_FEATURES + 1] + 1.0) / 2.0, 0.999)
        return Rule(tuple(float(x) * self.weight_scale for x in a[:NUM_FEATURES]), budget, float(reserve),
                    float(a[NUM_FEATURES + 2]) * self.weight_scale)

    def action_of(self, rule: Rule) -> np.ndarray:
        """The action closest to ``rule`` (values outside the action's range are clipped)."""
        lo, hi = self.budget_range
        b = min(max(rule.token_budget, lo), hi)
        thr = rule.admit_threshold if math.isfinite(rule.admit_threshold) else -self.weight_scale
        a = [*(w / self.weight_scale for w in rule.weights),
             2.0 * (math.log(b) - math.log(lo)) / (math.log(hi) - math.log(lo)) - 1.0,
             2.0 * rule.kv_reserve / self.max_reserve - 1.0 if self.max_reserve > 0 else -1.0,
             thr / self.weight_scale]
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)


class SLOTracker:
    """Per-engine SLO bookkeeping a live server can keep (no true output lengths).

    Attributes:
        mean_batch_s: EMA of non-idle step latencies, seconds (0 before the first batch).
    """

    _PRUNE_EVERY = 256

    def __init__(self, spec: AgentSpec):
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        self.mean_batch_s = 0.0
        self._last_busy: float | None = None  # set at the first update: a live server's busy time so far is not a batch
        self._seen: dict[int, list] = {}  # rid -> [token times seen, TBT gaps over target, late]
        self._steps = 0

    def update(self, engine) -> None:
        """Account for what happened since the last call (call once per engine step)."""
        latency = engine.busy_s - self._last_busy if self._last_busy is not None else 0.0
        self._last_busy = engine.busy_s
        if latency > 0:
            a = self.spec.batch_ema
            self.mean_batch_s = latency if self.mean_batch_s == 0 else (1 - a) * self.mean_batch_s + a * latency
        seen = self._seen
        for r in engine.running.values():
            tt = r.token_times
            entry = seen.get(r.rid)
            if entry is None:
                entry = seen[r.rid] = [0, 0, False]
            n = len(tt)
            if n == entry[0] or entry[2]:
                entry[0] = n
                continue
            if entry[0] == 0 and n >= 1 and tt[0] - r.arrival_s > r.ttft_slo_s:
                entry[2] = True
            tbt = r.tbt_slo_s * TBT_MARGIN
            for k in range(max(entry[0], 1), n):
                if tt[k] - tt[k - 1] > tbt:
                    entry[1] += 1
            entry[0] = n
            if entry[1] and entry[1] >= SLOReward.gaps_to_miss(r.max_tokens or (1 << 30)):
                entry[2] = True
        self._steps += 1
        if self._steps % self._PRUNE_EVERY == 0:
            live = {*engine.running, *(r.rid for r in engine.iter_waiting())}
            self._seen = {rid: e for rid, e in seen.items() if rid in live}

    def late(self, req, now_s: float) -> bool:
        """True when ``req`` certainly misses its SLO."""
        return self.late_at(now_s)(req)

    def late_at(self, now_s: float) -> Callable[[object], bool]:
        """``late`` at ``now_s`` as a function of the request (what the planner calls per request),
        valid until the next ``update``."""
        seen = self._seen

        def late(req) -> bool:
            entry = seen.get(req.rid)
            if entry is not None and entry[2]:
                return True
            return not req.token_times and now_s - req.arrival_s > req.ttft_slo_s
        return late

    def due_slack_s(self) -> float:
        return self.spec.theta * self.mean_batch_s


def encode_observation(engine, tracker: SLOTracker, running: Optional[list[tuple]] = None) -> np.ndarray:
    """The ``OBS_FEATURES`` vector (float32, clipped to [OBS_LOW, OBS_HIGH]); ``running``:
    ``priority.running_state(engine)`` when already read this step."""
    if running is None:
        running = running_state(engine)
    cfg = engine.config
    cap = cfg.num_kv_blocks
    bs = cfg.block_size
    now = engine.now_s
    due_slack = tracker.due_slack_s()
    waiting = list(engine.iter_waiting())
    n_run, n_wait = len(running), len(waiting)
    promised = 0
    n_prefill = n_dec = n_due = n_strict = 0
    progress = 0.0
    tbt_slacks, tbt_targets = [], []
    for r, computed, target, blocks in running:
        if r.priority <= 0:
            n_strict += 1
        if computed < target:
            n_prefill += 1
            promised += -(-target // bs) - blocks
            progress += computed / target
        elif r.token_times:
            n_dec += 1
            tbt = r.tbt_slo_s
            if tbt < math.inf:
                slack = r.token_times[-1] + tbt - now
                n_due += slack <= due_slack
                tbt_slacks.append(slack / tbt)
                tbt_targets.append(tbt)
    ttft_slacks = []
    n_late = n_risk = n_nofirst = 0
    w_tokens = w_prio = n_pre = 0
    flagged = tracker._seen  # SLOTracker.late_at inlined (every visible request, every decision)
    inf = math.inf
    for r in (*(row[0] for row in running), *waiting):
        entry = flagged.get(r.rid)
        tt = r.token_times
        ttft = r.ttft_slo_s
        late = (entry is not None and entry[2]) or (not tt and now - r.arrival_s > ttft)
        n_late += late
        if not tt:
            n_nofirst += 1
            if ttft < inf:
                slack = r.arrival_s + ttft - now
                ttft_slacks.append(slack / ttft)
                n_risk += (not late) and slack < due_slack
    for r in waiting:
        w_tokens += r.prefill_target
        prio = r.priority
        w_prio += 0 if prio <= 0 else 4 if prio >= 4 else prio
        n_pre += r.num_preemptions > 0
    mean_b = tracker.mean_batch_s
    o = np.array([
        engine.used_blocks / cap,
        promised / cap,
        n_run / cfg.max_num_seqs,
        math.log2(1 + n_run) / 8,
        math.log2(1 + n_wait) / 8,
        n_prefill / n_run if n_run else 0.0,
        n_due / n_dec if n_dec else 0.0,
        n_late / (n_run + n_wait) if n_run + n_wait else 0.0,
        n_risk / n_nofirst if n_nofirst else 0.0,
        w_prio / (4 * n_wait) if n_wait else 0.0,
        math.log2(1 + w_tokens) / 16,
        (w_tokens / bs) / cap,
        min(ttft_slacks) if ttft_slacks else 4.0,
        sum(ttft_slacks) / len(ttft_slacks) if ttft_slacks else 4.0,
        min(tbt_slacks) if tbt_slacks else 4.0,
        sum(tbt_slacks) / len(tbt_slacks) if tbt_slacks else 4.0,
        mean_b * len(tbt_targets) / sum(tbt_targets) if tbt_targets else 0.0,
        engine.last_step_latency_s / mean_b if mean_b > 0 else 0.0,
        n_pre / n_wait if n_wait else 0.0,
        progress / n_prefill if n_prefill else 0.0,
        math.log2(1 + n_dec) / 8,
        n_strict / n_run if n_run else 0.0,
    ], dtype=np.float32)
    return np.clip(o, OBS_LOW, OBS_HIGH, out=o)


class AgentInterface:
    """Decision points, observation, action decoding and SLO bookkeeping for one engine.

    Use per engine step: ``if agent.sync(engine): agent.decide(policy(agent.observe(engine)))``,
    then ``engine.step(agent.plan(engine))``. ``reset()`` before a new workload.
    """

    def __init__(self, spec: AgentSpec = AgentSpec()):
        spec.check()
        self.spec = spec
        self.tracker = SLOTracker(spec)
        self.planner = PriorityPlanner()
        self.reset()

    def reset(self) -> None:
        self.tracker.reset()
        self.rule: Rule | None = None
        self._counts: tuple | None = None
        self._since = 0
        self.num_decisions = 0

    def sync(self, engine, running: Optional[list[tuple]] = None) -> bool:
        """Update the bookkeeping; True when a decision is due before this step. ``running`` here,
        in ``observe`` and in ``plan``: ``priority.running_state(engine)`` when already read this
        step (it is read once, not by each)."""
        self.tracker.update(engine)
        if running is None:
            running = running_state(engine)
        n_prefill = sum(1 for _, computed, target, _ in running if computed < target)
        counts = (len(running), engine.num_waiting, n_prefill)
        self._since += 1
        due = self.rule is None or counts != self._counts or self._since >= self.spec.max_interval
        if due:
            self._counts = counts
            self._since = 0
        return due

    def observe(self, engine, running: Optional[list[tuple]] = None) -> np.ndarray:
        return encode_observation(engine, self.tracker, running)

    def decide(self, action) -> Rule:
        """Adopt the rule ``action`` means until the next decision."""
        self.rule = self.spec.rule_of(action)
        self.num_decisions += 1
        return self.rule

    def adopt(self, rule: Rule) -> None:
        """Adopt a rule directly (a fixed rule, or a heuristic's)."""
        self.rule = rule
        self.num_decisions += 1

    def plan(self, engine, running: Optional[list[tuple]] = None):
        if self.rule is None:
            raise RuntimeError("AgentInterface.plan before any decision: call sync() and decide() first")
        tracker = self.tracker
        return self.planner.plan(engine, self.rule, tracker.late_at(engine.now_s), tracker.due_slack_s(), running)
