"""Named environment scenarios, as data: the preset, the workload source, the SLO tiers, the GPU
cost weight lambda, the slot count K, the chunk and budget choices, and the episode limit.

A scenario is one ``Scenario`` value in ``SCENARIOS``; add one by adding one ``_add`` line. Every
field can be overridden by keyword when the environment is built (``ServingEnv(scenario,
**overrides)``).

The default scenario ("default", registered as ``llmsched/Serving-v0``) is chosen for learning:
  * short episodes: 100 requests with splitwise_conv trace lengths (prompt + output <= 8,192
    tokens), Poisson arrivals at a rate drawn per episode from 5-8 requests/s: 1,600-2,400
    engine steps per episode (mean about 2,050);
  * scheduling decisions matter: the KV cache is cut to 1,024 blocks (16k tokens, room for about
    a dozen average conversations) so admission and preemption trade off; the load is near the
    replica's saturation; two tiers, strict (TTFT 0.5 s, TBT 60 ms, half the requests, priority
    0) and relaxed (TTFT 4 s, TBT 200 ms, priority 1), make ordering and chunk size (the TBT of
    the decodes sharing a step) matter. Over reset seeds 0-5 (``eval/env_baselines.py``): FCFS
    attains 0.68 of SLOs (return 58.7), vLLM v1 with the priority policy 0.79 (69.7), vLLM v1
    with a 256-token budget 0.71 (60.8): the heuristics differ and none is near 1;
  * lambda = 0.5 satisfied requests per GPU-second: a GPU-second costs half a satisfied request,
    so the cost term (about -10 per episode, ~20 GPU-s) is visible next to the SLO term (up to
    100) without dominating it; wasted work (recompute, idle-free padding) shows up in it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from .workload import SLOClass, WorkloadConfig

STRICT_TIER = SLOClass("strict", ttft_s=0.5, tbt_s=0.06, weight=0.5, priority=0)
RELAXED_TIER = SLOClass("relaxed", ttft_s=4.0, tbt_s=0.2, weight=0.5, priority=1)
TIERS = (STRICT_TIER, RELAXED_TIER)


@dataclass(frozen=True)
class Scenario:
    """Everything that defines an environment variant.

    Attributes:
        name: registry name.
        description: one line for humans.
        preset: engine preset name (``llmsched_env.presets``).
        num_kv_blocks: KV capacity override, blocks (None = the preset's).
        max_num_batched_tokens: per-step token budget, tokens (None = the preset's default 8192).
        max_num_seqs: most running requests (None = ``num_slots - waiting_slots``); must leave
            ``waiting_slots`` slots free for waiting requests, so it is capped at that value.
        workload: the request source; its ``seed`` and (for a trace window) ``window_start`` are
            redrawn every episode from the reset seed.
        rate_range: (low, high) of the arrival rate drawn uniformly per episode: requests/s for
            poisson/gamma arrivals, the trace's ``rate_scale`` for trace arrivals (None = keep
            the workload's).
        lam: GPU cost weight lambda, satisfied requests per GPU-second (>= 0).
        num_slots: K, request slots in the observation and action (>= 1).
        waiting_slots: slots always left for waiting requests (the running set is capped at
            ``num_slots - waiting_slots``), so the head of the queue is always visible.
        chunk_sizes: fixed prefill chunk choices, tokens (each >= 1).
        budget_levels: per-step token budgets the agent can choose, tokens; None in the tuple
            means the engine's ``max_num_batched_tokens``. "Fill" actions fill up to the chosen
            level.
        max_steps: episode truncation, environment (= engine) steps.
        hint: a heuristic scheduler spec (e.g. ``"slai"``) whose proposal for each step is part
            of the observation (keys ``hint_slots``, ``hint_budget``; ``llmsched_env.advice``),
            for residual learning: the policy sees what the heuristic would do. None = no hint.
        veto: a heuristic scheduler spec (e.g. ``"slai"``) that plans every step, the action
            saying only which slotted waiting requests it may not admit
            (``llmsched_env.veto``: admission control over a heuristic). None = the per-slot
            action of ``llmsched_env.action``.
    """

    name: str
    description: str = ""
    preset: str = "h100-llama3-8b"
    num_kv_blocks: Optional[int] = 1024
    max_num_batched_tokens: Optional[int] = None
    max_num_seqs: Optional[int] = None
    workload: WorkloadConfig = field(default_factory=lambda: WorkloadConfig(
        num_requests=100, arrival="poisson", rate=6.0, lengths="trace", trace="splitwise_conv",
        slo_classes=TIERS, oversize="drop", max_total_len=8192))
    rate_range: Optional[tuple[float, float]] = (5.0, 8.0)
    lam: float = 0.5
    num_slots: int = 32
    waiting_slots: int = 8
    chunk_sizes: tuple[int, ...] = (32, 128, 512, 2048)
    budget_levels: tuple[Optional[int], ...] = (256, 512, 1024, 2048, None)
    max_steps: int = 10_000
    hint: Optional[str] = None
    veto: Optional[str] = None

    def check(self) -> None:
        """Raise ValueError naming every bad field."""
        errs = []
        if not isinstance(self.num_slots, int) or self.num_slots < 1:
            errs.append(f"num_slots (K)={self.num_slots!r} must be an integer >= 1")
        elif not isinstance(self.waiting_slots, int) or not 0 <= self.waiting_slots < self.num_slots:
            errs.append(f"waiting_slots={self.waiting_slots!r} must be an integer in 0..num_slots-1 "
                        f"({self.num_slots - 1})")
        if not self.chunk_sizes:
            errs.append("chunk_sizes is empty; give at least one prefill chunk size in tokens")
        elif any(not isinstance(c, int) or c < 1 for c in self.chunk_sizes):
            errs.append(f"chunk_sizes={self.chunk_sizes!r} must be integers >= 1 (tokens)")
        elif len(set(self.chunk_sizes)) != len(self.chunk_sizes):
            errs.append(f"chunk_sizes={self.chunk_sizes!r} has duplicates")
        if not self.budget_levels:
            errs.append("budget_levels is empty; use (None,) for the engine's budget only")
        elif any(b is not None and (not isinstance(b, int) or b < 1) for b in self.budget_levels):
            errs.append(f"budget_levels={self.budget_levels!r} must be integers >= 1 or None")
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0 and self.lam == self.lam):
            errs.append(f"lam (lambda)={self.lam!r} must be a number >= 0 (requests per GPU-second)")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            errs.append(f"max_steps={self.max_steps!r} must be an integer >= 1")
        if self.rate_range is not None:
            lo, hi = self.rate_range
            if not 0 < lo <= hi:
                errs.append(f"rate_range={self.rate_range!r} must satisfy 0 < low <= high")
        if self.max_num_seqs is not None and (not isinstance(self.max_num_seqs, int) or self.max_num_seqs < 1):
            errs.append(f"max_num_seqs={self.max_num_seqs!r} must be an integer >= 1")
        for field_name in ("hint", "veto"):
            spec = getattr(self, field_name)
            if spec is not None:
                errs.extend(_heuristic_spec_errors(field_name, spec))
        if self.hint is not None and self.veto is not None:
            errs.append(f"hint={self.hint!r} and veto={self.veto!r} cannot be combined: the hint "
                        "encodes a proposal in the per-slot action, which a veto scenario does not use")
        if not isinstance(self.workload, WorkloadConfig):
            errs.append(f"workload must be a WorkloadConfig, not {type(self.workload).__name__}")
        if errs:
            raise ValueError(f"invalid scenario {self.name!r}: " + "; ".join(errs))

    def with_(self, **kw) -> "Scenario":
        unknown = set(kw) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown scenario field(s) {sorted(unknown)}; known: "
                            f"{sorted(self.__dataclass_fields__)}")
        return replace(self, **kw)


def _heuristic_spec_errors(field_name: str, spec) -> list[str]:
    """Why ``spec`` cannot name a heuristic scheduler (empty when it can)."""
    from .scheduler import available_schedulers, is_heuristic, parse_spec
    try:
        name = parse_spec(spec)[0]
    except ValueError as e:
        return [f"{field_name}={spec!r}: {e}"]
    if name not in available_schedulers():
        return [f"{field_name}={spec!r}: unknown scheduler {name!r}; known: {', '.join(available_schedulers())}"]
    if not is_heuristic(name):
        return [f"{field_name}={spec!r} must name a heuristic scheduler (not a learned policy or the optimal replay)"]
    return []


SCENARIOS: dict[str, Scenario] = {}


def _add(s: Scenario, env_id: str) -> None:
    s.check()
    SCENARIOS[s.name] = s
    ENV_IDS[s.name] = env_id


ENV_IDS: dict[str, str] = {}
_BASE = Scenario("default", "near-saturation Poisson load, small KV cache, strict + relaxed tiers")
_add(_BASE, "llmsched/Serving-v0")
_add(_BASE.with_(name="light", description="light load (2-3 req/s): little contention",
                 rate_range=(2.0, 3.0)), "llmsched/Serving-Light-v0")
_add(_BASE.with_(name="heavy", description="overload (9-12 req/s): not every request can meet its SLO",
                 rate_range=(9.0, 12.0)), "llmsched/Serving-Heavy-v0")
_add(_BASE.with_(name="strict", description="every request in the strict tier",
                 workload=_BASE.workload.with_(slo_classes=(replace(STRICT_TIER, weight=1.0),))),
     "llmsched/Serving-Strict-v0")
_add(_BASE.with_(name="relaxed", description="every request in the relaxed tier",
                 workload=_BASE.workload.with_(slo_classes=(replace(RELAXED_TIER, weight=1.0),))),
     "llmsched/Serving-Relaxed-v0")
_add(_BASE.with_(name="trace", description="a random window of the splitwise_conv trace with its "
                 "own arrival times, rate scale 1.0-1.5 (5.5-8.3 req/s on average)",
                 workload=_BASE.workload.with_(arrival="trace"), rate_range=(1.0, 1.5)),
     "llmsched/Serving-Trace-v0")


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    return SCENARIOS[name]


def list_scenarios() -> list[str]:
    return sorted(SCENARIOS)
