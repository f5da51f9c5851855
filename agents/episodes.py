"""Scenario episodes for any scheduler, with one metrics row each: what training's evaluation,
``eval/policy_vs_heuristics.py`` and the tests compare.

An episode of scenario S with seed s is the workload ``ServingEnv(S).reset(seed=s)`` draws; every
scheduler (a heuristic spec, ``ppo:path=...``, a ``rule``, or a Scheduler object) runs it through
``llmsched_env.simulate.run`` on the scenario's engine, truncated at the scenario's ``max_steps``
as the env is. The row's ``return`` is the env's objective: requests meeting their SLO - lambda x
GPU-seconds (busy seconds x GPUs).
"""
from __future__ import annotations

from typing import Optional

from llmsched_env.engine import Engine
from llmsched_env.env import ServingEnv
from llmsched_env.reward import objective
from llmsched_env.scenarios import Scenario
from llmsched_env.scheduler import Scheduler, make_scheduler
from llmsched_env.simulate import run

ROW_KEYS = ("return", "slo_attainment", "gpu_busy_s", "ttft_p99_s", "tbt_p99_s", "num_preemptions",
            "num_steps", "num_finished")


def run_episode(scenario: str | Scenario, scheduler: str | Scheduler, seed: int,
                env: Optional[ServingEnv] = None) -> dict:
    """One episode's metrics row (``ROW_KEYS``) for ``scheduler`` on ``scenario``'s seed ``seed``.
    Pass ``env`` (a ServingEnv of that scenario) to reuse it for drawing workloads."""
    env = env or ServingEnv(scenario)
    env.reset(seed=seed)
    sched = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
    engine = Engine(env.specs, env.engine_config, env.cost_model)
    m = run(engine, sched, max_steps=env.scenario.max_steps)
    row = {k: m[k] for k in ROW_KEYS if k in m}
    row["return"] = objective(m, env.scenario.lam)
    row["seed"] = seed
    return row
