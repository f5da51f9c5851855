"""vllm-v1 against vLLM's own v1 scheduler (vLLM 0.33.0, in-process, CPU, no model): on the same
workload and limits the llmsched engine driven by ``vllm-v1`` schedules the same tokens and
preemptions, step by step, as vLLM does. Needs the ``vllm`` extra (``make test-vllm``)."""
from __future__ import annotations

import pytest

import tests.vllm_required  # noqa: F401  (skips this module without vLLM)

from vllm.v1.core.sched.scheduler import Scheduler as VLLMScheduler  # noqa: E402

from agents.vllm_offline import (block_hasher, build_scheduler, fake_step, make_request,  # noqa: E402
                                 tiny_model_config)
from llmsched_env.cost_model import LinearCostModel  # noqa: E402
from llmsched_env.engine import Engine, EngineConfig  # noqa: E402
from llmsched_env.request import RequestSpec  # noqa: E402
from llmsched_env.scheduler import make_scheduler  # noqa: E402

BLOCK = 16
# (prompt, output, priority): distinct priorities, so vLLM's (priority, arrival) victim is ours
LENGTHS = [(40, 6, 3), (70, 3, 0), (20, 12, 5), (100, 5, 1), (9, 20, 4), (33, 4, 2)]


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    return tiny_model_config(tmp_path_factory.mktemp("tiny-llama"))


def native_plans(model_config, policy: str, prefix_caching: bool) -> list:
    """vLLM's scheduler: 15 blocks (one is vLLM's null block), budget 64, 4 sequences."""
    sched = build_scheduler(model_config, VLLMScheduler, num_blocks=15, block_size=BLOCK, budget=64,
                            max_seqs=4, sched_policy=policy, prefix_caching=prefix_caching)
    hasher = block_hasher(sched) if prefix_caching else None
    for i, (p, o, prio) in enumerate(LENGTHS):
        sched.add_request(make_request(i, p, o, priority=prio, hasher=hasher))
    plans = []
    while sched.has_requests():
        out = fake_step(sched)
        if not out.num_scheduled_tokens and not out.preempted_req_ids:
            continue  # the step that only reports the last finished requests
        plans.append(({int(k.split("-")[1]): v for k, v in out.num_scheduled_tokens.items()},
                      {int(k.split("-")[1]) for k in out.preempted_req_ids}))
        assert len(plans) < 500
    return plans


def simulated_plans(spec: str, prefix_caching: bool) -> list:
    specs = [RequestSpec(rid=i, arrival_s=0.0, prompt_len=p, output_len=o, priority=prio)
             for i, (p, o, prio) in enumerate(LENGTHS)]
    eng = Engine(specs, EngineConfig(num_kv_blocks=14, block_size=BLOCK, max_num_batched_tokens=64,
                                     max_num_seqs=4, prefix_caching=prefix_caching),
                 LinearCostModel(base_s=0.01, per_token_s=1e-4))
    sched = make_scheduler(spec)
    plans = []
    while not eng.done:
        plan = sched.schedule(eng)
        plans.append((dict(plan.tokens), set(plan.preempt)))
        eng.step(plan)
    return plans


@pytest.mark.parametrize("prefix_caching", [True, False])
@pytest.mark.parametrize("policy, spec", [("fcfs", "vllm-v1"), ("priority", "vllm-v1:policy=priority")])
def test_vllm_v1_schedules_what_vllm_schedules(model_config, policy, spec, prefix_caching):
    """With vLLM's prefix caching (a preempted request finds its own freed blocks) and without."""
    native = native_plans(model_config, policy, prefix_caching)
    assert simulated_plans(spec, prefix_caching) == native
    assert any(pre for _, pre in native), "the workload should exercise preemption"


def test_priority_self_preemption_goes_on_with_the_next_running_request(model_config):
    """Low-priority A runs first; high-priority B arrives later, so it is behind A in the running
    list. When A needs a block, A is the priority victim and preempts itself; vLLM 0.33.0 then
    still schedules B (as ``vllm-v1:policy=priority`` does), earlier v1 releases stopped the
    running loop there (``stop_on_self_preempt=true``)."""
    k = 3  # B arrives after A's first k steps
    sched = build_scheduler(model_config, VLLMScheduler, num_blocks=15, block_size=BLOCK, budget=64,
                            max_seqs=4, sched_policy="priority")
    sched.add_request(make_request(0, 100, 40, priority=5))
    native = []
    while sched.has_requests():
        if len(native) == k:
            sched.add_request(make_request(1, 100, 40, priority=0))
        out = fake_step(sched)
        if out.num_scheduled_tokens or out.preempted_req_ids:
            native.append(({int(r.split("-")[1]): v for r, v in out.num_scheduled_tokens.items()},
                           {int(r.split("-")[1]) for r in out.preempted_req_ids}))

    def simulated(spec):
        cfg = EngineConfig(num_kv_blocks=14, block_size=BLOCK, max_num_batched_tokens=64, max_num_seqs=4,
                           prefix_caching=False)  # as the native side
        cost = LinearCostModel(base_s=0.01, per_token_s=1e-4)
        alone = Engine([RequestSpec(0, 0.0, 100, 40, priority=5)], cfg, cost)
        for _ in range(k):
            alone.step(make_scheduler(spec).schedule(alone))
        eng = Engine([RequestSpec(0, 0.0, 100, 40, priority=5),
                      RequestSpec(1, alone.now_s, 100, 40, priority=0)], cfg, cost)
        sched, plans = make_scheduler(spec), []
        while not eng.done:
            plan = sched.schedule(eng)
            plans.append((dict(plan.tokens), set(plan.preempt)))
            eng.step(plan)
        return plans

    step = next(i for i, (_, pre) in enumerate(native) if 0 in pre)
    assert native[step] == ({1: 1}, {0})                         # A preempted itself, B still ran
    assert simulated("vllm-v1:policy=priority") == native
    stop = simulated("vllm-v1:policy=priority,stop_on_self_preempt=true")
    assert stop[:step] == native[:step] and stop[step] == ({}, {0})
