"""pytest-benchmark: one env decision, and one exported-policy decision with 256 requests in
view. Records, never asserts, a speed (``make bench``; eval/bench_env.py and
eval/bench_export.py print decisions/s and microseconds)."""
from __future__ import annotations

import pytest

from llmsched_env import ServingEnv
from llmsched_env.priority import HEURISTIC_RULES

pytestmark = pytest.mark.usefixtures("shared_data")


def test_env_decision_speed(benchmark):
    pytest.importorskip("pytest_benchmark")
    env = ServingEnv("default")
    action = env.agent.spec.action_of(HEURISTIC_RULES["slai"])
    env.reset(seed=0)

    def step():
        _, _, term, trunc, _ = env.step(action)
        if term or trunc:
            env.reset()

    benchmark.pedantic(step, rounds=200, iterations=5)


def test_onnx_decision_speed_with_256_requests(benchmark, tmp_path):
    pytest.importorskip("pytest_benchmark")
    from agents.export import export_policy
    from agents.onnx_runtime import OnnxScheduler
    from agents.policy import save_policy
    from eval.bench_export import busy_engine
    from llmsched_env.agent import AgentSpec
    from tests.test_policy import random_actor
    save_policy(tmp_path / "p", random_actor(0, hidden=(64, 64)), AgentSpec())
    export_policy(tmp_path / "p", tmp_path / "e", verify_steps=0)
    sched = OnnxScheduler(str(tmp_path / "e"))
    eng = busy_engine(256)
    sched.agent.sync(eng)
    benchmark.pedantic(lambda: sched.decide(eng), rounds=200, iterations=5)
