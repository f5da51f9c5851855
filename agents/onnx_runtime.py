"""Serve an exported policy with onnxruntime alone: no torch, no stable-baselines3, no pickle.

An export directory (written by ``llmsched export``, agents/export.py) holds
  * ``policy.onnx``   the actor's deterministic action: input ``obs`` (batch, 22) float32 (the
    ``llmsched_env.agent.OBS_FEATURES``, raw: no normalisation), output ``action`` (batch, 18)
    float32 in [-1, 1] (``ACTION_FIELDS``);
  * ``manifest.json`` format and version, the feature and action names, the AgentSpec (how the
    action maps to a rule, when decisions are due), the ONNX input/output names, the opset, the
    source policy's training summary, the SHA-256 of policy.onnx and of the manifest itself.

``OnnxPolicy(dir)`` checks everything before the first decision (the checksum of the bytes it
loads, the feature and action names against this llmsched's, the model's input and output
shapes); a mismatch raises ``ExportError`` saying what differs and to re-export.

``OnnxScheduler`` (registered as ``onnx``; option ``path``) runs it through the same agent
interface as the env and the ``ppo`` scheduler::

    make_scheduler("onnx:path=exports/default")
    llmsched simulate --scheduler onnx:path=exports/default
    LLMSCHED_POLICY=onnx:exports/default vllm serve ... --scheduler-cls agents.vllm_hook.LLMSchedScheduler
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from llmsched_env.agent import ACTION_DIM, ACTION_FIELDS, OBS_FEATURES, AgentSpec
from llmsched_env.scheduler import NeedsOptions, register

from .policy import AgentScheduler

FORMAT = "llmsched-onnx-policy"
FORMAT_VERSION = 2
MODEL = "policy.onnx"
MANIFEST = "manifest.json"


class ExportError(ValueError):
    """An export directory that cannot be served (the message says what differs)."""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON without its own ``manifest_sha256`` field: an edited
    field (the AgentSpec, the feature names) is caught, not served."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class OnnxPolicy:
    """A checked export: ``act(obs) -> action`` with onnxruntime on one thread."""

    def __init__(self, path: str | Path):
        d = Path(path)
        man = d / MANIFEST
        if not man.is_file() or not (d / MODEL).is_file():
            raise ExportError(f"{d}: an export directory holds {MODEL} and {MANIFEST}; create one with "
                              "`llmsched export --policy agents/zoo/default --out DIR`")
        try:
            m = json.loads(man.read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{man}: not valid JSON ({e}); re-export") from None
        if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{man}: format {m.get('format')!r} v{m.get('format_version')!r}; this llmsched "
                              f"serves {FORMAT!r} v{FORMAT_VERSION}; re-export with `llmsched export`")
        try:
            obs, act, spec = m["observation"], m["action"], m["agent"]
            digest = m["model"]["sha256"]
        except (KeyError, TypeError) as e:
            raise ExportError(f"{man}: missing or malformed field {e}; re-export") from None
        if m.get("manifest_sha256") != manifest_digest(m):
            raise ExportError(f"{man}: its content differs from its manifest_sha256 (edited after export); "
                              "re-export with `llmsched export`")
        if obs != list(OBS_FEATURES) or act != list(ACTION_FIELDS):
            raise ExportError(f"{man}: its observation or action fields differ from this llmsched's "
                              "(llmsched_env.agent); retrain or re-export with this version")
        data = (d / MODEL).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ExportError(f"{d / MODEL}: SHA-256 differs from the manifest's; the model was changed "
                              "after export; re-export")
        known = {f.name for f in fields(AgentSpec)}
        if not isinstance(spec, dict) or set(spec) - known:
            raise ExportError(f"{man}: field 'agent' must map AgentSpec fields ({', '.join(sorted(known))})")
        self.spec = AgentSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in ins] != ["obs"] or ins[0].shape[-1] != len(OBS_FEATURES):
            raise ExportError(f"{d / MODEL}: inputs {[(i.name, i.shape) for i in ins]}; expected obs (batch, "
                              f"{len(OBS_FEATURES)}); re-export")
        if [o.name for o in outs] != ["action"] or outs[0].shape[-1] != ACTION_DIM:
            raise ExportError(f"{d / MODEL}: outputs {[(o.name, o.shape) for o in outs]}; expected action "
                              f"(batch, {ACTION_DIM}); re-export")
        self.manifest = m
        self.path = d

    def act(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float32).reshape(-1, len(OBS_FEATURES))
        return self.session.run(None, {"obs": x})[0][0]


@register("onnx")
class OnnxScheduler(AgentScheduler):
    """An exported policy (``llmsched export``) served with onnxruntime.

    Args:
        path: export directory (policy.onnx + manifest.json).
    """

    def __init__(self, path: str | None = None):
        if path is None:
            raise NeedsOptions("scheduler 'onnx' needs path=DIR of an export (llmsched export --policy "
                               "agents/zoo/default --out DIR)")
        self.policy = OnnxPolicy(path)
        self.spec = self.policy.spec
        super().__init__()

    def act(self, obs):
        return self.policy.act(obs)
