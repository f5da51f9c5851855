"""Export to ONNX and the torch-free serving runtime (agents/export.py, agents/onnx_runtime.py).

Policies are built here and saved through train/ppo.py's own save path: a small SlotSetPolicy
(the shipped architecture; ten steps of behaviour cloning of ``sarathi`` so that it acts like a
scheduler), the project's MLP baseline (``--policy mlp``, randomly initialised) and sb3-contrib's
stock MultiInput MLP policy (its own masked distribution) with observation normalisation
statistics in its policy.yaml (randomly initialised). The export
must reproduce whatever the weights say, trained or not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml

from agents.export import episode_states, export_policy
from agents.loader import load_policy
from agents.onnx_runtime import MANIFEST, MODEL, ExportError, OnnxPolicy, io_spec
from llmsched_env import Engine, EngineConfig, ServingEnv, make_scheduler, run
from llmsched_env.action import HOLD
from llmsched_env.cost_model import LinearCostModel
from llmsched_env.request import RequestSpec
from llmsched_env.cli import main as cli_main
from llmsched_env.observation import GLOBAL_FEATURES, SLOT_FEATURES

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--embed-dim", "16", "--head-hidden", "16", "--num-heads", "2", "--seed", "3"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _save(model, a, out: Path, normalization=None, overrides=None) -> Path:
    from train.ppo import save_policy
    d = save_policy(a, model, out, overrides or {}, {})
    if normalization is not None:
        meta = yaml.safe_load((d / "policy.yaml").read_text())
        meta["obs_normalization"] = normalization
        (d / "policy.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return d


def imitate(policy, heuristic: str, steps: int, **env_overrides) -> None:
    """A few gradient steps of behaviour cloning on 256 states of ``heuristic``'s episode: a
    policy that acts like a scheduler (runs decodes, admits and chunks prefills, mixing choices),
    not the near-uniform one of random initialisation."""
    env, sched = ServingEnv("default", **env_overrides), make_scheduler(heuristic)
    obs, _ = env.reset(seed=0)
    rows = []
    for _ in range(256):
        a = env.encode_plan(sched.schedule(env.engine))
        rows.append((obs, env.action_masks().copy(), a))
        obs, *_ = env.step(a)
    batch = {k: th.as_tensor(np.stack([r[0][k] for r in rows])) for k in rows[0][0]}
    masks, acts = np.stack([r[1] for r in rows]), th.as_tensor(np.stack([r[2] for r in rows]))
    opt = th.optim.Adam(policy.parameters(), lr=3e-3)
    policy.set_training_mode(True)
    for _ in range(steps):
        _, logp, _ = policy.evaluate_actions(batch, acts, action_masks=masks)
        opt.zero_grad()
        (-logp.mean()).backward()
        opt.step()
    policy.set_training_mode(False)


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """{"set": dir, "set_hint": dir, "set_veto": dir, "mlp": dir, "mlp_norm": dir} of saved
    policies and their exports ("set_hint" sees slai's proposal in its observation; "set_veto"
    vetoes slai's admissions, ``llmsched_env.veto``)."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from train.ppo import build_model, parse_args
    root = tmp_path_factory.mktemp("policies")
    venv = DummyVecEnv([lambda: ServingEnv("default")])
    model = build_model(parse_args(SMALL), venv, {})
    imitate(model.policy, "sarathi", steps=10)
    out = {"set": _save(model, parse_args(SMALL), root / "set")}
    hint_args = parse_args(SMALL + ["--hint", "slai", "--hint-prior", "2"])
    hinted = build_model(hint_args, DummyVecEnv([lambda: ServingEnv("default", hint="slai")]), {})
    imitate(hinted.policy, "sarathi", steps=10, hint="slai")  # departs from the hint in places
    out["set_hint"] = _save(hinted, hint_args, root / "set_hint", overrides={"hint": "slai"})
    veto_args = parse_args(SMALL + ["--veto", "slai"])  # randomly initialised: vetoes here and there
    vetoing = build_model(veto_args, DummyVecEnv([lambda: ServingEnv("default", veto="slai")]), {})
    out["set_veto"] = _save(vetoing, veto_args, root / "set_veto", overrides={"veto": "slai"})
    mlp = MaskablePPO("MultiInputPolicy", venv, policy_kwargs=dict(net_arch=[32, 32]), seed=4, device="cpu")
    rng = np.random.default_rng(5)
    K_F, G = venv.observation_space["slots"].shape[0], venv.observation_space["global"].shape[0]
    norm = {"kind": "running_mean_std",
            "mean": {"slots": rng.normal(0, 0.3, K_F).tolist(), "global": rng.normal(0, 0.3, G).tolist()},
            "var": {"slots": rng.uniform(0.2, 3, K_F).tolist(), "global": rng.uniform(0.2, 3, G).tolist()},
            "epsilon": 1e-8, "clip_obs": 5.0}
    out["mlp_norm"] = _save(mlp, parse_args(SMALL + ["--policy", "mlp"]), root / "mlp_norm", norm)
    a = parse_args(SMALL + ["--policy", "mlp", "--mlp-arch", "64,64"])
    out["mlp"] = _save(build_model(a, venv, {}), a, root / "mlp")
    for name, d in list(out.items()):
        export_policy(d, root / f"{name}_export", verify_steps=0)
    return out


def export_dir(policies, name) -> Path:
    return policies[name].parent / f"{name}_export"


@pytest.mark.parametrize("name", ["set", "set_hint", "set_veto", "mlp", "mlp_norm"])
def test_onnx_actions_equal_the_sb3_policys(policies, name):
    """Several hundred states of real episodes (driven by the policy, seeds 0, 1, ...): the ONNX
    runtime's action equals the SB3 policy's deterministic action exactly."""
    pol = load_policy(policies[name])
    rt = OnnxPolicy(export_dir(policies, name))
    env = pol.make_env()
    K, A = env.scenario.num_slots, env.decoder.num_choices
    n, acted, busy, raw_differs = 0, 0, 0, 0
    for obs, mask in episode_states(env, pol.act, 300, seed=0):
        ref, got = pol.act(obs, mask), rt.act(obs, mask)
        assert got.dtype == np.int64 and got.shape == (K + 1,)
        assert np.array_equal(ref, got), f"state {n}: SB3 {ref.tolist()} vs ONNX {got.tolist()}"
        assert all(mask[i * A + got[i]] for i in range(K))
        present = obs["slots"].reshape(K, -1)[:, 0] > 0.5
        acted += int(np.any(got[:K][present] != HOLD))  # (HOLD = 0 = ADMIT for a veto policy)
        busy += int(present.sum() >= 4)
        if name == "mlp_norm" and n < 40:  # without the folded normalisation: other actions
            raw_differs += not np.array_equal(pol.policy.predict(obs, deterministic=True, action_masks=mask)[0], got)
        n += 1
    assert n == 300 and acted > 30 and busy > 30  # the sample has real choices to get right
    if name == "mlp_norm":
        assert raw_differs > 0
        assert rt.manifest["observation"]["normalization"]["folded_into_model"] is True


class Recorder:
    """Wraps a scheduler and records its plans."""

    def __init__(self, sched):
        self.sched, self.plans = sched, []
        self.name = sched.name

    def reset(self):
        self.sched.reset()

    def schedule(self, engine):
        plan = self.sched.schedule(engine)
        self.plans.append((dict(plan.tokens), set(plan.preempt)))
        return plan


@pytest.mark.parametrize("policy", ["set", "set_veto"])
def test_onnx_scheduler_reproduces_the_ppo_scheduler(policies, policy):
    """On an engine with other limits than the training env, scheduler ``onnx`` makes the same
    plan as scheduler ``ppo`` at every step, hence the same metrics (for a veto policy, slai
    plans on the engine with the policy's vetoes)."""
    env = ServingEnv("default")
    env.reset(seed=7)
    specs = env.specs[:60]
    cfg = EngineConfig(num_kv_blocks=300, block_size=16, max_num_batched_tokens=4096, max_num_seqs=12)
    out = {}
    for name in ("ppo", "onnx"):
        path = policies[policy] if name == "ppo" else export_dir(policies, policy)
        rec = Recorder(make_scheduler(f"{name}:path={path}"))
        m = run(Engine(specs, cfg, env.cost_model), rec, max_steps=400)
        out[name] = (rec.plans, {k: v for k, v in m.items() if k not in ("wall_s", "steps_per_s")})
    assert len(out["ppo"][0]) == 400 or out["ppo"][1]["num_finished"] == len(specs)
    assert out["onnx"][0] == out["ppo"][0]
    np.testing.assert_equal(out["onnx"][1], out["ppo"][1])
    assert sum(len(t) for t, _ in out["onnx"][0]) > 100


def test_budget_levels_above_the_engines_budget_mean_its_budget(policies):
    """Engine budget 512: the policy's levels 256, 512, 1024, 2048, None act as 256, 512, 512,
    512, 512; the policy still gets its own mask layout and every plan respects the budget."""
    specs = [RequestSpec(rid=i, arrival_s=0.1 * i, prompt_len=300 + 40 * i, output_len=5) for i in range(12)]
    eng = Engine(specs, EngineConfig(num_kv_blocks=200, block_size=16, max_num_batched_tokens=512,
                                     max_num_seqs=6), LinearCostModel(0.01, 1e-4))
    sched = Recorder(make_scheduler("onnx", path=str(export_dir(policies, "set"))))
    m = run(eng, sched)
    assert sched.sched._budget_map.tolist() == [0, 1, 1, 1, 1]
    assert m["num_finished"] == 12
    assert all(sum(t.values()) <= 512 for t, _ in sched.plans)
    from agents.policy_scheduler import PolicyLayout, SlotPolicyScheduler
    odd = SlotPolicyScheduler(PolicyLayout(32, 8, (32, 128, 512, 2048), (256, 512, 1024, 2048, None),
                                           10_000, 0.5, tuple([8] * 32 + [3])))
    with pytest.raises(ValueError, match=r"the policy does not fit this engine"):
        odd.schedule(eng)


def _copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in (MANIFEST, MODEL):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m))


def test_manifest_that_does_not_match_the_model_is_rejected(policies, tmp_path):
    src = export_dir(policies, "set")

    # a self-consistent manifest for K=16 next to the K=32 model
    def k16(m):
        m["observation"]["num_slots"] = 16
        m["action"]["nvec"] = [8] * 16 + [5]
        m["model"].update(io_spec(16, len(SLOT_FEATURES), len(GLOBAL_FEATURES), m["action"]["nvec"]))
    d = _copy_export(src, tmp_path / "k16")
    _edit_manifest(d, k16)
    with pytest.raises(ExportError, match=r"does not match .*policy.onnx.*'shape': \[1, 304\].*'shape': \[1, 608\]"):
        OnnxPolicy(d)

    # shapes that contradict the manifest's own layout
    d = _copy_export(src, tmp_path / "shape")
    _edit_manifest(d, lambda m: m["model"]["inputs"][0].update(shape=[1, 600]))
    with pytest.raises(ExportError, match=r"do not match the layout it describes \(K=32, F=19, G=12"):
        OnnxPolicy(d)

    # features this llmsched does not encode (the observation changed since the export)
    d = _copy_export(src, tmp_path / "features")
    _edit_manifest(d, lambda m: m["observation"]["slot_features"].reverse())
    with pytest.raises(ExportError, match="the observation changed since the export"):
        OnnxPolicy(d)

    d = _copy_export(src, tmp_path / "version")
    _edit_manifest(d, lambda m: m.update(format_version=99))
    with pytest.raises(ExportError, match="format_version 99"):
        OnnxPolicy(d)

    d = _copy_export(src, tmp_path / "missing")
    _edit_manifest(d, lambda m: m["action"].pop("chunk_sizes"))
    with pytest.raises(ExportError, match="missing or malformed field.*chunk_sizes"):
        OnnxPolicy(d)

    (d / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing.*llmsched export"):
        make_scheduler("onnx", path=str(d))
    with pytest.raises(ValueError, match="needs path=DIR"):
        make_scheduler("onnx")


def test_tampered_model_is_rejected(policies, tmp_path):
    d = _copy_export(export_dir(policies, "set"), tmp_path / "tampered")
    data = bytearray((d / MODEL).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (d / MODEL).write_bytes(bytes(data))
    with pytest.raises(ExportError, match="SHA-256 .* was changed or corrupted"):
        OnnxPolicy(d)
    (d / MODEL).unlink()
    with pytest.raises(FileNotFoundError, match="policy.onnx is missing"):
        OnnxPolicy(d)


def test_runtime_needs_no_torch_sb3_or_pickle(policies):
    """A fresh interpreter serves the export (scheduler ``onnx`` on an engine) with pickle
    disabled, and never imports torch or stable-baselines3."""
    code = f"""
import pickle, sys
def refuse(*a, **k):
    raise AssertionError("unpickling attempted")
pickle.load = pickle.loads = refuse
from llmsched_env import Engine, ServingEnv, make_scheduler, run
env = ServingEnv("default"); env.reset(seed=2)
m = run(Engine(env.specs[:20], env.engine_config, env.cost_model),
        make_scheduler("onnx:path={export_dir(policies, 'set')}"), max_steps=50)
assert m["num_steps"] == 50, m
bad = [k for k in ("torch", "stable_baselines3", "sb3_contrib") if k in sys.modules]
assert not bad, bad
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_cli_export_verifies_and_simulate_serves(policies, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["export", "--policy", str(policies["set"]), "--out", str(out), "--verify-steps", "40"]) == 0
    assert "actions equal the policy's on 40 states" in capsys.readouterr().out
    m = json.loads((out / MANIFEST).read_text())
    assert m["observation"]["slot_features"] == list(SLOT_FEATURES)
    assert list(m["observation"]["slot_feature_scales"]) == list(SLOT_FEATURES)
    assert list(m["observation"]["global_feature_scales"]) == list(GLOBAL_FEATURES)
    assert m["action"]["chunk_sizes"] == [32, 128, 512, 2048] and m["action"]["budget_levels"][-1] is None
    assert m["scenario"]["name"] == "default" and m["model"]["opset"] == 17
    # deterministic: the same policy exports to the same bytes
    assert m["model"]["sha256"] == json.loads((export_dir(policies, "set") / MANIFEST).read_text())["model"]["sha256"]
    assert cli_main(["simulate", "--scheduler", f"onnx:path={out}", "--synthetic", "--arrival", "poisson",
                     "--rate", "4", "--num-requests", "12", "--no-progress"]) == 0
    assert "12/12" in capsys.readouterr().out
    assert cli_main(["export", "--policy", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "is not a policy directory" in capsys.readouterr().err


def test_bad_obs_normalization_is_refused(policies, tmp_path):
    d = tmp_path / "badnorm"
    d.mkdir()
    (d / "policy.pt").write_bytes((policies["set"] / "policy.pt").read_bytes())
    meta = yaml.safe_load((policies["set"] / "policy.yaml").read_text())
    for bad, msg in [({"kind": "zscore"}, "is not supported"),
                     ({"kind": "running_mean_std", "mean": {"slots": [0.0]}, "var": {}}, "needs mean.slots and var.slots"),
                     ({"kind": "running_mean_std", "mean": {"slots": [0.0], "global": [0.0]},
                       "var": {"slots": [1.0], "global": [1.0]}}, r"slots: mean has shape \(1,\)")]:
        (d / "policy.yaml").write_text(yaml.safe_dump({**meta, "obs_normalization": bad}))
        with pytest.raises(ValueError, match=msg):
            load_policy(d)


def test_export_that_disagrees_with_the_policy_is_not_left_servable(policies, tmp_path, monkeypatch):
    """A graph whose masking is wrong (masked choices win) fails the verification and leaves no
    manifest, so nothing can serve it."""
    import agents.policy_graph
    monkeypatch.setattr(agents.policy_graph, "_NEG", 1e8)
    with pytest.raises(ExportError, match=r"differs from the policy's in \d+ of 20 states.*manifest removed"):
        export_policy(policies["set"], tmp_path / "bad", verify_steps=20)
    assert not (tmp_path / "bad" / MANIFEST).exists()
