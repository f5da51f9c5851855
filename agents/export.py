"""``llmsched export``: a trained policy directory -> ONNX model + JSON manifest for serving.

    llmsched export --policy agents/zoo/default --out exports/default

writes ``exports/default/policy.onnx`` (the actor: Gemm + Tanh layers, a Gemm, a Clip to
[-1, 1], built with ``onnx.helper`` from the saved weights; no tracing) and ``manifest.json``
(agents/onnx_runtime.py lists its fields). Before the manifest is left in place the export is
checked: on ``--verify-steps`` observations (random ones in the observation box and the states of
an episode of the default scenario driven by the policy) onnxruntime's action must equal the numpy
actor's within ``ATOL``, or the export fails and removes its manifest.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from llmsched_env.agent import ACTION_FIELDS, OBS_FEATURES, OBS_HIGH, OBS_LOW

from .onnx_runtime import (FORMAT, FORMAT_VERSION, MANIFEST, MODEL, ExportError, OnnxPolicy, manifest_digest,
                           sha256_file)
from .policy import LoadedPolicy, MLPActor

OPSET = 17
ATOL = 1e-5


def actor_graph(actor: MLPActor, opset: int = OPSET):
    """The ONNX model of ``actor``: obs (batch, F) -> action (batch, A)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    if not 11 <= opset <= 21:
        raise ValueError(f"opset {opset}: use 11..21 (Clip takes min/max inputs from 11)")
    nodes, inits = [], []
    x = "obs"
    last = len(actor.layers) - 1
    for i, (W, b) in enumerate(actor.layers):
        inits += [numpy_helper.from_array(W.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [y], transB=1))
        if i < last:
            nodes.append(helper.make_node("Tanh", [y], [f"t{i}"]))
            y = f"t{i}"
        x = y
    inits += [numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(1.0, np.float32), "hi")]
    nodes.append(helper.make_node("Clip", [x, "lo", "hi"], ["action"]))
    graph = helper.make_graph(
        nodes, "llmsched_actor",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", actor.obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", actor.act_dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="llmsched")
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime releases of the last two years
    onnx.checker.check_model(model)
    return model


def verification_observations(policy: LoadedPolicy, n: int, seed: int) -> np.ndarray:
    """``n`` observations: half uniform in the observation box, half from an episode of the
    default scenario driven by the policy itself."""
    from llmsched_env.env import ServingEnv
    rng = np.random.default_rng(seed)
    k = n // 2
    rand = rng.uniform(OBS_LOW, OBS_HIGH, (k, len(OBS_FEATURES))).astype(np.float32)
    env = ServingEnv("default", agent=policy.spec)
    obs, _ = env.reset(seed=seed)
    seen = [obs]
    while len(seen) < n - k:
        obs, _, term, trunc, _ = env.step(policy.actor(obs))
        if term or trunc:
            obs, _ = env.reset()
        seen.append(obs)
    return np.concatenate([rand, np.asarray(seen, np.float32).reshape(-1, len(OBS_FEATURES))])


def export_policy(policy_dir: str | Path, out: str | Path, verify_steps: int = 256, seed: int = 0,
                  opset: int = OPSET) -> dict:
    """Export and verify; returns the manifest (with ``verified``: states checked)."""
    import onnx
    pol = LoadedPolicy(policy_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = actor_graph(pol.actor, opset)
    onnx.save(model, str(out / MODEL))
    import llmsched_env
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "llmsched_version": llmsched_env.__version__,
                "observation": list(OBS_FEATURES), "action": list(ACTION_FIELDS),
                "agent": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(pol.spec).items()},
                "model": {"file": MODEL, "opset": opset, "inputs": [{"name": "obs", "shape": ["batch", len(OBS_FEATURES)]}],
                          "outputs": [{"name": "action", "shape": ["batch", len(ACTION_FIELDS)]}],
                          "sha256": sha256_file(out / MODEL)},
                "source": {"policy": str(policy_dir), "meta": pol.meta}}
    import json
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if verify_steps:
        served = OnnxPolicy(out)
        obs = verification_observations(pol, verify_steps, seed)
        got = served.session.run(None, {"obs": obs})[0]
        want = np.stack([pol.actor(o) for o in obs])
        err = np.abs(got - want).max(axis=1)
        if (err > ATOL).any():
            (out / MANIFEST).unlink()
            bad = np.flatnonzero(err > ATOL)
            raise ExportError(f"the ONNX model's action differs from the policy's by more than {ATOL} in "
                              f"{len(bad)} of {len(obs)} states (first at state {bad[0]}, max {err.max():.2e}); "
                              "manifest removed")
        manifest["verified"] = len(obs)
    else:
        manifest["verified"] = 0
    return manifest


def cmd_export(a) -> int:
    m = export_policy(a.policy, a.out, a.verify_steps, a.seed, a.opset)
    print(f"exported {a.policy} -> {a.out}/{m['model']['file']} + manifest.json (obs "
                    f"{len(m['observation'])} -> action {len(m['action'])}, opset {m['model']['opset']}, sha256 "
                    f"{m['model']['sha256'][:12]}…); "
                    + (f"actions equal the policy's (atol {ATOL}) on {m['verified']} states" if m["verified"]
                       else "not verified"))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained policy to ONNX + a JSON manifest for serving")
    p.add_argument("--policy", required=True, help="policy directory (policy.npz + policy.yaml), e.g. agents/zoo/default")
    p.add_argument("--out", required=True, help="output directory (policy.onnx, manifest.json)")
    p.add_argument("--verify-steps", type=int, default=256,
                   help="observations on which ONNX and numpy actions must agree (0 = skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the verification states")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (11..21)")
    p.set_defaults(func=cmd_export)
