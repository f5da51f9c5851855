"""``llmsched compare``: several schedulers on identical workloads, one table.

Every scheduler runs on the same workloads (seeds ``seed .. seed + seeds - 1``; with a fixed
``--window-start`` the seeds change only SLO-tier draws and predictor noise), in parallel worker
processes, with a progress bar over the runs. The table shows, per scheduler, the mean over seeds
of SLO attainment, TTFT P50/P99 (s), TBT P99 (s), GPU busy seconds, preemptions and recomputed
tokens; the best value of each column is marked with ``*`` (highest attainment, lowest otherwise).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmsched_env.cli_common import (add_engine_args, add_workload_args, engine_overrides, workload_from_args,
                                     write_json)
from llmsched_env.scheduler import available_schedulers, make_scheduler, split_specs
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


def _run_one(scheduler: str, workload: WorkloadConfig, preset: str, gpu_mem_util: Optional[float],
             overrides: Optional[dict]) -> dict:
    from llmsched_env.presets import get_preset
    from llmsched_env.simulate import simulate
    p = get_preset(preset, gpu_memory_utilization=gpu_mem_util)
    return simulate(workload, scheduler, p, overrides)


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if v is not None and v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def compare(workload: WorkloadConfig, schedulers: Sequence[str], preset: str = "h100-llama3-8b",
            seeds: int = 1, engine_overrides: Optional[dict] = None, gpu_mem_util: Optional[float] = None,
            workers: Optional[int] = None, progress: bool = True) -> dict:
    """Run every scheduler on the workloads of ``seeds`` consecutive seeds.

    Returns {"schedulers", "seeds", "mean": {name: {key: mean over seeds}}, "runs": {name: [summary
    per seed]}, "errors": {name: message}}. A scheduler that fails (e.g. a whole-prompt scheduler
    given prompts longer than the token budget) is reported in ``errors``; the others still run.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, not {seeds}")
    if not schedulers:
        raise ValueError("no schedulers to compare")
    dup = sorted({s for s in schedulers if list(schedulers).count(s) > 1})
    if dup:
        raise ValueError(f"scheduler(s) listed twice: {', '.join(dup)}")
    for s in schedulers:
        make_scheduler(s)  # unknown names fail here, before any process starts
    seed_list = [workload.seed + i for i in range(seeds)]
    jobs = [(s, i) for s in schedulers for i in range(seeds)]
    runs: dict[str, list] = {s: [None] * seeds for s in schedulers}
    errors: dict[str, str] = {}
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    bar = Progress(TextColumn("[bold]compare"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                   TimeElapsedColumn(), disable=not progress)
    with bar, ProcessPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task("runs", total=len(jobs))
        futs = {pool.submit(_run_one, s, workload.with_(seed=seed_list[i]), preset, gpu_mem_util,
                            engine_overrides): (s, i) for s, i in jobs}
        for f in as_completed(futs):
            s, i = futs[f]
            try:
                runs[s][i] = f.result()
            except Exception as e:  # one failing scheduler must not hide the others' results
                errors.setdefault(s, f"{type(e).__name__}: {e}")
            bar.advance(task)
    ok = [s for s in schedulers if s not in errors]
    mean = {s: {k: _mean([r[k] for r in runs[s]]) for k, *_ in COLUMNS} for s in ok}
    for s in ok:
        mean[s]["num_finished"] = _mean([r["num_finished"] for r in runs[s]])
        mean[s]["num_requests"] = runs[s][0]["num_requests"]
    return {"schedulers": list(schedulers), "seeds": seed_list, "preset": preset,
            "workload": workload.to_dict(), "mean": mean, "runs": {s: runs[s] for s in ok}, "errors": errors}


def best_values(mean: dict) -> dict:
    """The best value of each column over schedulers (NaN ignored)."""
    out = {}
    for key, _, sign, _ in COLUMNS:
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
    t = Table(title=f"{result['preset']}: mean over {n} seed(s) {result['seeds']}  (* = best)",
              header_style="bold")
    t.add_column("scheduler", no_wrap=True)
    for _, title, _, _ in COLUMNS:
        t.add_column(title, justify="right", no_wrap=True)
    t.add_column("finished", justify="right", no_wrap=True)
    best = best_values(mean)
    for s, m in mean.items():
        row = [s]
        for key, _, _, fmt in COLUMNS:
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
    names = available_schedulers() if a.schedulers == "all" else split_specs(a.schedulers)
    preset = get_preset(a.preset, gpu_memory_utilization=a.gpu_mem_util)
    wl = workload_from_args(a, max_total_len=preset.shape.max_model_len)
    r = compare(wl, names, a.preset, a.seeds, engine_overrides(a), a.gpu_mem_util, a.workers,
                progress=not a.no_progress)
    print_table(r)
    write_json(r, a.json)
    return 1 if r["errors"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="run several schedulers on identical workloads; one table")
    p.add_argument("--schedulers", default="all",
                   help="comma-separated registered names, or 'all' (default)")
    p.add_argument("--seeds", type=int, default=1, help="workload seeds to average over (from --seed)")
    p.add_argument("--workers", type=int, help="parallel processes (default: one per CPU, at most one per run)")
    add_engine_args(p)
    add_workload_args(p)
    p.add_argument("--json", help="write means and per-run summaries to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)
