"""The agent interface (``llmsched_env.agent``): action decoding, decision points, SLO bookkeeping
and an observation that a live server at any uptime and size can produce."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llmsched_env.agent import (ACTION_DIM, OBS_FEATURES, OBS_HIGH, OBS_LOW, AgentInterface, AgentSpec,
                                SLOTracker, encode_observation)
from llmsched_env.priority import HEURISTIC_RULES
from llmsched_env.request import RequestSpec
from tests.conftest import make_engine


def _specs(n, t0=0.0, gap=0.005, **kw):
    return [RequestSpec(i, t0 + gap * i, 24 + 8 * (i % 4), 6 + i % 5, ttft_slo_s=0.2, tbt_slo_s=0.03,
                        priority=i % 2, max_tokens=20, **kw) for i in range(n)]


def test_rule_of_maps_the_documented_ranges_and_rejects_bad_actions():
    spec = AgentSpec()
    lo = spec.rule_of(-np.ones(ACTION_DIM))
    hi = spec.rule_of(np.ones(ACTION_DIM))
    assert lo.token_budget == 64 and hi.token_budget == 8192
    assert lo.kv_reserve == 0.0 and hi.kv_reserve == pytest.approx(0.2)
    assert hi.weights == (5.0,) * 15 and hi.admit_threshold == 5.0
    assert spec.rule_of(np.full(ACTION_DIM, 7.0)) == hi  # clipped
    with pytest.raises(ValueError, match=r"expected \(18,\)"):
        spec.rule_of(np.zeros(5))
    bad = np.zeros(ACTION_DIM)
    bad[15] = np.nan
    with pytest.raises(ValueError, match="non-finite entries: token_budget"):
        spec.rule_of(bad)
    with pytest.raises(ValueError, match="max_interval"):
        AgentInterface(AgentSpec(max_interval=0))


def test_decision_points_are_the_documented_ones():
    eng = make_engine(_specs(6), num_kv_blocks=64, budget=64, max_seqs=8)
    agent = AgentInterface(replace(AgentSpec(), max_interval=4))
    assert agent.sync(eng)  # first step
    agent.adopt(HEURISTIC_RULES["sarathi"])
    due, counts = [], []
    while not eng.done:
        eng.step(agent.plan(eng))
        if eng.done:
            break
        c = (len(eng.running), eng.num_waiting, sum(r.is_prefilling for r in eng.running.values()))
        d = agent.sync(eng)
        due.append(d)
        counts.append(c)
    since, last = 0, None
    for d, c in zip(due, counts):
        since += 1
        expected = c != last or since >= 4
        assert d == expected
        if d:
            since, last = 0, c


def test_tracker_marks_ttft_and_tbt_misses_as_late():
    specs = [RequestSpec(0, 0.0, 8, 3, ttft_slo_s=1e-6, tbt_slo_s=1.0, max_tokens=3),
             RequestSpec(1, 0.0, 8, 3, ttft_slo_s=10.0, tbt_slo_s=1e-6, max_tokens=3),
             RequestSpec(2, 0.0, 8, 3, ttft_slo_s=10.0, tbt_slo_s=10.0, max_tokens=3)]
    eng = make_engine(specs, num_kv_blocks=64, budget=64)
    tracker = SLOTracker(AgentSpec())
    from llmsched_env.plan import BatchPlan
    while len(eng.finished) < 1:
        tracker.update(eng)
        eng.step(BatchPlan({r.rid: r.tokens_owed for r in [*eng.running.values(), *eng.iter_waiting()]}))
        tracker.update(eng)
        late = {r.rid: tracker.late(r, eng.now_s) for r in eng.running.values()}
        if late:
            assert late[0]  # first token after a 1 us target
            assert not late[2]
            if len(eng.requests[1].token_times) >= 3:
                assert late[1]  # 2 gaps over a 1 us target: P99 of 2 gaps misses
    assert tracker.mean_batch_s > 0


def test_observation_counts_late_requests_as_the_tracker_rules():
    """encode_observation inlines SLOTracker.late for speed: its ``late_frac`` must equal the
    tracker's own rule, step by step, with TTFT and TBT misses both occurring."""
    from llmsched_env.plan import BatchPlan
    specs = [RequestSpec(i, 0.002 * i, 16 + 8 * (i % 3), 4 + i % 4, ttft_slo_s=0.004 * (1 + i % 3),
                         tbt_slo_s=1e-6 if i % 4 == 0 else 1.0, max_tokens=8) for i in range(24)]
    eng = make_engine(specs, num_kv_blocks=64, budget=48)
    tracker = SLOTracker(AgentSpec())
    idx = OBS_FEATURES.index("late_frac")
    seen_late = 0
    while len(eng.finished) < len(specs):
        tracker.update(eng)
        visible = [*eng.running.values(), *eng.iter_waiting()]
        n_late = sum(tracker.late(r, eng.now_s) for r in visible)
        seen_late = max(seen_late, n_late)
        expected = n_late / len(visible) if visible else 0.0
        got = float(encode_observation(eng, tracker)[idx])
        assert got == pytest.approx(min(max(expected, OBS_LOW), OBS_HIGH), abs=1e-6)
        plan = {}
        for r in visible[:4]:
            plan[r.rid] = min(r.tokens_owed, 12)
        eng.step(BatchPlan(plan))
    assert seen_late > 0


def test_observation_is_in_bounds_and_ignores_uptime():
    """The same state one hour into serving gives the same observation (no uptime features)."""
    obs = []
    for t0 in (0.0, 3600.0):
        eng = make_engine(_specs(10, t0=t0), num_kv_blocks=40, budget=64, max_seqs=6)
        agent = AgentInterface()
        seq = []
        while not eng.done:
            if agent.sync(eng):
                agent.adopt(HEURISTIC_RULES["slai"])
            o = agent.observe(eng)
            assert o.shape == (len(OBS_FEATURES),) and o.dtype == np.float32
            assert (o >= OBS_LOW).all() and (o <= OBS_HIGH).all()
            seq.append(o)
            eng.step(agent.plan(eng))
        obs.append(np.array(seq))
    assert obs[0].shape == obs[1].shape
    np.testing.assert_allclose(obs[0], obs[1], atol=1e-4)


def test_observation_is_scale_free_in_the_cache_size():
    """Doubling the cache and the load keeps KV-use fractions comparable, not 2x."""
    small = make_engine(_specs(8, gap=0.0), num_kv_blocks=80, budget=512, max_seqs=8)
    big = make_engine(_specs(16, gap=0.0), num_kv_blocks=160, budget=1024, max_seqs=16)
    tr = SLOTracker(AgentSpec())
    from llmsched_env.priority import PriorityPlanner
    for eng, budget in ((small, 512), (big, 1024)):
        eng.step(PriorityPlanner().plan(eng, replace(HEURISTIC_RULES["fcfs"], token_budget=budget)))
    a, b = encode_observation(small, tr), encode_observation(big, tr)
    i = OBS_FEATURES.index("kv_used")
    assert a[i] == pytest.approx(b[i], rel=0.05)
    assert a[OBS_FEATURES.index("running_frac")] == pytest.approx(b[OBS_FEATURES.index("running_frac")])


def test_attaching_to_an_hour_old_server_does_not_count_its_uptime_as_a_batch():
    """The hook may start on a server busy for an hour: the first step's busy time so far is
    not a batch (the mean batch time stays at real batch times)."""
    eng = make_engine(_specs(4), num_kv_blocks=64, budget=64)
    eng.busy_s = 3600.0  # as a view reports on a server that has been serving
    agent = AgentInterface()
    for _ in range(3):
        agent.sync(eng)
        agent.adopt(HEURISTIC_RULES["fcfs"])
        eng.step(agent.plan(eng))
    agent.sync(eng)
    assert 0 < agent.tracker.mean_batch_s < 1.0
