"""How far every scheduler (and the shipped policy) is from the relaxation bounds, per episode of
an env scenario: where the headroom is.

    python eval/bound_gap.py [--scenario default] [--episodes 20] [--seed 10000] [--workers 2]
        [--schedulers ppo:path=agents/zoo/default,fcfs,sarathi,vllm-v1:policy=priority,slai] [--json OUT]

For each episode (the workload and engine ``ServingEnv.reset(seed)`` draws) the bounds of
``baselines/bound.py`` hold for every schedule the engine accepts: GPU-s >= ``GPU_lb`` and
requests meeting their SLO <= ``met_ub``, so the env's return (met - lambda x GPU-s) <=
``met_ub - lambda x GPU_lb``. Reported per scheduler, mean over episodes with 95% t-intervals:
GPU-s / GPU_lb (>= 1), met_ub - met (>= 0) and the return's distance to its bound (>= 0). An
episode the env truncated (``max_steps``) before every request finished is left out for the
scheduler it truncated (the GPU bound counts serving all requests); its row says how many it
served.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from eval.stats import format_interval as ci, t_interval  # noqa: E402
from llmsched_env.runner import run_jobs  # noqa: E402
from llmsched_env.scheduler import split_specs  # noqa: E402

DEFAULT = "ppo:path=agents/zoo/default,fcfs,sarathi,vllm-v1:policy=priority,slai"
SLO_TIME_LIMIT_S = 20.0  # HiGHS seconds per episode for met_ub


def episode(job: tuple) -> dict:
    """The bounds of one episode and every scheduler's row on it."""
    from agents.episodes import run_episode
    from baselines.bound import gpu_time_lower_bound, slo_upper_bound
    from llmsched_env.env import ServingEnv
    scenario, seed, specs_, slo_limit_s = job
    env = ServingEnv(scenario)
    env.reset(seed=seed)
    t = time.perf_counter()
    gpu = gpu_time_lower_bound(env.specs, env.engine_config, env.cost_model)
    slo = slo_upper_bound(env.specs, env.engine_config, env.cost_model, time_limit_s=slo_limit_s)
    bound_s = time.perf_counter() - t
    lam = env.scenario.lam
    rows = {s: run_episode(scenario, s, seed) for s in specs_}
    return {"seed": seed, "num_requests": len(env.specs), "gpu_lb": gpu.value, "met_ub": slo.value,
            "met_ub_exact": bool(slo.exact), "return_ub": slo.value - lam * gpu.value, "lam": lam,
            "bound_s": bound_s, "rows": rows}


def summarize_gaps(eps: list[dict], specs_: list[str]) -> dict:
    """Per scheduler, means and 95% t-intervals over the episodes it served to the end (an episode
    the env truncated before every request finished is left out for that scheduler: the GPU
    bound counts serving every request); ``episodes`` counts those with no scheduler truncated."""
    def done(e, s):
        return e["rows"][s]["num_finished"] == e["num_requests"]

    full = [e for e in eps if all(done(e, s) for s in specs_)]
    out = {"episodes": len(full), "truncated": len(eps) - len(full), "schedulers": {}}
    for s in specs_:
        mine = [e for e in eps if done(e, s)]
        met = [e["rows"][s]["slo_attainment"] * e["num_requests"] for e in mine]
        out["schedulers"][s] = {
            "episodes": len(mine),
            "gpu_over_lb": t_interval([e["rows"][s]["gpu_busy_s"] / e["gpu_lb"] for e in mine]).to_dict(),
            "met_gap": t_interval([e["met_ub"] - m for e, m in zip(mine, met)]).to_dict(),
            "return_gap": t_interval([e["return_ub"] - e["rows"][s]["return"] for e in mine]).to_dict(),
            "return": t_interval([e["rows"][s]["return"] for e in mine]).to_dict()}
    out["bounds"] = {"gpu_lb": t_interval([e["gpu_lb"] for e in eps]).to_dict(),
                     "met_ub": t_interval([e["met_ub"] for e in eps]).to_dict(),
                     "return_ub": t_interval([e["return_ub"] for e in eps]).to_dict(),
                     "met_ub_exact": sum(e["met_ub_exact"] for e in eps),
                     "bound_s_max": max((e["bound_s"] for e in eps), default=0.0)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="default")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=10_000, help="first reset seed (held-out seeds by default)")
    p.add_argument("--schedulers", default=DEFAULT)
    p.add_argument("--slo-time-limit", type=float, default=SLO_TIME_LIMIT_S, help="HiGHS seconds per episode for met_ub")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.episodes < 2:
        raise SystemExit("--episodes must be >= 2 (a confidence interval needs two)")
    specs_ = split_specs(a.schedulers)
    jobs = [(a.scenario, a.seed + k, specs_, a.slo_time_limit) for k in range(a.episodes)]
    eps = run_jobs(episode, jobs, workers=a.workers, label="episodes")
    res = summarize_gaps(eps, specs_)
    b = res["bounds"]
    t = Table(title=f"{a.scenario}: {a.episodes} episodes from seed {a.seed} ({res['truncated']} truncated by "
                    f"some scheduler); bounds: GPU_lb {b['gpu_lb']['mean']:.1f} GPU-s, met_ub {b['met_ub']['mean']:.1f}, "
                    f"return_ub {b['return_ub']['mean']:.2f}")
    for c in ("scheduler", "episodes", "return", "GPU-s / GPU_lb", "met_ub - met", "return_ub - return"):
        t.add_column(c, justify="left" if c == "scheduler" else "right")

    for s, v in res["schedulers"].items():
        t.add_row(s, str(v["episodes"]), f"{v['return']['mean']:.2f}", ci(v["gpu_over_lb"], "{:.3f}"), ci(v["met_gap"]),
                  ci(v["return_gap"]))
    Console(width=150).print(t)
    if a.json:
        Path(a.json).write_text(json.dumps({**res, "episode_rows": eps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
