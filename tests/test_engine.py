"""Engine semantics on hand-built cases (DESIGN.md 'Engine semantics')."""
import pytest

from llmsched_env import BatchPlan, PlanError, SchedulerStalled, WorkloadRejected
from llmsched_env.cost_model import LinearCostModel
from llmsched_env.request import FINISHED, RUNNING, WAITING
from tests.conftest import make_engine, spec


def test_chunked_prefill_then_one_token_per_decode_step():
    eng = make_engine([spec(0, prompt=10, output=3)])
    r = eng.step(BatchPlan({0: 4}))
    req = eng.requests[0]
    assert req.status == RUNNING and req.num_computed == 4 and req.num_generated == 0 and r.emitted == []
    assert req.num_blocks == 1  # ceil(4 / 4)
    r = eng.step(BatchPlan({0: 6}))  # completes the prefill: emits the first token
    assert r.emitted == [0] and req.num_generated == 1 and req.num_computed == 10 and req.num_blocks == 3
    eng.step(BatchPlan({0: 1}))
    r = eng.step(BatchPlan({0: 1}))
    assert r.finished == [0] and req.status == FINISHED and req.num_generated == 3
    assert eng.used_blocks == 0 and eng.done
    # Tokens come out at the end of each emitting step; latency from the cost model.
    assert req.token_times == pytest.approx([0.0104 + 0.0106, 0.021 + 0.0101, 0.0311 + 0.0101])


def test_preemption_recomputes_prompt_plus_generated():
    eng = make_engine([spec(0, prompt=8, output=5)], prefix_caching=False)  # cached: tests/test_prefix_cache.py
    eng.step(BatchPlan({0: 8}))
    eng.step(BatchPlan({0: 1}))
    req = eng.requests[0]
    assert req.num_generated == 2 and req.num_computed == 9
    r = eng.step(BatchPlan({}, {0}))
    assert r.preempted == [0] and r.idle
    assert req.status == WAITING and req.num_computed == 0 and req.num_blocks == 0
    assert req.prefill_target == 10 and req.num_preemptions == 1
    assert eng.recomputed_tokens == 9 and eng.used_blocks == 0
    r = eng.step(BatchPlan({0: 10}))  # re-prefill emits the next token
    assert r.emitted == [0] and req.num_generated == 3 and req.num_computed == 10


def test_infeasible_plan_names_every_violation_and_changes_nothing():
    eng = make_engine([spec(0, prompt=40), spec(1, prompt=40), spec(2, prompt=8)], num_kv_blocks=12,
                      budget=64, max_seqs=2)
    before = (eng.now_s, eng.used_blocks, eng.num_steps, [r.num_computed for r in eng.requests.values()])
    with pytest.raises(PlanError) as e:
        eng.step(BatchPlan({0: 40, 1: 40, 2: 8, 7: 1}))
    msg = str(e.value)
    assert "token budget: 88 tokens > max_num_batched_tokens 64" in msg
    assert "sequence limit: 3 resident" in msg
    assert "KV capacity: 22 blocks" in msg and "> 12 blocks" in msg
    assert "request 7 is not waiting or running" in msg
    assert len(e.value.violations) == 4
    assert before == (eng.now_s, eng.used_blocks, eng.num_steps, [r.num_computed for r in eng.requests.values()])


def test_chunk_limits_and_decode_exactly_one():
    eng = make_engine([spec(0, prompt=8, output=4)])
    with pytest.raises(PlanError, match=r"prefill chunk: request 0 got 9 tokens; allowed 1..8"):
        eng.step(BatchPlan({0: 9}))
    with pytest.raises(PlanError, match="prefill chunk"):
        eng.step(BatchPlan({0: 0}))
    eng.step(BatchPlan({0: 8}))
    with pytest.raises(PlanError, match="decode: request 0 got 2 tokens"):
        eng.step(BatchPlan({0: 2}))
    with pytest.raises(PlanError, match="both preempted and scheduled"):
        eng.step(BatchPlan({0: 1}, {0}))


def test_preempting_a_waiting_request_is_an_error():
    eng = make_engine([spec(0), spec(1)])
    with pytest.raises(PlanError, match="request 1 is not running"):
        eng.step(BatchPlan({0: 8}, {1}))


def test_clock_jumps_to_next_arrival_when_idle():
    eng = make_engine([spec(0, arrival=0.0, prompt=4, output=1), spec(1, arrival=5.0, prompt=4, output=1)])
    assert eng.num_waiting == 1
    eng.step(BatchPlan({0: 4}))  # request 0 finishes; nothing left -> jump to t=5
    assert eng.now_s == 5.0 and eng.num_waiting == 1
    assert eng.busy_s == pytest.approx(0.0104)


def test_engine_starts_at_first_arrival():
    eng = make_engine([spec(0, arrival=3.0)])
    assert eng.now_s == 3.0 and eng.num_waiting == 1


def test_empty_plan_waits_for_arrival_and_stalls_without_one():
    eng = make_engine([spec(0, arrival=0.0), spec(1, arrival=2.0)])
    r = eng.step(BatchPlan())
    assert r.idle and eng.now_s == 2.0 and eng.num_waiting == 2
    steps = eng.num_steps
    with pytest.raises(SchedulerStalled, match="no future arrivals"):
        eng.step(BatchPlan())
    assert eng.num_steps == steps


def test_workload_rejected_with_numbers():
    with pytest.raises(WorkloadRejected, match=r"needs 26 KV blocks \(103 tokens\) > capacity 10 blocks"):
        make_engine([spec(0, prompt=100, output=4)], num_kv_blocks=10)
    with pytest.raises(WorkloadRejected, match="> max_model_len 50"):
        make_engine([spec(0, prompt=48, output=4)], max_model_len=50)
    with pytest.raises(WorkloadRejected, match="duplicate id"):
        make_engine([spec(0), spec(0)])


def test_impossible_config_is_rejected():
    with pytest.raises(ValueError, match="max_num_batched_tokens=0 must be a positive integer"):
        make_engine([spec(0)], budget=0)


def test_max_num_seqs_counts_resident_requests():
    eng = make_engine([spec(i, prompt=4, output=3) for i in range(3)], max_seqs=2)
    eng.step(BatchPlan({0: 4, 1: 4}))
    # request 2 cannot join while 0 and 1 hold KV, even if they sit this step out
    with pytest.raises(PlanError, match="sequence limit"):
        eng.step(BatchPlan({2: 4}))
    eng.step(BatchPlan({2: 4}, {1}))  # preempting one makes room


def test_cost_model_sees_batch_composition():
    seen = []

    class Spy(LinearCostModel):
        def batch_time(self, s):
            seen.append(s)
            return 0.01

    eng = make_engine([spec(0, prompt=8, output=3), spec(1, prompt=6, output=2)], cost=Spy())
    eng.step(BatchPlan({0: 8, 1: 2}))
    eng.step(BatchPlan({0: 1, 1: 4}))
    s = seen[-1]
    assert (s.num_tokens, s.num_prefills, s.prefill_tokens, s.prefill_c2, s.prefill_ck, s.prefill_ctx) == \
        (5, 1, 4, 16, 8, 2)
    assert (s.num_decodes, s.decode_kv, s.num_emit) == (1, 9, 2)


def test_waiting_order_preempted_first_then_fcfs():
    eng = make_engine([spec(i, prompt=4, output=5) for i in range(4)])
    eng.step(BatchPlan({0: 4, 1: 4}))
    eng.step(BatchPlan({}, {0}))
    eng.step(BatchPlan({}, {1}))
    assert [r.rid for r in eng.iter_waiting()] == [1, 0, 2, 3]


def test_preempt_only_plan_takes_no_time():
    eng = make_engine([spec(0, arrival=0.0, prompt=8, output=5), spec(1, arrival=100.0)])
    eng.step(BatchPlan({0: 8}))
    t = eng.now_s
    r = eng.step(BatchPlan({}, {0}))
    assert r.idle and r.latency_s == 0.0 and eng.now_s == t  # not the next arrival at t=100
    assert [q.rid for q in eng.iter_waiting()] == [0]


def test_the_engine_and_a_queue_view_are_engine_views():
    """Every attribute EngineView documents exists on both (the vLLM hook's view: test_vllm_hook)."""
    from llmsched_env.scheduler import EngineView, QueueView
    eng = make_engine([spec(0, 8, 2), spec(1, 8, 2)])
    view = QueueView(eng, [eng.requests[1]] if 1 in eng.requests else [])
    for v in (eng, view):
        assert isinstance(v, EngineView)
        assert v.host_blocks == 0 and v.used_blocks + v.free_blocks == v.config.num_kv_blocks
    assert [r.rid for r in view.iter_waiting()] == [r.rid for r in view.waiting]
