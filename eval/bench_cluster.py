"""Cluster speed: R replicas serving the whole splitwise_conv trace (19,366 requests) at R times
its rate, so each replica carries the trace's own load.

    python eval/bench_cluster.py [--replicas 1,4,16,64] [--router least-tokens] [--scheduler fcfs] [--repeat 3]

Prints, per R, the simulation's wall and CPU seconds (routing and every replica's steps; the
run with the least CPU of --repeat: CPU time is what a shared machine distorts least), the
metrics' wall seconds, engine steps, and microseconds per simulated request and
per engine step: the per-request cost must not grow with R. Single-threaded: one core.
Goal (issue 18): R = 16 at 16x in under 60 s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmsched_env.cluster import Cluster, cluster_metrics, replicas_from_preset  # noqa: E402
from llmsched_env.presets import get_preset  # noqa: E402
from llmsched_env.workload import WorkloadConfig, build_workload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,4,16,64")
    ap.add_argument("--router", default="least-tokens")
    ap.add_argument("--scheduler", default="fcfs")
    ap.add_argument("--preset", default="h100-llama3-8b")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    preset = get_preset(a.preset)
    for R in (int(x) for x in a.replicas.split(",")):
        specs = build_workload(WorkloadConfig(num_requests=None, arrival="trace", window_start=0, rate_scale=float(R),
                                              oversize="clip", max_total_len=preset.shape.max_model_len))
        best = None
        for _ in range(a.repeat):
            c = Cluster(replicas_from_preset(preset, R, a.scheduler), a.router)
            t0, c0 = time.perf_counter(), time.process_time()
            c.reset(specs)
            route = c.router.route
            while (s := c.next_arrival()) is not None:
                c.route(route(s, c))
            c.drain()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if best is None or cpu < best[1]:
                best = (wall, cpu, c)
        wall, cpu, c = best
        t0 = time.perf_counter()
        m = cluster_metrics(c, wall)
        mwall = time.perf_counter() - t0
        print(f"R={R:3d} {a.router}/{a.scheduler} at {R}x: {m['num_requests']} requests, {m['num_steps']} steps, "
              f"sim {wall:6.2f} s wall, {cpu:6.2f} s CPU (best of {a.repeat}), metrics {mwall:.2f} s, "
              f"{1e6 * cpu / m['num_requests']:7.1f} CPU-us/request, {1e6 * cpu / m['num_steps']:5.1f} CPU-us/step, "
              f"attainment {m['slo_attainment']:.3f}, imbalance {m['load_imbalance']:.3f}", flush=True)


if __name__ == "__main__":
    main()
