"""Environment and training throughput: agent decisions per second, and engine steps per decision.

    python eval/bench_env.py                       # the env alone, the slai rule as a constant action
    python eval/bench_env.py --ppo 20480           # PPO as train/ppo.py runs it (2 subprocess envs, gSDE)
    python eval/bench_env.py --profile             # top functions of a cProfile run of the env

The env alone: ``--decisions`` decisions of the default scenario (observation, rule decoding, the
plan builder every engine step, the engine, the reward), one core. ``--ppo N``: ``N`` decisions
of Stable-Baselines3 PPO built by train/ppo.py's ``build_model`` (the shipped recipe: ``n_envs``
subprocess envs, n_steps, batch, epochs, gSDE, the (64, 64) networks, the learning-rate schedule), rollouts and updates included, no evaluation: the
figure of the issue's throughput goal (>= 1,000 decisions/s on 2 cores). Reports wall time and
decisions/s; the engine steps each decision covers are counted from the env's ``info``.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def bench_env(scenario: str, decisions: int, seed: int = 0) -> dict:
    from llmsched_env import ServingEnv
    from llmsched_env.priority import HEURISTIC_RULES
    env = ServingEnv(scenario)
    action = env.agent.spec.action_of(HEURISTIC_RULES["slai"])
    env.reset(seed=seed)
    steps = episodes = 0
    t = time.perf_counter()
    for _ in range(decisions):
        _, _, term, trunc, info = env.step(action)
        steps += info["engine_steps"]
        if term or trunc:
            episodes += 1
            env.reset()
    dt = time.perf_counter() - t
    return {"what": "env", "scenario": scenario, "decisions": decisions, "seconds": dt,
            "decisions_per_s": decisions / dt, "engine_steps_per_decision": steps / decisions,
            "engine_steps_per_s": steps / dt, "episodes": episodes}


def bench_ppo(scenario: str, decisions: int, n_envs: int, n_steps: int | None = None, seed: int = 0) -> dict:
    import dataclasses

    import torch as th
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    sys.path.insert(0, str(ROOT / "train"))
    from ppo import Args, build_model, make_env
    a = dataclasses.replace(Args(), scenario=scenario, n_envs=n_envs, n_steps=n_steps or Args().n_steps, seed=seed)
    th.set_num_threads(1)
    fns = [make_env(scenario, seed + i, a.reward_scale) for i in range(n_envs)]
    venv = SubprocVecEnv(fns, start_method="spawn") if n_envs > 1 else DummyVecEnv(fns)
    model = build_model(a, venv)
    t = time.perf_counter()
    model.learn(decisions)
    dt = time.perf_counter() - t
    venv.close()
    return {"what": "ppo", "scenario": scenario, "n_envs": n_envs, "decisions": int(model.num_timesteps),
            "seconds": dt, "decisions_per_s": model.num_timesteps / dt}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="default")
    p.add_argument("--decisions", type=int, default=5000, help="env decisions to time")
    p.add_argument("--ppo", type=int, default=0, help="also time this many PPO decisions")
    p.add_argument("--n-envs", type=int, default=None, help="PPO envs (default: the recipe's)")
    p.add_argument("--n-steps", type=int, default=None, help="PPO rollout length per env (default: the recipe's)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    out = []
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
    r = bench_env(a.scenario, a.decisions)
    if a.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    out.append(r)
    print(f"env ({a.scenario}): {r['decisions_per_s']:.0f} decisions/s, {r['engine_steps_per_decision']:.2f} engine "
          f"steps per decision ({r['engine_steps_per_s']:.0f} engine steps/s), {r['decisions']} decisions in "
          f"{r['seconds']:.2f} s")
    if a.ppo:
        sys.path.insert(0, str(ROOT / "train"))
        from ppo import Args
        r = bench_ppo(a.scenario, a.ppo, a.n_envs or Args().n_envs, a.n_steps)
        out.append(r)
        print(f"PPO ({r['n_envs']} envs): {r['decisions_per_s']:.0f} decisions/s ({r['decisions']} decisions in "
              f"{r['seconds']:.1f} s, rollouts and updates)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
