"""pytest-benchmark: one decision of an exported policy on CPU with K = 32 occupied slots (the
policy is a fresh SlotSetPolicy with the shipped sizes, train/configs/default.yaml): the ONNX
inference alone and the full decision of scheduler ``onnx`` (encode + infer + decode). Records,
never asserts, a speed. ``pytest tests/benchmarks --benchmark-only``; eval/bench_export.py prints
the breakdown (and the torch policy for comparison)."""
from __future__ import annotations

import pytest

from eval.bench_export import busy_engine, fresh_policy

pytestmark = pytest.mark.usefixtures("shared_data")


@pytest.fixture(scope="module")
def decision(tmp_path_factory):
    import torch as th

    from agents.export import export_policy
    from agents.onnx_runtime import OnnxScheduler
    th.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench-export")
    export_policy(fresh_policy(root / "policy"), root / "export", verify_steps=0)
    eng = busy_engine()
    sched = OnnxScheduler(str(root / "export"))
    slots, obs, mask = sched.observe(eng)
    assert len(slots) == sched.layout.num_slots
    return eng, sched, obs, mask


def test_onnx_inference(benchmark, decision):
    pytest.importorskip("pytest_benchmark")
    _, sched, obs, mask = decision
    action = benchmark(sched.act, obs, mask)
    assert action.shape == (sched.layout.num_slots + 1,)


def test_onnx_full_decision(benchmark, decision):
    pytest.importorskip("pytest_benchmark")
    eng, sched, _, _ = decision
    plan = benchmark(sched.schedule, eng)
    assert plan.tokens
