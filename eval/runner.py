"""Evaluation jobs: one job = one scheduler on one workload, or (for a suite with an ``optimal``
section) one instance solved by CP-SAT and then run by every scheduler. They fan out through
the one runner, ``llmsched_env.runner`` (a local spawn process pool, or Ray).

Every job builds its scheduler afresh from its spec, so a result never depends on which worker
ran it or in what order; results are keyed by job, never by completion order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from llmsched_env import runner
from llmsched_env.workload import WorkloadConfig

# the per-run numbers the evaluation reports (summary keys of llmsched_env.metrics.summarize)
METRIC_KEYS = ("slo_attainment", "ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "gpu_busy_s",
               "num_preemptions", "recomputed_tokens", "num_requests", "num_finished", "makespan_s",
               "throughput_tok_s")
# quantile levels of the TTFT / TBT distributions kept for the CDF plots
CDF_LEVELS = tuple(np.round(np.concatenate([np.linspace(0.0, 0.99, 100), [0.995, 0.999, 1.0]]), 4).tolist())


@dataclass(frozen=True)
class RunJob:
    """One scheduler (by spec) on one workload. ``key`` identifies the result."""

    key: tuple
    spec: str
    workload: WorkloadConfig
    preset: str
    engine: dict
    cdf: bool = False


@dataclass(frozen=True)
class OptimalJob:
    """Solve one instance with CP-SAT (``baselines.optimal.solve``), then run every scheduler
    and the solution's replay (``optimal``) on it."""

    key: tuple
    specs: tuple
    workload: WorkloadConfig
    preset: str
    engine: dict
    objective: str = "gpu_time"
    time_limit_s: float = 10.0
    preemption: bool = True
    extra: dict = field(default_factory=dict)


def _engine_and_cost(preset: str, engine: dict):
    from llmsched_env.presets import get_preset
    p = get_preset(preset)
    return p.engine_config(**engine), p.cost_model


def _quantiles(values) -> Optional[list]:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return np.quantile(a, CDF_LEVELS).tolist() if a.size else None


def _simulate(specs, config, cost, scheduler, cdf: bool) -> dict:
    from llmsched_env.engine import Engine
    from llmsched_env.metrics import request_metrics
    from llmsched_env.simulate import run
    engine = Engine(specs, config, cost)
    summary = run(engine, scheduler)
    out = {k: summary[k] for k in METRIC_KEYS}
    out["slo_attainment_by_class"] = summary["slo_attainment_by_class"]
    out["wall_s"] = summary["wall_s"]
    if cdf:
        reqs = list(engine.requests.values())
        ttft = [request_metrics(r).ttft_s for r in reqs]
        gaps = [np.diff(r.token_times) for r in reqs if len(r.token_times) > 1]
        out["cdf"] = {"ttft_s": _quantiles(ttft),
                      "tbt_s": _quantiles(np.concatenate(gaps)) if gaps else None}
    return out


def _error(e: BaseException) -> dict:
    """A failed run; ``refused`` marks a scheduler's documented refusal of the workload
    (``WorkloadNotServable``, e.g. a whole-prompt scheduler and a prompt over its budget)."""
    from llmsched_env import scheduler
    out = {"error": f"{type(e).__name__}: {e}".strip()}
    if isinstance(e, getattr(scheduler, "WorkloadNotServable", ())):
        out["refused"] = True
    return out


def run_job(job: RunJob) -> dict:
    """Run one job; a failing scheduler gives ``{"error": message}`` instead of metrics."""
    from llmsched_env.scheduler import make_scheduler
    from llmsched_env.workload import build_workload
    try:
        config, cost = _engine_and_cost(job.preset, job.engine)
        specs = build_workload(job.workload)
        return _simulate(specs, config, cost, make_scheduler(job.spec), job.cdf)
    except Exception as e:  # reported per scheduler and workload; the other runs go on
        return _error(e)


def run_optimal_job(job: OptimalJob) -> dict:
    """Solve the instance, replay the solution, run every scheduler, all on the engine without
    prefix caching (the model's): {"solve": ..., "runs": {spec: metrics or error}}."""
    from baselines.optimal import solve, without_prefix_cache
    from llmsched_env.scheduler import make_scheduler
    from llmsched_env.workload import build_workload
    config, cost = _engine_and_cost(job.preset, job.engine)
    config = without_prefix_cache(config)  # the engine the CP-SAT model describes, for every scheduler
    specs = build_workload(job.workload)
    try:
        res = solve(specs, config, cost, objective=job.objective, preemption=job.preemption,
                    time_limit_s=job.time_limit_s, num_workers=1, seed=0)
    except Exception as e:
        return {"solve": _error(e), "runs": {}}
    solve_out = {"status": res.status, "value": res.objective, "bound": res.bound, "solver_gap": res.gap,
                 "solve_s": res.solve_s, "num_batches": res.num_batches, "batches_used": res.batches_used,
                 "j_rigorous": res.j_rigorous, "objective": job.objective, "hint": res.hint}
    runs = {}
    for spec in job.specs:
        try:
            runs[spec] = _simulate(specs, config, cost, make_scheduler(spec), False)
        except Exception as e:
            runs[spec] = _error(e)
    if res.plans:
        try:
            runs["optimal"] = _simulate(specs, config, cost, make_scheduler("optimal", plans=res.plans), False)
        except Exception as e:
            runs["optimal"] = _error(e)
    return {"solve": solve_out, "runs": runs}


def _dispatch(job):
    return run_optimal_job(job) if isinstance(job, OptimalJob) else run_job(job)


def run_jobs(jobs: Sequence, workers: int = 1, progress: bool = True, label: str = "evaluate",
             ray: bool = False, ray_address: Optional[str] = None) -> dict:
    """Run ``jobs`` (RunJob / OptimalJob) on ``workers`` processes (1 = in this process) or on Ray,
    with a rich progress bar; returns {job.key: result}. Optimal jobs are submitted first (longest)."""
    ordered = sorted(jobs, key=lambda j: not isinstance(j, OptimalJob))
    results = runner.run_jobs(_dispatch, ordered, workers=workers, ray=ray, ray_address=ray_address,
                              progress=progress, label=label, on_error=_error)
    return {job.key: r for job, r in zip(ordered, results)}
