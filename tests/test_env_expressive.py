"""Expressiveness: every registered scheduler's plans are env actions.

For each scheduler in the registry (new ones are covered when they register) on workloads whose
requests all fit in the K slots: at every step the scheduler's plan is encoded as an action, the
action is allowed by ``action_masks()``, decodes to the same plan with no repair, and running the
whole episode through env actions gives exactly the metrics of running the scheduler directly.
"""
from __future__ import annotations

import numpy as np
import pytest

from llmsched_env.scheduler import heuristic_schedulers
from llmsched_env import Engine, ServingEnv, WorkloadConfig, make_scheduler, run
from llmsched_env.action import FILL, NotExpressible
from llmsched_env.scenarios import TIERS

# The presets' cost models and the trace lengths come from ../shared/data.
pytestmark = pytest.mark.usefixtures("shared_data")

# Schedulers that cannot be expressed by construction, with the reason.
NOT_EXPRESSIBLE = {
    "optimal": "replays a CP-SAT schedule whose chunk sizes are arbitrary integers, not a whole "
               "remainder, a configured chunk size or the rest of a budget level",
}
VOLATILE = {"wall_s", "steps_per_s", "scheduler", "preset"}  # timing and labels
K = 32
# Small KV (preemptions happen), a 1024-token budget (budget-remainder chunks) and a high arrival
# rate (queues form); 20-28 requests, so every request fits in the K slots; prompt + output is
# clipped to the budget so that whole-prompt schedulers (vllm-v0, orca, ...) can run.
WORKLOADS = [WorkloadConfig(num_requests=n, arrival="poisson", rate=rate, lengths="trace", slo_classes=TIERS,
                            oversize="clip", max_total_len=1024, seed=seed)
             for n, rate, seed in ((20, 30.0, 0), (28, 60.0, 1), (24, 10.0, 2))]

# every registered heuristic (the "every baseline"); learned policies act through the
# action space by construction, and optimal replays a solved schedule
SCHEDULERS = heuristic_schedulers()


def _env() -> ServingEnv:
    return ServingEnv(num_slots=K, waiting_slots=4, num_kv_blocks=300, rate_range=None, max_num_batched_tokens=1024,
                      chunk_sizes=(32, 128, 512), budget_levels=(256, 512, 1024, 2048, None))


def through_env(env: ServingEnv, name: str, wl: WorkloadConfig, **options) -> tuple[dict, dict]:
    env.reset(seed=0, options={"workload": wl})
    sched = make_scheduler(name, **options)
    sched.reset()
    nvec = env.action_space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    counts = {"preempt": 0, "fill": 0}
    while True:
        plan = sched.schedule(env.engine)
        action = env.encode_plan(plan)
        assert env.action_masks()[offsets + action].all(), f"{name}: encoded action is masked out"
        decoded, repairs = env.decode_action(action)
        assert decoded == plan and not repairs, (name, plan, decoded, repairs)
        _, _, term, trunc, info = env.step(action)
        assert env.last_plan == plan
        counts["preempt"] += len(plan.preempt)
        counts["fill"] += int((action[:-1] == FILL).sum())
        if term or trunc:
            assert term, f"{name} did not finish within {env.scenario.max_steps} steps"
            return info["metrics"], counts


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_runs_exactly_through_env_actions(name):
    if name in NOT_EXPRESSIBLE:
        pytest.skip(NOT_EXPRESSIBLE[name])
    env = _env()
    for wl in WORKLOADS:
        try:
            via_env, _ = through_env(env, name, wl)
        except NotExpressible as e:
            pytest.skip(f"{name} makes a plan no action encodes: {e}")
        direct = run(Engine(env.specs, env.engine_config, env.cost_model), make_scheduler(name))
        assert {k: v for k, v in via_env.items() if k not in VOLATILE} == \
               {k: v for k, v in direct.items() if k not in VOLATILE}, name


@pytest.mark.parametrize("name, options", [("fcfs", {}), ("vllm-v1", {"policy": "priority"})])
def test_reference_schedulers_are_expressible_and_preempt(name, options):
    """These must never be skipped, and the workloads must exercise preemption and
    budget-remainder (FILL) chunks."""
    env = _env()
    total = {"preempt": 0, "fill": 0}
    for wl in WORKLOADS:
        via_env, c = through_env(env, name, wl, **options)
        direct = run(Engine(env.specs, env.engine_config, env.cost_model), make_scheduler(name, **options))
        assert {k: v for k, v in via_env.items() if k not in VOLATILE} == \
               {k: v for k, v in direct.items() if k not in VOLATILE}
        for k in total:
            total[k] += c[k]
    assert total["preempt"] > 0 and total["fill"] > 0, total


def test_budget_level_expresses_a_smaller_token_budget():
    """A scheduler with its own smaller budget (vLLM v1 with token_budget=512, Sarathi-like)
    produces budget-remainder chunks that the 512 level encodes exactly."""
    env = _env()
    env.reset(seed=0, options={"workload": WORKLOADS[0]})
    sched = make_scheduler("vllm-v1", token_budget=512)
    levels_used = set()
    while not env.engine.done:
        plan = sched.schedule(env.engine)
        a = env.encode_plan(plan)
        levels_used.add(env.decoder.budget_levels[a[-1]])
        env.step(a)
        assert env.last_plan == plan
    assert 512 in levels_used


def test_decoded_plans_reencode_to_themselves():
    """Plans the decoder makes from random masked actions (repairs included) encode back to an
    action that decodes to the same plan, unless they hold more than one partial chunk that no
    single FILL can say (counted, and rare)."""
    env = ServingEnv(num_kv_blocks=400, rate_range=(12.0, 12.0), chunk_sizes=(32, 128, 512),
                     workload=WORKLOADS[0].with_(num_requests=60))
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    K, A = env.scenario.num_slots, env.decoder.num_choices
    ok = skipped = 0
    for _ in range(400):
        m = env.action_masks()[:K * A].reshape(K, A)
        a = np.append(np.where(m, rng.random((K, A)), -1.0).argmax(1), rng.integers(len(env.decoder.budget_levels)))
        plan, _ = env.decode_action(a)
        try:
            again, repairs = env.decode_action(env.encode_plan(plan))
        except NotExpressible:
            skipped += 1
        else:
            assert again == plan and not repairs
            ok += 1
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    assert ok > 300, (ok, skipped)
