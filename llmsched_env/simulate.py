"""Run a scheduler against a workload on the engine, and sweep rates for goodput."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, Optional, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .engine import Engine, EngineConfig
from .metrics import summarize
from .presets import Preset, get_preset
from .request import RequestSpec
from .scheduler import Scheduler, make_scheduler
from .workload import WorkloadConfig, build_workload


def run(engine: Engine, scheduler: Scheduler, progress: bool = False, max_steps: Optional[int] = None,
        on_step: Optional[Callable] = None) -> dict:
    """Step ``engine`` with ``scheduler``'s plans until every request finishes; return the summary.

    Args:
        progress: show a rich progress bar (finished requests).
        max_steps: stop early after this many steps (the summary then covers a partial run).
        on_step: called as ``on_step(engine, plan, result)`` after every step.
    """
    scheduler.reset()
    t0 = time.perf_counter()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("requests  {task.fields[steps]} steps  sim {task.fields[sim]:.0f} s"),
                   TimeElapsedColumn(), transient=False) if progress else nullcontext()
    step = engine.step
    sched = scheduler.schedule
    limit = max_steps if max_steps is not None else math.inf
    with bar:
        task = bar.add_task(getattr(scheduler, "name", "sim"), total=engine.num_requests, steps=0, sim=0.0) \
            if progress else None
        n = 0
        while not engine.done and n < limit:
            plan = sched(engine)
            result = step(plan)
            if on_step is not None:
                on_step(engine, plan, result)
            n += 1
            if progress and n % 2000 == 0:
                bar.update(task, completed=len(engine.finished), steps=engine.num_steps, sim=engine.now_s)
        if progress:
            bar.update(task, completed=len(engine.finished), steps=engine.num_steps, sim=engine.now_s)
    return summarize(engine, time.perf_counter() - t0)


def simulate(workload: WorkloadConfig | Sequence[RequestSpec], scheduler: str | Scheduler = "fcfs",
             preset: str | Preset = "h100-llama3-8b", engine_overrides: Optional[dict] = None,
             scheduler_options: Optional[dict] = None, progress: bool = False) -> dict:
    """One simulation from names: build the workload, engine and scheduler, run, summarise."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    specs = build_workload(workload) if isinstance(workload, WorkloadConfig) else list(workload)
    cfg: EngineConfig = p.engine_config(**(engine_overrides or {}))
    sched = make_scheduler(scheduler, **(scheduler_options or {})) if isinstance(scheduler, str) else scheduler
    summary = run(Engine(specs, cfg, p.cost_model), sched, progress=progress)
    summary["scheduler"] = getattr(sched, "name", str(scheduler))
    summary["preset"] = p.name
    return summary


def rate_of(cfg: WorkloadConfig) -> float:
    """The knob a sweep turns: ``rate_scale`` for trace arrivals, else ``rate``."""
    return cfg.rate_scale if cfg.arrival == "trace" else cfg.rate


def with_rate(cfg: WorkloadConfig, r: float) -> WorkloadConfig:
    return cfg.with_(rate_scale=r) if cfg.arrival == "trace" else cfg.with_(rate=r)


def sweep_goodput(attainment: Callable[[float], float], rates: Sequence[float], threshold: float = 0.9,
                  refine: int = 4) -> dict:
    """Highest rate with ``attainment(rate) >= threshold``: an ascending sweep over ``rates``
    until attainment first drops below the threshold, then ``refine`` bisection steps (geometric
    midpoints) between the last passing and first failing rate.

    Returns {"goodput": rate or 0.0, "points": [(rate, attainment)], "threshold", "saturated_at_max"}.
    """
    pts = []

    def att(r: float) -> float:
        a = attainment(r)
        pts.append((r, a))
        return a

    lo, hi = None, None
    for r in sorted(rates):
        if att(r) >= threshold:
            lo = r
        else:
            hi = r
            break
    if lo is not None and hi is not None:
        for _ in range(refine):
            mid = math.sqrt(lo * hi)
            if att(mid) >= threshold:
                lo = mid
            else:
                hi = mid
    return {"goodput": lo or 0.0, "points": sorted(pts), "threshold": threshold, "saturated_at_max": hi is None}


def goodput(workload: WorkloadConfig, scheduler: str = "fcfs", preset: str = "h100-llama3-8b",
            rates: Sequence[float] = (0.25, 0.5, 1, 2, 4, 8, 16), threshold: float = 0.9,
            refine: int = 4, engine_overrides: Optional[dict] = None,
            scheduler_options: Optional[dict] = None) -> dict:
    """Highest rate (requests/s, or trace rate scale for trace arrivals) with SLO attainment >=
    ``threshold`` (``sweep_goodput``).

    Returns {"goodput": rate or 0.0, "points": [(rate, attainment)], "unit": ...}.
    """
    def att(r: float) -> float:
        s = simulate(with_rate(workload, r), scheduler, preset, engine_overrides, scheduler_options)
        return s["slo_attainment"]

    out = sweep_goodput(att, rates, threshold, refine)
    out["unit"] = "rate scale" if workload.arrival == "trace" else "requests/s"
    return out
