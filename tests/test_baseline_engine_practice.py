"""Defining behaviour of the engine-practice baselines on small hand-built workloads
(block size 4 tokens, LinearCostModel: 0.01 s + 1e-4 s per token)."""
from __future__ import annotations

import pytest

from llmsched_env import BatchPlan, make_scheduler, run
from baselines.plan_builder import PromptExceedsBudget
from tests.conftest import make_engine, spec


def plan_of(name, eng, **opts):
    return make_scheduler(name, **opts).schedule(eng)


# ------------------------------------------------------------------ vllm-v0
def test_vllm_v0_is_prefill_first_with_whole_prompts():
    eng = make_engine([spec(0, prompt=8, output=5), spec(1, arrival=0.015, prompt=40, output=2)])
    s = make_scheduler("vllm-v0")
    assert s.schedule(eng).tokens == {0: 8}
    eng.step(BatchPlan({0: 8}))
    assert s.schedule(eng).tokens == {0: 1}           # request 1 not arrived yet: decode
    eng.step(BatchPlan({0: 1}))
    assert s.schedule(eng).tokens == {1: 40}          # an admissible prompt: prefill-only step


def test_vllm_v0_watermark_blocks_admission_and_decodes_instead():
    # 100 blocks -> watermark 1 block; request 0 holds 90, request 1's prompt needs the last 10.
    eng = make_engine([spec(0, prompt=360, output=5), spec(1, arrival=0.001, prompt=40, output=2)],
                      num_kv_blocks=100, budget=512)
    eng.step(BatchPlan({0: 360}))
    assert plan_of("vllm-v0", eng).tokens == {0: 1}
    assert plan_of("vllm-v0", eng, watermark=0.0).tokens == {1: 40}


def test_vllm_v0_preempts_newest_running_on_kv_shortage():
    eng = make_engine([spec(0, prompt=8, output=5), spec(1, prompt=8, output=5)], num_kv_blocks=4)
    eng.step(BatchPlan({0: 8, 1: 8}))                 # 4 blocks used, both need a 3rd block
    p = plan_of("vllm-v0", eng)
    assert p.tokens == {0: 1} and p.preempt == {1}


def test_vllm_v0_rejects_prompt_longer_than_budget_by_name():
    eng = make_engine([spec(0, prompt=100, output=2)], budget=64)
    with pytest.raises(PromptExceedsBudget, match="request 0 needs a 100-token prefill > token budget 64"):
        plan_of("vllm-v0", eng)


# ------------------------------------------------------------------ vllm-v1
def test_vllm_v1_chunks_prefill_and_runs_running_before_waiting():
    eng = make_engine([spec(0, prompt=100, output=3), spec(1, arrival=0.001, prompt=20, output=2)], budget=64)
    s = make_scheduler("vllm-v1")
    assert s.schedule(eng).tokens == {0: 64}
    eng.step(BatchPlan({0: 64}))
    assert list(s.schedule(eng).tokens.items()) == [(0, 36), (1, 20)]


def test_vllm_v1_fcfs_and_priority_victims_and_no_admission_after_preemption():
    specs = [spec(0, prompt=8, output=5, priority=1), spec(1, prompt=8, output=5, priority=0),
             spec(2, arrival=0.001, prompt=1, output=1)]
    eng = make_engine(specs, num_kv_blocks=4)
    eng.step(BatchPlan({0: 8, 1: 8}))
    fcfs = plan_of("vllm-v1", eng)
    assert fcfs.tokens == {0: 1} and fcfs.preempt == {1}       # newest victim; 2 not admitted
    prio = plan_of("vllm-v1", eng, policy="priority")
    assert prio.tokens == {1: 1} and prio.preempt == {0}       # largest (priority, arrival) victim


# ------------------------------------------------------------------ sarathi
def test_sarathi_order_decodes_then_partial_prefills_then_new():
    eng = make_engine([spec(0, prompt=4, output=5), spec(1, prompt=40, output=2),
                       spec(2, arrival=0.001, prompt=4, output=2)])
    eng.step(BatchPlan({0: 4, 1: 10}))
    p = plan_of("sarathi", eng, token_budget=16)
    assert list(p.tokens.items()) == [(0, 1), (1, 15)]        # budget spent before admitting 2
    p = plan_of("sarathi", eng, token_budget=40)
    assert list(p.tokens.items()) == [(0, 1), (1, 30), (2, 4)]


def test_sarathi_admits_only_when_whole_prompt_kv_fits():
    # 12 blocks: request 0 decodes in 2, request 1 needs 8 for its whole prompt but only a chunk now.
    eng = make_engine([spec(0, prompt=8, output=9), spec(1, arrival=0.001, prompt=40, output=2)],
                      num_kv_blocks=12)
    eng.step(BatchPlan({0: 8}))
    assert plan_of("sarathi", eng, token_budget=8).tokens == {0: 1}
    assert plan_of("vllm-v1", eng, token_budget=8).tokens == {0: 1, 1: 7}


def test_sarathi_preempts_latest_arrived_not_newest_admitted():
    eng = make_engine([spec(0, prompt=8, output=5), spec(1, prompt=8, output=5)], num_kv_blocks=5)
    eng.step(BatchPlan({1: 8}))
    eng.step(BatchPlan({0: 8}))           # running order [1, 0]; 1 block free, both need one
    p = plan_of("sarathi", eng)
    assert p.tokens == {0: 1} and p.preempt == {1}             # latest-arrived (1) gives its block back
    p = plan_of("vllm-v1", eng)
    assert p.tokens == {1: 1} and p.preempt == {0}             # vLLM: the newest admitted


def test_sarathi_watermark_blocks_admission_that_would_leave_under_1pct_free():
    # 100 blocks -> watermark int(0.01 x 100) = 1 block; request 0 holds 90 (its next token fits
    # the last), request 1's prompt needs exactly the 10 left: can_allocate refuses (10 - 10 < 1).
    eng = make_engine([spec(0, prompt=359, output=5), spec(1, arrival=0.001, prompt=40, output=2)],
                      num_kv_blocks=100, budget=512)
    eng.step(BatchPlan({0: 359}))
    assert plan_of("sarathi", eng).tokens == {0: 1}
    assert plan_of("sarathi", eng, watermark=0.0).tokens == {0: 1, 1: 40}


def test_sarathi_preempts_when_no_block_is_free_even_if_the_decode_needs_none():
    # Both hold 6 tokens in 2 blocks; the 7th token of each fits its 2nd block, but no block is
    # free: Sarathi's can_append_slot (>= 1 free block) fails, so the latest arrival is preempted.
    eng = make_engine([spec(0, prompt=6, output=5), spec(1, arrival=0.001, prompt=6, output=5)],
                      num_kv_blocks=4)
    eng.step(BatchPlan({0: 6}))
    eng.step(BatchPlan({1: 6}))
    p = plan_of("sarathi", eng)
    assert p.tokens == {0: 1} and p.preempt == {1}
    assert plan_of("vllm-v1", eng).tokens == {0: 1, 1: 1}        # vLLM v1 counts the blocks needed


def test_sarathi_decodes_are_not_limited_by_the_chunk_size():
    eng = make_engine([spec(i, prompt=4, output=5) for i in range(3)] +
                      [spec(3, arrival=0.001, prompt=8, output=2)])
    eng.step(BatchPlan({0: 4, 1: 4, 2: 4}))
    assert plan_of("sarathi", eng, token_budget=2).tokens == {0: 1, 1: 1, 2: 1}
    assert plan_of("sarathi", eng, token_budget=5).tokens == {0: 1, 1: 1, 2: 1, 3: 2}


def test_sarathi_decodes_cannot_take_blocks_promised_to_a_partial_prefill():
    # Request 1 (arrived later) has 8 of 24 prompt tokens computed: its 4 missing blocks count as
    # allocated, so request 0's decode (which needs a 3rd block) finds no free block and preempts
    # 1, the latest arrival. vLLM v1 allocates as it computes: both fit.
    eng = make_engine([spec(0, prompt=8, output=5), spec(1, arrival=0.001, prompt=24, output=2)],
                      num_kv_blocks=8)
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({1: 8}))
    p = plan_of("sarathi", eng, token_budget=5, watermark=0.0)
    assert p.tokens == {0: 1} and p.preempt == {1}
    assert plan_of("vllm-v1", eng, token_budget=5).tokens == {0: 1, 1: 4}


# ------------------------------------------------------------------ orca
def test_orca_reserves_max_length_and_never_preempts():
    specs = [spec(i, prompt=2, output=6) for i in range(3)]
    eng = make_engine(specs, num_kv_blocks=10, max_model_len=16)   # 4 blocks reserved per request
    assert plan_of("orca", eng).tokens == {0: 2, 1: 2}
    eng = make_engine(specs, num_kv_blocks=10, max_model_len=16)
    s = run(eng, make_scheduler("orca"))
    assert s["num_finished"] == 3 and s["num_preemptions"] == 0
    assert max(r.admitted_s for r in eng.finished) > 0               # the third had to wait


def test_orca_batches_at_iteration_level_with_whole_prompts():
    eng = make_engine([spec(0, prompt=8, output=5), spec(1, arrival=0.001, prompt=40, output=2)],
                      max_model_len=64)
    eng.step(BatchPlan({0: 8}))
    assert plan_of("orca", eng).tokens == {0: 1, 1: 40}


# ------------------------------------------------------------------ faster-transformer
def test_faster_transformer_nothing_joins_until_batch_done():
    specs = [spec(0, prompt=8, output=2), spec(1, prompt=8, output=6), spec(2, arrival=0.001, prompt=4, output=2)]
    eng = make_engine(specs, max_model_len=16)
    run(eng, make_scheduler("faster-transformer"))
    r = eng.requests
    assert r[0].admitted_s == r[1].admitted_s == 0.0
    assert r[2].admitted_s >= max(r[0].finish_s, r[1].finish_s)
    eng = make_engine(specs, max_model_len=16)
    assert run(eng, make_scheduler("orca"))["num_finished"] == 3
    assert eng.requests[2].admitted_s < eng.requests[1].finish_s    # iteration-level joins early


# ------------------------------------------------------------------ no-preempt
def test_no_preempt_reserves_lifetime_and_never_preempts_where_sarathi_does():
    specs = [spec(0, prompt=8, output=20), spec(1, arrival=0.001, prompt=8, output=20)]
    sar = run(make_engine(specs, num_kv_blocks=12), make_scheduler("sarathi"))
    assert sar["num_preemptions"] > 0
    eng = make_engine(specs, num_kv_blocks=12)
    s = run(eng, make_scheduler("no-preempt"))
    assert s["num_preemptions"] == 0 and s["num_finished"] == 2
    assert eng.requests[1].admitted_s >= eng.requests[0].finish_s    # 7 + 7 lifetime blocks > 12


# ------------------------------------------------------------------ sglang
def _sglang_state(output=150):
    # R decodes with max_tokens 200 (true output ``output``); W waits: 40 prompt, max_tokens 100.
    # 64 blocks of 4 = 256 tokens; after R's prefill 62 blocks (248 tokens) are free.
    eng = make_engine([spec(0, prompt=8, output=output, max_tokens=200),
                       spec(1, arrival=0.001, prompt=40, output=5, max_tokens=100)], num_kv_blocks=64)
    eng.step(BatchPlan({0: 8}))
    return eng


def test_sglang_reserves_the_decaying_ratio_of_running_max_tokens_and_prefills_alone():
    s = make_scheduler("sglang")
    eng = _sglang_state()
    # rem_total = 248 - min(200 - 1, 4096) x 0.7 = 108.7 < 40 + 100: W waits, R decodes.
    assert s.schedule(eng).tokens == {0: 1} and s._full
    s.new_token_ratio = s.min_ratio                              # 0.098: 248 - 19.5 > 140 ...
    assert s.schedule(eng).tokens == {0: 1}                      # ... but the batch stays full
    s._full = False
    assert s.schedule(eng).tokens == {1: 40}                     # a prefill-only batch
    # the true output length plays no part: same plans with another one
    t = make_scheduler("sglang")
    eng2 = _sglang_state(output=3)
    assert t.schedule(eng2).tokens == {0: 1}


def test_sglang_ratio_decays_per_decode_step_and_resets_on_retraction():
    s = make_scheduler("sglang")
    assert (s.init_ratio, s.min_ratio) == (0.7, pytest.approx(0.098))
    eng = _sglang_state()
    eng.step(s.schedule(eng))
    assert s.new_token_ratio == pytest.approx(0.7 - (0.7 - 0.098) / 600)
    # Retraction: 4 blocks; A (2 generated) and B (1 generated, longer prompt) both need a block.
    eng = make_engine([spec(0, prompt=4, output=9, max_tokens=50), spec(1, prompt=8, output=9, max_tokens=60),
                       spec(2, arrival=0.05, prompt=2, output=2)], num_kv_blocks=4)
    eng.step(BatchPlan({0: 4}))
    eng.step(BatchPlan({0: 1, 1: 8}))                            # A: 5 tokens, B: 8 tokens, cache full
    for _ in range(3):
        eng.step(BatchPlan({0: 1}))
    s = make_scheduler("sglang")
    s._full = True                                               # no prefill attempt: decode step
    p = s.schedule(eng)
    assert p.preempt == {1} and p.tokens == {0: 1}               # fewest generated goes first
    assert s.new_token_ratio == pytest.approx((5 + 20) / (50 + 1))
    eng.step(p)
    assert [r.rid for r in s._queue(eng)] == [2, 1]              # retracted join the back


def test_sglang_lof_orders_the_queue_by_max_tokens():
    specs = [spec(0, prompt=4, output=2, max_tokens=10), spec(1, prompt=4, output=2, max_tokens=90),
             spec(2, prompt=4, output=2, max_tokens=40)]
    eng = make_engine(specs, max_seqs=2)
    assert list(plan_of("sglang", eng).tokens) == [0, 1]
    assert list(plan_of("sglang", eng, policy="lof").tokens) == [1, 2]


# ------------------------------------------------------------------ lightllm
def test_lightllm_peak_is_max_over_k_of_remaining_times_k_plus_held():
    from baselines.lightllm import LightLLMScheduler
    # sorted by remaining: (5, 8), (10, 5), (20, 1) -> max(8 + 5, 2 x 5 + 15, 3 x 1 + 35) = 38
    assert LightLLMScheduler.peak_tokens([(10, 5), (20, 1), (5, 8)]) == 38


def test_lightllm_admits_by_predicted_peak_kv_of_max_tokens():
    # 64 blocks of 4 = 256 tokens. R runs (prompt 8, max_tokens 100); W (prompt 8) would fit the
    # free KV now, but with max_tokens 100 the peak (R: 9 + 98, W: 9 + 98 -> 98 x 2 + 18 = 214)
    # fits while max_tokens 150 (148 x 2 + 18 = 314) does not.
    for cap, admitted in ((100, True), (150, False)):
        for true_output in (3, 90):                         # the true length plays no part
            eng = make_engine([spec(0, prompt=8, output=true_output, max_tokens=cap),
                               spec(1, arrival=0.001, prompt=8, output=2, max_tokens=cap)], num_kv_blocks=64)
            s = make_scheduler("lightllm", max_wait_tokens=0)
            eng.step(s.schedule(eng))
            assert (s.schedule(eng).tokens == {1: 8}) == admitted


def test_lightllm_tries_admission_every_max_wait_tokens_decode_steps_with_prefill_only_batches():
    eng = make_engine([spec(0, prompt=8, output=40, max_tokens=40), spec(1, arrival=0.001, prompt=8, output=2,
                                                                           max_tokens=10)], num_kv_blocks=64)
    s = make_scheduler("lightllm", max_wait_tokens=3)
    plans = []
    for _ in range(5):
        plans.append(dict(s.schedule(eng).tokens))
        eng.step(BatchPlan(plans[-1]))
    assert plans == [{0: 8}, {0: 1}, {0: 1}, {0: 1}, {1: 8}]


def test_lightllm_pauses_the_latest_arrival_when_decodes_do_not_fit():
    eng = make_engine([spec(0, prompt=8, output=9), spec(1, arrival=0.001, prompt=8, output=9)], num_kv_blocks=4)
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({1: 8}))                             # 4 blocks used, both need a 3rd
    p = plan_of("lightllm", eng)
    assert p.preempt == {1} and not p.tokens


# ------------------------------------------------------------------ trtllm
def test_trtllm_no_evict_reserves_max_tokens_not_the_true_output():
    # 20 blocks of 4. Each request: prompt 8, true output 4, max_tokens 32 -> reserves 10 blocks.
    specs = [spec(i, prompt=8, output=4, max_tokens=32) for i in range(3)]
    eng = make_engine(specs, num_kv_blocks=20)
    assert plan_of("trtllm-no-evict", eng).tokens == {0: 8, 1: 8}     # 10 + 10 blocks; 2 waits
    assert plan_of("no-preempt", eng, watermark=0.0).tokens == {0: 8, 1: 8, 2: 8}  # oracle: 3 x 3 blocks
    eng = make_engine(specs, num_kv_blocks=20)
    s = run(eng, make_scheduler("trtllm-no-evict"))
    assert s["num_finished"] == 3 and s["num_preemptions"] == 0
    assert eng.requests[2].admitted_s >= min(eng.requests[0].finish_s, eng.requests[1].finish_s)


def test_trtllm_no_evict_caps_the_reservation_at_the_attention_window():
    # max_tokens resolves to max_model_len - prompt = 56; 16 tokens of KV -> 4 blocks per request
    # would be 16 blocks, capped at the cache (8 blocks): only one request at a time fits.
    specs = [spec(0, prompt=8, output=4), spec(1, prompt=8, output=4)]
    eng = make_engine(specs, num_kv_blocks=8, max_model_len=64)
    assert plan_of("trtllm-no-evict", eng).tokens == {0: 8}


def test_trtllm_max_util_schedules_by_one_step_need_and_pauses_the_last_started():
    specs = [spec(0, prompt=8, output=9, max_tokens=100), spec(1, arrival=0.001, prompt=8, output=9, max_tokens=100)]
    eng = make_engine(specs, num_kv_blocks=5)
    eng.step(BatchPlan({0: 8}))
    assert plan_of("trtllm-max-util", eng).tokens == {0: 1, 1: 8}    # 1 + 2 blocks of the 3 free
    assert plan_of("trtllm-no-evict", eng).tokens == {0: 1}          # 0's max_tokens reserve takes all
    eng.step(BatchPlan({0: 1, 1: 8}))                                  # 5 of 5 blocks used
    p = plan_of("trtllm-max-util", eng)
    assert p.preempt == {1} and p.tokens == {0: 1}                     # 1 needs a block: the last started pauses


def test_trtllm_chunked_context_first_come_first_served_in_whole_blocks():
    specs = [spec(0, prompt=4, output=9, max_tokens=10), spec(1, prompt=30, output=2, max_tokens=10),
             spec(2, prompt=30, output=2, max_tokens=10)]
    eng = make_engine(specs, budget=64)
    eng.step(BatchPlan({0: 4}))
    p = plan_of("trtllm-no-evict", eng, chunked_prefill=True, token_budget=40)
    assert p.tokens == {0: 1, 1: 30, 2: 8}                             # 9 tokens left -> 8 (2 blocks)
    with pytest.raises(PromptExceedsBudget):
        plan_of("trtllm-no-evict", make_engine([spec(0, prompt=100, output=2)], budget=64))
