"""Evaluation suites as data: a preset, engine limits, a base workload, named variants of it, a
rate sweep and a seed count (``eval/suites/<name>.yaml``).

YAML fields (units: seconds, tokens, blocks, req/s):

    name, title, description
    preset: h100-llama3-8b            # llmsched_env.presets name
    engine: {num_kv_blocks, max_num_seqs, max_num_batched_tokens, block_size}   # optional
    workload: {...}                   # WorkloadConfig fields; slo_classes as a list of mappings
    variants: {name: {...}}           # optional: workload overrides, each swept over every rate
    rates: [...]                      # ascending: req/s (poisson/gamma) or trace rate scale
    table_rate: r                     # the rate of the per-scheduler tables and CDFs (default: middle)
    seeds: n                          # workload seeds 0..n-1 (shifted by --seed)
    optimal: {objective, time_limit_s, preemption}   # optional: solve each instance with CP-SAT
    quick: {rates, seeds, num_requests, optimal: {...}}   # the --quick overrides
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

from llmsched_env.workload import SLOClass, WorkloadConfig, load_trace

SUITE_DIR = Path(__file__).resolve().parent / "suites"
ENGINE_KEYS = ("num_kv_blocks", "max_num_seqs", "max_num_batched_tokens", "block_size")
TOP_KEYS = {"name", "title", "description", "preset", "engine", "workload", "variants", "rates", "table_rate",
            "seeds", "optimal", "quick"}
OPTIMAL_KEYS = {"objective", "time_limit_s", "preemption"}
QUICK_KEYS = {"rates", "seeds", "num_requests", "optimal"}
MAIN_VARIANT = "main"


class SuiteError(ValueError):
    """A suite that cannot be loaded (the message names the file and the field)."""


@dataclass(frozen=True)
class Suite:
    """One evaluation suite (see the module docstring). ``variants`` maps a name to its
    WorkloadConfig (seed 0; each run sets its own seed); a suite without variants has one,
    ``"main"``."""

    name: str
    title: str
    description: str
    preset: str
    engine: dict
    variants: dict
    rates: tuple
    table_rate: float
    seeds: int
    optimal: Optional[dict] = None
    source: str = ""
    quick: dict = field(default_factory=dict)

    @property
    def rate_unit(self) -> str:
        wl = next(iter(self.variants.values()))
        return "rate scale" if wl.arrival == "trace" else "req/s"

    @property
    def rate_label(self) -> str:
        return ("trace rate scale (x the trace's own pace)" if self.rate_unit == "rate scale"
                else "arrival rate (requests/s)")

    def workload(self, variant: str, rate: float, seed: int) -> WorkloadConfig:
        wl = self.variants[variant]
        wl = wl.with_(rate_scale=rate) if wl.arrival == "trace" else wl.with_(rate=rate)
        return wl.with_(seed=seed)

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description, "preset": self.preset,
                "engine": self.engine, "rates": list(self.rates), "rate_unit": self.rate_unit,
                "table_rate": self.table_rate, "seeds": self.seeds, "optimal": self.optimal,
                "source": self.source, "variants": {k: v.to_dict() for k, v in self.variants.items()}}


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    cand = SUITE_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    raise SuiteError(f"unknown suite {name_or_path!r}; known: {', '.join(list_suites())} "
                     f"(or give the path of a suite YAML file)")


def _slo_classes(raw, where: str) -> tuple[SLOClass, ...]:
    if not isinstance(raw, list) or not raw:
        raise SuiteError(f"{where}: slo_classes must be a non-empty list of "
                         "{name, ttft_s, tbt_s[, weight, priority]} mappings")
    out = []
    for i, c in enumerate(raw):
        try:
            out.append(SLOClass(**c))
        except TypeError as e:
            raise SuiteError(f"{where}: slo_classes[{i}] = {c!r}: {e}") from None
    return tuple(out)


def _workload(raw: dict, where: str) -> WorkloadConfig:
    known = {f.name for f in fields(WorkloadConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SuiteError(f"{where}: unknown workload field(s) {unknown}; known: {sorted(known)}")
    kw = dict(raw)
    if "slo_classes" in kw:
        kw["slo_classes"] = _slo_classes(kw["slo_classes"], where)
    for k in ("prompt_range", "output_range"):
        if k in kw:
            kw[k] = tuple(kw[k])
    try:
        return WorkloadConfig(**{**kw, "seed": 0})
    except (TypeError, ValueError) as e:
        raise SuiteError(f"{where}: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_suite(name_or_path: str, quick: bool = False) -> Suite:
    """Load and validate a suite by name (``eval/suites/<name>.yaml``) or YAML path. ``quick``
    applies the suite's ``quick`` overrides (fewer rates, seeds and requests). Traces are opened
    here, so a missing or malformed trace fails before anything runs."""
    path = suite_path(name_or_path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a suite is a mapping of fields, got {type(raw).__name__}")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {unknown}; known: {sorted(TOP_KEYS)}")
    q = raw.get("quick") or {}
    if set(q) - QUICK_KEYS:
        raise SuiteError(f"{where}: unknown quick field(s) {sorted(set(q) - QUICK_KEYS)}; known: {sorted(QUICK_KEYS)}")
    if quick:
        raw = _merge(raw, {k: v for k, v in q.items() if k != "num_requests"})
        if "num_requests" in q:
            raw["workload"] = {**raw.get("workload", {}), "num_requests": q["num_requests"]}
    return build_suite(raw, where, quick_overrides=q)


def build_suite(raw: dict, where: str = "<suite>", quick_overrides: Optional[dict] = None) -> Suite:
    """A Suite from its mapping (as in a YAML file); raises SuiteError naming the bad field."""
    for key in ("name", "workload", "rates"):
        if key not in raw:
            raise SuiteError(f"{where}: missing field {key!r}")
    engine = dict(raw.get("engine") or {})
    bad = sorted(set(engine) - set(ENGINE_KEYS))
    if bad:
        raise SuiteError(f"{where}: unknown engine field(s) {bad}; known: {list(ENGINE_KEYS)}")
    for k, v in engine.items():
        if not (isinstance(v, int) and v >= 1):
            raise SuiteError(f"{where}: engine.{k}={v!r} must be an integer >= 1")
    base = raw["workload"]
    if not isinstance(base, dict):
        raise SuiteError(f"{where}: workload must be a mapping of WorkloadConfig fields")
    variants_raw = raw.get("variants") or {MAIN_VARIANT: {}}
    variants = {str(name): _workload({**base, **(over or {})}, f"{where}, variant {name!r}")
                for name, over in variants_raw.items()}
    rates = raw["rates"]
    if (not isinstance(rates, list) or not rates or
            any(not isinstance(r, (int, float)) or not r > 0 or not math.isfinite(r) for r in rates)):
        raise SuiteError(f"{where}: rates must be a non-empty list of positive numbers, got {rates!r}")
    if any(rates[i] >= rates[i + 1] for i in range(len(rates) - 1)):
        raise SuiteError(f"{where}: rates must be strictly ascending, got {rates}")
    table_rate = raw.get("table_rate")
    if table_rate is None or table_rate not in rates:
        table_rate = rates[(len(rates) - 1) // 2] if table_rate is None else min(rates, key=lambda r: abs(r - table_rate))
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or seeds < 1:
        raise SuiteError(f"{where}: seeds={seeds!r} must be an integer >= 1")
    opt = raw.get("optimal")
    if opt is not None:
        if not isinstance(opt, dict) or set(opt) - OPTIMAL_KEYS:
            raise SuiteError(f"{where}: optimal must be a mapping with keys among {sorted(OPTIMAL_KEYS)}")
        opt = {"objective": "gpu_time", "time_limit_s": 10.0, "preemption": True, **opt}
        if opt["objective"] != "gpu_time":
            raise SuiteError(f"{where}: optimal.objective={opt['objective']!r}: only gpu_time is evaluated "
                             "(the gap of GPU busy seconds)")
    for name, wl in variants.items():
        if wl.trace:
            try:
                load_trace(wl.trace, need_timestamps=wl.arrival == "trace")
            except (OSError, ValueError) as e:
                raise SuiteError(f"{where}, variant {name!r}: trace {wl.trace!r}: {e}") from None
    return Suite(name=str(raw["name"]), title=str(raw.get("title", raw["name"])),
                 description=" ".join(str(raw.get("description", "")).split()), preset=str(raw.get("preset",
                 "h100-llama3-8b")), engine=engine, variants=variants, rates=tuple(float(r) for r in rates),
                 table_rate=float(table_rate), seeds=seeds, optimal=opt, source=where,
                 quick=dict(quick_overrides or {}))


def trace_suite(trace: str, rate_scales: Optional[list] = None, rates: Optional[list] = None,
                num_requests: int = 300, seeds: int = 4, quick: bool = False) -> Suite:
    """An ad-hoc suite for any trace CSV: its own arrival times sped up by each of ``rate_scales``
    (the trace needs an ``arrived_at`` column), or Poisson arrivals at each of ``rates`` req/s
    with the trace's lengths. Full h100-llama3-8b preset, one tier (TTFT 2 s, TBT 100 ms)."""
    try:
        t = load_trace(trace)
    except (OSError, ValueError) as e:
        raise SuiteError(f"--trace {trace!r}: {e}") from None
    if rate_scales and rates:
        raise SuiteError("give --rate-scale (the trace's arrival times) or --rates (Poisson), not both")
    if not rates and t.arrival_s is None:
        raise SuiteError(f"--trace {trace!r} has no arrived_at column, so it has no arrival times to scale; "
                         "give --rates R1,R2,... for Poisson arrivals with its lengths")
    sweep = rates or rate_scales or [1.0]
    n = min(num_requests, len(t))
    if quick:
        n, seeds, sweep = min(n, 60), min(seeds, 2), sweep[:2] if len(sweep) > 2 else sweep
    arrival = "poisson" if rates else "trace"
    pace = (f" (its own pace: {len(t) / (t.arrival_s[-1] - t.arrival_s[0]):.3g} req/s on average)"
            if arrival == "trace" and t.arrival_s[-1] > t.arrival_s[0] else "")
    raw = {"name": f"trace-{Path(t.path).stem}", "title": f"Trace {Path(t.path).name}",
           "description": (f"A random {n}-request window of {t.path} per seed, "
                           + ("replayed with its arrival times sped up by the rate scale" + pace
                              if arrival == "trace" else "with Poisson arrivals")
                           + "; full h100-llama3-8b preset; one SLO tier, TTFT 2 s and TBT 100 ms; requests "
                           "longer than 8,192 tokens dropped."),
           "preset": "h100-llama3-8b",
           "workload": {"num_requests": n, "arrival": arrival, "lengths": "trace", "trace": t.path,
                        "oversize": "drop", "max_total_len": 8192,
                        "slo_classes": [{"name": "default", "ttft_s": 2.0, "tbt_s": 0.1}]},
           "rates": sorted(float(r) for r in sweep), "seeds": seeds}
    return build_suite(raw, f"--trace {trace}")
