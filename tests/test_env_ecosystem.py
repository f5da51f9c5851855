"""ServingEnv with the RL ecosystem: vector environments and a short MaskablePPO run."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import llmsched_env  # noqa: F401  (registers the ids)
from llmsched_env import WorkloadConfig
from llmsched_env.scenarios import TIERS

# The presets' cost models and the trace lengths come from ../shared/data.
pytestmark = pytest.mark.usefixtures("shared_data")

TINY = dict(workload=WorkloadConfig(num_requests=8, arrival="poisson", rate=20.0, lengths="trace",
                                    slo_classes=TIERS, oversize="drop", max_total_len=2048),
            num_kv_blocks=128, rate_range=None, num_slots=8, waiting_slots=2)


def test_gymnasium_make_vec():
    envs = gym.make_vec("llmsched/Serving-v0", num_envs=2, vectorization_mode="sync", **TINY)
    obs, _ = envs.reset(seed=0)
    assert obs["slots"].shape == (2, 8 * 19)
    for _ in range(20):
        obs, r, term, trunc, info = envs.step(envs.action_space.sample())
        assert r.shape == (2,)
    envs.close()


def test_subproc_vec_env_with_masks():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env("llmsched/Serving-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        vec_env_kwargs={"start_method": "fork"}, env_kwargs=TINY)
    obs = venv.reset()
    masks = np.stack(venv.env_method("action_masks"))
    assert masks.shape == (2, int(venv.action_space.nvec.sum()))
    for _ in range(10):
        obs, r, done, info = venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    venv.close()


def test_maskable_ppo_short_run():
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.evaluation import evaluate_policy

    env = gym.make("llmsched/Serving-v0", **TINY)
    model = MaskablePPO("MultiInputPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0,
                        policy_kwargs={"net_arch": [32]}, device="cpu")
    model.learn(256)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=1, use_masking=True, warn=False)
    assert np.isfinite(mean)
