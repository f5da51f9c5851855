"""The learned router against every heuristic router on held-out Routing-v0 workloads.

    python eval/routing_eval.py --router agents/zoo/router --episodes 20 [--workers 2] [--json out.json]
        [--trace NAME] [--num-kv-blocks N] [--rates LO,HI]

(``train/ppo.py --scenario routing`` ends with the same table on its own router.)

Each episode is the workload ``RoutingEnv.reset(seed)`` serves (seeds 10,000.. by default;
training uses lower seeds), run by each router on the same cluster (R replicas of the env's
preset and scheduler). ``--trace``, ``--num-kv-blocks`` (0: the preset's whole KV cache) and
``--rates`` move the episodes off the router's training distribution (splitwise_conv lengths,
1,024 blocks per replica, 14-22 req/s). Reported per router: mean SLO attainment, and the paired
difference learned - router over episodes with its 95% t-interval (``eval.stats.t_interval``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from eval.stats import CI_METHOD, t_interval  # noqa: E402
from llmsched_env.router import heuristic_routers  # noqa: E402
from llmsched_env.runner import run_jobs  # noqa: E402


def episode_attainment(job: tuple) -> dict:
    """Attainment of every router on the workload of one reset seed."""
    seed, routers, replicas, scheduler, *rest = job
    from llmsched_env.cluster import Cluster
    env = make_env(replicas, scheduler, **(rest[0] if rest else {}))
    specs = env.episode_workload(seed)
    out = {}
    for r in routers:
        m = Cluster(env.cluster.specs, r).run(specs)
        out[r] = {"slo_attainment": m["slo_attainment"], "load_imbalance": m["load_imbalance"]}
    return out


def make_env(replicas: int, scheduler: str, trace: str | None = None, num_kv_blocks: int | None = None,
             rates: tuple[float, float] | None = None):
    """The RoutingEnv whose episodes are evaluated; unset options keep its defaults (the
    training distribution)."""
    from llmsched_env.routing_env import RoutingEnv
    kw: dict = {"num_replicas": replicas, "scheduler": scheduler}
    if num_kv_blocks is not None:
        kw["num_kv_blocks"] = num_kv_blocks or None
    if rates is not None:
        kw["rate_range"] = rates
    env = RoutingEnv(**kw)
    if trace is not None:
        from llmsched_env.workload import load_trace
        load_trace(trace)
        env.workload = env.workload.with_(trace=trace)
    return env


def _rates(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates {text!r}: give LO,HI in requests/s, e.g. 40,60") from None
    return lo, hi


def compare_routers(eps: list[dict], routers: list[str], learned: str) -> dict:
    """Per router: mean attainment, the paired difference learned - router and the load
    imbalance over the episodes, each with its 95% t-interval."""
    rows = {}
    for r in routers:
        att = [e[r]["slo_attainment"] for e in eps]
        diff = t_interval([e[learned]["slo_attainment"] - x for e, x in zip(eps, att)])
        rows[r] = {"attainment": t_interval(att).to_dict(), "learned_minus": diff.to_dict(),
                   "load_imbalance": t_interval([e[r]["load_imbalance"] for e in eps]).to_dict()}
    return rows


def print_routers(rows: dict, learned: str, title: str) -> None:
    t = Table(title=title, header_style="bold")
    for c in ("router", "SLO attainment", "learned - router [95% CI]", "imbalance"):
        t.add_column(c, justify="right")
    for r, v in rows.items():
        d = v["learned_minus"]
        t.add_row(r, f"{v['attainment']['mean']:.4f}", "-" if r == learned or d["n"] < 2 else
                  f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]", f"{v['load_imbalance']['mean']:.3f}")
    Console(width=140).print(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--router", default="agents/zoo/router", help="a router directory (train/ppo.py --scenario routing)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--trace", help="trace of the request lengths (default: splitwise_conv, as in training)")
    ap.add_argument("--num-kv-blocks", type=int, help="KV blocks per replica; 0 = the preset's whole cache "
                    "(default: 1,024, as in training)")
    ap.add_argument("--rates", type=_rates, help="LO,HI: the cluster's arrival rate range, requests/s "
                    "(default: 14,22, as in training)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    off = {k: v for k, v in (("trace", a.trace), ("num_kv_blocks", a.num_kv_blocks), ("rates", a.rates))
           if v is not None}
    try:
        make_env(1, "sarathi", **off)  # bad options fail here, before any worker starts
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    import yaml
    meta = yaml.safe_load((Path(a.router) / "router.yaml").read_text())
    learned = f"learned:path={a.router}"
    routers = [learned] + heuristic_routers()
    jobs = [(a.first_seed + i, routers, int(meta["num_replicas"]), meta.get("scheduler", "sarathi"), off)
            for i in range(a.episodes)]
    eps = run_jobs(episode_attainment, jobs, workers=a.workers, label="episodes")
    rows = compare_routers(eps, routers, learned)
    print_routers(rows, learned, f"{meta['num_replicas']} x {meta.get('scheduler')}: {a.episodes} held-out "
                  f"episodes (seeds {a.first_seed}..)" + "".join(f", {k}={v}" for k, v in off.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"routers": rows, "episodes": eps, "ci": CI_METHOD,
                                            "seeds": [j[0] for j in jobs], "router_meta": meta,
                                            "off_distribution": off}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
