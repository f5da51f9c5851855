"""pytest-benchmark: one environment step (decode + engine step + reward + observation) plus
the action mask, under the weighted random masked policy of eval/bench_env.py at the speed goal's
load (K = 32, batches of about two dozen requests). Not a timed test: it records, never asserts
a speed. Run: ``pytest tests/benchmarks --benchmark-only``; eval/bench_env.py gives steps/s."""
from __future__ import annotations

import pytest

from eval.bench_env import make_policy
from llmsched_env import ServingEnv, get_scenario

# The presets' cost models and the trace lengths come from ../shared/data.
pytestmark = pytest.mark.usefixtures("shared_data")


def test_env_step_speed(benchmark):
    pytest.importorskip("pytest_benchmark")
    sc = get_scenario("heavy")
    env = ServingEnv(sc, num_kv_blocks=8192, workload=sc.workload.with_(num_requests=300), rate_range=(15.0, 15.0))
    act = make_policy(env, "weighted")
    env.reset(seed=0)
    for _ in range(300):  # warm up to a full running set
        env.step(act(env.action_masks()))

    def step():
        _, _, term, trunc, _ = env.step(act(env.action_masks()))
        if term or trunc:
            env.reset()

    benchmark.pedantic(step, rounds=200, iterations=5)
    assert len(env.engine.running) > 0
