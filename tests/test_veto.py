"""Admission control over a heuristic (``llmsched_env.veto``): the all-admit action is the
heuristic exactly, a veto keeps one waiting request out of the heuristic's view for one step,
and bad vetoes, stalls and bad scenarios are handled as documented."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from llmsched_env import Engine, RequestSpec, ServingEnv, WorkloadConfig, make_scheduler, run
from llmsched_env.request import RUNNING
from llmsched_env.scenarios import TIERS
from llmsched_env.scheduler import QueueView
from llmsched_env.veto import ADMIT, VETO

pytestmark = pytest.mark.usefixtures("shared_data")

WORKLOAD = WorkloadConfig(num_requests=40, arrival="poisson", rate=10.0, lengths="trace", slo_classes=TIERS,
                          oversize="drop", max_total_len=8192, seed=5)


def _env(**kw) -> ServingEnv:
    return ServingEnv("default", veto="slai", num_slots=48, waiting_slots=24, **kw)


def _admit(env) -> np.ndarray:
    return np.zeros(len(env.action_space.nvec), dtype=np.int64)


@pytest.mark.parametrize("heuristic", ["slai", "sarathi"])
def test_never_vetoing_is_the_heuristic(heuristic):
    env = ServingEnv("default", veto=heuristic, num_slots=48, waiting_slots=24)
    env.reset(seed=0, options={"workload": WORKLOAD})
    assert list(env.action_space.nvec) == [2] * 48 + [1]
    while True:
        _, _, term, trunc, info = env.step(_admit(env))
        if term or trunc:
            break
    direct = run(Engine(env.specs, env.engine_config, env.cost_model), make_scheduler(heuristic))
    for key in ("num_slo_met", "gpu_busy_s", "num_steps", "num_preemptions", "ttft_p99_s"):
        assert info["metrics"][key] == direct[key], key
    assert sum(info["repair_totals"].values()) == 0


def test_a_veto_hides_one_waiting_request_from_the_heuristic():
    """Each step: the plan is the heuristic's plan on the queue without the vetoed request, and
    the vetoed request gets no tokens; over the episode some vetoed request was one the
    heuristic would have admitted."""
    env = _env()
    env.reset(seed=0, options={"workload": WORKLOAD})
    rng = np.random.default_rng(0)
    mirror = make_scheduler("slai")
    mirror.reset()
    changed = 0
    for _ in range(300):
        mask = env.action_masks().reshape(-1)[:-1].reshape(48, 2)
        waiting = np.nonzero(mask[:, VETO])[0]
        action = _admit(env)
        if waiting.size:
            action[rng.choice(waiting)] = VETO
        vetoed = {env.slots[i].rid for i in np.nonzero(action[:48] == VETO)[0]}
        queue = [r for r in env.engine.iter_waiting() if r.rid not in vetoed]
        would = copy.deepcopy(mirror).schedule(env.engine)
        expected = mirror.schedule(QueueView(env.engine, queue, env.engine_config.max_num_seqs))
        changed += bool(vetoed & set(would.tokens))
        _, _, term, trunc, info = env.step(action)
        assert env.last_plan.tokens == expected.tokens and env.last_plan.preempt == expected.preempt
        assert not vetoed & set(env.last_plan.tokens)
        if term or trunc:
            break
    assert changed > 0


def test_mask_allows_veto_on_waiting_slots_only_and_a_veto_elsewhere_is_ignored():
    env = _env()
    env.reset(seed=0, options={"workload": WORKLOAD})
    for _ in range(30):
        env.step(_admit(env))
    mask = env.action_masks()[:-1].reshape(48, 2)
    assert mask[:, ADMIT].all()
    for i in range(48):
        r = env.slots[i] if i < len(env.slots) else None
        assert mask[i, VETO] == (r is not None and r.status != RUNNING)
    running = [i for i, r in enumerate(env.slots) if r.status == RUNNING]
    assert running, "the workload should have running requests by step 30"
    action = _admit(env)
    action[running[0]] = VETO
    peek, repairs = env.decode_action(action)
    assert repairs == {"invalid_choice": 1}
    assert peek.tokens == env.decode_action(_admit(env))[0].tokens  # ignored, and peeking changes nothing


def test_vetoing_everything_cannot_stall_the_engine():
    """Nothing running, nothing left to arrive, every waiting request vetoed: the vetoes are
    dropped for that step (forced_progress) and the episode still ends with all served."""
    specs = [RequestSpec(rid=i, arrival_s=0.0, prompt_len=200, output_len=3) for i in range(3)]
    env = _env()
    env.reset(seed=0, options={"workload": specs})
    forced = 0
    while True:
        action = np.where(env.action_masks()[:-1].reshape(48, 2)[:, VETO], VETO, ADMIT).tolist() + [0]
        _, _, term, trunc, info = env.step(action)
        forced += info["repairs"].get("forced_progress", 0)
        if term or trunc:
            break
    assert term and forced > 0 and info["metrics"]["num_finished"] == 3


def test_bad_actions_name_the_slot():
    env = _env()
    env.reset(seed=0, options={"workload": WORKLOAD})
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(10, dtype=np.int64))
    bad = _admit(env)
    bad[3] = 2
    with pytest.raises(ValueError, match="slot 3"):
        env.step(bad)


@pytest.mark.parametrize("kw, words", [({"veto": "no-such"}, "unknown scheduler"), ({"veto": "ppo"}, "heuristic"),
                                       ({"veto": "slai", "hint": "slai"}, "cannot be combined")])
def test_bad_veto_scenarios_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        ServingEnv("default", **kw)


def test_veto_env_passes_the_gymnasium_checker_and_pickles():
    env = _env()
    check_env(env, skip_render_check=True)
    env.reset(seed=1)
    for _ in range(20):
        env.step(_admit(env))
    clone = pickle.loads(pickle.dumps(env))
    a = _admit(env)
    for _ in range(50):
        o1, r1, *_ = env.step(a)
        o2, r2, *_ = clone.step(a)
        assert r1 == r2 and np.array_equal(o1["slots"], o2["slots"])
