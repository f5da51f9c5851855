"""A trained policy against every heuristic, on held-out seeds, with paired 95% confidence
intervals.

    PYTHONPATH=. python eval/policy_vs_heuristics.py [--policy agents/zoo/default] [--episodes 20]
        [--seed 10000] [--heuristics all | fcfs,slai,...] [--jobs 2] [--json OUT]

Every scheduler plays the same workloads: reset seeds seed .. seed + episodes - 1 of the policy's
scenario (held out: training draws its workloads from the env's own RNG, imitation uses reset
seeds from 1,000,000, validation 5,000..). The policy acts deterministically through the env; a
heuristic acts through ``encode_plan`` (or, in an episode where it admits beyond the K slots, runs
directly on the same workload; ``agents.rollout.heuristic_episode``; for a policy whose action
vetoes a heuristic's admissions, ``llmsched_env.veto``, every heuristic episode runs directly,
on the same engine and workload). For each heuristic the table gives its means and the paired
difference policy - heuristic of the return (SLO - lambda GPU-s) and of SLO attainment, mean and 95% t-interval over the episodes. The goal row: the best
heuristic by mean SLO attainment.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from eval.stats import t_interval  # noqa: E402
from llmsched_env.scheduler import split_specs  # noqa: E402

ALL = ("fcfs,vllm-v1:priority,vllm-v1:budget512,vllm-v1:budget256,vllm-v0,sarathi,orca,faster-transformer,"
       "no-preempt,infermax-srf,slai,srpt,sjf,ltr,fastserve,edf")


def paired_ci(diff, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its t-interval (low, high): ``eval.stats.t_interval``."""
    iv = t_interval(diff, level)
    return iv.mean, iv.mean - iv.half, iv.mean + iv.half


def _episodes(job):
    kind, name, policy_dir, seeds = job
    import torch
    torch.set_num_threads(1)
    from agents.loader import load_policy
    from agents.rollout import heuristic_episode, policy_episode
    pol = load_policy(policy_dir)
    env = pol.make_env()
    if kind == "policy":
        return name, [policy_episode(env, pol.act, s) for s in seeds]
    return name, [heuristic_episode(env, name, s) for s in seeds]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="agents/zoo/default", help="policy directory (policy.pt + policy.yaml)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--heuristics", default="all")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--json")
    ap.add_argument("--cache", help="JSON file of heuristic episode rows (heuristics are deterministic: "
                                    "rows are reused when scenario, overrides, heuristic and seed match)")
    a = ap.parse_args(argv)
    if a.episodes < 2:
        ap.error("--episodes must be >= 2 for a confidence interval")
    from agents.loader import load_policy
    pol = load_policy(a.policy)  # fail early on a bad directory
    heur = split_specs(ALL) if a.heuristics == "all" else split_specs(a.heuristics)
    seeds = list(range(a.seed, a.seed + a.episodes))
    key = json.dumps([pol.scenario_name, pol.meta.get("overrides")])
    cache = {}
    if a.cache and Path(a.cache).is_file():
        cache = json.loads(Path(a.cache).read_text())
    rows: dict = {}
    jobs = [("policy", "policy", a.policy, seeds)]
    for h in heur:
        hit = [cache.get(f"{key}|{h}|{s}") for s in seeds]
        if all(hit):
            rows[h] = hit
        else:
            jobs.append(("heuristic", h, a.policy, seeds))
    with Progress() as bar, ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as ex:
        task = bar.add_task("schedulers", total=len(jobs))
        for name, eps in ex.map(_episodes, jobs):
            rows[name] = eps
            bar.advance(task)
    rows = {"policy": rows["policy"], **{h: rows[h] for h in heur}}
    if a.cache:
        for h in heur:
            for s, e in zip(seeds, rows[h]):
                cache[f"{key}|{h}|{s}"] = e
        Path(a.cache).write_text(json.dumps(cache))
    p = rows["policy"]
    t = Table(title=f"{a.policy} (scenario {pol.scenario_name}) vs heuristics: {a.episodes} held-out episodes, "
                    f"reset seeds {seeds[0]}..{seeds[-1]}; diff = policy - heuristic, paired 95% CI")
    for c in ("scheduler", "return", "SLO attain.", "GPU-s", "TTFT P99 s", "TBT P99 s", "preempt.",
              "diff return [95% CI]", "diff SLO [95% CI]", "direct"):
        t.add_column(c, justify="right")
    out = {"policy": a.policy, "scenario": pol.scenario_name, "seeds": seeds, "rows": {}}

    def mean(eps, k):
        return float(np.mean([e[k] for e in eps]))
    for name, eps in rows.items():
        dr = paired_ci([x["return"] - y["return"] for x, y in zip(p, eps)])
        ds = paired_ci([x["slo_attainment"] - y["slo_attainment"] for x, y in zip(p, eps)])
        direct = sum(e.get("via") == "direct" for e in eps)
        out["rows"][name] = {k: mean(eps, k) for k in ("return", "slo_attainment", "gpu_busy_s", "ttft_p99_s",
                                                       "tbt_p99_s", "preemptions")}
        out["rows"][name].update({"diff_return": dr, "diff_slo": ds, "direct_episodes": direct})
        t.add_row(name, f"{mean(eps, 'return'):.2f}", f"{mean(eps, 'slo_attainment'):.3f}",
                  f"{mean(eps, 'gpu_busy_s'):.1f}", f"{mean(eps, 'ttft_p99_s'):.2f}", f"{mean(eps, 'tbt_p99_s'):.3f}",
                  f"{mean(eps, 'preemptions'):.0f}",
                  "" if name == "policy" else f"{dr[0]:+.2f} [{dr[1]:+.2f}, {dr[2]:+.2f}]",
                  "" if name == "policy" else f"{ds[0]:+.3f} [{ds[1]:+.3f}, {ds[2]:+.3f}]",
                  "" if name == "policy" else f"{direct}/{a.episodes}")
    console = Console(width=max(160, Console().width))
    console.print(t)
    best = max((n for n in rows if n != "policy"), key=lambda n: out["rows"][n]["slo_attainment"])
    b = out["rows"][best]
    goal = (out["rows"]["policy"]["slo_attainment"] >= b["slo_attainment"]) and b["diff_return"][1] > 0
    out["best_heuristic"] = best
    out["goal_met"] = bool(goal)
    console.print(f"best heuristic by SLO attainment: {best} ({b['slo_attainment']:.3f}); policy "
                  f"{out['rows']['policy']['slo_attainment']:.3f}; return difference {b['diff_return'][0]:+.2f} "
                  f"[{b['diff_return'][1]:+.2f}, {b['diff_return'][2]:+.2f}] -> goal {'MET' if goal else 'NOT met'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
