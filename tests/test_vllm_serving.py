"""The vLLM hook as a production scheduler: async scheduling, the engine's own limits, one
ordering contract with the llmsched engine, bounded memory and any uptime.

In-process against vLLM's real v1 scheduler on CPU (no model, no GPU), as
tests/test_vllm_hook.py. Needs the ``vllm`` extra (``make test-vllm``); skipped otherwise.
"""
from __future__ import annotations

import logging

import pytest

import tests.vllm_required  # noqa: E402,F401  (skips this module without vLLM)

from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler as VLLMScheduler  # noqa: E402

from agents.vllm_adapter import OracleUnavailable  # noqa: E402
from agents.vllm_hook import LLMSchedAsyncScheduler, LLMSchedScheduler  # noqa: E402
from agents.vllm_offline import BatchQueue, build_scheduler, fake_step, tiny_model_config  # noqa: E402
from agents.vllm_offline import make_request as vllm_request  # noqa: E402
from llmsched_env.cost_model import LinearCostModel  # noqa: E402
from llmsched_env.engine import Engine, EngineConfig  # noqa: E402
from llmsched_env.plan import BatchPlan  # noqa: E402
from llmsched_env.request import RequestSpec  # noqa: E402
from llmsched_env.scheduler import heuristic_schedulers, make_scheduler  # noqa: E402
from tests.test_vllm_hook import LENGTHS, rid_of, run_checked  # noqa: E402

BLOCK = 16
HEURISTICS = heuristic_schedulers()


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    return tiny_model_config(tmp_path_factory.mktemp("tiny-llama"))


def build(model_config, cls=LLMSchedScheduler, **kw):
    return build_scheduler(model_config, cls, block_size=BLOCK, **kw)


def serve(sched, lengths, async_scheduling, max_calls=5000):
    """Add the requests and run the engine loop to completion; the SchedulerOutputs in order."""
    for i, (p, o) in enumerate(lengths):
        sched.add_request(vllm_request(i, p, o))
    outs = []
    if async_scheduling:
        loop = BatchQueue(sched)
        while loop.busy():
            out = loop.step()
            if out is not None:
                outs.append(out)
            assert len(outs) < max_calls
    else:
        while sched.has_requests():
            outs.append(fake_step(sched))
            assert len(outs) < max_calls
    return outs


def trace(outs):
    return [(dict(o.num_scheduled_tokens), sorted(o.preempted_req_ids)) for o in outs]


class Checked:
    """Wraps a policy; before each decision checks the invariants the llmsched engine keeps
    (a decoding request has emitted a token, one time per token; every request owes >= 1)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def reset(self):
        self.inner.reset()

    def schedule(self, view):
        assert view.num_waiting == len(view.waiting)
        for r in list(view.running.values()) + view.waiting:
            assert r.tokens_owed >= 1, r
            assert len(r.token_times) == r.num_generated, r
            if not r.is_prefilling:
                assert r.num_generated >= 1 and r.token_times, r
        return self.inner.schedule(view)


def heuristic_or_skip(name):
    try:
        return make_scheduler(name)
    except ValueError as e:
        pytest.skip(f"{name} needs options: {e}")


# ------------------------------------------------------------------ async scheduling
def test_async_config_builds_the_hook_on_vllms_async_scheduler(model_config):
    sched = build(model_config, policy="fcfs", async_scheduling=True)
    assert type(sched) is LLMSchedAsyncScheduler and isinstance(sched, AsyncScheduler)
    assert type(build(model_config, policy="fcfs")) is LLMSchedScheduler


def test_fcfs_with_async_scheduling_schedules_what_vllms_async_scheduler_does(model_config):
    """Under vLLM's async engine loop (the next step planned while the last runs) fcfs through
    the hook makes vLLM's own AsyncScheduler's steps exactly, preemptions and empty steps
    included."""
    kw = dict(num_blocks=15, budget=64, max_seqs=4, async_scheduling=True)
    hook = build(model_config, policy="fcfs", **kw)
    native = build(model_config, cls=AsyncScheduler, **kw)
    a, b = serve(hook, LENGTHS, True), serve(native, LENGTHS, True)
    assert trace(a) == trace(b)
    assert hook.hook_stats.plan_preemptions > 0 and hook.hook_stats.policy_errors == 0


@pytest.mark.parametrize("name", HEURISTICS)
def test_every_heuristic_serves_vllm_with_async_scheduling(model_config, name):
    """Each heuristic drives vLLM's async scheduler to completion: vLLM carries out every plan
    exactly, the view never shows a decode without its token (slai reads token_times[-1]),
    and there are no more empty steps than vLLM's own async scheduler makes."""
    policy = Checked(heuristic_or_skip(name))
    kw = dict(num_blocks=15, budget=128, max_seqs=4, async_scheduling=True)
    cost = LinearCostModel(0.01, 1e-4)
    sched = build(model_config, policy=policy, cost_model=cost, **kw)
    try:
        run_checked(sched, LENGTHS)
    except OracleUnavailable:
        pytest.skip(f"{name} reads the true output length, which a server does not have")
    st = sched.hook_stats
    assert st.policy_errors == 0 and st.ignored == 0 and st.clamped == 0
    assert st.fallback_preemptions == 0 and not st.fallback_steps
    hook = build(model_config, policy=heuristic_or_skip(name), cost_model=cost, **kw)
    native = build(model_config, cls=AsyncScheduler, **kw)
    empty = [sum(not o.total_num_scheduled_tokens for o in serve(s, LENGTHS, True))
             for s in (hook, native)]
    assert empty[0] <= empty[1]


def test_a_request_preempted_with_output_in_flight_waits_for_it(model_config):
    """Async: a request preempted while its step is in flight is not resumable until that
    output comes back (vLLM's rule: resuming could resample a position the output delivers).
    The view does not list it as waiting meanwhile; a plan that admits it anyway is refused."""
    plans = [BatchPlan({0: 20, 1: 20}), BatchPlan({0: 1}, {1}), BatchPlan({0: 1, 1: 21})]
    sched = build(model_config, policy=Checked(Scripted(plans)), num_blocks=65, budget=256,
                  max_seqs=8, async_scheduling=True)
    for i in range(2):
        sched.add_request(vllm_request(i, 20, 4))
    loop = BatchQueue(sched)
    loop.step()  # step 1 scheduled: both prefill
    loop.step()  # step 2 scheduled (1 preempted, its step-1 token in flight); step 1 comes back
    view = sched.make_view()
    assert [r.rid for r in view.iter_waiting()] == [1] and view.num_waiting == 1
    sched2 = build(model_config, policy=Checked(Scripted(plans[:2] + [BatchPlan({0: 1, 1: 20})])),
                   num_blocks=65, budget=256, max_seqs=8, async_scheduling=True)
    for i in range(2):
        sched2.add_request(vllm_request(i, 20, 4))
    sched2.schedule()
    sched2.schedule()  # 1 is preempted with its step-1 output still in flight
    view = sched2.make_view()
    assert view.waiting == [] and view.num_waiting == 0 and 1 in view.requests
    out = sched2.schedule()
    assert "req-1" not in out.num_scheduled_tokens
    assert sched2.hook_stats.refused_admissions["output in flight"] == 1


# ------------------------------------------------------------------ the engine's limits
def test_the_hook_imposes_no_limit_vllm_does_not_have(model_config):
    """With a large KV cache fcfs through the hook runs as many requests at once and as many
    tokens per step as vLLM's own scheduler, in as many steps; the view's limits are vLLM's."""
    lengths = [(32 + 37 * i % 400, 8 + 13 * i % 60) for i in range(160)]
    kw = dict(num_blocks=4097, budget=2048, max_seqs=96)
    for async_scheduling, native_cls in ((False, VLLMScheduler), (True, AsyncScheduler)):
        hook = build(model_config, policy="fcfs", async_scheduling=async_scheduling, **kw)
        native = build(model_config, cls=native_cls, async_scheduling=async_scheduling, **kw)
        peaks = []
        for s in (hook, native):
            outs = serve(s, lengths, async_scheduling)
            peaks.append((len(outs), max(len(o.num_scheduled_tokens) for o in outs),
                          max(o.total_num_scheduled_tokens for o in outs)))
        assert peaks[0] == peaks[1]
        assert peaks[0][1] == 96 and peaks[0][2] == 2048  # both limits reached, none lower
        cfg = hook.make_view().config
        assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.num_kv_blocks) == (96, 2048, 4096)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_policy_budget_below_the_engines_is_logged_once_at_info(model_config):
    """slai plans at most 512 tokens per step: the hook says so once, naming both budgets, and
    passes vLLM's 2048 on unchanged."""
    handler = _Records()
    log = logging.getLogger("vllm.llmsched_hook")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.DEBUG)
    try:
        sched = build(model_config, policy="slai", num_blocks=257, budget=2048, max_seqs=256)
        serve(sched, LENGTHS, False)
        build(model_config, policy="fcfs", num_blocks=257, budget=2048, max_seqs=256)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    budget = [r for r in handler.records if "token_budget" in r.getMessage()]
    assert len(budget) == 1 and budget[0].levelno == logging.INFO
    assert "512" in budget[0].getMessage() and "2048" in budget[0].getMessage()
    assert sched.make_view().config.max_num_batched_tokens == 2048


# ------------------------------------------------------------------ the ordering contract
class Scripted:
    """Plays a fixed list of plans, then vLLM's FCFS rule (fcfs) to finish."""

    name = "test-scripted"

    def __init__(self, plans):
        self.plans = list(plans)
        self.rest = make_scheduler("fcfs")

    def reset(self):
        self.rest.reset()

    def schedule(self, view):
        return self.plans.pop(0) if self.plans else self.rest.schedule(view)


class ReversedSet(set):
    """A set iterating in descending order (a plan's set order must not matter)."""

    def __iter__(self):
        return iter(sorted(set.__iter__(self), reverse=True))


def _engine(lengths):
    specs = [RequestSpec(rid=i, arrival_s=0.0, prompt_len=p, output_len=o, max_tokens=o)
             for i, (p, o) in enumerate(lengths)]
    return Engine(specs, EngineConfig(num_kv_blocks=64, block_size=BLOCK,
                                      max_num_batched_tokens=256, max_num_seqs=8,
                                      prefix_caching=False),  # as the vLLM side is built
                  LinearCostModel(0.01, 1e-4))


def _queue(sched):
    return [rid_of(sched, r.request_id) for r in sched.waiting]


def _running(sched):
    return [rid_of(sched, r.request_id) for r in sched.running]


ORDER_LENGTHS = [(20, 6), (20, 6), (20, 6), (20, 6), (20, 6)]


@pytest.mark.parametrize("reverse", [False, True])
def test_several_preemptions_requeue_as_vllms_newest_first_rule(model_config, reverse):
    """Preempting 1, 2, 3 in one step puts them at the head of waiting as [1, 2, 3] -- what
    vLLM's own rule gives when it takes the newest running request three times, and what the
    llmsched engine gives for the same plan -- whatever order the plan's set iterates in."""
    victims = (ReversedSet if reverse else set)({1, 2, 3})
    admit = BatchPlan({i: 20 for i in range(4)})
    plans = [admit, BatchPlan({0: 1}, victims)]
    sched = build(model_config, policy=Scripted(plans), num_blocks=65, budget=256, max_seqs=8)
    for i, (p, o) in enumerate(ORDER_LENGTHS):
        sched.add_request(vllm_request(i, p, o))
    fake_step(sched)
    out = fake_step(sched)
    assert sorted(out.preempted_req_ids) == ["req-1", "req-2", "req-3"]
    assert _queue(sched) == [1, 2, 3, 4]
    eng = _engine(ORDER_LENGTHS)
    for plan in [admit, BatchPlan({0: 1}, victims)]:
        eng.step(plan)
    assert [r.rid for r in eng.iter_waiting()] == _queue(sched)
    # vLLM's own rule, three successive victims (newest running first) from the same state:
    native = build(model_config, cls=VLLMScheduler, num_blocks=65, budget=256, max_seqs=8)
    for i, (p, o) in enumerate(ORDER_LENGTHS[:4]):
        native.add_request(vllm_request(i, p, o))
    fake_step(native)
    for _ in range(3):
        native._preempt_request(native.running.pop(), 0.0)
    assert [rid_of(native, r.request_id) for r in native.waiting] == [1, 2, 3]


def test_admissions_join_in_queue_order_and_equal_plans_have_equal_effects(model_config):
    """Two equal plans whose dicts list admissions in opposite orders give the same running
    order (waiting-queue order, as in the llmsched engine), the same SchedulerOutputs, and
    the same states after a multi-victim preemption and a re-admission."""
    forward = [BatchPlan({0: 20, 1: 20, 2: 20, 3: 20}), BatchPlan({0: 1}, {1, 2, 3}),
               BatchPlan({0: 1, 1: 20, 2: 20, 3: 20})]
    backward = [BatchPlan({3: 20, 2: 20, 1: 20, 0: 20}), BatchPlan({0: 1}, ReversedSet({3, 2, 1})),
                BatchPlan({3: 20, 2: 20, 1: 20, 0: 1})]
    assert forward == backward
    scheds = [build(model_config, policy=Scripted(p), num_blocks=65, budget=256, max_seqs=8)
              for p in (forward, backward)]
    eng = _engine(ORDER_LENGTHS)
    for s in scheds:
        for i, (p, o) in enumerate(ORDER_LENGTHS):
            s.add_request(vllm_request(i, p, o))
    for k in range(3):
        outs = [fake_step(s) for s in scheds]
        eng.step(forward[k])
        assert [r.req_id for r in outs[0].scheduled_new_reqs] == \
            [r.req_id for r in outs[1].scheduled_new_reqs]
        assert outs[0].num_scheduled_tokens == outs[1].num_scheduled_tokens
        assert _running(scheds[0]) == _running(scheds[1]) == list(eng.running)
        assert _queue(scheds[0]) == _queue(scheds[1]) == [r.rid for r in eng.iter_waiting()]
    assert _running(scheds[0]) == [0, 1, 2, 3]
