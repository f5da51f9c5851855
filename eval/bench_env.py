"""Environment speed: env steps per second under a random masked policy, observation and mask
included, on one core.

    PYTHONPATH=. python eval/bench_env.py [--steps 20000] [--scenario heavy] [--num-kv-blocks 8192]
        [--num-requests 300] [--rate 15]
        [--policy weighted] [--profile]

The defaults measure the speed goal's setting: K = 32, the heavy scenario's tiers and lengths
with 300 requests per episode at 15 req/s and the KV cache enlarged to 8,192 blocks, so that the
running set stays near its 24 places and batches hold about two dozen requests.

Policies: ``uniform`` samples each slot's choice uniformly among the choices its mask allows
(it preempts a quarter of the running requests every step, so batches stay small); ``weighted``
samples among the allowed choices with weights hold 1, preempt 0.02, run 6, fill 2, each chunk 1,
and always the largest budget level, so the running set fills up and batches hold dozens of
requests. ``uniform`` samples the budget level uniformly. Reports steps/s of wall time and of this process's CPU
time (the fairer figure on a shared machine), the mean batch size (requests) and the mean running
set; ``--profile`` prints the top functions of a cProfile run.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from llmsched_env import ServingEnv, get_scenario
from llmsched_env.action import CHUNK0, FILL, HOLD, PREEMPT, RUN


def make_policy(env: ServingEnv, kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    K, A = env.scenario.num_slots, env.decoder.num_choices
    B = len(env.decoder.budget_levels)
    w = np.ones(A)
    if kind == "weighted":
        w[HOLD], w[PREEMPT], w[RUN], w[FILL] = 1.0, 0.02, 6.0, 2.0
        w[CHUNK0:] = 1.0
    elif kind != "uniform":
        raise ValueError(f"policy must be uniform or weighted, not {kind!r}")
    logw = np.log(w)

    def act(mask: np.ndarray) -> np.ndarray:
        m = mask[:K * A].reshape(K, A)
        # Gumbel-max: a sample from the masked, weighted categorical of every slot at once.
        g = logw - np.log(-np.log(rng.random((K, A))))
        a = np.where(m, g, -np.inf).argmax(1)
        return np.append(a, B - 1 if kind == "weighted" else rng.integers(B))

    return act


def bench(scenario: str, steps: int, policy: str, seed: int = 0, num_kv_blocks: int | None = None,
          num_requests: int | None = None, rate: float | None = None) -> dict:
    sc = get_scenario(scenario)
    over = {}
    if num_kv_blocks:
        over["num_kv_blocks"] = num_kv_blocks
    if num_requests:
        over["workload"] = sc.workload.with_(num_requests=num_requests)
    if rate:
        over["rate_range"] = (rate, rate)
    env = ServingEnv(sc, **over)
    act = make_policy(env, policy, seed)
    env.reset(seed=seed)
    batch = running = episodes = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(steps):
        _, _, term, trunc, info = env.step(act(env.action_masks()))
        batch += info["batch_size"]
        running += len(env.engine.running)
        if term or trunc:
            episodes += 1
            env.reset()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"scenario": scenario, "policy": policy, "steps": steps, "seconds": dt, "cpu_seconds": cpu,
            "steps_per_s": steps / dt, "steps_per_cpu_s": steps / cpu, "mean_batch": batch / steps, "mean_running": running / steps,
            "episodes_finished": episodes, "num_slots": env.scenario.num_slots}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--scenario", default="heavy")
    ap.add_argument("--num-kv-blocks", type=int, default=8192, help="0 = the scenario's")
    ap.add_argument("--num-requests", type=int, default=300, help="0 = the scenario's")
    ap.add_argument("--rate", type=float, default=15.0, help="arrival rate (req/s); 0 = the scenario's range")
    ap.add_argument("--policy", default="weighted", choices=("uniform", "weighted"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
    r = bench(a.scenario, a.steps, a.policy, a.seed, a.num_kv_blocks or None, a.num_requests or None,
              a.rate or None)
    if a.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    print(f"{r['steps_per_s']:,.0f} env steps/s wall, {r['steps_per_cpu_s']:,.0f} per CPU-second "
          f"({r['steps']} steps in {r['seconds']:.2f} s; K={r['num_slots']}, "
          f"{r['policy']} masked policy, mean batch {r['mean_batch']:.1f} requests, mean running "
          f"{r['mean_running']:.1f}, {r['episodes_finished']} episodes finished)")


if __name__ == "__main__":
    main()
