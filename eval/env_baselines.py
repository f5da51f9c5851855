"""Heuristic schedulers on an environment scenario: the bar a learned policy must clear.

    python eval/env_baselines.py [--scenario default] [--episodes 8] [--seed 5000]
        [--schedulers fcfs,sarathi,vllm-v1:policy=priority,edf,slai,rule:name=slai] [--workers N] [--json OUT]

Every scheduler plays the same workloads (reset seeds seed, seed + 1, ...) through
``agents.episodes.run_episode``, so the return is the env's objective (requests meeting their
SLO - lambda x GPU-s). ``rule:name=X`` is heuristic X's order as a point of the agent's action
space (``llmsched_env.priority.HEURISTIC_RULES``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agents.episodes import run_episode  # noqa: E402
from llmsched_env.runner import run_jobs  # noqa: E402
from llmsched_env.scheduler import split_specs  # noqa: E402

def _episode(job: tuple) -> dict:
    scenario, spec, seed = job
    return run_episode(scenario, spec, seed)


DEFAULT = "fcfs,sarathi,vllm-v1:policy=priority,edf,slai,rule:name=fcfs,rule:name=sarathi,rule:name=slai"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="default")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument("--schedulers", default=DEFAULT)
    p.add_argument("--workers", type=int, default=1, help="processes (local spawn pool)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    seeds = range(a.seed, a.seed + a.episodes)
    t = Table(title=f"{a.scenario}: seeds {a.seed}..{a.seed + a.episodes - 1}")
    for c in ("scheduler", "return", "SLO attain.", "GPU-s", "preempt."):
        t.add_column(c, justify="left" if c == "scheduler" else "right")
    out = {}
    specs = split_specs(a.schedulers)
    jobs = [(a.scenario, spec, s) for spec in specs for s in seeds]
    done = run_jobs(_episode, jobs, workers=a.workers, label="episodes")
    for i, spec in enumerate(specs):
        rows = done[i * len(seeds):(i + 1) * len(seeds)]
        m = {k: float(np.mean([r[k] for r in rows])) for k in ("return", "slo_attainment", "gpu_busy_s", "num_preemptions")}
        out[spec] = m
        t.add_row(spec, f"{m['return']:.2f}", f"{m['slo_attainment']:.3f}", f"{m['gpu_busy_s']:.1f}",
                  f"{m['num_preemptions']:.0f}")
    Console(width=120).print(t)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
