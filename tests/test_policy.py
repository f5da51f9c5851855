"""The saved policy format and the ``ppo`` / ``rule`` schedulers: save/load, clear errors, and a
policy that runs on a real engine's limits (a full GPU's KV cache, hundreds of requests)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from agents.episodes import run_episode
from agents.policy import (DEFAULT_PATH, LoadedPolicy, MLPActor, PolicyError, PPOScheduler, constant_actor,
                           save_policy)
from llmsched_env.agent import ACTION_DIM, OBS_FEATURES, AgentSpec
from llmsched_env.priority import HEURISTIC_RULES
from llmsched_env.scheduler import make_scheduler

pytestmark = pytest.mark.usefixtures("shared_data")


def random_actor(seed=0, hidden=(16, 16)) -> MLPActor:
    rng = np.random.default_rng(seed)
    dims = [len(OBS_FEATURES), *hidden, ACTION_DIM]
    return MLPActor([(rng.normal(0, 0.5, (o, i)), rng.normal(0, 0.5, o)) for i, o in zip(dims, dims[1:])])


def test_save_load_roundtrip_gives_the_same_actions(tmp_path):
    actor = random_actor()
    save_policy(tmp_path / "p", actor, AgentSpec(max_interval=8), {"note": "test"})
    pol = LoadedPolicy(tmp_path / "p")
    assert pol.spec == AgentSpec(max_interval=8) and pol.meta == {"note": "test"}
    obs = np.random.default_rng(1).uniform(-1, 4, (20, len(OBS_FEATURES))).astype(np.float32)
    for o in obs:
        np.testing.assert_array_equal(pol.actor(o), actor(o))
        assert (np.abs(actor(o)) <= 1).all()


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "policy.npz").unlink(), "policy.npz is missing"),
    (lambda d: (d / "policy.yaml").write_text("format: other\n"), "not an llmsched policy"),
    (lambda d: _yaml(d, format_version=99), "format_version 99"),
    (lambda d: _yaml(d, observation=["kv_used"]), "observation or action fields differ"),
    (lambda d: _yaml(d, agent={"max_interval": 0}), "max_interval"),
    (lambda d: _yaml(d, agent={"slots": 3}), "AgentSpec fields"),
    (lambda d: _yaml(d, layers=5), "cannot read layers"),
])
def test_bad_policy_directories_say_what_is_wrong(tmp_path, edit, words):
    d = save_policy(tmp_path / "p", random_actor(), AgentSpec())
    edit(d)
    with pytest.raises(PolicyError, match=words):
        LoadedPolicy(d)


def _yaml(d, **kw):
    doc = yaml.safe_load((d / "policy.yaml").read_text())
    doc.update(kw)
    (d / "policy.yaml").write_text(yaml.safe_dump(doc))


def test_missing_directory_points_to_training(tmp_path):
    with pytest.raises(PolicyError, match="train/ppo.py"):
        make_scheduler(f"ppo:path={tmp_path / 'none'}")


def test_a_constant_actor_is_its_rule(tmp_path):
    spec = AgentSpec()
    save_policy(tmp_path / "c", constant_actor(spec.action_of(HEURISTIC_RULES["slai"])), spec)
    a = run_episode("default", f"ppo:path={tmp_path / 'c'}", 2)
    b = run_episode("default", "rule:name=slai", 2)
    c = run_episode("default", f"rule:path={tmp_path / 'c'}", 2)
    assert a["return"] == pytest.approx(b["return"]) == pytest.approx(c["return"])


def test_policy_runs_on_a_full_gpu_cache_with_hundreds_of_requests(tmp_path):
    """No cap of the interface's own: on the preset's whole KV cache and 256 sequences, under a
    heavy load, more than a hundred requests run at once."""
    from llmsched_env import Engine, WorkloadConfig, build_workload, get_preset
    spec = AgentSpec()
    save_policy(tmp_path / "p", constant_actor(spec.action_of(HEURISTIC_RULES["fcfs"])), spec)
    save_policy(tmp_path / "r", random_actor(3), spec)
    preset = get_preset("h100-llama3-8b")
    cfg = preset.engine_config()
    specs = build_workload(WorkloadConfig(num_requests=400, arrival="poisson", rate=400.0, lengths="trace",
                                          trace="splitwise_conv", oversize="drop", max_total_len=4096, seed=1))
    # a random policy's reserve and threshold may hold admissions back: it only has to run
    for spec, many in ((f"ppo:path={tmp_path / 'p'}", True), ("rule:name=fcfs", True),
                       (f"ppo:path={tmp_path / 'r'}", False)):
        eng = Engine(specs, cfg, preset.cost_model)
        sched = make_scheduler(spec)
        sched.reset()
        peak = 0
        for _ in range(400):
            eng.step(sched.schedule(eng))
            peak = max(peak, len(eng.running))
        assert cfg.max_num_seqs == 256
        assert peak > 100 or not many, (spec, peak)


@pytest.mark.skipif(not (DEFAULT_PATH / "policy.npz").is_file(), reason="no shipped policy yet")
def test_the_shipped_policy_loads_and_runs_by_name():
    sched = make_scheduler("ppo")
    assert isinstance(sched, PPOScheduler)
    row = run_episode("default", sched, 10_000)
    assert row["num_finished"] == 100
