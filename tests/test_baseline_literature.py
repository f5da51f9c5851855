"""Defining behaviour of the literature baselines on small hand-built workloads
(block size 4 tokens, LinearCostModel: 0.01 s + 1e-4 s per token)."""
from __future__ import annotations

import types

import pytest

from llmsched_env import BatchPlan, make_scheduler, run
from llmsched_env.request import Request
from tests.conftest import make_engine, spec


def plan_of(name, eng, **opts):
    return make_scheduler(name, **opts).schedule(eng)


# ------------------------------------------------------------------ infermax-srf
def test_infermax_serves_by_computed_tokens_and_evicts_the_fewest_requester_included():
    # Blocks 3 + 1 + 1 + 2 of 8; every decode needs a new block. InferMax re-sorts the running
    # requests by computed tokens (0: 12, 3: 8, 1: 4, 2: 4) and serves decodes in that order;
    # 3 finds no free block and evicts the last of the order (2), then 1 finds none and, with
    # nobody left after it, evicts itself.
    eng = make_engine([spec(0, prompt=12, output=5), spec(1, prompt=4, output=5), spec(2, prompt=4, output=5),
                       spec(3, prompt=8, output=5)], num_kv_blocks=8)
    eng.step(BatchPlan({0: 12, 1: 4, 2: 4, 3: 8}))
    p = plan_of("infermax-srf", eng, watermark=0.0)
    assert p.preempt == {1, 2} and list(p.tokens.items()) == [(0, 1), (3, 1)]
    p = plan_of("sarathi", eng, watermark=0.0)                  # arrival order, latest arrival evicted
    assert p.preempt == {3} and list(p.tokens.items()) == [(0, 1), (1, 1), (2, 1)]


def test_infermax_evicts_itself_without_other_candidates():
    s = make_scheduler("infermax-srf")
    r = Request(spec(0))
    assert s._victim([], r) is r


def test_infermax_paper_configuration_and_its_engine_check():
    s = make_scheduler("infermax-srf:paper=true")
    assert (s.token_budget, s.watermark, s.reserve) == (16384, 0.0, True)
    eng = make_engine([spec(0, prompt=8, output=2)], block_size=1, budget=16384, num_kv_blocks=100)
    assert s.schedule(eng).tokens == {0: 8}
    with pytest.raises(ValueError, match="--block-size 1 --token-budget 16384"):
        s.schedule(make_engine([spec(0, prompt=8, output=2)]))


def test_infermax_histogram_reservation():
    s = make_scheduler("infermax-srf", reserve=True)
    done = []
    for rid, (p, o) in enumerate([(8, 24), (12, 40), (100, 3)]):
        r = Request(spec(rid, prompt=p, output=o))
        r.num_generated = o
        done.append(r)
    fake = types.SimpleNamespace(finished=done, config=types.SimpleNamespace(kv_capacity_tokens=10_000))
    s._observe(fake)
    new = lambda p: Request(spec(9, prompt=p, output=1))  # noqa: E731
    assert s._admit_tokens(new(9)) == 42          # bucket 3 (8..15): mean of 32 and 52
    assert s._admit_tokens(new(64)) == 103        # bucket 6 (64..127): mean 103 > prompt
    assert s._admit_tokens(new(120)) == 120       # mean 103 < prompt
    assert s._admit_tokens(new(300)) == 300       # bucket 8 empty: just the prompt
    assert make_scheduler("infermax-srf")._admit_tokens(new(9)) == 9   # reserve off


# ------------------------------------------------------------------ slai
def _slai_state():
    # 0: urgent decode (tight TBT), 1: relaxed decode, 2: a partial prefill.
    specs = [spec(0, prompt=4, output=9, tbt=0.001), spec(1, prompt=4, output=9, tbt=10.0),
             spec(2, prompt=40, output=2)]
    eng = make_engine(specs)
    eng.step(BatchPlan({0: 4, 1: 4, 2: 10}))
    return eng


def test_slai_urgent_decodes_then_prefills_then_leftover_decodes():
    eng = _slai_state()
    assert list(plan_of("slai", eng, token_budget=2).tokens.items()) == [(0, 1), (2, 1)]
    assert list(plan_of("slai", eng, token_budget=40).tokens.items()) == [(0, 1), (2, 30), (1, 1)]
    assert list(plan_of("sarathi", eng, token_budget=2).tokens.items()) == [(0, 1), (1, 1)]


def test_slai_caps_decodes_and_admits_shortest_prompt_first():
    eng = make_engine([spec(0, prompt=30, output=2), spec(1, prompt=5, output=2), spec(2, prompt=9, output=2)])
    assert list(plan_of("slai", eng, token_budget=16).tokens.items()) == [(1, 5), (2, 9), (0, 2)]
    eng = make_engine([spec(i, prompt=4, output=5) for i in range(3)])
    eng.step(BatchPlan({0: 4, 1: 4, 2: 4}))
    assert len(plan_of("slai", eng, max_decodes=2).tokens) == 2


def test_slai_mean_batch_time_is_cumulative_and_lst_is_fixed_when_queued():
    # A (relaxed) and B (urgent) prefill in one 0.0204 s batch; then budget 1 lets only B decode
    # (0.0101 s batches). The mean is over every batch; A's LST stays what it was when queued.
    eng = make_engine([spec(0, prompt=4, output=9, tbt=10.0), spec(1, prompt=100, output=9, tbt=1e-4)],
                      budget=128)
    eng.step(BatchPlan({0: 4, 1: 100}))
    s = make_scheduler("slai", token_budget=1)
    assert s.schedule(eng).tokens == {1: 1}
    lst_a = s.last_schedulable_s(0)
    assert lst_a == pytest.approx(eng.requests[0].token_times[-1] + 10.0 - 5 * 0.0204)
    for _ in range(3):
        eng.step(s.schedule(eng))
    s.schedule(eng)
    assert s.mean_batch_s() == pytest.approx((0.0204 + 3 * 0.0101) / 4)
    assert s.last_schedulable_s(0) == lst_a                      # A has not run since it was queued
    w = make_scheduler("slai", token_budget=1, window=2)
    eng2 = make_engine([spec(0, prompt=4, output=9, tbt=10.0), spec(1, prompt=100, output=9, tbt=1e-4)],
                       budget=128)
    eng2.step(BatchPlan({0: 4, 1: 100}))
    for _ in range(3):
        eng2.step(w.schedule(eng2))
    w.schedule(eng2)
    assert w.mean_batch_s() == pytest.approx(0.0101)          # the named option: last 2 batches


def test_slai_admits_in_the_step_that_preempted():
    # D (urgent decode) needs a 3rd block; the only free blocks are promised to partial prefill P,
    # so P is preempted; the short waiting W is still admitted in that step (vLLM's rule would not).
    specs = [spec(0, prompt=8, output=5, tbt=1e-4), spec(1, arrival=0.001, prompt=24, output=2),
             spec(2, arrival=0.002, prompt=2, output=2)]
    eng = make_engine(specs, num_kv_blocks=8)
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({1: 8}))                                # P: 8 of 24 computed, 4 blocks promised
    p = plan_of("slai", eng, token_budget=3)
    assert p.preempt == {1} and p.tokens == {0: 1, 2: 2}
    assert plan_of("vllm-v1", eng, token_budget=3).preempt == set()


def test_slai_leftover_decode_evicts_only_prefills_not_scheduled_this_step():
    # Relaxed decode D (phase 4) needs a 3rd block; the free blocks are promised to partial prefill
    # P, which phase 2 already scheduled, so D preempts itself instead of evicting P.
    specs = [spec(0, prompt=8, output=5, tbt=10.0), spec(1, arrival=0.001, prompt=12, output=2)]
    eng = make_engine(specs, num_kv_blocks=5)
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({1: 4}))
    p = plan_of("slai", eng)
    assert p.tokens == {1: 8} and p.preempt == {0}


# ------------------------------------------------------------------ srpt / sjf
def test_srpt_admits_shortest_remaining_and_preempts_longer():
    eng = make_engine([spec(0, prompt=4, output=10), spec(1, prompt=4, output=2)], max_seqs=1)
    assert plan_of("srpt", eng).tokens == {1: 4}
    assert plan_of("vllm-v1", eng).tokens == {0: 4}
    eng = make_engine([spec(0, prompt=4, output=10), spec(1, arrival=0.001, prompt=4, output=2)], max_seqs=1)
    eng.step(BatchPlan({0: 4}))
    p = plan_of("srpt", eng)
    assert p.preempt == {0} and p.tokens == {1: 4}


def test_srpt_vs_sjf_and_limited_preemption():
    eng = make_engine([spec(0, prompt=4, output=10), spec(1, arrival=0.05, prompt=4, output=3)], max_seqs=1)
    eng.step(BatchPlan({0: 4}))
    for _ in range(8):
        eng.step(BatchPlan({0: 1}))                 # 9 of 10 generated: 1 remaining < 3
    assert plan_of("srpt", eng).tokens == {0: 1}
    p = plan_of("sjf", eng)
    assert p.preempt == {0} and p.tokens == {1: 4}  # total 3 < 10
    assert plan_of("sjf", eng, preempt_limit=0.5).tokens == {0: 1}


def test_srpt_noisy_predictor_is_deterministic_and_not_exact():
    s1 = make_scheduler("srpt", predictor="noisy", error=0.8, seed=3)
    s2 = make_scheduler("srpt", predictor="noisy", error=0.8, seed=3)
    reqs = [Request(spec(i, output=100)) for i in range(20)]
    est = [s1.predict(r) for r in reqs]
    assert est == [s2.predict(r) for r in reqs] and len(set(est)) > 5


# ------------------------------------------------------------------ fastserve
def test_fastserve_skip_join_by_prefill_time():
    eng = make_engine([spec(0, prompt=8, output=2)])
    s = make_scheduler("fastserve")              # quanta 0.01, 0.02, 0.04 s ...
    assert s.join_level(8, eng) == 1             # 0.0108 s prefill
    assert s.join_level(200, eng) == 2           # 0.03 s
    assert s.join_level(10 ** 6, eng) == 14      # 100 s: levels are unbounded, as in FastServe
    assert make_scheduler("fastserve", num_levels=8).join_level(10 ** 6, eng) == 7   # capped: the last


def test_fastserve_demotes_after_quantum_and_ranks_by_level():
    eng = make_engine([spec(0, prompt=8, output=50), spec(1, arrival=0.05, prompt=300, output=2),
                       spec(2, arrival=0.05, prompt=8, output=2)], max_seqs=3, budget=9, num_kv_blocks=200)
    s = make_scheduler("fastserve")
    s.reset()
    levels = []
    while eng.now_s < 0.05:
        eng.step(s.schedule(eng))
        levels.append(s.level(0))
    assert levels[0] == 1 and max(levels) >= 2   # 2 steps of ~0.01 s use the 0.02 s quantum
    p = s.schedule(eng)
    # 2 (short prompt, level 1) runs before the demoted resident 0 (level 2) and the long
    # prompt 1 (level 3, earlier id), which gets no budget; FCFS would run 0 then 1.
    assert list(p.tokens.items()) == [(2, 8), (0, 1)] and not p.preempt
    assert list(plan_of("vllm-v1", eng).tokens.items()) == [(0, 1), (1, 8)]


def test_fastserve_higher_priority_arrival_displaces_lower_priority_residents():
    # Resident 0 (long prompt: level 2) fills the cache; short arrival 1 joins level 1, ranks
    # first and evicts 0 for its blocks (FastServe's reserve_free_blocks). Under recompute this
    # is not the default (see the module docstring): there 1 waits for free KV.
    specs = [spec(0, prompt=200, output=4), spec(1, arrival=0.001, prompt=8, output=2)]
    for opts, preempt, tokens in (({"displace": True}, {0}, {1: 8}), ({}, set(), {0: 1})):
        eng = make_engine(specs, num_kv_blocks=51, budget=256)
        s = make_scheduler("fastserve", **opts)
        eng.step(s.schedule(eng))
        p = s.schedule(eng)
        assert (s.level(0), s.level(1)) == (2, 1)
        assert p.preempt == preempt and p.tokens == tokens


def test_fastserve_starvation_promotes_to_top():
    eng = make_engine([spec(0, prompt=8, output=2)])
    s = make_scheduler("fastserve", starve_s=0.5, starve_every=1)
    s.reset()
    s.schedule(eng)
    s._level[0] = 5
    eng.now_s = 1.0                              # test-only clock move: waited 1 s unscheduled
    s.schedule(eng)
    assert s.level(0) == 0


# ------------------------------------------------------------------ ltr
def test_ltr_ranks_by_predicted_length():
    specs = [spec(0, prompt=4, output=3, predicted_output_len=50), spec(1, prompt=4, output=40, predicted_output_len=5)]
    eng = make_engine(specs, max_seqs=1)
    assert plan_of("ltr", eng).tokens == {1: 4}                    # workload predictions (auto)
    assert plan_of("ltr", eng, predictor="oracle").tokens == {0: 4}


def test_ltr_starvation_boost():
    # Long-predicted 0 waits behind a stream of short requests; with S=3 it is boosted.
    specs = [spec(0, prompt=4, output=2, predicted_output_len=100)]
    specs += [spec(i, arrival=(i - 1) * 0.02, prompt=4, output=2, predicted_output_len=1) for i in range(1, 8)]
    for S, expect_early in ((3, True), (200, False)):
        eng = make_engine(specs, max_seqs=1)
        run(eng, make_scheduler("ltr", starve_steps=S, boost_steps=2))
        order = sorted(eng.finished, key=lambda r: r.finish_s)
        assert (order.index(eng.requests[0]) < 7) == expect_early


def test_ltr_boost_counts_runs_not_steps():
    # vllm-ltr decrements a boosted request's runs only in steps that schedule it.
    eng = make_engine([spec(0, prompt=4, output=5), spec(1, prompt=4, output=5)])
    s = make_scheduler("ltr", starve_steps=50, boost_steps=2)
    order = [eng.requests[0], eng.requests[1]]
    s._boost[1] = 2
    for _ in range(5):
        s._after_plan(eng, order, BatchPlan({0: 4}))             # 1 waits: still boosted
    assert s._boost[1] == 2 and s.key(eng.requests[1], eng)[0] == 0
    s._after_plan(eng, order, BatchPlan({1: 4}))
    s._after_plan(eng, order, BatchPlan({1: 1}))
    assert 1 not in s._boost and s.key(eng.requests[1], eng)[0] == 1


# ------------------------------------------------------------------ edf
def test_edf_orders_by_next_token_deadline():
    specs = [spec(0, prompt=4, output=3, ttft=5.0), spec(1, prompt=4, output=3, ttft=0.1)]
    eng = make_engine(specs, max_seqs=1)
    assert plan_of("edf", eng).tokens == {1: 4}
    # budget 1: the decode due at 0.0104 + 0.5 runs before the arrival due at 0.005 + 5.0 ...
    eng = make_engine([spec(0, prompt=4, output=3, tbt=0.5), spec(1, arrival=0.005, prompt=4, output=3, ttft=5.0)],
                      budget=4)
    eng.step(BatchPlan({0: 4}))
    assert plan_of("edf", eng, token_budget=1).tokens == {0: 1}
    # ... and after the arrival due at 0.005 + 0.1 when the decode is due later
    eng = make_engine([spec(0, prompt=4, output=3, tbt=5.0), spec(1, arrival=0.005, prompt=4, output=3, ttft=0.1)],
                      budget=4)
    eng.step(BatchPlan({0: 4}))
    assert plan_of("edf", eng, token_budget=1).tokens == {1: 1}


def test_edf_victim_is_latest_deadline_and_waiting_never_evicts():
    specs = [spec(0, prompt=8, output=5, tbt=5.0), spec(1, prompt=8, output=5, tbt=0.5),
             spec(2, arrival=0.001, prompt=4, output=2, ttft=0.01)]
    eng = make_engine(specs, num_kv_blocks=5)
    eng.step(BatchPlan({0: 8, 1: 8}))             # 1 block free, both decodes need one
    p = plan_of("edf", eng)
    assert p.tokens == {2: 4, 1: 1} and p.preempt == {0}   # 0's next token is due last
    eng = make_engine(specs, num_kv_blocks=5, max_seqs=2)
    eng.step(BatchPlan({0: 8, 1: 8}))
    eng.step(BatchPlan({1: 1}))
    p = plan_of("edf", eng)                       # 2 is most urgent but no seat: not admitted by eviction
    assert 2 not in p.tokens and not p.preempt
