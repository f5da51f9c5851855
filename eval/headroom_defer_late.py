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
    only after every other waiting request."""

    def admission_key(self, req, now: float) -> tuple:
        late = not req.token_times and now > req.arrival_s + req.ttft_slo_s
        return (late, *super().admission_key(req, now))


def main(argv=None) -> None:
    import numpy as np

    from agents.rollout import direct_row
    from eval.stats import t_interval
    from llmsched_env import ServingEnv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=10_000, help="first reset seed (held-out: 10,000..)")
    a = ap.parse_args(argv)
    env = ServingEnv("default")
    rows = {"slai": [], "slai, defer late": []}
    for seed in range(a.seed, a.seed + a.episodes):
        env.reset(seed=seed)
        for name, sched in (("slai", SLAIScheduler()), ("slai, defer late", SlaiDeferLate())):
            rows[name].append(direct_row(env, sched))
    for name, rs in rows.items():
        print(f"{name:18s} return {np.mean([r['return'] for r in rs]):7.2f}  "
              f"SLO attainment {np.mean([r['slo_attainment'] for r in rs]):.3f}")
    d = t_interval([x["return"] - y["return"] for x, y in zip(rows["slai, defer late"], rows["slai"])])
    print(f"defer late - slai: return {d.mean:+.2f} [95% CI {d.mean - d.half:+.2f}, {d.mean + d.half:+.2f}] "
          f"over {a.episodes} episodes (reset seeds {a.seed}..{a.seed + a.episodes - 1})")


if __name__ == "__main__":
    main()
