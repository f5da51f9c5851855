"""GPU specs and transformer model shapes, and what follows from them: weight bytes, KV bytes per
token and KV capacity in blocks."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class GPUSpec:
    """Peak rates of one GPU.

    Attributes:
        name: short name ("h100", "a100").
        peak_flops: dense bf16 tensor-core peak, FLOP/s.
        mem_bandwidth: HBM bandwidth, bytes/s.
        memory_bytes: HBM capacity, bytes.
        network: folder name under profiles/network for its all-reduce profile.
        host_link_bandwidth: GPU <-> host-memory copy rate of one GPU, one direction, bytes/s
            (what swapping KV to host memory runs at).
    """

    name: str
    peak_flops: float
    mem_bandwidth: float
    memory_bytes: float
    network: str
    host_link_bandwidth: float = 25e9


# Host links: PCIe Gen5 x16 (H100) and Gen4 x16 (A100) peak 64 and 32 GB/s per direction; the
# rates below assume pinned-memory copies reach about 80% of that (not measured here).
GPUS: dict[str, GPUSpec] = {
    # H100 SXM5 80GB: 989 TFLOP/s dense bf16, 3.35 TB/s.
    "h100": GPUSpec("h100", 989e12, 3.35e12, 80e9, "h100_dgx", host_link_bandwidth=51e9),
    # A100 SXM4 80GB: 312 TFLOP/s dense bf16, 2.04 TB/s.
    "a100": GPUSpec("a100", 312e12, 2.039e12, 80e9, "a100_dgx", host_link_bandwidth=25.6e9),
}


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape (HuggingFace config names in brackets).

    Attributes:
        name: display name.
        num_layers: [num_hidden_layers].
        hidden_size: [hidden_size].
        num_heads: [num_attention_heads].
        num_kv_heads: [num_key_value_heads].
        intermediate_size: MLP width [intermediate_size].
        vocab_size: [vocab_size].
        max_model_len: context length, tokens [max_position_embeddings].
        gated_mlp: SwiGLU-style MLP (three matrices) instead of two.
        dtype_bytes: bytes per weight and KV element (2 for bf16/fp16).
        tie_embeddings: input embedding shared with the LM head.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    gated_mlp: bool = True
    dtype_bytes: int = 2
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                     "vocab_size", "max_model_len", "dtype_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelShape {self.name}: {name} must be >= 1")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelShape {self.name}: hidden_size must divide into num_heads and "
                             "num_heads into num_kv_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_params(self) -> int:
        """Parameter count (norms included, biases ignored)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * h * 2 + 2 * h * self.num_kv_heads * d
        mlp = (3 if self.gated_mlp else 2) * h * i
        layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + emb + h

    def weight_bytes_per_gpu(self, tp: int) -> float:
        return self.num_params * self.dtype_bytes / tp

    def kv_bytes_per_token(self, tp: int) -> float:
        """KV bytes one token takes on one GPU: 2 x layers x KV heads x head dim x dtype / TP."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes / tp

    @classmethod
    def from_hf_config(cls, path: str | Path, name: str | None = None) -> "ModelShape":
        """Read a HuggingFace ``config.json`` (a file or a folder holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            raise FileNotFoundError(f"model config not found: {p}; pass a config.json or a preset name")
        cfg = json.loads(p.read_text())
        try:
            heads = cfg["num_attention_heads"]
            act = str(cfg.get("hidden_act", "silu"))
            return cls(
                name=name or cfg.get("_name_or_path") or p.parent.name,
                num_layers=cfg["num_hidden_layers"],
                hidden_size=cfg["hidden_size"],
                num_heads=heads,
                num_kv_heads=cfg.get("num_key_value_heads", heads),
                intermediate_size=cfg["intermediate_size"],
                vocab_size=cfg["vocab_size"],
                max_model_len=cfg.get("max_position_embeddings", 4096),
                gated_mlp=act in ("silu", "swiglu") or cfg.get("model_type") in ("llama", "mistral", "qwen2"),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            )
        except KeyError as e:
            raise ValueError(f"{p}: missing key {e.args[0]!r} needed for a model shape") from None

    def to_dict(self) -> dict:
        return asdict(self)


def kv_capacity_blocks(shape: ModelShape, gpu: GPUSpec, tp: int, gpu_memory_utilization: float = 0.9,
                       block_size: int = 16, activation_reserve_bytes: float = 0.0) -> int:
    """KV blocks per replica: (memory x utilisation - weights per GPU - reserve) / KV bytes per token
    per GPU, in blocks of ``block_size`` tokens.

    Raises:
        ValueError: the weights do not fit, with the numbers.
    """
    free = gpu.memory_bytes * gpu_memory_utilization - shape.weight_bytes_per_gpu(tp) - activation_reserve_bytes
    if free <= 0:
        raise ValueError(
            f"{shape.name} at TP {tp} needs {shape.weight_bytes_per_gpu(tp) / 1e9:.1f} GB of weights per "
            f"GPU but {gpu.name} offers {gpu.memory_bytes * gpu_memory_utilization / 1e9:.1f} GB at "
            f"utilisation {gpu_memory_utilization}; raise the tensor-parallel degree")
    tokens = free / shape.kv_bytes_per_token(tp)
    return int(tokens // block_size)


MODELS: dict[str, ModelShape] = {
    "llama2-7b": ModelShape("Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096),
    "llama2-70b": ModelShape("Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096),
    "llama3-8b": ModelShape("Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192),
    "llama3-70b": ModelShape("Meta-Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192),
    "phi-2": ModelShape("phi-2", 32, 2560, 32, 32, 10240, 51200, 2048, gated_mlp=False,
                        tie_embeddings=False),
}
