"""Swap preemption (EngineConfig.preemption_mode="swap"): KV to host memory and back, with its
copy time, and the recompute fallback when the host space is full."""
import pytest

from llmsched_env import BatchPlan, make_scheduler, run
from llmsched_env.engine import EngineConfig
from llmsched_env.presets import get_preset
from llmsched_env.request import RUNNING, WAITING
from tests.conftest import make_engine, spec

SWAP = dict(preemption_mode="swap", swap_space_blocks=8, swap_s_per_block=0.001)


def test_swap_keeps_the_kv_and_charges_both_copies():
    eng = make_engine([spec(0, prompt=8, output=5)], **SWAP)
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({0: 1}))  # 9 tokens of KV: 3 blocks of 4
    req = eng.requests[0]
    busy = eng.busy_s
    r = eng.step(BatchPlan({}, {0}))  # a preempt-only plan takes the swap-out copy
    assert r.preempted == [0] and r.swapped_out == [0] and r.idle
    assert r.end_s - r.start_s == pytest.approx(3 * 0.001) and r.transfer_s == pytest.approx(0.003)
    assert req.status == WAITING and req.num_computed == 9 and req.host_blocks == 3 and req.num_blocks == 0
    assert req.prefill_target == 8 and req.tokens_owed == 1  # it comes back decoding
    assert eng.used_blocks == 0 and eng.host_blocks == 3 and eng.recomputed_tokens == 0
    assert eng.busy_s == pytest.approx(busy + 0.003)
    r = eng.step(BatchPlan({0: 1}))  # swapped in: copy + the decode
    assert r.admitted == [0] and r.emitted == [0] and r.transfer_s == pytest.approx(0.003)
    assert r.latency_s == pytest.approx(0.003 + eng.cost_model.batch_time(r.shape))
    assert req.status == RUNNING and req.num_computed == 10 and req.host_blocks == 0 and req.num_blocks == 3
    assert eng.host_blocks == 0 and eng.num_swap_outs == 1 and eng.swapped_blocks == 6
    assert eng.transfer_s == pytest.approx(0.006) and req.num_preemptions == 1


def test_a_swapped_in_request_must_be_given_what_it_is_owed():
    eng = make_engine([spec(0, prompt=8, output=5)], **SWAP)
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({}, {0}))
    with pytest.raises(Exception, match="decode: request 0 got 9 tokens"):
        eng.step(BatchPlan({0: 9}))  # a recompute scheduler's whole prompt + generated


def test_victims_beyond_the_host_space_are_recomputed():
    eng = make_engine([spec(0, prompt=12, output=4), spec(1, prompt=12, output=4)],
                      preemption_mode="swap", swap_space_blocks=4, swap_s_per_block=0.001,
                      prefix_caching=False)  # else 0 finds its freed blocks cached
    eng.step(BatchPlan({0: 12, 1: 12}))  # 3 blocks each, 1 generated token each
    r = eng.step(BatchPlan({}, {0, 1}))
    # Newest admitted first: 1 swaps (3 of the 4 host blocks), 0 does not fit and recomputes.
    assert r.swapped_out == [1] and sorted(r.preempted) == [0, 1]
    a, b = eng.requests[0], eng.requests[1]
    assert (a.num_computed, a.host_blocks, a.prefill_target) == (0, 0, 13)
    assert (b.num_computed, b.host_blocks) == (12, 3)
    assert eng.recomputed_tokens == 12 and eng.num_preemptions == 2 and eng.num_swap_outs == 1
    assert [q.rid for q in eng.iter_waiting()] == [0, 1]  # the same queue order as recompute


def test_recompute_mode_is_unchanged_and_swap_needs_host_space():
    with pytest.raises(ValueError, match="needs swap_space_blocks >= 1"):
        EngineConfig(num_kv_blocks=8, preemption_mode="swap")
    with pytest.raises(ValueError, match="preemption_mode='disk' must be one of recompute, swap"):
        EngineConfig(num_kv_blocks=8, preemption_mode="disk")
    with pytest.raises(ValueError, match="swap_s_per_block"):
        EngineConfig(num_kv_blocks=8, swap_s_per_block=-1.0)


def test_presets_derive_swap_limits_from_the_model_and_host_link():
    p = get_preset("h100-llama3-8b")
    cfg = p.engine_config(preemption_mode="swap")
    block_bytes = 16 * p.shape.kv_bytes_per_token(1)  # 16 tokens x 128 KiB for Llama-3-8B
    assert block_bytes == 2 * 2**20
    assert cfg.swap_space_blocks == 2048  # vLLM v0's default 4 GiB
    assert cfg.swap_s_per_block == pytest.approx(block_bytes / 51e9)
    assert p.engine_config(swap_space_gib=1).swap_space_blocks == 512
    with pytest.raises(ValueError, match="swap_space_gib"):
        p.engine_config(swap_space_gib=-1)


def _memory_bound(n=12):
    return [spec(i, arrival=0.001 * i, prompt=10, output=30, ttft=10, tbt=10) for i in range(n)]


def test_vllm_v0_under_swap_admits_no_prompt_while_a_request_is_swapped_out():
    """vLLM v0's _schedule_default: no prefills while the swapped queue is non-empty; swapped
    requests return, oldest first, only in a step that preempted nothing."""
    eng = make_engine(_memory_bound(), num_kv_blocks=24, budget=64, max_seqs=8,
                      preemption_mode="swap", swap_space_blocks=64, swap_s_per_block=1e-4)
    sch = make_scheduler("vllm-v0")
    swap_ins = []

    class Probe:
        name = "probe"

        def reset(self):
            sch.reset()

        def schedule(self, engine):
            plan = sch.schedule(engine)
            swapped = [r.rid for r in engine.iter_waiting() if r.host_blocks]
            if swapped:
                fresh = [rid for rid in plan.tokens if engine.requests[rid].status == WAITING
                         and not engine.requests[rid].host_blocks]
                assert not fresh, f"prompts {fresh} admitted while {swapped} are swapped out"
                back = [rid for rid in plan.tokens if engine.requests[rid].host_blocks]
                if back:
                    assert not plan.preempt
                    oldest = list(reversed(swapped))
                    assert back == oldest[:len(back)], (back, oldest)
                    swap_ins.extend(back)
            return plan

    run(eng, Probe(), max_steps=10_000)
    assert eng.done and eng.num_swap_outs > 0 and eng.recomputed_tokens == 0
    assert len(swap_ins) == eng.num_swap_outs


def test_swap_saves_recompute_on_a_memory_bound_run():
    def go(mode):
        eng = make_engine(_memory_bound(16), num_kv_blocks=30, budget=64, max_seqs=8,
                          preemption_mode=mode, swap_space_blocks=64, swap_s_per_block=1e-4)
        run(eng, make_scheduler("vllm-v0"), max_steps=10_000)
        return eng

    rec, swp = go("recompute"), go("swap")
    assert rec.num_preemptions > 0 and rec.recomputed_tokens > 0
    assert swp.num_swap_outs > 0 and swp.recomputed_tokens == 0 and swp.transfer_s > 0
    assert swp.processed_tokens < rec.processed_tokens


def test_ranked_displacement_only_swaps_never_recomputes():
    """Under swap a waiting request displaces only residents whose KV fits the host space left:
    with a host too small for any victim, fastserve's displacement plans exactly as displace=false."""
    def go(spec_name, host):
        eng = make_engine(_memory_bound(16), num_kv_blocks=30, budget=64, max_seqs=8,
                          preemption_mode="swap", swap_space_blocks=host, swap_s_per_block=1e-4)
        run(eng, make_scheduler(spec_name), max_steps=10_000)
        return eng

    roomy = go("fastserve", 64)
    assert roomy.num_swap_outs > 0
    tiny, off = go("fastserve", 1), go("fastserve:displace=false", 1)
    assert (tiny.num_preemptions, tiny.busy_s) == (off.num_preemptions, off.busy_s)
