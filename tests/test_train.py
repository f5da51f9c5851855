"""train/ppo.py and the policy loader: argument checks, a short training run whose policy loads
and acts (also as scheduler ``ppo``), reload reproduces actions, ``--resume`` continues exactly.
Runs are tiny (a few hundred env steps): this checks the plumbing, not learning."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch as th

from agents.loader import load_policy
from agents.policy_net import SlotSetPolicy
from llmsched_env import Engine, ServingEnv, make_scheduler, run
from llmsched_env.observation import SLOT_FEATURES
from train.ppo import main, parse_args

TINY = ["--n-envs", "2", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "2", "--embed-dim", "16",
        "--head-hidden", "16", "--eval-interval", "0", "--final-eval-episodes", "0", "--no-progress", "--bc-heuristic", "none"]


def _params(path) -> dict:
    return th.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_bad_arguments_fail_at_once(capsys):
    with pytest.raises(SystemExit, match="unknown scenario 'nope'"):
        parse_args(["--scenario", "nope"])
    with pytest.raises(SystemExit, match="total_steps=-5 must be >= 0"):
        parse_args(["--total-steps", "-5"])
    with pytest.raises(SystemExit, match="not a valid int"):
        parse_args(["--n-envs", "two"])
    with pytest.raises(SystemExit, match="bc_heuristic='nosuch'"):
        parse_args(["--bc-heuristic", "nosuch"])
    with pytest.raises(SystemExit, match="hint='nosuch'"):
        parse_args(["--hint", "nosuch"])


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parent.parent / "train" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_checked_in_configs_are_valid_and_build_their_env(config):
    """Every config under train/configs parses, and its overrides build an env whose engine is
    the scenario's own (a wider slot window must not change the engine the policy is judged on)."""
    from agents.rollout import scenario_overrides
    from llmsched_env import ServingEnv
    a = parse_args(["--config", str(config)])
    env = ServingEnv(a.scenario, **scenario_overrides(a.lam, a.slo_ttft_s, a.slo_tbt_s, a.scenario, hint=a.hint, veto=a.veto,
                                                      num_slots=a.num_slots, waiting_slots=a.waiting_slots))
    assert env.engine_config == ServingEnv(a.scenario).engine_config


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("total_steps: 1000\nseed: 3\ngamma: 0.95\n")
    a = parse_args(["--config", str(cfg), "--seed", "4"])
    assert (a.total_steps, a.seed, a.gamma) == (1000, 4, 0.95)
    cfg.write_text("no_such_knob: 1\n")
    with pytest.raises(SystemExit, match="no_such_knob"):
        parse_args(["--config", str(cfg)])


def test_smoke_train_load_act(tmp_path):
    out = main(TINY + ["--total-steps", "512", "--output-dir", str(tmp_path), "--checkpoint-interval", "0",
                       "--bc-heuristic", "slai", "--bc-episodes", "1", "--bc-epochs", "1",
                       "--bc-dagger-rounds", "0"])
    assert out["num_timesteps"] == 512
    pol = load_policy(out["policy_dir"])
    env = pol.make_env()
    obs, _ = env.reset(seed=10_000)
    for _ in range(20):
        mask = env.action_masks()
        a = pol.act(obs, mask)
        K, A = env.scenario.num_slots, env.decoder.num_choices
        assert a.shape == (K + 1,)
        assert all(mask[i * A + a[i]] for i in range(K)) and mask[K * A + a[K]]
        obs, *_ = env.step(a)
    # the same policy as a scheduler on a plain engine
    sched = make_scheduler("ppo", path=out["policy_dir"])
    m = run(Engine(env.specs, env.engine_config, env.cost_model), sched, max_steps=100)
    assert m["num_steps"] == 100


def test_saved_policy_reproduces_actions(tmp_path):
    from train.ppo import build_model, save_policy
    from stable_baselines3.common.vec_env import DummyVecEnv
    a = parse_args(TINY)
    venv = DummyVecEnv([lambda: ServingEnv("default")])
    model = build_model(a, venv, {})
    assert isinstance(model.policy, SlotSetPolicy)
    d = save_policy(a, model, tmp_path / "policy", {}, {})
    first, second = load_policy(d), load_policy(d)
    env = ServingEnv("default")
    obs, _ = env.reset(seed=1)
    for _ in range(30):
        mask = env.action_masks()
        want, _ = model.policy.predict(obs, deterministic=True, action_masks=mask)
        np.testing.assert_array_equal(first.act(obs, mask), want)
        np.testing.assert_array_equal(second.act(obs, mask), want)
        obs, *_ = env.step(want)


def test_resume_continues_exactly(tmp_path):
    args = TINY + ["--total-steps", "512", "--checkpoint-interval", "256", "--run-name", "r"]
    main(args + ["--output-dir", str(tmp_path / "a")])
    full = tmp_path / "a" / "r"
    assert (full / "checkpoints" / "step_000000256").is_dir()
    # a run interrupted after its first checkpoint: resumed, it must end where the full run did
    cut = tmp_path / "b" / "r"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "policy")
    shutil.rmtree(cut / "checkpoints" / "step_000000512")
    (cut / "checkpoints" / "latest").write_text("step_000000256")
    out = main(["--resume", "--output-dir", str(tmp_path / "b"), "--run-name", "r", "--no-progress"])
    assert out["num_timesteps"] == 512
    pa, pb = _params(full / "policy" / "policy.pt"), _params(cut / "policy" / "policy.pt")
    assert pa.keys() == pb.keys()
    for k in pa:
        assert th.equal(pa[k], pb[k]), k


def test_scheduler_ppo_matches_env_actions(tmp_path):
    """Scheduler ``ppo`` on a bare engine makes the same plans as the policy acting in the env."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from train.ppo import build_model, save_policy
    a = parse_args(TINY)
    model = build_model(a, DummyVecEnv([lambda: ServingEnv("default")]), {})
    d = save_policy(a, model, tmp_path / "policy", {}, {})
    pol = load_policy(d)
    env = pol.make_env()
    obs, _ = env.reset(seed=2)
    engine = Engine(env.specs, env.engine_config, env.cost_model)
    sched = make_scheduler("ppo", path=str(d))
    sched.reset()
    for _ in range(150):
        obs, _, term, trunc, _ = env.step(pol.act(obs, env.action_masks()))
        plan = sched.schedule(engine)
        assert plan == env.last_plan
        engine.step(plan)
        if term or trunc:
            break


def test_slot_set_policy_is_permutation_equivariant():
    from stable_baselines3.common.vec_env import DummyVecEnv

    from train.ppo import build_model
    model = build_model(parse_args(TINY), DummyVecEnv([lambda: ServingEnv("default")]), {})
    pol = model.policy
    env = ServingEnv("default")
    obs, _ = env.reset(seed=0)
    for _ in range(40):
        obs, *_ = env.step(pol.predict(obs, deterministic=True, action_masks=env.action_masks())[0])
    K, F = env.scenario.num_slots, len(SLOT_FEATURES)
    perm = np.random.default_rng(0).permutation(K)
    shuffled = {"slots": obs["slots"].reshape(K, F)[perm].reshape(-1), "global": obs["global"]}
    with th.no_grad():
        f1 = pol.extract_features({k: th.as_tensor(v)[None] for k, v in obs.items()}, pol.features_extractor)
        f2 = pol.extract_features({k: th.as_tensor(v)[None] for k, v in shuffled.items()}, pol.features_extractor)
        l1, l2 = pol.action_net(f1)[0], pol.action_net(f2)[0]
        A = env.decoder.num_choices
        assert th.allclose(l1[:K * A].reshape(K, A)[perm], l2[:K * A].reshape(K, A), atol=1e-5)
        assert th.allclose(l1[K * A:], l2[K * A:], atol=1e-5)
        assert th.allclose(pol.value_net(f1), pol.value_net(f2), atol=1e-5)


def test_shipped_policy_runs_on_an_engine_with_other_limits():
    """The zoo policy as scheduler ``ppo`` on an engine with a 512-token budget (fewer budget
    levels than in training) and a smaller cache: valid plans, progress."""
    env = ServingEnv("default", max_num_batched_tokens=512, num_kv_blocks=600)
    env.reset(seed=7)
    engine = Engine(env.specs, env.engine_config, env.cost_model)
    m = run(engine, make_scheduler("ppo"), max_steps=300)
    assert m["num_steps"] == 300 and engine.processed_tokens > 0
