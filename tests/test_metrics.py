"""Metrics on a hand-computed run; the per-request P99 matches numpy's."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched_env import BatchPlan
from llmsched_env.cost_model import LinearCostModel
from llmsched_env.metrics import SUMMARY_KEYS, percentile_linear, request_metrics, summarize
from tests.conftest import make_engine, spec


def test_hand_computed_metrics():
    # every step takes exactly 0.1 s
    eng = make_engine([spec(0, prompt=4, output=3, ttft=0.15, tbt=0.15),
                       spec(1, prompt=4, output=2, ttft=0.15, tbt=0.15)],
                      cost=LinearCostModel(base_s=0.1, per_token_s=0.0))
    eng.step(BatchPlan({0: 4}))             # t=0.1: r0 token 1
    eng.step(BatchPlan({0: 1, 1: 4}))       # t=0.2: r0 token 2, r1 token 1
    eng.step(BatchPlan({1: 1}))             # t=0.3: r1 token 2 (done); r0 paused
    eng.step(BatchPlan({0: 1}))             # t=0.4: r0 token 3 (done), gap 0.2 > 0.15
    m0, m1 = request_metrics(eng.requests[0]), request_metrics(eng.requests[1])
    assert m0.ttft_s == pytest.approx(0.1) and m1.ttft_s == pytest.approx(0.2)
    assert m0.tpot_s == pytest.approx(0.15) and m0.e2e_s == pytest.approx(0.4)
    assert not m0.slo_met  # P99 of gaps (0.1, 0.2) = 0.199 > 0.15
    assert not m1.slo_met  # TTFT 0.2 > 0.15
    s = summarize(eng)
    assert set(SUMMARY_KEYS) <= set(s)
    assert s["slo_attainment"] == 0.0 and s["num_finished"] == 2 and s["num_steps"] == 4
    assert s["gpu_busy_s"] == pytest.approx(0.4) and s["ttft_p50_s"] == pytest.approx(0.15)
    assert s["tbt_p99_s"] == pytest.approx(0.198, abs=1e-9)  # pooled gaps 0.1, 0.1, 0.2


def test_unfinished_requests_count_as_missed():
    eng = make_engine([spec(0, prompt=4, output=3, ttft=10, tbt=10), spec(1, prompt=4, output=1, ttft=10, tbt=10)])
    eng.step(BatchPlan({1: 4}))
    s = summarize(eng)
    assert s["num_slo_met"] == 1 and s["slo_attainment"] == 0.5


def test_gpu_cost_counts_every_gpu():
    eng = make_engine([spec(0, prompt=4, output=1)], num_gpus=4, cost=LinearCostModel(base_s=0.5, per_token_s=0))
    eng.step(BatchPlan({0: 4}))
    assert summarize(eng)["gpu_busy_s"] == pytest.approx(2.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.99, 0.0, 1.0]))
def test_percentile_linear_is_numpys_bit_for_bit(values, q):
    assert percentile_linear(sorted(values), q) == float(np.percentile(values, 100 * q))
