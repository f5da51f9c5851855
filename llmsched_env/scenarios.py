"""Named environment scenarios, as data: the preset, the workload source, the SLO tiers, the GPU
cost weight lambda, the agent interface's settings and the episode limit.

A scenario is one ``Scenario`` value in ``SCENARIOS``; add one by adding one ``_add`` line. Every
field can be overridden by keyword when the environment is built (``ServingEnv(scenario,
**overrides)``).

The default scenario ("default", registered as ``llmsched/Serving-v1``) is chosen for learning:
  * short episodes: 100 requests with splitwise_conv trace lengths (prompt + output <= 8,192
    tokens), Poisson arrivals at a rate drawn per episode from 5-8 requests/s: about 2,300
    engine steps and 350 agent decisions per episode;
  * scheduling decisions matter: the KV cache is cut to 1,024 blocks (16k tokens, room for about
    a dozen average conversations) so admission and preemption trade off; the load is near the
    replica's saturation; two tiers, strict (TTFT 0.5 s, TBT 60 ms, half the requests, priority
    0) and relaxed (TTFT 4 s, TBT 200 ms, priority 1), make ordering and chunk size (the TBT of
    the decodes sharing a step) matter. Over reset seeds 0-5 (``eval/env_baselines.py``): FCFS
    the heuristics differ widely and none is near 1 (``eval/env_baselines.py`` prints them);
  * lambda = 0.5 satisfied requests per GPU-second: a GPU-second costs half a satisfied request,
    so the cost term (about -10 per episode, ~20 GPU-s) is visible next to the SLO term (up to
    100) without dominating it; wasted work (recompute, idle-free padding) shows up in it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from .agent import AgentSpec
from .workload import DEFAULT_SLO, SLOClass, WorkloadConfig

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
        max_num_seqs: most running requests (None = the preset's, 256 as vLLM's default).
        workload: the request source; its ``seed`` and (for a trace window) ``window_start`` are
            redrawn every episode from the reset seed.
        rate_range: (low, high) of the arrival rate drawn uniformly per episode: requests/s for
            poisson/gamma arrivals, the trace's ``rate_scale`` for trace arrivals (None = keep
            the workload's).
        lam: GPU cost weight lambda, satisfied requests per GPU-second (>= 0).
        agent: the agent interface's settings (action scaling, decision points;
            ``llmsched_env.agent.AgentSpec``).
        max_steps: episode truncation, engine steps (not decisions).
        variants: override mappings (of the fields above) of which the env draws one per episode
            at reset, uniformly (engine limits, workload, rates); () = this scenario only.
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
    agent: AgentSpec = field(default_factory=AgentSpec)
    max_steps: int = 10_000
    variants: tuple[dict, ...] = ()

    def check(self) -> None:
        """Raise ValueError naming every bad field."""
        errs = []
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
        if not isinstance(self.agent, AgentSpec):
            errs.append(f"agent must be an AgentSpec, not {type(self.agent).__name__}")
        else:
            try:
                self.agent.check()
            except ValueError as e:
                errs.append(str(e))
        for k, v in enumerate(self.variants):
            if not isinstance(v, dict):
                errs.append(f"variants[{k}] must be a mapping of scenario fields")
                continue
            bad = set(v) - set(self.__dataclass_fields__) - {"name", "description"} | ({"variants"} & set(v))
            if bad:
                errs.append(f"variants[{k}] has unknown or nested field(s) {sorted(bad)}")
                continue
            try:
                replace(self, variants=(), **v).check()
            except ValueError as e:
                errs.append(f"variants[{k}]: {e}")
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


SCENARIOS: dict[str, Scenario] = {}


def _add(s: Scenario, env_id: str) -> None:
    s.check()
    SCENARIOS[s.name] = s
    ENV_IDS[s.name] = env_id


ENV_IDS: dict[str, str] = {}
_BASE = Scenario("default", "near-saturation Poisson load, small KV cache, strict + relaxed tiers")
_add(_BASE, "llmsched/Serving-v1")
_add(_BASE.with_(name="light", description="light load (2-3 req/s): little contention",
                 rate_range=(2.0, 3.0)), "llmsched/Serving-Light-v1")
_add(_BASE.with_(name="heavy", description="overload (9-12 req/s): not every request can meet its SLO",
                 rate_range=(9.0, 12.0)), "llmsched/Serving-Heavy-v1")
_add(_BASE.with_(name="strict", description="every request in the strict tier",
                 workload=_BASE.workload.with_(slo_classes=(replace(STRICT_TIER, weight=1.0),))),
     "llmsched/Serving-Strict-v1")
_add(_BASE.with_(name="relaxed", description="every request in the relaxed tier",
                 workload=_BASE.workload.with_(slo_classes=(replace(RELAXED_TIER, weight=1.0),))),
     "llmsched/Serving-Relaxed-v1")
_add(_BASE.with_(name="trace", description="a random window of the splitwise_conv trace with its "
                 "own arrival times, rate scale 1.0-1.5 (5.5-8.3 req/s on average)",
                 workload=_BASE.workload.with_(arrival="trace"), rate_range=(1.0, 1.5)),
     "llmsched/Serving-Trace-v1")
_FULL_GPU = _BASE.workload.with_(num_requests=300)
_ONE_TIER = (DEFAULT_SLO,)  # the CLI's default: TTFT 2 s, TBT 100 ms
_add(_BASE.with_(name="mixed", description="one of five engines and workloads per episode: default, heavy, the "
                 "preset's whole KV cache at 10-40 req/s with two tiers or one, one tier on the small cache",
                 variants=({}, {"rate_range": (9.0, 12.0)},
                           {"num_kv_blocks": None, "rate_range": (10.0, 40.0), "workload": _FULL_GPU},
                           {"num_kv_blocks": None, "rate_range": (10.0, 40.0),
                            "workload": _FULL_GPU.with_(slo_classes=_ONE_TIER)},
                           {"rate_range": (4.0, 10.0), "workload": _BASE.workload.with_(slo_classes=_ONE_TIER)})),
     "llmsched/Serving-Mixed-v1")


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    return SCENARIOS[name]


def list_scenarios() -> list[str]:
    return sorted(SCENARIOS)
