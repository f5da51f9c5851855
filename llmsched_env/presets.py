"""Named (GPU, model, TP) presets: a cost model plus the KV capacity and limits that go with it.

Registry: ``PRESETS`` maps a name to a builder; ``get_preset(name)`` builds (and caches) it.
Add a preset by adding one ``_register`` line.

Kinds:
  * ``profiled``: token-level layers fitted to a Vidur profile of that GPU and model (calibrated);
    attention analytic.
  * ``transferred``: the profile of another GPU, scaled per token count by the GPU-to-GPU ratio
    measured on a model profiled on both (calibrated, indirectly).
  * ``infermax``: InferMax's published constants (per-layer ms), for reproducing its results.
  * ``from_shape``: any model shape + GPU spec, token-level layers from a roofline (uncalibrated).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from .calibration import fit_monotone, load_allreduce_profile, load_operator_profile
from .cost_model import (AllReduceModel, AttentionModel, CalibratedCostModel, CostModel,
                         InferMaxCostModel, PiecewiseLinear)
from .data import data_dir
from .engine import EngineConfig
from .hardware import GPUS, MODELS, GPUSpec, ModelShape, kv_capacity_blocks


SWAP_SPACE_GIB = 4.0  # vLLM v0's default --swap-space, GiB of host memory per GPU


@dataclass(frozen=True)
class Preset:
    """A serving setup: model shape on a GPU type at a TP degree, with its cost model.

    Attributes:
        name: registry name.
        gpu, shape, tp: hardware and model.
        cost_model: times batches.
        num_kv_blocks: KV capacity, blocks of ``block_size`` tokens.
        calibrated: False when nothing measured backs the token-level times.
        provenance: one line on where the numbers come from.
    """

    name: str
    gpu: GPUSpec
    shape: ModelShape
    tp: int
    cost_model: CostModel
    num_kv_blocks: int
    block_size: int = 16
    calibrated: bool = True
    provenance: str = ""
    extra: dict = field(default_factory=dict)

    def engine_config(self, swap_space_gib: float | None = None, **overrides) -> EngineConfig:
        """EngineConfig for this preset; keyword overrides (token budget, max_num_seqs,
        preemption_mode, ...). A ``block_size`` override alone keeps the KV capacity in tokens
        (fewer, larger blocks). ``swap_space_gib`` (GiB of host memory per GPU for swapped-out
        KV, vLLM v0's ``--swap-space``) and the GPU's host link give the swap limits."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        blocks = self.num_kv_blocks
        if "block_size" in overrides and "num_kv_blocks" not in overrides:
            blocks = self.num_kv_blocks * self.block_size // overrides["block_size"]
        bs = overrides.get("block_size", self.block_size)
        block_bytes = bs * self.shape.kv_bytes_per_token(self.tp)  # on each GPU
        if swap_space_gib is None:
            swap_space_gib = SWAP_SPACE_GIB
        if not (isinstance(swap_space_gib, (int, float)) and 0 <= swap_space_gib < float("inf")):
            raise ValueError(f"swap_space_gib={swap_space_gib!r} must be a number of GiB >= 0")
        base = dict(num_kv_blocks=blocks, block_size=self.block_size,
                    max_model_len=self.shape.max_model_len, num_gpus=self.tp,
                    swap_space_blocks=int(swap_space_gib * 2**30 // block_bytes),
                    swap_s_per_block=block_bytes / self.gpu.host_link_bandwidth)
        base.update(overrides)
        return EngineConfig(**base)

    def max_request_tokens(self, **overrides) -> int:
        """Longest request (prompt + output, tokens) an engine of this preset can serve: the
        model's context, and the KV cache (its largest KV is prompt + output - 1 tokens)."""
        cfg = self.engine_config(**overrides)
        return min(cfg.max_model_len, cfg.kv_capacity_tokens + 1)

    def describe(self) -> dict:
        return {"name": self.name, "gpu": self.gpu.name, "model": self.shape.name, "tp": self.tp,
                "num_kv_blocks": self.num_kv_blocks, "block_size": self.block_size,
                "kv_capacity_tokens": self.num_kv_blocks * self.block_size,
                "calibrated": self.calibrated, "provenance": self.provenance,
                "cost_model": self.cost_model.describe()}


# Efficiencies of the uncalibrated roofline for token-level layers. Fitted by hand to the H100
# Llama-2-7B profile (floor 0.177 ms/layer = weights at 68% of 3.35 TB/s; 4096 tokens at 64% of
# 989 TFLOP/s) and checked against the A100 profiles (tests/test_presets.py).
ROOFLINE_BW_EFF = 0.68
ROOFLINE_FLOPS_EFF = 0.64
DEFAULT_OVERHEAD_S = 1.0e-3  # per-step CPU/launch/sampling time not in the operator profiles


def attention_for(shape: ModelShape, gpu: GPUSpec, tp: int) -> AttentionModel:
    return AttentionModel(num_heads=shape.num_heads / tp, num_kv_heads=max(shape.num_kv_heads / tp, 1 / tp),
                          head_dim=shape.head_dim, dtype_bytes=shape.dtype_bytes,
                          peak_flops=gpu.peak_flops, mem_bandwidth=gpu.mem_bandwidth)


def roofline_token_layers(shape: ModelShape, gpu: GPUSpec, tp: int, max_tokens: int = 32768
                          ) -> tuple[PiecewiseLinear, PiecewiseLinear]:
    """Uncalibrated per-layer token-level time: max(weights / bandwidth, 2 x params x N / peak)
    plus element-wise ops (norms, rope, activation, adds: ~12 activation reads/writes per token)."""
    h, i = shape.hidden_size, shape.intermediate_size
    params = (2 * h * h + 2 * h * shape.num_kv_heads * shape.head_dim
              + (3 if shape.gated_mlp else 2) * h * i) / tp
    wbytes = params * shape.dtype_bytes
    knots = sorted({1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, max_tokens})
    vals = []
    for n in knots:
        gemm = max(wbytes / (gpu.mem_bandwidth * ROOFLINE_BW_EFF),
                   2 * params * n / (gpu.peak_flops * ROOFLINE_FLOPS_EFF))
        elem = 12 * n * h * shape.dtype_bytes / (gpu.mem_bandwidth * ROOFLINE_BW_EFF)
        vals.append(gemm + elem)
    tail = 2 * params / (gpu.peak_flops * ROOFLINE_FLOPS_EFF)
    emb_vals = [n * h * shape.dtype_bytes / (gpu.mem_bandwidth * ROOFLINE_BW_EFF) + 2e-6 for n in knots]
    return (PiecewiseLinear(knots, vals, tail),
            PiecewiseLinear(knots, emb_vals, h * shape.dtype_bytes / (gpu.mem_bandwidth * ROOFLINE_BW_EFF)))


def _allreduce(gpu: GPUSpec, tp: int) -> AllReduceModel | None:
    if tp == 1:
        return None
    d = data_dir(required=False)
    if d is None:
        # Ring all-reduce estimate at 80% of 450 GB/s NVLink per direction when no profile exists.
        sizes = [2.0 ** k for k in range(10, 31)]
        bw = 0.8 * 450e9
        times = [8e-6 + 2 * (tp - 1) / tp * s / bw for s in sizes]
        return AllReduceModel(sizes, times, tp, "analytic-nvlink")
    sizes, times = load_allreduce_profile(d / "profiles" / "network" / gpu.network / "all_reduce.csv", tp)
    return AllReduceModel(sizes, times, tp, gpu.network)


def _profile_path(gpu: str, model_dir: str) -> Path:
    return data_dir() / "profiles" / "compute" / gpu / model_dir / "mlp.csv"


def _fit_tables(gpu: str, model_dir: str, tp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prof = load_operator_profile(_profile_path(gpu, model_dir), tp)
    return prof.num_tokens.astype(float), prof.layer_ms * 1e-3, prof.emb_ms * 1e-3


def _calibrated(shape: ModelShape, gpu: GPUSpec, tp: int, x, layer_s, emb_s, provenance: str,
                overhead_s: float = DEFAULT_OVERHEAD_S) -> CalibratedCostModel:
    return CalibratedCostModel(
        num_layers=shape.num_layers, layer_tokens=fit_monotone(x, layer_s), emb_tokens=fit_monotone(x, emb_s),
        attention=attention_for(shape, gpu, tp), allreduce=_allreduce(gpu, tp),
        hidden_size=shape.hidden_size, vocab_size=shape.vocab_size, dtype_bytes=shape.dtype_bytes, tp=tp,
        peak_flops=gpu.peak_flops, mem_bandwidth=gpu.mem_bandwidth, overhead_s=overhead_s,
        provenance={"token_level": provenance, "attention": "analytic roofline",
                    "allreduce": "vidur network profile" if tp > 1 else "none (TP 1)"})


def profiled(name: str, gpu: str, model: str, model_dir: str, tp: int) -> Preset:
    g, shape = GPUS[gpu], MODELS[model]
    x, layer, emb = _fit_tables(gpu, model_dir, tp)
    prov = f"vidur profile {gpu}/{model_dir}/mlp.csv at TP {tp}"
    cm = _calibrated(shape, g, tp, x, layer, emb, prov)
    return Preset(name, g, shape, tp, cm, kv_capacity_blocks(shape, g, tp), provenance=prov)


def transferred(name: str, gpu: str, model: str, src_gpu: str, src_dir: str, ref_model_dir: str, tp: int) -> Preset:
    """Profile of ``model`` on ``src_gpu`` x (time on ``gpu`` / time on ``src_gpu``) of a reference
    model profiled on both, per token count (ratio held constant past the reference's grid)."""
    g, shape = GPUS[gpu], MODELS[model]
    x, layer, emb = _fit_tables(src_gpu, src_dir, tp)
    rx, r_dst, e_dst = _fit_tables(gpu, ref_model_dir, tp)
    _, r_src, e_src = _fit_tables(src_gpu, ref_model_dir, tp)
    ratio_l = np.interp(x, rx, isotonic_ratio(r_dst / r_src))
    ratio_e = np.interp(x, rx, isotonic_ratio(e_dst / np.maximum(e_src, 1e-9)))
    prov = (f"vidur profile {src_gpu}/{src_dir} x ({gpu}/{src_gpu} ratio of {ref_model_dir}) at TP {tp}")
    cm = _calibrated(shape, g, tp, x, layer * ratio_l, emb * ratio_e, prov)
    return Preset(name, g, shape, tp, cm, kv_capacity_blocks(shape, g, tp), provenance=prov)


def isotonic_ratio(r: np.ndarray) -> np.ndarray:
    """Smooth a noisy per-token ratio with a running median (window 9) so noise does not transfer."""
    out = np.empty_like(r)
    for i in range(len(r)):
        out[i] = np.median(r[max(0, i - 4): i + 5])
    return out


def from_shape(shape: ModelShape, gpu: GPUSpec | str, tp: int = 1, name: str | None = None,
               gpu_memory_utilization: float = 0.9) -> Preset:
    """A preset for any model shape on a GPU spec (token-level layers from the roofline;
    marked uncalibrated)."""
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    layer, emb = roofline_token_layers(shape, g, tp, max_tokens=max(32768, shape.max_model_len))
    cm = CalibratedCostModel(
        num_layers=shape.num_layers, layer_tokens=layer, emb_tokens=emb, attention=attention_for(shape, g, tp),
        allreduce=_allreduce(g, tp), hidden_size=shape.hidden_size, vocab_size=shape.vocab_size,
        dtype_bytes=shape.dtype_bytes, tp=tp, peak_flops=g.peak_flops, mem_bandwidth=g.mem_bandwidth,
        overhead_s=DEFAULT_OVERHEAD_S,
        provenance={"token_level": "roofline from shape (uncalibrated)", "attention": "analytic roofline"})
    return Preset(name or f"{g.name}-{shape.name}-tp{tp}", g, shape, tp, cm,
                  kv_capacity_blocks(shape, g, tp, gpu_memory_utilization), calibrated=False,
                  provenance="roofline from model shape and GPU peaks (uncalibrated)")


# InferMax constant sets, per layer, milliseconds (InferMax code: Vidur fork, commit 8b4eddd,
# sklearn_execution_time_predictor.py). The "else" set is used with Meta-Llama-3-70B at TP 4 on
# A100 in its run scripts; the "7B" set with its default model, Llama-2-7B.
INFERMAX_70B = dict(a_prefill_ms=4.309e-08, b_prefill_ms=0.2112, a_decode_ms=1.222e-06, b_decode_ms=0.081,
                    a_other_ms=0.002, b_other_ms=0.159, per_prefill_ms=9.03e-04, per_decode_ms=3.92e-04,
                    prefill_kv_ms=3.805e-07, multi_factor=1.1)
INFERMAX_7B = dict(a_prefill_ms=1.6773e-07, b_prefill_ms=0.0926, a_decode_ms=8.513e-06, b_decode_ms=0.01921,
                   a_other_ms=0.00191, b_other_ms=0.06486, per_prefill_ms=0.001534, per_decode_ms=0.00074,
                   prefill_kv_ms=9.224e-06, multi_factor=1.0)


def infermax(name: str, model: str, tp: int, constants: dict) -> Preset:
    g, shape = GPUS["a100"], MODELS[model]
    cm = InferMaxCostModel(name=name, num_layers=shape.num_layers, source="InferMax (Kim et al.) code constants",
                           **constants)
    return Preset(name, g, shape, tp, cm, kv_capacity_blocks(shape, g, tp),
                  provenance="InferMax published constants (per-layer ms)")


PRESETS: dict[str, Callable[[], Preset]] = {}


def _register(name: str, builder: Callable[..., Preset], *args) -> None:
    PRESETS[name] = lambda: builder(name, *args)


_register("h100-llama2-7b", profiled, "h100", "llama2-7b", "meta-llama/Llama-2-7b-hf", 1)
_register("h100-llama2-70b-tp4", profiled, "h100", "llama2-70b", "meta-llama/Llama-2-70b-hf", 4)
_register("h100-phi-2", profiled, "h100", "phi-2", "microsoft/phi-2", 1)
_register("a100-llama2-7b", profiled, "a100", "llama2-7b", "meta-llama/Llama-2-7b-hf", 1)
_register("a100-llama2-70b-tp4", profiled, "a100", "llama2-70b", "meta-llama/Llama-2-70b-hf", 4)
_register("a100-llama3-8b", profiled, "a100", "llama3-8b", "meta-llama/Meta-Llama-3-8B", 1)
_register("a100-llama3-70b-tp4", profiled, "a100", "llama3-70b", "meta-llama/Meta-Llama-3-70B", 4)
_register("a100-phi-2", profiled, "a100", "phi-2", "microsoft/phi-2", 1)
# Llama-3-70B's layers have exactly Llama-2-70B's shape (8192 hidden, 28672 MLP, 64 heads, 8 KV
# heads), so the H100 Llama-2-70B profile times them; only the vocabulary differs (LM head).
_register("h100-llama3-70b-tp4", profiled, "h100", "llama3-70b", "meta-llama/Llama-2-70b-hf", 4)
_register("h100-llama3-8b", transferred, "h100", "llama3-8b", "a100", "meta-llama/Meta-Llama-3-8B",
          "meta-llama/Llama-2-7b-hf", 1)
_register("infermax-a100-llama3-70b-tp4", infermax, "llama3-70b", 4, INFERMAX_70B)
_register("infermax-a100-llama2-7b", infermax, "llama2-7b", 1, INFERMAX_7B)

DEFAULT_PRESET = "h100-llama3-8b"


class UnknownPreset(KeyError):
    def __str__(self) -> str:
        return self.args[0]


@lru_cache(maxsize=None)
def _build(name: str) -> Preset:
    return PRESETS[name]()


def get_preset(name: str, gpu_memory_utilization: float | None = None, num_kv_blocks: int | None = None) -> Preset:
    """Build a preset by name (cached). ``name`` may also be ``shape:<config.json>@<gpu>[:tp]``
    for an uncalibrated preset of any HuggingFace-config model, or a measured preset: a JSON
    written by ``llmsched calibrate --measurements`` given by path or by file name (without
    ``.json``) in a measured-presets folder (see ``measured_preset_path``).

    Args:
        gpu_memory_utilization: recompute KV capacity at this share of GPU memory (default 0.9).
        num_kv_blocks: override the KV capacity directly, blocks.
    """
    measured = measured_preset_path(name)
    if measured is not None:
        preset = load_measured_preset(measured, None if name.endswith(".json") else name)
    elif name.startswith("shape:"):
        spec = name[len("shape:"):]
        path, _, rest = spec.partition("@")
        gpu, _, tp = rest.partition(":")
        if gpu not in GPUS:
            raise UnknownPreset(f"unknown GPU {gpu!r} in {name!r}; known: {sorted(GPUS)}")
        preset = from_shape(ModelShape.from_hf_config(path), gpu, int(tp or 1), name=name)
    else:
        if name not in PRESETS:
            raise UnknownPreset(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))} "
                                "(or shape:<config.json>@<gpu>[:tp], or a measured preset .json)")
        preset = _build(name)
    if gpu_memory_utilization is not None:
        preset = replace(preset, num_kv_blocks=kv_capacity_blocks(preset.shape, preset.gpu, preset.tp,
                                                                  gpu_memory_utilization))
    if num_kv_blocks is not None:
        if num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1 (got {num_kv_blocks})")
        preset = replace(preset, num_kv_blocks=num_kv_blocks)
    return preset


MEASURED_PRESETS_DIR = Path(__file__).parent / "measured_presets"


def measured_preset_dirs() -> list[Path]:
    """Folders searched for measured presets by name: ``$LLMSCHED_MEASURED_PRESETS``
    (``os.pathsep``-separated) first, then the package's ``measured_presets``."""
    env = os.environ.get("LLMSCHED_MEASURED_PRESETS", "")
    return [Path(p) for p in env.split(os.pathsep) if p] + [MEASURED_PRESETS_DIR]


def measured_preset_path(name: str) -> Path | None:
    """The JSON file of a measured preset: ``name`` itself when it ends in .json, else
    ``<dir>/<name>.json`` in the first measured-presets folder holding it; None if neither."""
    if name.endswith(".json"):
        return Path(name)
    if name in PRESETS:
        return None
    return next((d / f"{name}.json" for d in measured_preset_dirs() if (d / f"{name}.json").is_file()), None)


def load_measured_preset(path: str | Path, name: str | None = None):
    """A ``Preset`` from a JSON written by ``llmsched calibrate --measurements``."""
    from .measured import PRESET_FORMAT, MeasuredCostModel, MeasurementError, read_json
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"measured preset not found: {path}")
    d = read_json(path)
    if not isinstance(d, dict) or d.get("format") != PRESET_FORMAT:
        raise MeasurementError(f"{path}: not a measured preset (expected \"format\": \"{PRESET_FORMAT}\"); "
                               "write one with `llmsched calibrate --measurements DIR`")
    try:
        model = MeasuredCostModel.from_dict(d["cost_model"])
        return Preset(name or d["name"], GPUSpec(**d["gpu"]), ModelShape(**d["shape"]), int(d["tp"]), model,
                      int(d["num_kv_blocks"]), int(d.get("block_size", 16)), True, d.get("provenance", ""),
                      {"fit_report": d.get("fit_report", {})})
    except (KeyError, TypeError, ValueError) as e:
        raise MeasurementError(f"{path}: malformed measured preset ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# Calibrate


def list_presets() -> list[str]:
    measured = {p.stem for d in measured_preset_dirs() if d.is_dir() for p in d.glob("*.json")}
    return sorted(set(PRESETS) | measured)
