"""Measurements of the CP-SAT optimal schedule bound (baselines/optimal.py).

Instances: windows of the splitwise_conv trace with every prompt and output length scaled by
``--length-scale`` (at least 1 token), all arriving at t = 0 (an offline batch, as in InferMax's
GPU-cost study), block size 1, KV capacity ``--kv-fraction`` of the instance's tokens (at least the
largest request), the InferMax Llama-2-7B cost model by default. SLO targets are scaled with the
batch latencies (``--slo-ttft``, ``--slo-tbt``) so that the SLO objectives are not trivial.

    python eval/optimal_bound.py scaling --objective gpu_time --sizes 2,3,4,6,8 --time-limit 60
    python eval/optimal_bound.py preemption --instances 8 --requests 4 --time-limit 60

``scaling`` solves growing instances (requests x tokens) until one is not proven optimal within the
limit; ``preemption`` solves each instance with and without preemption (GPU time) and reports the
ratio. Results are printed with rich and written as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from baselines.optimal import heuristic_runs, replay, solve
from baselines.solve_cli import scale_lengths
from llmsched_env.engine import EngineConfig
from llmsched_env.plan import BatchPlan
from llmsched_env.presets import get_preset
from llmsched_env.workload import SLOClass, WorkloadConfig, build_workload

console = Console(width=150)


def instance(num_requests: int, window_start: int, args) -> tuple[list, EngineConfig]:
    wl = WorkloadConfig(num_requests=num_requests, arrival="poisson", rate=1.0, lengths="trace",
                        trace="splitwise_conv", window_start=window_start, seed=args.seed,
                        slo_classes=(SLOClass("scaled", args.slo_ttft, args.slo_tbt),))
    specs = [replace(s, arrival_s=0.0) for s in scale_lengths(build_workload(wl), args.length_scale)]
    tokens = sum(s.prompt_len + s.output_len for s in specs)
    largest = max(s.prompt_len + s.output_len - 1 for s in specs)
    preset = get_preset(args.preset)
    cfg = EngineConfig(num_kv_blocks=max(largest, round(args.kv_fraction * tokens)), block_size=1,
                       max_num_batched_tokens=8192, max_num_seqs=256, num_gpus=preset.tp)
    return specs, cfg


def one(specs, cfg, objective, preemption, args, extra_hints=None) -> dict:
    cost = get_preset(args.preset).cost_model
    runs = heuristic_runs(specs, cfg, cost)
    r = solve(specs, cfg, cost, objective, preemption, args.time_limit, args.workers, args.lam,
              hint=True, seed=args.seed, heuristics=runs, extra_hints=extra_hints)
    rep = replay(specs, cfg, cost, r) if r.plans else None
    return {"requests": len(specs), "tokens": sum(s.prompt_len + s.output_len for s in specs),
            "kv_blocks": cfg.num_kv_blocks, "objective": objective, "preemption": preemption,
            "status": r.status, "value": r.objective, "bound": r.bound, "gap": r.gap, "solve_s": r.solve_s,
            "J": r.num_batches, "batches_used": r.batches_used, "j_rigorous": r.j_rigorous,
            "heuristics": r.heuristics, "latency_error": rep["latency_error"]["max_rel"] if rep else None,
            "replay_gpu_busy_s": rep["gpu_busy_s"] if rep else None, "hint": r.hint,
            "plans": [{"tokens": p.tokens, "preempt": sorted(p.preempt)} for p in r.plans]}


def cmd_scaling(args) -> list[dict]:
    rows = []
    t = Table(title=f"{args.objective}: proven optimal within {args.time_limit:g} s ({args.workers} worker)")
    for c in ("requests", "tokens", "J", "status", "value", "bound", "gap", "solve s", "best heuristic"):
        t.add_column(c, justify="right")
    for n in [int(x) for x in args.sizes.split(",")]:
        specs, cfg = instance(n, args.window_start, args)
        row = one(specs, cfg, args.objective, True, args)
        rows.append(row)
        best = min(row["heuristics"].values()) if args.objective == "gpu_time" else max(row["heuristics"].values())
        fmt = lambda v: "-" if v is None else f"{v:.5g}"  # noqa: E731
        t.add_row(str(n), str(row["tokens"]), str(row["J"]), row["status"], fmt(row["value"]), fmt(row["bound"]),
                  "-" if row["gap"] is None else f"{row['gap']:.1%}", f"{row['solve_s']:.1f}", fmt(best))
        console.print(f"{n} requests, {row['tokens']} tokens: {row['status']} gap "
                      f"{row['gap'] if row['gap'] is None else round(row['gap'], 4)} in {row['solve_s']:.1f} s")
    console.print(t)
    return rows


def cmd_preemption(args) -> list[dict]:
    rows = []
    t = Table(title="GPU time: preemption vs no preemption (optimal schedules)")
    for c in ("window", "tokens", "KV", "with", "status", "without", "status", "ratio", "saving"):
        t.add_column(c, justify="right")
    for k in range(args.instances):
        start = args.window_start + k * args.requests
        specs, cfg = instance(args.requests, start, args)
        b = one(specs, cfg, "gpu_time", False, args)
        # the no-preemption optimum is a feasible schedule with preemption too: a hint candidate
        plans = [BatchPlan({int(k): v for k, v in p["tokens"].items()}) for p in b["plans"]]
        a = one(specs, cfg, "gpu_time", True, args, extra_hints={"no-preemption optimum": plans})
        ratio = a["value"] / b["value"]
        rows.append({"window_start": start, "with": a, "without": b, "ratio": ratio})
        t.add_row(str(start), str(a["tokens"]), str(a["kv_blocks"]), f"{a['value']:.5g}", a["status"],
                  f"{b['value']:.5g}", b["status"], f"{ratio:.3f}", f"{1 - ratio:.1%}")
        console.print(f"window {start}: with {a['value']:.5g} ({a['status']}), without {b['value']:.5g} "
                      f"({b['status']}), ratio {ratio:.3f}")
    console.print(t)
    proven = [r["ratio"] for r in rows if r["with"]["status"] == "OPTIMAL" and r["without"]["status"] == "OPTIMAL"]
    if proven:
        console.print(f"both proven optimal on {len(proven)}/{len(rows)} instances: mean ratio "
                      f"{statistics.mean(proven):.3f} (saving {1 - statistics.mean(proven):.1%}), "
                      f"min {min(proven):.3f}; InferMax reports ~30% saving")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("scaling", "preemption"):
        p = sub.add_parser(name)
        p.add_argument("--preset", default="infermax-a100-llama2-7b")
        p.add_argument("--length-scale", type=float, default=0.01)
        p.add_argument("--kv-fraction", type=float, default=0.4)
        p.add_argument("--slo-ttft", type=float, default=0.03, help="TTFT target, s")
        p.add_argument("--slo-tbt", type=float, default=0.004, help="TBT target, s")
        p.add_argument("--lam", type=float, default=10.0, help="return: price per GPU-second")
        p.add_argument("--time-limit", type=float, default=60.0)
        p.add_argument("--workers", type=int, default=1)
        p.add_argument("--window-start", type=int, default=0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json")
        if name == "scaling":
            p.add_argument("--objective", choices=["gpu_time", "slo", "return"], default="gpu_time")
            p.add_argument("--sizes", default="2,3,4,6,8", help="requests per instance")
        else:
            p.add_argument("--instances", type=int, default=8)
            p.add_argument("--requests", type=int, default=4)
    args = ap.parse_args()
    rows = cmd_scaling(args) if args.cmd == "scaling" else cmd_preemption(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
