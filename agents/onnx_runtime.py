"""Serve an exported policy with onnxruntime alone: no torch, no stable-baselines3, no pickle.

An export directory (written by ``llmsched export``, agents/export.py) holds
  * ``policy.onnx``   the policy's deterministic action: inputs ``slots`` (1, K*F) float32,
    ``global`` (1, G) float32, ``action_mask`` (1, K*A + B) bool; output ``action`` (1, K+1)
    int64 (one choice per slot, then the budget level). Observation normalisation is folded in.
  * ``manifest.json`` the observation layout (K, F, G, feature names in order and their scales),
    the action layout (nvec, chunk sizes, budget levels, slot assignment), the scenario, the ONNX
    input/output names and shapes, the opset, the llmsched version and the SHA-256 of
    policy.onnx.

``OnnxPolicy(dir)`` checks everything before the first decision: the checksum (the bytes it
hashes are the bytes it loads), the manifest's features against this llmsched's encoder, and the
manifest's shapes against the model's inputs and outputs; any mismatch raises ``ExportError``
saying what differs and to re-export.

``OnnxScheduler`` (registered as ``onnx``; option ``path``) runs it on any engine through
``agents.policy_scheduler.SlotPolicyScheduler``, the same slot assignment, ``ObservationEncoder``
and ``ActionDecoder`` as the environment and the ``ppo`` scheduler::

    make_scheduler("onnx:path=exports/default")
    llmsched simulate --scheduler onnx:path=exports/default
    LLMSCHED_POLICY=onnx:exports/default vllm serve ... --scheduler-cls agents.vllm_hook.LLMSchedScheduler
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from llmsched_env.action import CHUNK0
from llmsched_env.observation import GLOBAL_FEATURES, SLOT_FEATURES
from llmsched_env.scheduler import NeedsOptions, register

from .policy_scheduler import PolicyLayout, SlotPolicyScheduler

FORMAT = "llmsched-onnx-policy"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "policy.onnx"
INPUTS = ("slots", "global", "action_mask")
OUTPUT = "action"
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(bool)": "bool", "tensor(int64)": "int64"}


class ExportError(ValueError):
    """An export directory that cannot be served as it is (the message says what and why)."""


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def io_spec(num_slots: int, num_features: int, num_global: int, nvec, hinted: bool = False) -> dict:
    """The ONNX inputs and outputs (name, shape, dtype) a policy with this layout has; a policy
    trained with a heuristic hint also takes the one-hot ``hint_slots`` and ``hint_budget``."""
    nvec = [int(n) for n in nvec]
    hint = ([{"name": "hint_slots", "shape": [1, num_slots * nvec[0]], "dtype": "float32"},
             {"name": "hint_budget", "shape": [1, nvec[-1]], "dtype": "float32"}] if hinted else [])
    return {"inputs": [{"name": "slots", "shape": [1, num_slots * num_features], "dtype": "float32"},
                       {"name": "global", "shape": [1, num_global], "dtype": "float32"}, *hint,
                       {"name": "action_mask", "shape": [1, sum(nvec)], "dtype": "bool"}],
            "outputs": [{"name": OUTPUT, "shape": [1, len(nvec)], "dtype": "int64"}]}


def session_options(threads: int = 1):
    """onnxruntime options for one small decision at a time: one thread (a thread pool costs more
    than it saves at this size), sequential execution, every graph optimisation."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def _node_args(nodes) -> list[dict]:
    return [{"name": n.name, "shape": list(n.shape), "dtype": _ORT_DTYPES.get(n.type, n.type)} for n in nodes]


def read_manifest(directory: str | Path) -> dict:
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not a policy export: {MANIFEST} is missing (write one with "
                                f"`llmsched export --policy POLICY_DIR --out {d}`)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON ({e}); re-export the policy") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ExportError(f"{path} is not an llmsched policy manifest (format {m.get('format') if isinstance(m, dict) else None!r}, "
                          f"expected {FORMAT!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has format_version {m.get('format_version')!r}; this llmsched reads "
                          f"version {FORMAT_VERSION}: re-export the policy with this llmsched")
    return m


def check_manifest(m: dict, where: str = MANIFEST) -> PolicyLayout:
    """The policy layout the manifest describes, after checking it is self-consistent and that its
    features are this llmsched's encoder's. Raises ExportError."""
    try:
        ob, ac, sc, model = m["observation"], m["action"], m["scenario"], m["model"]
        K, F, G = ob["num_slots"], ob["num_slot_features"], ob["num_global_features"]
        layout = PolicyLayout(int(K), int(ac["waiting_slots"]), tuple(ac["chunk_sizes"]),
                              tuple(ac["budget_levels"]), int(sc["max_steps"]), float(sc["lam"]),
                              tuple(int(n) for n in ac["nvec"]), ob.get("hint"), ac.get("veto"))
        slot_f, glob_f = list(ob["slot_features"]), list(ob["global_features"])
        declared = {"inputs": model["inputs"], "outputs": model["outputs"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{where}: missing or malformed field ({e!r}); re-export the policy") from None
    if slot_f != list(SLOT_FEATURES) or glob_f != list(GLOBAL_FEATURES):
        raise ExportError(
            f"{where}: the policy was exported for slot features {slot_f} and global features {glob_f}; "
            f"this llmsched encodes {list(SLOT_FEATURES)} and {list(GLOBAL_FEATURES)}: the observation "
            "changed since the export, retrain or re-export with a matching llmsched")
    if (F, G) != (len(slot_f), len(glob_f)):
        raise ExportError(f"{where}: num_slot_features={F}, num_global_features={G} but {len(slot_f)} "
                          f"and {len(glob_f)} feature names are listed")
    A = CHUNK0 + len(set(layout.chunk_sizes))
    nvec = list(layout.nvec)
    if layout.veto is not None:
        if nvec != [2] * K + [1]:
            raise ExportError(f"{where}: a veto policy (over {layout.veto!r}) has nvec [2] * K + [1] with "
                              f"K={K}, not {nvec}; re-export the policy")
    elif nvec[:-1] != [A] * K or not 1 <= nvec[-1] <= len(layout.budget_levels):
        raise ExportError(f"{where}: action nvec {nvec} does not match K={K} slots of {A} choices "
                          f"(4 + chunk sizes {list(layout.chunk_sizes)}) plus up to "
                          f"{len(layout.budget_levels)} budget levels")
    expected = io_spec(K, F, G, nvec, hinted=layout.hint is not None)
    if declared != expected:
        raise ExportError(f"{where}: ONNX inputs/outputs {declared} do not match the layout it "
                          f"describes (K={K}, F={F}, G={G}, nvec {nvec}): expected {expected}")
    return layout


class OnnxPolicy:
    """An exported policy: ``act(obs, mask) -> action`` with onnxruntime.

    Args:
        directory: the export directory (manifest.json + policy.onnx).
        threads: onnxruntime intra-op threads (1 is fastest for one decision).
    """

    def __init__(self, directory: str | Path, threads: int = 1):
        import onnxruntime as ort

        d = Path(directory)
        self.directory = d
        self.manifest = read_manifest(d)
        self.layout = check_manifest(self.manifest, str(d / MANIFEST))
        model = self.manifest["model"]
        path = d / model.get("file", MODEL)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the model {d / MANIFEST} names); re-export the policy")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != model.get("sha256"):
            raise ExportError(f"{path} has SHA-256 {digest} but {MANIFEST} records {model.get('sha256')}: "
                              "the model file was changed or corrupted since the export; re-export it")
        try:
            self.session = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime cannot load {path}: {e}") from None
        actual = {"inputs": _node_args(self.session.get_inputs()), "outputs": _node_args(self.session.get_outputs())}
        declared = {"inputs": model["inputs"], "outputs": model["outputs"]}
        if actual != declared:
            raise ExportError(f"{d / MANIFEST} does not match {path}: the manifest declares inputs/outputs "
                              f"{declared}, the model has {actual}; export the policy again so both agree")
        self._out = [OUTPUT]

    @property
    def meta(self) -> dict:
        return self.manifest

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        """Deterministic action, int64 (K+1,), for one observation dict (``slots`` K*F and
        ``global`` G float32, as ``ObservationEncoder.encode`` returns) and flat mask (True/1 =
        allowed)."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            mask = mask.astype(bool)
        feeds = {"slots": np.asarray(obs["slots"], dtype=np.float32).reshape(1, -1),
                 "global": np.asarray(obs["global"], dtype=np.float32).reshape(1, -1),
                 "action_mask": mask.reshape(1, -1)}
        if self.layout.hint is not None:
            for k in ("hint_slots", "hint_budget"):
                feeds[k] = np.asarray(obs[k], dtype=np.float32).reshape(1, -1)
        return self.session.run(self._out, feeds)[0][0]


def load_export(directory: str | Path, threads: int = 1) -> OnnxPolicy:
    return OnnxPolicy(directory, threads)


@register("onnx")
class OnnxScheduler(SlotPolicyScheduler):
    """An exported policy as a scheduler. Option ``path``: the export directory (written by
    ``llmsched export``). Runs on any engine like ``ppo`` (see ``agents.policy_scheduler``)."""

    def __init__(self, path: Optional[str] = None, threads: int = 1):
        if not path:
            raise NeedsOptions("scheduler 'onnx' needs path=DIR, the directory `llmsched export` wrote "
                             "(e.g. onnx:path=exports/default)")
        self.path = str(path)
        self.policy = load_export(path, threads)
        super().__init__(self.policy.layout)

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        return self.policy.act(obs, mask)
