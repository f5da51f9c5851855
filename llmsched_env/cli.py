"""``llmsched``: the command line. One subcommand per job; ``llmsched <cmd> --help`` for each.

Subcommands living in other packages are listed in ``PLUGINS`` (module with ``add_parser(sub)``
that sets ``func``), so adding one is one line here.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

_IMPORTED_S = time.perf_counter()  # the console script's start (its first import is this module)

from rich.console import Console
from rich.table import Table

from .cli_common import (add_engine_args, add_workload_args, check_writable, engine_overrides,
                         workload_from_args, write_json)

console = Console()

PLUGINS: list[str] = [
    "baselines.compare",
    "baselines.solve_cli",
    "llmsched_env.profiling",
    "agents.export",
]


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.4g}"
    return str(v)


def print_summary(s: dict, title: str) -> None:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [("requests finished", f"{s['num_finished']}/{s['num_requests']}"),
            ("SLO attainment", f"{s['slo_attainment']:.3f}"),
            ("TTFT P50 / P99 (s)", f"{_fmt(s['ttft_p50_s'])} / {_fmt(s['ttft_p99_s'])}"),
            ("TBT P50 / P99 (s)", f"{_fmt(s['tbt_p50_s'])} / {_fmt(s['tbt_p99_s'])}"),
            ("TPOT P50 (s)", _fmt(s["tpot_p50_s"])),
            ("E2E P50 / P99 (s)", f"{_fmt(s['e2e_p50_s'])} / {_fmt(s['e2e_p99_s'])}"),
            ("GPU busy (GPU-s)", _fmt(s["gpu_busy_s"])),
            ("preemptions", str(s["num_preemptions"])),
            ("recomputed tokens", f"{s['recomputed_tokens']} ({s['recompute_fraction']:.1%})"),
            *([("swap-outs / host copies", f"{s['num_swap_outs']} / {s['swapped_blocks']} blocks, "
                f"{_fmt(s['transfer_s'])} s")] if s["num_swap_outs"] else []),
            ("throughput (tok/s)", _fmt(s["throughput_tok_s"])),
            ("KV use mean / peak", f"{s['kv_util_mean']:.1%} / {s['max_kv_blocks_used']}/{s['kv_capacity_blocks']} blocks"),
            ("engine steps", f"{s['num_steps']} ({_fmt(s['steps_per_s'])} steps/s, {s['wall_s']:.2f} s wall)")]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


def _engine_and_workload(a):
    from .presets import get_preset
    preset = get_preset(a.preset, gpu_memory_utilization=a.gpu_mem_util)
    return preset, workload_from_args(a, max_total_len=preset.max_request_tokens(**engine_overrides(a)))


def print_replicas(s: dict) -> None:
    t = Table(title=f"{s['replicas']} replicas, router {s['router']}: per replica", header_style="bold")
    for c in ("replica", "preset", "scheduler", "routed", "SLO attain.", "TTFT P99 (s)", "GPU busy (GPU-s)",
              "preemptions", "KV use mean"):
        t.add_column(c, justify="right")
    for r in s["per_replica"]:
        t.add_row(str(r["replica"]), r["preset"], r["scheduler"], str(r["routed"]), f"{r['slo_attainment']:.3f}",
                  _fmt(r["ttft_p99_s"]), _fmt(r["gpu_busy_s"]), str(r["num_preemptions"]), f"{r['kv_util_mean']:.1%}")
    (console if console.is_terminal else Console(width=160)).print(t)
    console.print(f"load imbalance (max / mean GPU busy) [bold]{s['load_imbalance']:.3f}[/]; requests "
                  f"imbalance {s['requests_imbalance']:.3f}; GPU-seconds busy {_fmt(s['gpu_seconds'])}, "
                  f"provisioned {_fmt(s['gpu_seconds_provisioned'])} ({s['num_gpus']} GPUs x makespan)")


def _cluster_replicas(a, scheduler: str):
    """The ReplicaSpecs of ``--replicas`` (``--preset`` may list one preset per replica)."""
    from .cluster import ReplicaSpec
    from .presets import get_preset
    names = [x.strip() for x in a.preset.split(",") if x.strip()]
    if len(names) not in (1, a.replicas):
        raise ValueError(f"--preset lists {len(names)} presets for {a.replicas} replicas; give one, or one per replica")
    over = engine_overrides(a)
    presets = {n: get_preset(n, gpu_memory_utilization=a.gpu_mem_util) for n in names}
    names = names * a.replicas if len(names) == 1 else names
    return [ReplicaSpec(presets[n].engine_config(**over), presets[n].cost_model, scheduler, presets[n].name)
            for n in names]


def cmd_simulate(a) -> int:
    if a.replicas is not None and a.replicas < 1:
        raise ValueError(f"--replicas {a.replicas}: must be >= 1")
    if a.replicas is None and a.router is None:
        from .simulate import simulate
        preset, wl = _engine_and_workload(a)
        s = simulate(wl, a.scheduler, preset, engine_overrides(a), progress=not a.no_progress)
        print_summary(s, f"{a.scheduler} on {preset.name}")
        write_json(s, a.json)
        return 0
    from .cluster import simulate_cluster
    from .presets import get_preset
    a.replicas = a.replicas or 1
    replicas = _cluster_replicas(a, a.scheduler)
    # oversize requests are judged against the smallest replica: any replica may get any request
    limit = min(get_preset(r.preset).max_request_tokens(**engine_overrides(a)) for r in replicas)
    wl = workload_from_args(a, max_total_len=limit)
    s = simulate_cluster(wl, replicas, a.router or "round-robin", progress=not a.no_progress)
    s["scheduler"] = a.scheduler
    s["preset"] = ",".join(sorted({r.preset for r in replicas}))
    print_summary(s, f"{a.scheduler} on {s['replicas']} x {s['preset']}, router {s['router']}")
    print_replicas(s)
    write_json(s, a.json)
    return 0


def cmd_goodput(a) -> int:
    from .simulate import goodput
    preset, wl = _engine_and_workload(a)
    rates = [float(x) for x in a.rates.split(",")]
    r = goodput(wl, a.scheduler, preset, rates, a.threshold, engine_overrides=engine_overrides(a))
    t = Table(title=f"SLO attainment vs rate ({r['unit']}), {a.scheduler} on {preset.name}")
    t.add_column("rate", justify="right")
    t.add_column("attainment", justify="right")
    for x, y in r["points"]:
        t.add_row(f"{x:.4g}", f"{y:.3f}")
    console.print(t)
    console.print(f"goodput (attainment >= {a.threshold}): [bold]{r['goodput']:.4g}[/] {r['unit']}"
                  + (" (still above threshold at the largest rate)" if r["saturated_at_max"] else ""))
    write_json(r, a.json)
    return 0


def cmd_calibrate(a) -> int:
    from .calibration import calibrate_profile
    if a.measurements:
        mod = importlib.import_module("llmsched_env.calibrate_measured")
        return mod.cmd_calibrate_measurements(a)
    if not a.profile:
        raise SystemExit("error: give --profile PATH/mlp.csv (or --measurements DIR)")
    r = calibrate_profile(a.profile, a.tp, a.holdout_every)
    r.pop("_models")
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        console.print(f"{r['profile']} TP {r['tp']}: held-out MAPE [bold]{r['mape_heldout']:.2f}%[/] "
                      f"(max {r['max_ape_heldout']:.2f}%, {r['n_heldout']} held out, {r['n_fit']} fit); "
                      f"roofline form: {r['roofline_mape_heldout']:.2f}%")
    return 0


def cmd_presets(a) -> int:
    from .presets import get_preset, list_presets
    if a.name:
        print(json.dumps(get_preset(a.name).describe(), indent=2, default=str))
        return 0
    t = Table(title="presets")
    for c in ("name", "GPU", "model", "TP", "KV blocks", "calibrated", "provenance"):
        t.add_column(c)
    for n in list_presets():
        p = get_preset(n)
        t.add_row(n, p.gpu.name, p.shape.name, str(p.tp), str(p.num_kv_blocks), str(p.calibrated), p.provenance)
    console.print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmsched", description="LLM-serving scheduler environment")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("simulate", help="run one scheduler on one workload (or a cluster) and print metrics")
    p.add_argument("--scheduler", default="fcfs", help="registered scheduler name")
    p.add_argument("--replicas", type=int, help="simulate a cluster of this many replicas (each runs --scheduler; "
                                                "--preset may list one preset per replica)")
    p.add_argument("--router", help="router spec for the cluster (default round-robin): "
                                    "round-robin, random, lor, least-tokens, p2c, kv-aware, affinity, learned:path=DIR")
    add_engine_args(p)
    add_workload_args(p)
    p.add_argument("--json", help="write the metrics summary to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("goodput", help="sweep the rate; report the highest with SLO attainment >= threshold")
    p.add_argument("--scheduler", default="fcfs")
    p.add_argument("--rates", default="0.25,0.5,1,2,4,8,16", help="ascending rates to try (req/s or rate scale)")
    p.add_argument("--threshold", type=float, default=0.9)
    add_engine_args(p)
    add_workload_args(p)
    p.add_argument("--json")
    p.set_defaults(func=cmd_goodput)

    p = sub.add_parser("calibrate", help="fit the cost model to a Vidur profile (or to measurements)")
    p.add_argument("--profile", help="Vidur-format mlp.csv")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree rows to fit")
    p.add_argument("--holdout-every", type=int, default=4, help="hold out every K-th distinct num_tokens")
    p.add_argument("--measurements", help="folder written by `llmsched profile`")
    p.add_argument("--name", help="preset name to save (with --measurements)")
    p.add_argument("--out", help="where to save the fitted preset JSON (with --measurements)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("presets", help="list presets, or describe one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_presets)

    for mod in PLUGINS:
        importlib.import_module(mod).add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """The ``llmsched`` command; exit status 0, 1 (a run failed) or 2 (bad input, with a message)."""
    t0 = _IMPORTED_S if argv is None else time.perf_counter()
    a = build_parser().parse_args(argv)
    a.t0 = t0  # when the command began: a ``--time-limit`` bounds it from here (perf_counter s)
    try:
        code = _run(a)
        if argv is None and getattr(a, "fast_exit", False):
            # the console script ends here: skip tearing down what the command built (a big
            # CP-SAT model takes seconds to destroy, outside its --time-limit)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except SystemExit as e:  # bad input: the message, exit status 2 (as argparse's own errors)
        if isinstance(e.code, str):
            print(e.code if e.code.startswith("error") else f"error: {e.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


def _run(a) -> int:
    from .calibration import ProfileError
    from .data import DataNotFound
    from .engine import SchedulerStalled, WorkloadRejected
    from .plan import PlanError
    from .presets import UnknownPreset
    from .router import RouteError, UnknownRouter
    from .runner import RayUnavailable
    from .scheduler import UnknownScheduler
    from .workload import TraceError
    for flag in ("json", "out", "csv"):  # fail before the run, not after it
        check_writable(getattr(a, flag, None), f"--{flag}")
    util = getattr(a, "gpu_mem_util", None)
    if util is not None and not 0 < util <= 1:
        raise SystemExit(f"error: --gpu-mem-util is a share of the GPU's memory in (0, 1] (got {util})")
    threshold = getattr(a, "threshold", None)
    if threshold is not None and not 0 < threshold <= 1:
        raise SystemExit(f"error: --threshold is an SLO attainment in (0, 1] (got {threshold})")
    try:
        return a.func(a) or 0
    except (FileNotFoundError, DataNotFound, TraceError, ProfileError, WorkloadRejected, UnknownPreset,
            UnknownScheduler, UnknownRouter, RouteError, RayUnavailable, PlanError, SchedulerStalled,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
