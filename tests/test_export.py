"""ONNX export (``llmsched export``) and serving with onnxruntime (scheduler ``onnx``): the same
actions as the numpy actor, checked manifests, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.episodes import run_episode
from agents.export import ATOL, export_policy
from agents.onnx_runtime import MANIFEST, MODEL, ExportError, OnnxPolicy
from agents.policy import LoadedPolicy, save_policy
from llmsched_env.agent import OBS_FEATURES, AgentSpec
from llmsched_env.scheduler import NeedsOptions, make_scheduler
from tests.test_policy import random_actor

pytestmark = pytest.mark.usefixtures("shared_data")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    save_policy(d / "policy", random_actor(5, hidden=(64, 64)), AgentSpec())
    m = export_policy(d / "policy", d / "export", verify_steps=64)
    return d, m


def test_export_verifies_and_serves_the_same_actions(exported):
    d, m = exported
    assert m["verified"] == 64 and m["model"]["opset"] == 17
    pol, served = LoadedPolicy(d / "policy"), OnnxPolicy(d / "export")
    obs = np.random.default_rng(0).uniform(-1, 4, (50, len(OBS_FEATURES))).astype(np.float32)
    for o in obs:
        np.testing.assert_allclose(served.act(o), pol.actor(o), atol=ATOL)


def test_onnx_scheduler_matches_ppo_scheduler_on_an_episode(exported):
    d, _ = exported
    a = run_episode("default", f"onnx:path={d / 'export'}", 4)
    b = run_episode("default", f"ppo:path={d / 'policy'}", 4)
    assert a["num_steps"] == b["num_steps"] and a["return"] == pytest.approx(b["return"])


@pytest.mark.parametrize("opset", [11, 21])
def test_other_opsets_export(tmp_path, exported, opset):
    d, _ = exported
    assert export_policy(d / "policy", tmp_path / "e", verify_steps=8, opset=opset)["verified"] == 8


def test_tampered_or_malformed_exports_are_refused(tmp_path, exported):
    import shutil
    d, _ = exported
    e = tmp_path / "e"
    shutil.copytree(d / "export", e)
    (e / MODEL).write_bytes((e / MODEL).read_bytes() + b"\0")
    with pytest.raises(ExportError, match="SHA-256 differs"):
        OnnxPolicy(e)
    shutil.copy(d / "export" / MODEL, e / MODEL)
    m = json.loads((e / MANIFEST).read_text())
    m["agent"]["budget_range"] = [64, 512]  # would change every schedule
    (e / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ExportError, match="edited after export"):
        OnnxPolicy(e)
    from agents.onnx_runtime import manifest_digest
    m = json.loads((d / "export" / MANIFEST).read_text())
    m["observation"] = m["observation"][:-1]
    m["manifest_sha256"] = manifest_digest(m)
    (e / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ExportError, match="observation or action fields differ"):
        OnnxPolicy(e)
    (e / MANIFEST).write_text("{")
    with pytest.raises(ExportError, match="not valid JSON"):
        OnnxPolicy(e)
    with pytest.raises(ExportError, match="llmsched export"):
        OnnxPolicy(tmp_path / "missing")
    with pytest.raises(NeedsOptions, match="path=DIR"):
        make_scheduler("onnx")
    with pytest.raises(ValueError, match="opset"):
        export_policy(d / "policy", tmp_path / "x", opset=7)


def test_cli_export(tmp_path, exported, capsys):
    from llmsched_env.cli import main
    d, _ = exported
    assert main(["export", "--policy", str(d / "policy"), "--out", str(tmp_path / "c"), "--verify-steps", "16"]) == 0
    assert "actions equal the policy's" in capsys.readouterr().out


def test_serving_imports_neither_torch_nor_sb3(exported):
    """A fresh interpreter serves the export (and the numpy actor) without torch or SB3."""
    import subprocess
    import sys
    d, _ = exported
    code = ("import sys\n"
            "from agents.episodes import run_episode\n"
            f"run_episode('default', 'onnx:path={d / 'export'}', 0)\n"
            f"run_episode('default', 'ppo:path={d / 'policy'}', 0)\n"
            "bad = [m for m in ('torch', 'stable_baselines3') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
