"""ServingEnv with the RL ecosystem: vector environments and a short SB3 PPO run."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import llmsched_env  # noqa: F401  (registers the ids)
from llmsched_env import WorkloadConfig
from llmsched_env.scenarios import TIERS

pytestmark = pytest.mark.usefixtures("shared_data", "torch_one_thread")

TINY = dict(workload=WorkloadConfig(num_requests=8, arrival="poisson", rate=20.0, lengths="trace",
                                    slo_classes=TIERS, oversize="drop", max_total_len=2048),
            num_kv_blocks=128, rate_range=None)


def test_gymnasium_make_vec():
    envs = gym.make_vec("llmsched/Serving-v1", num_envs=2, vectorization_mode="sync", **TINY)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 22)
    for _ in range(20):
        obs, r, term, trunc, info = envs.step(envs.action_space.sample())
        assert r.shape == (2,) and np.isfinite(r).all()
    envs.close()


def test_subproc_vec_env_spawn():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env("llmsched/Serving-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        vec_env_kwargs={"start_method": "spawn"}, env_kwargs=TINY)
    venv.reset()
    for _ in range(10):
        obs, r, done, info = venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    assert obs.shape == (2, 22)
    venv.close()


def test_ppo_short_run():
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    env = gym.make("llmsched/Serving-v1", **TINY)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, use_sde=True,
                policy_kwargs={"net_arch": [16]}, device="cpu")
    model.learn(128)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=1, warn=False)
    assert np.isfinite(mean)
