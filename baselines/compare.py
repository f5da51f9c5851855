"""``llmsched compare``: several schedulers (or, on a cluster, several routers) on identical
workloads, one table.

Every entrant runs on the same workloads (seeds ``seed .. seed + seeds - 1``; with a fixed
``--window-start`` the seeds change only SLO-tier draws and predictor noise), fanned out by
``llmsched_env.runner`` (a local spawn process pool, or Ray with ``--ray`` / ``--ray-address``),
with a progress bar over the runs. The table shows, per entrant, the mean over seeds of SLO
attainment, TTFT P50/P99 (s), TBT P99 (s), GPU busy seconds, preemptions and recomputed tokens
(on a cluster: pooled over the replicas, plus the load imbalance); the best value of each column
is marked with ``*`` (highest attainment, lowest otherwise).

With ``--routers`` (or ``--replicas`` > 1) every entrant is a cluster of ``--replicas``
replicas of the preset, each running the scheduler: entrants are the routers (``router`` when
one scheduler is given, ``router/scheduler`` for several).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from llmsched_env.cli_common import (add_engine_args, add_workload_args, engine_overrides, workload_from_args,
                                     write_json)
from llmsched_env.router import heuristic_routers, make_router
from llmsched_env.runner import add_runner_args, run_jobs
from llmsched_env.scheduler import heuristic_schedulers, make_scheduler, split_specs
from llmsched_env.workload import WorkloadConfig

# (summary key, column title, better: +1 higher / -1 lower, format)
COLUMNS = (
    ("slo_attainment", "SLO attain.", +1, "{:.3f}"),
    ("ttft_p50_s", "TTFT P50 (s)", -1, "{:.4g}"),
    ("ttft_p99_s", "TTFT P99 (s)", -1, "{:.4g}"),
    ("tbt_p99_s", "TBT P99 (s)", -1, "{:.4g}"),
    ("gpu_busy_s", "GPU busy (s)", -1, "{:.4g}"),
    ("num_preemptions", "preemptions", -1, "{:.4g}"),
    ("recomputed_tokens", "recomputed tok", -1, "{:.4g}"),
)
CLUSTER_COLUMNS = (("load_imbalance", "imbalance", -1, "{:.3f}"),)


def _run_one(job: tuple) -> dict:
    """One run: ``(scheduler, router or None, replicas, workload, preset, gpu_mem_util,
    overrides)``; errors come back as ``{"error": message}``."""
    scheduler, router, replicas, workload, preset, gpu_mem_util, overrides = job
    from llmsched_env.presets import get_preset
    try:
        p = get_preset(preset, gpu_memory_utilization=gpu_mem_util)
        if router is None:
            from llmsched_env.simulate import simulate
            return simulate(workload, scheduler, p, overrides)
        from llmsched_env.cluster import replicas_from_preset, simulate_cluster
        return simulate_cluster(workload, replicas_from_preset(p, replicas, scheduler, overrides), router)
    except Exception as e:  # one failing entrant must not hide the others' results
        return {"error": f"{type(e).__name__}: {e}"}


def _run_error(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}"}


def _entrant(scheduler: str, router: Optional[str], several_schedulers: bool) -> str:
    if router is None:
        return scheduler
    return f"{router}/{scheduler}" if several_schedulers else router


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if v is not None and v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def compare(workload: WorkloadConfig, schedulers: Sequence[str], preset: str = "h100-llama3-8b",
            seeds: int = 1, engine_overrides: Optional[dict] = None, gpu_mem_util: Optional[float] = None,
            workers: Optional[int] = None, progress: bool = True, routers: Optional[Sequence[str]] = None,
            replicas: int = 1, ray: bool = False, ray_address: Optional[str] = None) -> dict:
    """Run every scheduler (or, with ``routers``, every router over a cluster of ``replicas``
    replicas each running each scheduler) on the workloads of ``seeds`` consecutive seeds.

    Returns {"schedulers", "seeds", "preset", "workload", "mean": {entrant: {key: mean over
    seeds}}, "runs": {entrant: [summary per seed]}, "errors": {entrant: message}}, plus
    "routers" and "replicas" for a cluster. An entrant that fails (e.g. a whole-prompt scheduler
    given prompts longer than the token budget) is reported in ``errors``; the others still run.
    The same arguments give the same numbers for any ``workers`` and backend.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, not {seeds}")
    if not schedulers:
        raise ValueError("no schedulers to compare")
    if not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas={replicas!r} must be an integer >= 1")
    for what, names in (("scheduler", schedulers), ("router", routers or ())):
        dup = sorted({s for s in names if list(names).count(s) > 1})
        if dup:
            raise ValueError(f"{what}(s) listed twice: {', '.join(dup)}")
    for s in schedulers:
        make_scheduler(s)  # unknown names fail here, before any process starts
    cluster = bool(routers) or replicas > 1
    router_list = list(routers) if routers else (["round-robin"] if cluster else [None])
    for r in router_list:
        if r is not None:
            make_router(r)
    seed_list = [workload.seed + i for i in range(seeds)]
    several = len(schedulers) > 1
    entrants = [(_entrant(s, r, several), s, r) for r in router_list for s in schedulers]
    jobs = [(name, i) for name, _, _ in entrants for i in range(seeds)]
    spec = {name: (s, r) for name, s, r in entrants}
    payload = [(spec[name][0], spec[name][1], replicas, workload.with_(seed=seed_list[i]), preset, gpu_mem_util,
                engine_overrides) for name, i in jobs]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    results = run_jobs(_run_one, payload, workers=workers, ray=ray, ray_address=ray_address, progress=progress,
                       label="compare", on_error=_run_error)
    runs: dict[str, list] = {name: [None] * seeds for name, _, _ in entrants}
    errors: dict[str, str] = {}
    for (name, i), r in zip(jobs, results):
        if "error" in r:
            errors.setdefault(name, r["error"])
        runs[name][i] = r
    ok = [name for name, _, _ in entrants if name not in errors]
    columns = COLUMNS + (CLUSTER_COLUMNS if cluster else ())
    mean = {n: {k: _mean([r[k] for r in runs[n]]) for k, *_ in columns} for n in ok}
    for n in ok:
        mean[n]["num_finished"] = _mean([r["num_finished"] for r in runs[n]])
        mean[n]["num_requests"] = runs[n][0]["num_requests"]
    out = {"schedulers": list(schedulers), "seeds": seed_list, "preset": preset,
           "workload": workload.to_dict(), "mean": mean, "runs": {n: runs[n] for n in ok}, "errors": errors}
    if cluster:
        out["routers"] = router_list
        out["replicas"] = replicas
    return out


def _columns(mean: dict) -> tuple:
    return COLUMNS + (CLUSTER_COLUMNS if any("load_imbalance" in m for m in mean.values()) else ())


def best_values(mean: dict) -> dict:
    """The best value of each column over entrants (NaN ignored)."""
    out = {}
    for key, _, sign, _ in _columns(mean):
        vals = [m[key] for m in mean.values() if m[key] == m[key]]
        out[key] = (max(vals) if sign > 0 else min(vals)) if vals else float("nan")
    return out


def print_table(result: dict, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
            console = Console(width=160)
    mean = result["mean"]
    n = len(result["seeds"])
    where = result["preset"]
    if "replicas" in result:
        where = f"{result['replicas']} x {where} ({', '.join(result['schedulers'])})"
    t = Table(title=f"{where}: mean over {n} seed(s) {result['seeds']}  (* = best)", header_style="bold")
    t.add_column("router" if "routers" in result else "scheduler", no_wrap=True)
    columns = _columns(mean)
    for _, title, _, _ in columns:
        t.add_column(title, justify="right", no_wrap=True)
    t.add_column("finished", justify="right", no_wrap=True)
    best = best_values(mean)
    for s, m in mean.items():
        row = [s]
        for key, _, _, fmt in columns:
            v = m[key]
            if v != v:
                row.append("-")
                continue
            text = fmt.format(v)
            row.append(f"[bold green]{text}*[/]" if math.isclose(v, best[key], rel_tol=1e-12, abs_tol=0.0)
                       else text)
        row.append(f"{m['num_finished']:.4g}/{m['num_requests']}")
        t.add_row(*row)
    console.print(t)
    for s, msg in result["errors"].items():
        console.print(f"[red]{s} failed:[/] {msg}")


def cmd_compare(a) -> int:
    from llmsched_env.presets import get_preset
    routers = None
    if a.routers is not None:
        routers = heuristic_routers() if a.routers == "all" else split_specs(a.routers)
    schedulers = a.schedulers or ("fcfs" if routers or a.replicas > 1 else "all")
    names = heuristic_schedulers() if schedulers == "all" else split_specs(schedulers)
    preset = get_preset(a.preset, gpu_memory_utilization=a.gpu_mem_util)
    wl = workload_from_args(a, max_total_len=preset.shape.max_model_len)
    if a.workers is not None and a.workers < 1:
        raise ValueError(f"--workers {a.workers}: must be >= 1")
    r = compare(wl, names, a.preset, a.seeds, engine_overrides(a), a.gpu_mem_util, a.workers,
                progress=not a.no_progress, routers=routers, replicas=a.replicas, ray=a.ray,
                ray_address=a.ray_address)
    print_table(r)
    write_json(r, a.json)
    return 1 if r["errors"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="run several schedulers (or routers over a cluster) on identical "
                                       "workloads; one table")
    p.add_argument("--schedulers", help="comma-separated scheduler specs, or 'all' (every registered heuristic; "
                                        "the default with one replica, fcfs on a cluster)")
    p.add_argument("--routers", help="comma-separated router specs, or 'all' (every heuristic router): compare "
                                     "routers over a cluster of --replicas replicas")
    p.add_argument("--replicas", type=int, default=1, help="replicas of the preset per cluster (default 1; "
                                                           "> 1 without --routers compares round-robin)")
    p.add_argument("--seeds", type=int, default=1, help="workload seeds to average over (from --seed)")
    add_runner_args(p)
    add_engine_args(p)
    add_workload_args(p)
    p.add_argument("--json", help="write means and per-run summaries to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)
