"""Heuristic schedulers on an environment scenario, measured by the environment itself: each
scheduler's plans are encoded as actions (``ServingEnv.encode_plan``) and stepped, so the return
is the env's reward and the attainment its metrics. This is the bar a learned policy must clear.

    PYTHONPATH=. python eval/env_baselines.py [--scenario default] [--episodes 5] [--seed 0]
        [--schedulers fcfs,vllm-v1:priority,vllm-v1:budget512] [--json OUT]

A scheduler is ``name`` or ``name:variant`` with variants ``priority`` (policy="priority") and
``budgetN`` (token_budget=N). Episodes use reset seeds seed, seed+1, ... (the same workloads for
every scheduler). An episode where a scheduler admits a request beyond the K slots (no action can
say that) is run directly on the same workload, its return computed from the metrics; the last
column counts those episodes.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from agents.rollout import heuristic_episode
from llmsched_env import ServingEnv
from llmsched_env.scheduler import split_specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedulers", default="fcfs,vllm-v1:priority,vllm-v1:budget512,vllm-v1:budget256")
    ap.add_argument("--json")
    a = ap.parse_args()
    env = ServingEnv(a.scenario)
    rows = {}
    for spec in split_specs(a.schedulers):
        eps = [heuristic_episode(env, spec, a.seed + i) for i in track(range(a.episodes), description=spec)]
        rows[spec] = {k: float(np.mean([e[k] for e in eps])) for k in ("return", "slo_attainment", "gpu_busy_s",
                                                                          "steps", "preemptions")}
        rows[spec]["direct_episodes"] = sum(e["via"] == "direct" for e in eps)
        rows[spec]["episodes"] = eps
    t = Table(title=f"scenario {a.scenario}: {a.episodes} episodes (reset seeds {a.seed}..)")
    for c in ("scheduler", "return", "SLO attainment", "GPU-s", "steps", "preemptions", "run directly"):
        t.add_column(c, justify="right")
    for spec, r in rows.items():
        t.add_row(spec, f"{r['return']:.2f}", f"{r['slo_attainment']:.3f}", f"{r['gpu_busy_s']:.1f}",
                  f"{r['steps']:.0f}", f"{r['preemptions']:.0f}", f"{r['direct_episodes']}/{a.episodes}")
    Console().print(t)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"scenario": a.scenario, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
