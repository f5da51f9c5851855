"""Prefix caching (EngineConfig.prefix_caching): freed full blocks cached by content, LRU with a
request's tail evicted first, reused by the request itself after a recompute preemption and by a
conversation's next turn; every token of work is accounted for."""
from llmsched_env import BatchPlan, make_scheduler, run
from llmsched_env.engine import EngineConfig
from llmsched_env.request import WAITING
from tests.conftest import make_engine, spec

PC = dict(prefix_caching=True)


def test_a_preempted_request_returns_with_its_full_blocks_cached():
    eng = make_engine([spec(0, prompt=10, output=6)], **PC)  # block size 4
    eng.step(BatchPlan({0: 10}))
    eng.step(BatchPlan({0: 1}))
    eng.step(BatchPlan({0: 1}))  # 12 tokens of KV: 3 full blocks
    req = eng.requests[0]
    eng.step(BatchPlan({}, {0}))
    assert req.status == WAITING and req.prefill_target == 13
    assert req.num_computed == 12 and req.num_blocks == 0 and req.tokens_owed == 1
    r = eng.step(BatchPlan({0: 1}))  # only the last token is recomputed, and it emits
    assert r.emitted == [0] and req.num_computed == 13 and req.num_blocks == 4
    assert eng.prefix_hit_tokens == 12 and eng.recomputed_tokens == 12 and eng.used_blocks == 4


def test_a_full_hit_still_recomputes_one_token():
    eng = make_engine([spec(0, prompt=8, output=4)], **PC)
    eng.step(BatchPlan({0: 8}))  # 8 tokens = 2 full blocks, 1 generated: target 9 after preemption
    eng.step(BatchPlan({}, {0}))
    assert eng.requests[0].num_computed == 8  # (9 - 1) // 4 blocks
    eng2 = make_engine([spec(0, prompt=7, output=4)], **PC)
    eng2.step(BatchPlan({0: 7}))
    eng2.step(BatchPlan({0: 1}))  # KV of 8 tokens, target 9 after preemption
    eng2.step(BatchPlan({}, {0}))
    assert eng2.requests[0].num_computed == 8


def test_allocation_evicts_the_least_recently_freed_tail_first():
    # 6 blocks: request 0 frees 3 full blocks, then request 1 needs 4 blocks: one cached block goes.
    eng = make_engine([spec(0, prompt=12, output=3), spec(1, arrival=0.0, prompt=16, output=2)],
                      num_kv_blocks=6, **PC)
    eng.step(BatchPlan({0: 12}))
    eng.step(BatchPlan({}, {0}))
    a = eng.requests[0]
    assert a.num_computed == 12 and eng.free_blocks == 6
    eng.step(BatchPlan({1: 16}))  # 4 blocks for request 1; 3 uncached free, so 1 cached is evicted
    assert a.num_computed == 8  # its tail went first: what is left is a prefix
    assert eng.free_blocks == 2


def test_a_conversation_turn_reuses_the_previous_turns_blocks():
    first = spec(0, prompt=10, output=3, prefix_group=7, prefix_len=0)
    second = spec(1, arrival=5.0, prompt=20, output=2, prefix_group=7, prefix_len=12)
    eng = make_engine([first, second], **PC)
    s = run(eng, make_scheduler("fcfs"))
    assert s["num_finished"] == 2
    # turn 1 held 12 tokens of KV at its end (10 + 3 - 1): 3 full blocks, all inside turn 2's history
    assert eng.prefix_hit_tokens == 12
    assert eng.processed_tokens == (10 + 3 - 1) + (20 + 2 - 1) - 12


def test_on_by_default_and_every_token_is_accounted_for():
    assert EngineConfig(num_kv_blocks=8).prefix_caching  # as vLLM v1's enable_prefix_caching
    specs = [spec(i, arrival=0.002 * i, prompt=10 + i % 7, output=20, ttft=10, tbt=10) for i in range(16)]
    base = sum(s.prompt_len + s.output_len - 1 for s in specs)
    for kw in (dict(prefix_caching=False), PC):
        eng = make_engine(specs, num_kv_blocks=30, budget=64, max_seqs=8, **kw)
        run(eng, make_scheduler("vllm-v1"), max_steps=10_000)
        assert eng.done and eng.num_preemptions > 0
        assert eng.processed_tokens == base + eng.recomputed_tokens - eng.prefix_hit_tokens
        assert (eng.prefix_hit_tokens > 0) == kw["prefix_caching"]
