"""``llmsched solve``: the CP-SAT optimal schedule of a small workload, next to every heuristic.

Prints the solver's improving solutions while it runs, then status, objective, proven bound, gap,
solve time, the batch bound J, the linearisation error measured by replaying the schedule through
the engine, and how each heuristic compares. Example::

    llmsched solve --preset infermax-a100-llama2-7b --synthetic --lengths uniform \\
        --num-requests 4 --length-scale 0.02 --objective gpu_time --time-limit 60
"""
from __future__ import annotations

import math
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from llmsched_env.cli_common import (add_engine_args, add_workload_args, engine_overrides, workload_from_args,
                                     write_json)

console = Console()


HEURISTICS_SHARE = 0.5  # of --time-limit: no heuristic run starts after it
AFTER_SHARE = 0.15  # of --time-limit (at most 2 s), kept for what follows the search: freeing the
#                     model, the replay, the tables and the JSON


def scale_lengths(specs, factor: float):
    """Prompt and output lengths x ``factor`` (rounded, at least 1 token): a small instance with
    a trace's length distribution."""
    if not factor > 0:
        raise ValueError(f"--length-scale {factor} must be > 0")
    return [replace(s, prompt_len=max(1, round(s.prompt_len * factor)),
                    output_len=max(1, round(s.output_len * factor))) for s in specs]


def cmd_solve(a) -> int:
    import time

    from llmsched_env.presets import get_preset
    from llmsched_env.workload import build_workload

    from .optimal import heuristic_runs, objective_value, replay, solve

    t_start = getattr(a, "t0", None) or time.perf_counter()
    if not a.time_limit > 0:
        raise ValueError(f"--time-limit {a.time_limit}: must be > 0 seconds")
    if a.scenario:
        from llmsched_env.env import ServingEnv
        from llmsched_env.scenarios import list_scenarios
        if a.scenario not in list_scenarios():
            raise SystemExit(f"error: --scenario {a.scenario!r} is unknown; known: {', '.join(list_scenarios())}")
        env = ServingEnv(a.scenario)
        env.reset(seed=a.seed)
        specs, cfg, cost = env.specs, env.engine_config, env.cost_model
        a.lam = env.scenario.lam
        name = f"scenario {a.scenario} seed {a.seed}"
    else:
        if a.num_requests is None:
            raise SystemExit("error: solve needs --num-requests N (the model is for small instances, e.g. "
                             "4-10) or --scenario NAME --seed S")
        preset = get_preset(a.preset, gpu_memory_utilization=a.gpu_mem_util)
        wl = workload_from_args(a, max_total_len=preset.max_request_tokens(**engine_overrides(a)))
        specs = scale_lengths(build_workload(wl), a.length_scale)
        cfg = preset.engine_config(**engine_overrides(a))
        cost = preset.cost_model
        name = preset.name
    tokens = sum(s.prompt_len + s.output_len for s in specs)
    if a.bound_only:
        return _bound_only(a, specs, cfg, cost, name, t_start)
    console.print(f"[bold]solve[/] {a.objective}{' (no preemption)' if a.no_preemption else ''} on "
                  f"{name}: {len(specs)} requests, {tokens} tokens (prompt+output), "
                  f"KV {cfg.num_kv_blocks} x {cfg.block_size} tokens, budget {cfg.max_num_batched_tokens}, "
                  f"{a.workers} worker(s), limit {a.time_limit:g} s")
    # the limit bounds the whole command: heuristics (no new one after half of it), model, search
    # (the replay after it is one engine run)
    runs = heuristic_runs(specs, cfg, cost, deadline=t_start + HEURISTICS_SHARE * a.time_limit)
    left = max(0.05, a.time_limit - (time.perf_counter() - t_start) - min(2.0, AFTER_SHARE * a.time_limit))
    r = solve(specs, cfg, cost, a.objective, not a.no_preemption, left, a.workers, a.lam,
              a.max_batches, not a.no_hint, a.seed, None if a.quiet else console, heuristics=runs)
    out = r.to_dict()
    t = Table(title=f"optimal schedule ({a.objective})", header_style="bold")
    t.add_column("")
    t.add_column("value", justify="right")
    unit = {"gpu_time": "GPU-s", "slo": "requests", "return": "met - lam x GPU-s"}[a.objective]
    fmt = lambda v: "-" if v is None else f"{v:.6g}"  # noqa: E731
    t.add_row("status", r.status)
    t.add_row("schedule from", r.source)
    t.add_row(f"objective ({unit})", fmt(r.objective))
    t.add_row("best bound", fmt(r.bound))
    t.add_row("gap", "-" if r.gap is None else f"{r.gap:.2%}")
    t.add_row("solve time (s)", f"{r.solve_s:.2f} (+{r.build_s:.2f} build and heuristics)")
    t.add_row("batches J / used", f"{r.num_batches} / {r.batches_used}")
    t.add_row("J bound", ("rigorous: " if r.j_rigorous else "NOT rigorous: ") + r.j_why)
    if r.j_rigorous is False or r.batches_used == r.num_batches:
        if r.batches_used == r.num_batches:
            t.add_row("", "[yellow]the solution uses every batch: J may limit optimality[/]")
    if r.hint:
        t.add_row("hint", f"{r.hint[0]} (model value {fmt(r.hint[1])})")
    rep = None
    if r.plans:
        rep = replay(specs, cfg, cost, r)
        err = rep["latency_error"]
        replayed = objective_value(rep, a.objective, a.lam)
        t.add_row("replayed objective", f"{replayed:.6g}")
        t.add_row("latency model error", f"max {err['max_rel']:.2e} per batch, {err['total_rel']:.2e} of busy time")
        out["replay"] = {k: rep[k] for k in ("gpu_busy_s", "num_slo_met", "num_preemptions", "num_steps",
                                             "latency_error")}
        out["replay"]["objective"] = replayed
    console.print(t)
    h = Table(title="heuristics vs the optimum", header_style="bold")
    for c in ("scheduler", f"objective ({unit})", "vs optimum", "GPU-s", "SLO met", "preemptions"):
        h.add_column(c, justify="right" if c != "scheduler" else "left")
    for name, run in sorted(runs.items()):
        v = objective_value(run.summary, a.objective, a.lam)
        if r.objective is None:
            cmp = "-"
        elif a.objective == "gpu_time":
            cmp = f"{v / r.objective:.3f}x"
        else:
            cmp = f"{v - r.objective:+.4g}"
        h.add_row(name, f"{v:.6g}", cmp, f"{run.summary['gpu_busy_s']:.6g}", str(run.summary["num_slo_met"]),
                  str(run.summary["num_preemptions"]))
    console.print(h)
    out["instance"] = {"preset": name, "num_requests": len(specs), "tokens": tokens,
                       "length_scale": a.length_scale, "num_kv_blocks": cfg.num_kv_blocks,
                       "block_size": cfg.block_size, "workers": a.workers, "time_limit_s": a.time_limit}
    write_json(out, a.json)
    a.fast_exit = True  # r.model holds the CP-SAT model: the process ends without destroying it
    return 0


def _bound_only(a, specs, cfg, cost, name: str, t_start: float) -> int:
    """``--bound-only``: the relaxation bounds (baselines/bound.py) and every heuristic's value."""
    import time

    from .bound import gpu_time_lower_bound, slo_upper_bound
    from .optimal import heuristic_runs, objective_value

    runs = heuristic_runs(specs, cfg, cost, deadline=t_start + HEURISTICS_SHARE * a.time_limit)
    left = lambda: max(0.1, 0.4 * (a.time_limit - (time.perf_counter() - t_start)))  # noqa: E731
    gpu = gpu_time_lower_bound(specs, cfg, cost, preemption=not a.no_preemption, time_limit_s=left())
    slo = slo_upper_bound(specs, cfg, cost, time_limit_s=left())
    bound = {"gpu_time": gpu.value, "slo": float(slo.value), "return": slo.value - a.lam * gpu.value}[a.objective]
    values = {n: objective_value(r.summary, a.objective, a.lam) for n, r in sorted(runs.items())}
    best = (min if a.objective == "gpu_time" else max)(values.values()) if values else None
    gap = None if best is None else abs(best - bound) / max(abs(best), 1e-9)
    unit = {"gpu_time": "GPU-s", "slo": "requests", "return": "met - lam x GPU-s"}[a.objective]
    t = Table(title=f"relaxation bound ({a.objective}) on {name}: {len(specs)} requests", header_style="bold")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row(f"bound ({unit})", f"{bound:.6g}")
    t.add_row("GPU-s lower bound / SLO-met upper bound", f"{gpu.value:.6g} / {slo.value}"
              + ("" if slo.exact else " (dual bound)"))
    t.add_row("best heuristic", "-" if best is None else f"{best:.6g}")
    t.add_row("gap (best heuristic vs bound)", "-" if gap is None else f"{gap:.2%}")
    console.print(t)
    h = Table(title="heuristics vs the bound", header_style="bold")
    for c in ("scheduler", f"objective ({unit})", "vs bound"):
        h.add_column(c, justify="right" if c != "scheduler" else "left")
    for n, v in values.items():
        h.add_row(n, f"{v:.6g}", f"{v / bound:.3f}x" if a.objective == "gpu_time" else f"{v - bound:+.4g}")
    console.print(h)
    write_json({"status": "BOUND_ONLY", "objective": None, "bound": bound, "gap": gap,
                "heuristics": values, "gpu_lower_bound": gpu.value, "slo_upper_bound": slo.value,
                "slo_bound_exact": bool(slo.exact),
                "instance": {"source": name, "num_requests": len(specs), "num_kv_blocks": cfg.num_kv_blocks,
                             "block_size": cfg.block_size, "time_limit_s": a.time_limit}}, a.json)
    return 0


def add_parser(sub) -> None:
    from .optimal import OBJECTIVES

    p = sub.add_parser("solve", help="CP-SAT optimal schedule bound of a small workload, vs heuristics")
    add_engine_args(p)
    add_workload_args(p)
    p.add_argument("--objective", choices=OBJECTIVES, default="gpu_time",
                   help="gpu_time (min GPU busy s), slo (max requests meeting SLO), return (SLO - lam x GPU-s)")
    p.add_argument("--no-preemption", action="store_true", help="forbid evictions (InferMax's comparison)")
    p.add_argument("--time-limit", type=float, default=60.0,
                   help="wall-clock limit of the whole command (heuristics, model building, search), s")
    p.add_argument("--workers", type=int, default=1, help="CP-SAT search workers")
    p.add_argument("--lam", type=float, default=1.0, help="return objective: price per GPU-second")
    p.add_argument("--max-batches", type=int, help="cap the number of batches J (then not rigorous)")
    p.add_argument("--length-scale", type=float, default=1.0,
                   help="multiply prompt and output lengths (small instances from a trace's distribution)")
    p.add_argument("--no-hint", action="store_true", help="no warm start from the best heuristic")
    p.add_argument("--quiet", action="store_true", help="do not print improving solutions")
    p.add_argument("--json", help="write the result (plans included) to this file")
    p.add_argument("--scenario", help="solve or bound an env scenario's episode (its workload and engine; "
                                      "--seed picks the episode, --lam is the scenario's)")
    p.add_argument("--bound-only", action="store_true",
                   help="the relaxation bounds (baselines/bound.py) and the heuristics, no CP-SAT search")
    p.set_defaults(func=cmd_solve)
