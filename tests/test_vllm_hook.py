"""The vLLM hook against vLLM's real v1 scheduler, in-process, on CPU (no model, no GPU).

Requests are synthetic token lists; the "model" samples token 7 whenever a request's prefill is
complete. Every step checks that what vLLM scheduled (``SchedulerOutput``) is what the llmsched
policy planned. Needs the ``vllm`` extra (``make test-vllm``); skipped otherwise.
"""
from __future__ import annotations

import pytest

import tests.vllm_required  # noqa: E402,F401  (skips this module without vLLM)

from vllm.v1.core.sched.scheduler import Scheduler as VLLMScheduler  # noqa: E402

from agents.vllm_adapter import CostModelUnavailable, OracleUnavailable  # noqa: E402
from agents.vllm_hook import LLMSchedScheduler  # noqa: E402
from agents.vllm_offline import BatchQueue, build_scheduler, fake_step, tiny_model_config  # noqa: E402
from agents.vllm_offline import make_request as vllm_request  # noqa: E402
from llmsched_env.cost_model import LinearCostModel  # noqa: E402
from llmsched_env.engine import Engine, EngineConfig  # noqa: E402
from llmsched_env.plan import BatchPlan  # noqa: E402
from llmsched_env.scheduler import EngineView  # noqa: E402
from llmsched_env.request import RequestSpec  # noqa: E402
from llmsched_env.scheduler import available_schedulers, make_scheduler, parse_spec  # noqa: E402

BLOCK = 16


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    """A tiny Llama-shaped config.json in a local folder (no weights, no tokenizer)."""
    return tiny_model_config(tmp_path_factory.mktemp("tiny-llama"))


def build(model_config, cls=LLMSchedScheduler, **kw):
    return build_scheduler(model_config, cls, block_size=BLOCK, **kw)


step = fake_step


def rid_of(sched, req_id):
    return int(req_id.split("-")[1])


def run_checked(sched, lengths, max_steps=500, exact=True):
    """Drive to completion (with vLLM's async engine loop when the config says async); each
    policy step's SchedulerOutput must equal its BatchPlan. Returns the plans and the vLLM
    outputs per step."""
    for i, (p, o) in enumerate(lengths):
        sched.add_request(vllm_request(i, p, o))
    engine_step = (BatchQueue(sched).step if sched.scheduler_config.async_scheduling
                   else lambda: step(sched))
    plans, outs = [], []
    for _ in range(max_steps):
        if not sched.get_num_unfinished_requests():
            break
        before = sched.hook_stats.policy_steps
        waiting_before = [r.request_id for r in sched.waiting]
        out = engine_step()
        if sched.hook_stats.policy_steps == before:
            continue
        plan = sched.last_plan
        plans.append(plan)
        outs.append(out)
        done = {rid_of(sched, k): v for k, v in out.num_scheduled_tokens.items()}
        if exact:
            assert done == plan.tokens, "vLLM ran other token counts than the plan"
            assert {rid_of(sched, k) for k in out.preempted_req_ids} == plan.preempt
            planned = {f"req-{rid}" for rid in plan.tokens}
            admitted = [rid_of(sched, r) for r in waiting_before if r in planned]  # queue order
            started = [rid_of(sched, r.req_id) for r in out.scheduled_new_reqs]
            started += [rid_of(sched, r) for r in out.scheduled_cached_reqs.resumed_req_ids]
            assert sorted(started) == sorted(admitted)
            assert [rid_of(sched, r.req_id) for r in out.scheduled_new_reqs] == [
                rid for rid in admitted if rid not in {rid_of(sched, r) for r in
                                                       out.scheduled_cached_reqs.resumed_req_ids}]
    else:
        pytest.fail(f"not finished after {max_steps} steps")
    return plans, outs


def test_every_registered_scheduler_runs_inside_vllm(model_config):
    """Each registered llmsched scheduler serves a workload through the hook to completion and
    vLLM carries out its plans exactly; oracle schedulers are refused with OracleUnavailable."""
    ran = []
    # learned policies (ppo: torch + a policy directory, onnx: an export directory) are served
    # through the hook by tests/test_vllm_export.py
    for name in sorted(set(available_schedulers()) - {"ppo", "onnx"}):
        try:
            policy = make_scheduler(name)
        except ValueError:
            continue  # needs options (covered by its own tests)
        sched = build(model_config, policy=policy, num_blocks=15, budget=128, max_seqs=4,
                      cost_model=LinearCostModel(base_s=0.01, per_token_s=1e-4))
        try:
            run_checked(sched, LENGTHS)  # whole prompts fit the budget (vLLM v0-style policies)
        except OracleUnavailable:
            continue
        assert sched.hook_stats.policy_errors == 0, name
        ran.append(name)
    assert {"fcfs", "vllm-v1"} <= set(ran)


def simulate_plans(policy_name, lengths, num_kv_blocks, budget, max_seqs, **options):
    """The same workload in the llmsched Engine: the plans the policy makes there."""
    specs = [RequestSpec(rid=i, arrival_s=0.0, prompt_len=p, output_len=o, max_tokens=o)
             for i, (p, o) in enumerate(lengths)]  # max_tokens as vllm_request sets it
    eng = Engine(specs, EngineConfig(num_kv_blocks=num_kv_blocks, block_size=BLOCK,
                                     max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                                     prefix_caching=False),  # as build() makes vLLM's
                 LinearCostModel(base_s=0.01, per_token_s=1e-4))
    sched = make_scheduler(policy_name, **options)
    plans = []
    while not eng.done:
        plan = sched.schedule(eng)
        plans.append(BatchPlan(dict(plan.tokens), set(plan.preempt)))
        eng.step(plan)
    return plans


LENGTHS = [(40, 6), (70, 3), (20, 12), (100, 5), (9, 20), (33, 4)]


def _registered(name):
    return pytest.param(name, marks=pytest.mark.skipif(
        parse_spec(name)[0] not in available_schedulers(), reason=f"scheduler {name!r} not registered here"))


@pytest.mark.parametrize("policy", [_registered("fcfs"), _registered("vllm-v1"),
                                    _registered("sarathi"), _registered("sglang"),
                                    _registered("trtllm-no-evict:chunked_prefill=true"),
                                    _registered("trtllm-max-util:chunked_prefill=true")])
def test_heuristic_inside_vllm_makes_the_simulators_plans(model_config, policy):
    """A heuristic scheduling vLLM makes the same plans, step for step, as in the llmsched
    engine on the same workload and limits, and vLLM carries out each plan exactly, including
    preemptions under KV pressure (14 usable blocks of 16 tokens)."""
    sched = build(model_config, policy=policy, num_blocks=15, budget=64, max_seqs=4)
    plans, _ = run_checked(sched, LENGTHS)
    assert plans == simulate_plans(policy, LENGTHS, num_kv_blocks=14, budget=64, max_seqs=4)
    st = sched.hook_stats
    assert st.fallback_preemptions == 0 and st.clamped == 0 and st.ignored == 0
    assert not st.refused_admissions and not st.fallback_steps
    if policy in ("fcfs", "vllm-v1"):
        assert st.plan_preemptions > 0, "the workload should exercise preemption"


def test_fcfs_through_the_hook_matches_vllms_own_scheduler(model_config):
    """The fcfs baseline driving vLLM schedules exactly what vLLM's own FCFS scheduler does
    (same tokens per request per step, same preemptions) on a preempting workload."""
    hook = build(model_config, policy="fcfs", num_blocks=15)
    native = build(model_config, cls=VLLMScheduler, num_blocks=15)
    for s in (hook, native):
        for i, (p, o) in enumerate(LENGTHS):
            s.add_request(vllm_request(i, p, o))
    n = 0
    while hook.has_requests() or native.has_requests():
        a, b = step(hook), step(native)
        assert a.num_scheduled_tokens == b.num_scheduled_tokens, f"step {n}"
        assert a.preempted_req_ids == b.preempted_req_ids, f"step {n}"
        n += 1
        assert n < 500
    assert hook.hook_stats.plan_preemptions > 0


class ShortestPromptFixedChunk:
    """A test policy unlike vLLM's rules: admit shortest prompt first, prefill in fixed chunks,
    and under KV pressure preempt the running request holding the MOST blocks."""

    name = "test-spf"

    def __init__(self, chunk=24):
        self.chunk = chunk
        self.victims = []

    def reset(self):
        self.victims = []

    def schedule(self, view):
        cfg = view.config
        budget, free = cfg.max_num_batched_tokens, view.free_blocks
        tokens, preempt = {}, set()
        running = list(view.running.values())
        for req in running:
            if req.rid in preempt:
                continue
            n = min(self.chunk if req.is_prefilling else 1, req.tokens_owed, budget)
            need = view.blocks_for(req.num_computed + n) - req.num_blocks
            while need > free:
                others = [r for r in running if r.rid not in preempt and r is not req
                          and r.rid not in tokens]
                if not others:
                    break
                victim = max(others, key=lambda r: (r.num_blocks, r.rid))
                preempt.add(victim.rid)
                self.victims.append((victim.rid, running[-1].rid))
                free += victim.num_blocks
            if need > free or n <= 0:
                continue
            tokens[req.rid] = n
            budget -= n
            free -= need
        if preempt:
            return BatchPlan(tokens, preempt)
        resident = len(view.running)
        for req in sorted(view.iter_waiting(), key=lambda r: (r.prompt_len, r.rid)):
            n = min(self.chunk, req.tokens_owed, budget)
            need = view.blocks_for(n)
            if n <= 0 or need > free or resident >= cfg.max_num_seqs:
                break
            tokens[req.rid] = n
            budget -= n
            free -= need
            resident += 1
        return BatchPlan(tokens, preempt)


def test_custom_policy_decides_order_chunks_and_victims(model_config):
    """run_checked asserts every step's SchedulerOutput equals the plan (tokens, preemptions,
    admission order); here: the plan really was unlike what vLLM would have done."""
    policy = ShortestPromptFixedChunk(chunk=24)
    sched = build(model_config, policy=policy, num_blocks=13, budget=64, max_seqs=4)
    plans, outs = run_checked(sched, [(90, 30), (60, 30), (50, 30), (9, 45), (20, 40)])
    # Shortest prompts first: 0 (the longest) waits, where vLLM would admit 0, 1, 2, 3. They
    # join the running list in queue order (the ordering contract), not the plan's.
    assert [rid_of(sched, r.req_id) for r in outs[0].scheduled_new_reqs] == [1, 2, 3, 4]
    # Prefill chunks are the policy's fixed 24 tokens at most, not vLLM's 64-token budget.
    chunks = [n for plan in plans for n in plan.tokens.values() if n > 1]
    assert max(chunks) == 24
    # The policy's victims (most blocks), which vLLM preempted; vLLM would have taken the
    # newest running request.
    assert len(policy.victims) == sched.hook_stats.plan_preemptions >= 2
    assert any(victim != newest for victim, newest in policy.victims)
    assert sched.hook_stats.fallback_preemptions == 0 and sched.hook_stats.ignored == 0


class IgnoresKV:
    """Schedules everything owed, ignoring the KV cache: vLLM must fall back to its own rules."""

    name = "test-ignores-kv"

    def reset(self):
        pass

    def schedule(self, view):
        budget = view.config.max_num_batched_tokens
        tokens = {}
        for req in list(view.running.values()) + list(view.iter_waiting()):
            n = min(req.tokens_owed, budget)
            if n <= 0:
                break
            tokens[req.rid] = n
            budget -= n
        return BatchPlan(tokens)


def test_infeasible_plans_fall_back_to_vllm_rules_and_are_counted(model_config):
    sched = build(model_config, policy=IgnoresKV(), num_blocks=13, budget=64, max_seqs=8)
    run_checked(sched, [(60, 30), (60, 30), (50, 40), (40, 30)], exact=False)
    st = sched.hook_stats
    assert st.fallback_preemptions > 0
    assert st.refused_admissions["KV cache"] > 0
    assert all(not r for r in [sched.running, list(sched.waiting)])


def test_full_prompt_admission_check_stays_vllms(model_config):
    """With vLLM's scheduler_reserve_full_isl, an admission whose whole prompt does not fit is
    refused even though the planned chunk would."""
    sched = build(model_config, policy=ShortestPromptFixedChunk(chunk=16), num_blocks=9,
                  reserve_full=True)
    run_checked(sched, [(100, 4), (100, 4)], exact=False)
    assert sched.hook_stats.refused_admissions["KV cache"] > 0


class Oracle:
    name = "test-oracle"

    def reset(self):
        pass

    def schedule(self, view):
        return BatchPlan({r.rid: r.output_len for r in view.iter_waiting()})


class ReadsCost(Oracle):
    def schedule(self, view):
        view.cost_model.batch_time
        return BatchPlan()


def test_oracle_or_cost_model_policy_is_refused_with_a_clear_error(model_config):
    sched = build(model_config, policy=Oracle())
    sched.add_request(vllm_request(0, 10, 3))
    with pytest.raises(OracleUnavailable, match="output_len"):
        sched.schedule()
    sched = build(model_config, policy=ReadsCost())
    sched.add_request(vllm_request(0, 10, 3))
    with pytest.raises(CostModelUnavailable, match="LLMSCHED_COST_PRESET"):
        sched.schedule()


def test_view_fields(model_config):
    """The view's request fields follow llmsched's meanings through prefill, decode and a
    recompute preemption."""
    sched = build(model_config, policy=ShortestPromptFixedChunk(chunk=16), num_blocks=32)
    sched.clock = lambda: 1000.5
    sched._t0 = 1000.0
    sched.add_request(vllm_request(0, 40, 5, priority=3))
    view = sched.make_view()
    assert isinstance(view, EngineView) and view.host_blocks == 0 and view.num_requests == 1
    (r,) = view.iter_waiting()
    assert (r.rid, r.prompt_len, r.num_computed, r.prefill_target, r.priority) == (0, 40, 0, 40, 3)
    assert r.is_prefilling and r.tokens_owed == 40 and r.status == 0 and view.now_s == 0.5
    assert abs(r.arrival_s - 0.0) < 1e-9 and r.predicted_output_len is None and r.max_output_len == 5
    for _ in range(3):
        step(sched)
    r = sched.make_view().running[0]
    assert (r.num_computed, r.prefill_target, r.num_generated) == (40, 40, 1)
    assert not r.is_prefilling and r.tokens_owed == 1 and r.num_blocks == 3 and r.status == 1
    assert r.token_times == [0.5] and r.first_token_s == 0.5
    step(sched)
    req = sched.running[0]
    sched.running.remove(req)
    sched._preempt_request(req, 0.0)
    view = sched.make_view()
    (r,) = view.iter_waiting()
    assert (r.num_computed, r.prefill_target, r.num_generated, r.num_preemptions) == (0, 42, 2, 1)
    assert view.config.num_kv_blocks == 31 and view.free_blocks == 31 and view.used_blocks == 0
    assert r.first_scheduled_s == 0.5 and r.last_scheduled_s == 0.5
    assert view.busy_s == 0.0 and view.last_step_latency_s == 0.0  # the fake clock stood still
    while sched.get_num_unfinished_requests():
        step(sched)
    (f,) = sched.make_view().finished
    assert (f.rid, f.num_generated, f.status, f.finish_s, len(f.token_times)) == (0, 5, 2, 0.5, 5)


def test_policy_from_env_and_additional_config(model_config, monkeypatch):
    monkeypatch.setenv("LLMSCHED_POLICY", "vllm-v1:policy='priority'")
    sched = build(model_config, policy=None)
    assert sched.llmsched_policy.name == "vllm-v1" and sched.llmsched_policy.policy == "priority"
    sched = build(model_config, policy=None,
                  additional_config={"llmsched_policy": "vllm-v1:token_budget=32"})
    assert sched.llmsched_policy.policy == "fcfs" and sched.llmsched_policy.token_budget == 32
    monkeypatch.setenv("LLMSCHED_POLICY", "no-such-policy")
    with pytest.raises(ValueError, match="unknown scheduler 'no-such-policy'"):
        build(model_config, policy=None)
    assert "fcfs" in available_schedulers()


class Raises:
    name = "test-raises"

    def reset(self):
        pass

    def schedule(self, view):
        raise RuntimeError("policy bug")


def test_policy_error_and_pause_hand_the_step_to_vllm(model_config):
    sched = build(model_config, policy=Raises())
    sched.add_request(vllm_request(0, 10, 2))
    out = step(sched)
    assert out.num_scheduled_tokens == {"req-0": 10}  # vLLM's own schedule() ran
    assert sched.hook_stats.policy_errors == 1 and sched.hook_stats.fallback_steps["policy error"] == 1
    from vllm.v1.core.sched.interface import PauseState
    sched.set_pause_state(PauseState.PAUSED_ALL)
    assert step(sched).num_scheduled_tokens == {}
    assert sched.hook_stats.fallback_steps["paused"] == 1


def test_in_flight_requests_are_not_scheduled_twice(model_config):
    """An async engine schedules the next step before the last one's output is back; a request
    whose step is in flight is skipped (vLLM's synchronous Scheduler does the same)."""
    sched = build(model_config, policy="fcfs")
    sched.add_request(vllm_request(0, 10, 3))
    first = sched.schedule()
    sched.add_request(vllm_request(1, 12, 3))
    second = sched.schedule()
    assert first.num_scheduled_tokens == {"req-0": 10}
    assert second.num_scheduled_tokens == {"req-1": 12}
    assert sched.hook_stats.in_flight == 1 and sched.hook_stats.clamped == 0


def test_prefix_cache_hits_shrink_the_planned_chunk(model_config):
    """With prefix caching on, a request whose prompt is already cached computes only the
    rest: the plan's chunk starts after vLLM's hit (counted, not a clamp)."""
    from agents.vllm_offline import block_hasher
    sched = build(model_config, policy="fcfs", num_blocks=32, prefix_caching=True)
    hasher = block_hasher(sched)
    sched.add_request(vllm_request(0, 50, 3, first_token=5, hasher=hasher))
    step(sched)
    sched.add_request(vllm_request(1, 50, 3, first_token=5, hasher=hasher))
    out = step(sched)
    # 48 tokens (3 full blocks) of req-1 come from the cache; fcfs planned 50, vLLM computes 2.
    assert sched.last_plan.tokens[1] == 50 and out.num_scheduled_tokens["req-1"] == 2
    assert sched.hook_stats.prefix_cache_tokens == 48 and sched.hook_stats.clamped == 0
    while sched.get_num_unfinished_requests():
        step(sched)
