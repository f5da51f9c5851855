"""Decision latency of an exported policy: encode (observation) + infer (onnxruntime) + decode
(action -> rule), and the plan built from the rule, with 32 and 256 requests in view.

    python eval/bench_export.py [--policy agents/zoo/default] [--repeats 2000]

The engine is mid-run on the preset's whole KV cache with 256 sequences, with ``n`` requests
running or waiting (at least 3/4 of them running). Reports the median and P99 in microseconds of one decision and of one
``PriorityPlanner.plan`` (which runs every engine step, decision or not). The issue's goal:
decision under 300 us with 32 requests in view, under 1 ms with 256.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def busy_engine(n: int, seed: int = 0):
    """An engine (h100-llama3-8b, whole KV cache, 256 sequences) with ``n`` requests in view, at
    least three quarters of them running (n requests arrive within milliseconds; FCFS admits them)."""
    from llmsched_env import Engine, WorkloadConfig, build_workload, get_preset
    from llmsched_env.priority import HEURISTIC_RULES, PriorityPlanner
    from llmsched_env.scenarios import TIERS
    preset = get_preset("h100-llama3-8b")
    specs = build_workload(WorkloadConfig(num_requests=n, arrival="poisson", rate=1e5, lengths="uniform",
                                          prompt_range=(64, 1024), output_range=(512, 2048), slo_classes=TIERS,
                                          seed=seed))
    eng = Engine(specs, preset.engine_config(), preset.cost_model)
    planner = PriorityPlanner()
    while len(eng.running) < 3 * n // 4 or len(eng.running) + eng.num_waiting < n:
        eng.step(planner.plan(eng, HEURISTIC_RULES["fcfs"]))
    return eng


def bench(export_dir: str, n: int, repeats: int) -> dict:
    from agents.onnx_runtime import OnnxScheduler
    sched = OnnxScheduler(export_dir)
    eng = busy_engine(n)
    agent = sched.agent
    agent.sync(eng)
    dec, plan = [], []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        agent.decide(sched.act(agent.observe(eng)))
        t1 = time.perf_counter_ns()
        agent.plan(eng)
        t2 = time.perf_counter_ns()
        dec.append((t1 - t) / 1e3)
        plan.append((t2 - t1) / 1e3)
    return {"requests_in_view": len(eng.running) + eng.num_waiting, "running": len(eng.running),
            "decision_us_median": float(np.median(dec)), "decision_us_p99": float(np.percentile(dec, 99)),
            "plan_us_median": float(np.median(plan)), "plan_us_p99": float(np.percentile(plan, 99))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default=str(ROOT / "agents" / "zoo" / "default"))
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--json")
    a = p.parse_args(argv)
    from agents.export import export_policy
    out = []
    with tempfile.TemporaryDirectory() as d:
        export_policy(a.policy, d, verify_steps=16)
        for n in (32, 256):
            r = bench(d, n, a.repeats)
            out.append(r)
            print(f"{r['requests_in_view']:4d} requests in view ({r['running']} running): decision (encode + infer + "
                  f"decode) median {r['decision_us_median']:.0f} us, P99 {r['decision_us_p99']:.0f} us; plan "
                  f"median {r['plan_us_median']:.0f} us, P99 {r['plan_us_p99']:.0f} us")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
