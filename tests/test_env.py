"""ServingEnv v1: spaces, checkers, decisions covering engine steps, reward exactness, episodes,
configuration errors, render, and agreement with the ``rule`` scheduler."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from agents.episodes import run_episode
from llmsched_env import ServingEnv, WorkloadConfig
from llmsched_env import get_preset
from llmsched_env.agent import ACTION_DIM, OBS_FEATURES, AgentSpec
from llmsched_env.priority import HEURISTIC_RULES
from llmsched_env.request import RequestSpec
from llmsched_env.scenarios import ENV_IDS, TIERS

# The presets' cost models and the trace lengths come from ../shared/data.
pytestmark = pytest.mark.usefixtures("shared_data")

SMALL = WorkloadConfig(num_requests=12, arrival="poisson", rate=20.0, lengths="trace", slo_classes=TIERS,
                       oversize="drop", max_total_len=4096)


def small_env(**kw) -> ServingEnv:
    kw.setdefault("workload", SMALL)
    kw.setdefault("num_kv_blocks", 256)
    kw.setdefault("rate_range", None)
    return ServingEnv(**kw)


def rollout(env, seed, action=None, rng=None):
    env.reset(seed=seed)
    rewards, infos = [], []
    while True:
        a = action if action is not None else rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
        _, r, term, trunc, info = env.step(a)
        rewards.append(r)
        infos.append(info)
        if term or trunc:
            return rewards, infos, term, trunc


def test_every_registered_id_makes_resets_and_steps():
    assert "llmsched/Serving-v1" in ENV_IDS.values()
    for env_id in ENV_IDS.values():
        env = gym.make(env_id)
        obs, info = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and math.isfinite(r) and info["engine_steps"] >= 1
        env.close()


def test_gymnasium_and_sb3_checkers_pass_without_warnings():
    import warnings

    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("ansi", "rgb_array"):
            env = gym.make("llmsched/Serving-v1", render_mode=mode, workload=SMALL, num_kv_blocks=256,
                           rate_range=None)
            gym_check(env.unwrapped)
        sb3_check(small_env(), warn=True)


def test_spaces_match_the_documented_features():
    env = small_env()
    assert env.observation_space.shape == (len(OBS_FEATURES),) == (22,)
    assert env.action_space.shape == (ACTION_DIM,) == (18,)
    assert env.engine_config.max_num_seqs == 256  # no cap of the agent's own


@pytest.mark.parametrize("kw, words", [
    ({"lam": -1.0}, "lam"), ({"preset": "no-such-gpu"}, "no-such-gpu"), ({"max_steps": 0}, "max_steps"),
    ({"max_num_seqs": 0}, "max_num_seqs"), ({"agent": AgentSpec(budget_range=(64, 8))}, "budget_range"),
    ({"num_slots": 8}, "unknown scenario field")])
def test_bad_configuration_raises_at_construction(kw, words):
    with pytest.raises((ValueError, KeyError, TypeError), match=words):
        small_env(**kw)


def test_bad_render_mode_unknown_scenario_and_bad_actions():
    with pytest.raises(ValueError, match="render_mode"):
        small_env(render_mode="human")
    with pytest.raises(KeyError, match="unknown scenario"):
        ServingEnv("nope")
    env = small_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(ACTION_DIM))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))


def test_reset_is_reproducible_and_options_pin_the_workload():
    env = small_env(rate_range=(5.0, 10.0))
    o1, i1 = env.reset(seed=3)
    specs1 = list(env.specs)
    o2, i2 = env.reset(seed=3)
    assert env.specs == specs1 and i1 == i2 and np.array_equal(o1, o2)
    env.reset(seed=4)
    assert env.specs != specs1
    env.reset(seed=99, options={"workload_seed": i1["workload"]["seed"], "rate": i1["workload"]["rate"]})
    assert env.specs == specs1
    pinned = [RequestSpec(rid=7, arrival_s=0.0, prompt_len=40, output_len=3)]
    env.reset(seed=0, options={"workload": pinned})
    assert env.specs == pinned
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"rate_scale": 2})


def test_same_seed_same_episode():
    a = rollout(small_env(), 5, rng=np.random.default_rng(1))
    b = rollout(small_env(), 5, rng=np.random.default_rng(1))
    assert a[0] == b[0]
    timing = ("wall_s", "steps_per_s")
    strip = [{k: v for k, v in run[1][-1]["metrics"].items() if k not in timing} for run in (a, b)]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_return_equals_documented_objective(seed):
    env = small_env(lam=0.7)
    rewards, infos, term, trunc = rollout(env, seed, rng=np.random.default_rng(seed))
    assert term and not trunc
    m = infos[-1]["metrics"]
    objective = m["num_slo_met"] - 0.7 * m["gpu_busy_s"]
    assert sum(rewards) == pytest.approx(objective, abs=1e-9)
    assert infos[-1]["objective"] == pytest.approx(objective, abs=1e-12)
    assert sum(i["reward_slo"] for i in infos) == m["num_slo_met"]
    assert infos[-1]["reward_reconciled"] == 0
    assert sum(i["engine_steps"] for i in infos) == infos[-1]["total_engine_steps"] == m["num_steps"]
    assert infos[-1]["decisions"] == len(rewards)
    assert all(i["elapsed_s"] >= 0 for i in infos)


def test_truncation_counts_unfinished_requests_as_missed():
    env = small_env(max_steps=60)
    rewards, infos, term, trunc = rollout(env, 0, rng=np.random.default_rng(0))
    assert trunc and not term and infos[-1]["total_engine_steps"] == 60
    m = infos[-1]["metrics"]
    assert m["num_finished"] < m["num_requests"]
    assert sum(rewards) == pytest.approx(m["num_slo_met"] - env.scenario.lam * m["gpu_busy_s"], abs=1e-9)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_gaps_to_miss_matches_numpy_percentile():
    from llmsched_env.reward import SLOReward
    rng = np.random.default_rng(0)
    for out_len in (2, 3, 10, 50, 101, 102, 250, 1000):
        k = SLOReward.gaps_to_miss(out_len)
        m = out_len - 1
        gaps = np.full(m, 0.5)
        gaps[:k] = 2.0
        assert np.percentile(rng.permutation(gaps), 99) > 1.0
        if k > 1:
            gaps = np.full(m, 0.0)
            gaps[:k - 1] = 1.0 + 1e-6
            assert np.percentile(gaps, 99) <= 1.0 + 1e-6


@pytest.mark.parametrize("name", ["slai", "fcfs"])
def test_a_constant_action_is_the_rule_scheduler_exactly(name):
    """The env and the ``rule`` scheduler drive the same interface: same episode, same return."""
    env = ServingEnv("default")
    action = env.agent.spec.action_of(HEURISTIC_RULES[name])
    rewards, infos, _, _ = rollout(env, 3, action=action)
    row = run_episode("default", f"rule:name={name}", 3)
    assert sum(rewards) == pytest.approx(row["return"], abs=1e-9)
    assert infos[-1]["metrics"]["num_steps"] == row["num_steps"]


def test_render_ansi_shows_the_rule():
    env = small_env(render_mode="ansi")
    env.reset(seed=0)
    env.step(env.agent.spec.action_of(HEURISTIC_RULES["slai"]))
    text = env.render()
    assert "KV [" in text and "rule: budget 512 tokens" in text
    env = small_env(render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.agent.spec.action_of(HEURISTIC_RULES["slai"]))
    img = env.render()
    assert img.dtype == np.uint8 and img.shape == (96, 480, 3) and (img != 255).any()


def test_variants_draw_an_engine_and_workload_per_episode():
    env = ServingEnv("mixed")
    seen = set()
    for seed in range(40):
        _, info = env.reset(seed=seed)
        seen.add((info["workload"]["variant"], env.engine_config.num_kv_blocks))
    assert {v for v, _ in seen} == set(range(5))
    assert {b for _, b in seen} == {1024, get_preset("h100-llama3-8b").engine_config().num_kv_blocks}
    with pytest.raises(ValueError, match=r"variants\[0\].*lam"):
        small_env(variants=({"lam": -1.0},))
    with pytest.raises(ValueError, match="unknown or nested"):
        small_env(variants=({"slots": 3},))
