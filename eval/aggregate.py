"""From per-run results to the numbers of the report: jobs of a suite, means with 95% t-intervals
over seeds, goodput per seed and its interval, pooled CDFs, gaps to the optimal bound.

Job keys: ``(suite, variant, rate index, seed index, spec)`` for a run, ``(suite, variant,
"optimal", seed index)`` for a solved instance.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .runner import CDF_LEVELS, OptimalJob, RunJob
from .stats import goodput, t_interval
from .suite import Suite

# (key, title, unit, better: +1 higher / -1 lower, format)
METRICS = (
    ("slo_attainment", "SLO attainment", "fraction", +1, "{:.3f}"),
    ("ttft_p50_s", "TTFT P50", "s", -1, "{:.3g}"),
    ("ttft_p99_s", "TTFT P99", "s", -1, "{:.3g}"),
    ("tbt_p50_s", "TBT P50", "s", -1, "{:.3g}"),
    ("tbt_p99_s", "TBT P99", "s", -1, "{:.3g}"),
    ("gpu_busy_s", "GPU busy", "GPU-s", -1, "{:.3g}"),
    ("num_preemptions", "preemptions", "count", -1, "{:.3g}"),
    ("recomputed_tokens", "recomputed tokens", "tokens", -1, "{:.3g}"),
)
GAP_METRICS = (
    ("gpu_busy_s", "GPU busy", "GPU-s", -1, "{:.4g}"),
    ("gap_to_bound_pct", "gap to bound", "%", -1, "{:.2f}"),
    ("gap_to_best_pct", "gap to best found", "%", -1, "{:.2f}"),
    ("slo_attainment", "SLO attainment", "fraction", +1, "{:.3f}"),
)
THRESHOLD = 0.9
OPTIMAL = "optimal"


def suite_jobs(suite: Suite, specs: Sequence[str], base_seed: int = 0, with_optimal: bool = True) -> list:
    """Every job of a suite: each spec x variant x rate x seed, or (with an ``optimal`` section)
    one OptimalJob per variant x rate x seed running every spec on the solved instance."""
    jobs = []
    for variant in suite.variants:
        for ri, rate in enumerate(suite.rates):
            for si in range(suite.seeds):
                wl = suite.workload(variant, rate, base_seed + si)
                if suite.optimal is not None:
                    if with_optimal:
                        o = suite.optimal
                        jobs.append(OptimalJob((suite.name, variant, ri, si, OPTIMAL), tuple(specs), wl, suite.preset,
                                               suite.engine, o["objective"], float(o["time_limit_s"]),
                                               bool(o["preemption"])))
                    continue
                for spec in specs:
                    jobs.append(RunJob((suite.name, variant, ri, si, spec), spec, wl, suite.preset, suite.engine,
                                       cdf=rate == suite.table_rate))
    return jobs


def _stats(per_seed: list, keys) -> dict:
    ok = [r for r in per_seed if r is not None and "error" not in r]
    return {k: t_interval([r[k] for r in ok]).to_dict() for k in keys}


def _errors(per_seed: list) -> list:
    return sorted({r["error"] for r in per_seed if r is not None and "error" in r})


def _pool_cdf(per_seed: list, which: str) -> Optional[list]:
    """The mean over seeds of the quantile functions (each seed's runs weigh the same)."""
    qs = [r["cdf"][which] for r in per_seed if r and "cdf" in r and r["cdf"][which] is not None]
    return np.mean(np.asarray(qs), axis=0).tolist() if qs else None


def aggregate_suite(suite: Suite, specs: Sequence[str], results: dict) -> dict:
    """The suite's numbers from ``run_jobs`` results (see the module docstring)."""
    if suite.optimal is not None:
        return _aggregate_optimal(suite, specs, results)
    conditions, goodputs, cdfs = [], {}, {}
    for variant in suite.variants:
        att = {spec: [[math.nan] * len(suite.rates) for _ in range(suite.seeds)] for spec in specs}
        for ri, rate in enumerate(suite.rates):
            cond = {"variant": variant, "rate": rate, "entrants": {}}
            for spec in specs:
                per_seed = [results.get((suite.name, variant, ri, si, spec)) for si in range(suite.seeds)]
                for si, r in enumerate(per_seed):
                    if r is not None and "error" not in r:
                        att[spec][si][ri] = r["slo_attainment"]
                cond["entrants"][spec] = {"stats": _stats(per_seed, [m[0] for m in METRICS]),
                                          "errors": _errors(per_seed),
                                          "per_seed": [{k: v for k, v in (r or {}).items() if k not in ("cdf", "wall_s")}
                                                       for r in per_seed]}
                if rate == suite.table_rate:
                    cdfs.setdefault(variant, {})[spec] = {"rate": rate, "ttft_s": _pool_cdf(per_seed, "ttft_s"),
                                                          "tbt_s": _pool_cdf(per_seed, "tbt_s")}
            conditions.append(cond)
        goodputs[variant] = {}
        for spec in specs:
            per = []
            for si in range(suite.seeds):
                curve = att[spec][si]
                per.append(None if any(a != a for a in curve) else goodput(suite.rates, curve, THRESHOLD))
            vals = [g.rate for g in per if g is not None]
            goodputs[variant][spec] = {
                "stats": t_interval(vals).to_dict(), "per_seed": [g.rate if g else None for g in per],
                "censored": [g.censored if g else "failed" for g in per]}
    return {"suite": suite.to_dict(), "entrants": list(specs), "conditions": conditions, "goodput": goodputs,
            "cdf": cdfs, "cdf_levels": list(CDF_LEVELS), "threshold": THRESHOLD}


def _aggregate_optimal(suite: Suite, specs: Sequence[str], results: dict) -> dict:
    entrants = list(specs) + [OPTIMAL]
    conditions, instances = [], []
    for variant in suite.variants:
        for ri, rate in enumerate(suite.rates):
            per_entrant = {e: [] for e in entrants}
            for si in range(suite.seeds):
                res = results.get((suite.name, variant, ri, si, OPTIMAL)) or {"solve": {"error": "not run"}, "runs": {}}
                sol = res["solve"]
                instances.append({"variant": variant, "rate": rate, "seed_index": si, **sol})
                bound, best = sol.get("bound"), sol.get("value")
                for e in entrants:
                    r = res["runs"].get(e)
                    if r is None:
                        per_entrant[e].append({"error": sol.get("error", "no solution to replay")} if e == OPTIMAL
                                              else None)
                        continue
                    r = dict(r)
                    if "error" not in r:
                        g = r["gpu_busy_s"]
                        r["gap_to_bound_pct"] = 100 * (g - bound) / bound if bound else math.nan
                        r["gap_to_best_pct"] = 100 * (g - best) / best if best else math.nan
                    r.pop("wall_s", None)
                    per_entrant[e].append(r)
            conditions.append({"variant": variant, "rate": rate, "entrants": {
                e: {"stats": _stats(per_entrant[e], [m[0] for m in GAP_METRICS]), "errors": _errors(per_entrant[e]),
                    "per_seed": per_entrant[e]} for e in entrants}})
    statuses = sorted({i.get("status", "error") for i in instances})
    return {"suite": suite.to_dict(), "entrants": entrants, "conditions": conditions, "instances": instances,
            "statuses": statuses}


def best_of(values: dict, better: int) -> float:
    """The best finite mean among ``values`` ({entrant: mean})."""
    vals = [v for v in values.values() if v is not None and v == v]
    if not vals:
        return math.nan
    return max(vals) if better > 0 else min(vals)
