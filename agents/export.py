"""``llmsched export``: a trained policy directory -> ONNX model + JSON manifest for serving.

    llmsched export --policy agents/zoo/default --out exports/default

writes ``exports/default/policy.onnx`` (the policy's deterministic action, observation
normalisation folded in; see ``agents.policy_graph``) and ``manifest.json`` (layout, scenario,
input/output names and shapes, opset, versions, the model's SHA-256; see ``agents.onnx_runtime``).
Before the manifest is left in place the export is checked: ``--verify-steps`` states of the
policy's own scenario (episodes driven by the exported policy) must give the same action from
onnxruntime as from the SB3 policy, or the export fails and removes its manifest.

The exporter is torch's TorchScript-based ``torch.onnx.export(..., dynamo=False)``: it needs
nothing beyond torch and onnx (the dynamo exporter also needs ``onnxscript``) and traces this
small, loop-free graph exactly. The model has a fixed batch of 1: one decision per call, which
lets the exporter fold every shape computation into constants.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

OPSET = 17


def episode_states(env, act: Callable, n: int, seed: int) -> Iterator[tuple[dict, np.ndarray]]:
    """``n`` (observation, mask) pairs from episodes of ``env`` driven by ``act(obs, mask)``
    (reset with ``seed``, ``seed + 1``, ... when an episode ends)."""
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        mask = env.action_masks().copy()
        yield obs, mask
        obs, _, terminated, truncated, _ = env.step(act(obs, mask))
        if terminated or truncated:
            seed += 1
            obs, _ = env.reset(seed=seed)


def build_manifest(pol, layout, sha256: str, opset: int, torch_version: str) -> dict:
    """The manifest of an export of ``pol`` (agents.loader.LoadedPolicy)."""
    import llmsched_env
    from llmsched_env.action import CHOICE_NAMES
    from llmsched_env.observation import CLIP, GLOBAL_FEATURES, GLOBAL_SCALES, SLOT_FEATURES, SLOT_SCALES
    from llmsched_env.veto import VETO_CHOICES

    from .onnx_runtime import FORMAT, FORMAT_VERSION, MODEL, io_spec
    K = layout.num_slots
    norm = pol.meta.get("obs_normalization")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "llmsched_version": llmsched_env.__version__,
        "model": {"file": MODEL, "sha256": sha256, "opset": opset,
                  "exporter": f"torch.onnx.export (TorchScript tracer), torch {torch_version}",
                  **io_spec(K, len(SLOT_FEATURES), len(GLOBAL_FEATURES), layout.nvec, layout.hint is not None)},
        "observation": {
            "num_slots": K, "num_slot_features": len(SLOT_FEATURES), "num_global_features": len(GLOBAL_FEATURES),
            "slot_features": list(SLOT_FEATURES), "global_features": list(GLOBAL_FEATURES),
            "slot_feature_scales": dict(SLOT_SCALES), "global_feature_scales": dict(GLOBAL_SCALES),
            "clip": CLIP,
            "slots_layout": "K x F row-major: slot i's features are slots[i*F:(i+1)*F]",
            "encoder": "llmsched_env.observation.ObservationEncoder",
            "hint": layout.hint,
            "hint_encoder": None if layout.hint is None else
            "llmsched_env.advice.HeuristicAdvisor + hint_features: the hint heuristic's proposal, one-hot "
            "(hint_slots K x A row-major, hint_budget B)",
            "normalization": None if norm is None else {"kind": norm["kind"], "folded_into_model": True,
                                                         "epsilon": norm.get("epsilon", 1e-8),
                                                         "clip_obs": norm.get("clip_obs", 10.0)}},
        "action": {
            "nvec": list(layout.nvec),
            "veto": layout.veto,
            "choices": list(VETO_CHOICES) if layout.veto else
            list(CHOICE_NAMES) + [f"chunk{c}" for c in sorted(layout.chunk_sizes)],
            "chunk_sizes": sorted(layout.chunk_sizes), "budget_levels": list(layout.budget_levels),
            "waiting_slots": layout.waiting_slots,
            "max_running": "min(engine max_num_seqs, num_slots - waiting_slots)",
            "slot_assignment": "llmsched_env.observation.assign_slots: running requests in admission "
                               "order, then waiting requests in queue order, at most K",
            "mask_layout": "K blocks of A per-slot choices, then the budget levels; True = allowed",
            "decoder": "llmsched_env.veto.VetoDecoder: the veto heuristic plans without the vetoed waiting "
                       "requests" if layout.veto else "llmsched_env.action.ActionDecoder",
            "deterministic": "per dimension argmax of the masked logits' log-softmax (first on ties)"},
        "scenario": {"name": pol.scenario_name, "overrides": pol.meta.get("overrides") or {},
                     "lam": layout.lam, "max_steps": layout.max_steps},
        "policy": {"source": str(pol.directory), "class": pol.meta.get("policy_class"),
                   "num_timesteps": pol.meta.get("num_timesteps"),
                   "policy_pt_sha256": hashlib.sha256((pol.directory / "policy.pt").read_bytes()).hexdigest()},
    }


def export_policy(policy_dir: str | Path, out: str | Path, verify_steps: int = 256, seed: int = 0,
                  opset: int = OPSET) -> dict:
    """Export ``policy_dir`` to ``out``; returns the manifest plus ``verified`` (states checked)."""
    import torch as th

    from .loader import load_policy

    if verify_steps < 0:
        raise ValueError(f"verify_steps={verify_steps} must be >= 0")
    threads = th.get_num_threads()
    th.set_num_threads(1)  # one small forward pass at a time: a thread pool only adds overhead
    try:
        return _export(load_policy(policy_dir), Path(out), verify_steps, seed, opset)
    finally:
        th.set_num_threads(threads)


def _export(pol, out: Path, verify_steps: int, seed: int, opset: int) -> dict:
    import torch as th

    from .onnx_runtime import MANIFEST, MODEL, ExportError, OnnxPolicy, sha256_file
    from .policy_graph import DeterministicAction

    layout = pol.layout()
    graph = DeterministicAction(pol.policy, pol.obs_norm).eval()
    space = pol.policy.observation_space
    keys = ["slots", "global"] + (["hint_slots", "hint_budget"] if layout.hint else [])
    example = (*(th.zeros((1,) + space[k].shape) for k in keys), th.ones((1, int(sum(layout.nvec))), dtype=th.bool))
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    with warnings.catch_warnings(), th.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer notes
        th.onnx.export(graph, example, str(out / MODEL), input_names=[*keys, "action_mask"],
                       output_names=["action"], opset_version=opset, dynamo=False)
    manifest = build_manifest(pol, layout, sha256_file(out / MODEL), opset, th.__version__)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    runtime = OnnxPolicy(out)
    bad = []
    if verify_steps:
        env = pol.make_env()
        for i, (obs, mask) in enumerate(episode_states(env, runtime.act, verify_steps, seed)):
            if not np.array_equal(pol.act(obs, mask), runtime.act(obs, mask)):
                bad.append(i)
    if bad:
        (out / MANIFEST).unlink()
        raise ExportError(f"the ONNX model's action differs from the policy's in {len(bad)} of "
                          f"{verify_steps} states (first at state {bad[0]}); manifest removed")
    return {**manifest, "verified": verify_steps}


def cmd_export(a) -> int:
    from rich.console import Console
    m = export_policy(a.policy, a.out, a.verify_steps, a.seed, a.opset)
    ob, ac = m["observation"], m["action"]
    Console().print(
        f"exported {a.policy} -> {a.out}/{m['model']['file']} + manifest.json "
        f"(K={ob['num_slots']}, F={ob['num_slot_features']}, G={ob['num_global_features']}, "
        f"nvec {ac['nvec'][0]}x{ob['num_slots']}+{ac['nvec'][-1]}, opset {m['model']['opset']}, "
        f"sha256 {m['model']['sha256'][:12]}…); "
        + (f"actions equal the policy's on {m['verified']} states" if m["verified"] else "not verified"))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained policy to ONNX + a JSON manifest for serving")
    p.add_argument("--policy", required=True, help="policy directory (policy.pt + policy.yaml), e.g. agents/zoo/default")
    p.add_argument("--out", required=True, help="output directory (policy.onnx, manifest.json)")
    p.add_argument("--verify-steps", type=int, default=256,
                   help="states of the policy's scenario on which ONNX and SB3 actions must agree (0 = skip)")
    p.add_argument("--seed", type=int, default=0, help="reset seed of the verification episodes")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    p.set_defaults(func=cmd_export)
