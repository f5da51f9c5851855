"""Headroom above slai on the default scenario: slai with requests already past their TTFT target
moved to the back of its admission order ("defer late"), against slai itself, on the same
held-out workloads. An analysis of what a learned policy could gain (README, Training), not a
registered baseline.

    python eval/headroom_defer_late.py [--episodes 20] [--seed 10000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baselines.slai import SLAIScheduler  # noqa: E402


class SlaiDeferLate(SLAIScheduler):
    """slai, but a waiting request with no first token and its TTFT target passed is admitted
    only after every other waiting request (its priority is raised by 100 for the sort)."""

    def schedule(self, engine):
        now = engine.now_s
        late = [r for r in engine.iter_waiting() if not r.token_times and now > r.arrival_s + r.ttft_slo_s]
        for r in late:
            r.priority += 100
        try:
            return super().schedule(engine)
        finally:
            for r in late:
                r.priority -= 100


def main(argv=None) -> None:
    import numpy as np

    from agents.rollout import metrics_row
    from eval.stats import t_interval
    from llmsched_env import Engine, ServingEnv, run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=10_000, help="first reset seed (held-out: 10,000..)")
    a = ap.parse_args(argv)
    env = ServingEnv("default")
    rows = {"slai": [], "slai, defer late": []}
    for seed in range(a.seed, a.seed + a.episodes):
        env.reset(seed=seed)
        for name, sched in (("slai", SLAIScheduler()), ("slai, defer late", SlaiDeferLate())):
            m = run(Engine(env.specs, env.engine_config, env.cost_model), sched, max_steps=env.scenario.max_steps)
            gpu = -env.scenario.lam * m["gpu_busy_s"]
            rows[name].append(metrics_row({"metrics": m, "return_slo": float(m["num_slo_met"]), "return_gpu": gpu,
                                           "repair_totals": {}}, m["num_slo_met"] + gpu))
    for name, rs in rows.items():
        print(f"{name:18s} return {np.mean([r['return'] for r in rs]):7.2f}  "
              f"SLO attainment {np.mean([r['slo_attainment'] for r in rs]):.3f}")
    d = t_interval([x["return"] - y["return"] for x, y in zip(rows["slai, defer late"], rows["slai"])])
    print(f"defer late - slai: return {d.mean:+.2f} [95% CI {d.mean - d.half:+.2f}, {d.mean + d.half:+.2f}] "
          f"over {a.episodes} episodes (reset seeds {a.seed}..{a.seed + a.episodes - 1})")


if __name__ == "__main__":
    main()
