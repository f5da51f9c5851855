"""Measuring real batch latencies: ``llmsched profile``.

Builds a randomly initialised Llama-style decoder of a given shape with torch (no weights are
downloaded; GEMM and attention time does not depend on weight values), runs real batched forward
passes with a KV cache over a grid of batch compositions, and writes one CSV row per composition
plus a JSON manifest. ``llmsched calibrate --measurements DIR`` (``measured.py``) fits the cost
model to them.

What one timed forward pass does, per composition (all tokens of the batch in one pass, as in
vLLM): embedding; per layer RMSNorm, fused QKV projection, rotary embedding, writing the new K/V
into the cache, attention, output projection, residual, RMSNorm, gated MLP, residual; final norm
and LM head over the rows that emit a token, and the argmax.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` over a KV tensor per
layer: requests with the same (chunk c, context k) form one group and run as one batched SDPA
call, so there is no padding; a composition with several distinct (c, k) pairs loops over its
groups (the grid keeps their number small). A prefill chunk over k cached tokens uses the
bottom-right-aligned causal mask (``causal_lower_right`` on CUDA, the same boolean mask on CPU); a chunk with k = 0 is plainly causal; a
decode (c = 1) attends to all k + 1 keys. GQA is native (``enable_gqa``).

Fewer layers than the model has are timed, and the result scaled: every composition is timed with
``layers`` and with ``layers // 2`` layers, so a step decomposes as T(l) = fixed + l x per_layer
(fixed = embedding, final norm, LM head, launch overhead); the full model's time is
fixed + L x per_layer. The scaling is checked on a few compositions spread over the grid, timed
a third time with ``layers + layers // 2`` layers: the manifest's ``scaling_check`` gives the
error of the line's prediction there.

Timing: warm-up passes, then ``repeats`` timed passes, median. On CUDA each pass is bracketed by
CUDA events (GPU time, eager mode, no CUDA graphs); on CPU by ``time.perf_counter`` after
``torch.cpu.synchronize()``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .cost_model import BatchShape
from .hardware import MODELS, ModelShape
from .measured import CSV_COLUMNS, MANIFEST_JSON, write_measurements  # the format this tool writes



# ---------------------------------------------------------------------------------------------
# Batch compositions and the grid


@dataclass(frozen=True)
class Composition:
    """One batch: prefill chunks ``(c, k, emits)`` (chunk tokens, context tokens already in KV,
    whether the chunk completes its prompt and emits a token) and decode contexts ``k`` (each
    decode processes 1 token over k cached ones)."""

    kind: str  # "prefill", "decode" or "mixed"
    prefills: tuple[tuple[int, int, bool], ...] = ()
    decodes: tuple[int, ...] = ()

    @property
    def shape(self) -> BatchShape:
        return BatchShape.from_requests([(c, k) for c, k, _ in self.prefills], list(self.decodes),
                                        completed_prefills=sum(e for _, _, e in self.prefills))

    @property
    def label(self) -> str:
        """Compact text: ``p256@1024`` = a 256-token chunk over 1024 cached tokens (``!`` = emits),
        ``d32@2048`` = 32 decodes over 2048 cached tokens each."""
        parts = []
        for (c, k, e), n in _counts(self.prefills).items():
            parts.append(f"{n}x" * (n > 1) + f"p{c}@{k}" + "!" * e)
        for k, n in _counts(self.decodes).items():
            parts.append(f"d{n}@{k}")
        return "+".join(parts)

    def kv_tokens(self) -> int:
        """Tokens of KV the batch holds after the step (per layer)."""
        return sum(c + k for c, k, _ in self.prefills) + sum(k + 1 for k in self.decodes)


def _counts(items: Iterable) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _prefill(c: int, k: int, n: int = 1) -> tuple[tuple[int, int, bool], ...]:
    # A chunk over existing context is taken as a prompt's last chunk (emits); a first chunk
    # (k = 0) as one that continues. Deterministic, and it varies num_emit independently.
    return ((c, k, k > 0),) * n


def build_grid(max_model_len: int, quick: bool = False, max_tokens: int = 16384) -> list[Composition]:
    """The grid of compositions, in a fixed order: prefill chunk sizes x contexts (single and
    several prefills), decode batch sizes x contexts, and mixed batches (prefills + decodes, one
    or two context groups). Compositions longer than ``max_model_len`` per request, or with more
    than ``max_tokens`` tokens, are left out. ``quick`` = a small grid of small sizes (CPU tests,
    smoke runs)."""
    if quick:
        chunks, ctxs = [8, 32, 128], [0, 64, 256]
        multi = [(2, 32, 0), (3, 16, 64), (2, 64, 128)]
        dec_b, dec_k = [1, 4, 16, 32], [16, 64, 256]
        mix_p = [(32, 0), (64, 64), (16, 256)]
        mix_d = [(4, 64), (16, 16), (8, 256)]
        two = [(((64, 0), (16, 128)), ((8, 32), (4, 256))), (((32, 64),), ((16, 16), (8, 128))),
               (((128, 0), (32, 32)), ((2, 64),))]
    else:
        chunks, ctxs = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192], [0, 512, 2048, 6144]
        multi = [(2, 128, 0), (4, 128, 1024), (2, 512, 0), (4, 512, 1024), (2, 1024, 2048), (4, 1024, 0)]
        dec_b, dec_k = [1, 2, 4, 8, 16, 32, 64, 128, 256], [128, 512, 1024, 2048, 4096]
        mix_p = [(256, 0), (512, 1024), (1024, 0), (2048, 2048), (128, 4096)]
        mix_d = [(8, 512), (32, 1024), (64, 2048), (128, 512), (16, 4096)]
        two = [(((512, 0), (256, 2048)), ((32, 512), (32, 2048))),
               (((1024, 1024),), ((64, 256), (16, 4096))),
               (((2048, 0), (128, 1024)), ((8, 1024),)),
               (((256, 512), (256, 512)), ((96, 1024), (32, 3072)))]
    grid: list[Composition] = []
    for c in chunks:
        for k in ctxs:
            grid.append(Composition("prefill", _prefill(c, k)))
    for n, c, k in multi:
        grid.append(Composition("prefill", _prefill(c, k, n)))
    for b in dec_b:
        for k in dec_k:
            grid.append(Composition("decode", decodes=(k,) * b))
    for c, k in mix_p:
        for b, kd in mix_d:
            grid.append(Composition("mixed", _prefill(c, k), (kd,) * b))
    for ps, ds in two:
        grid.append(Composition("mixed", sum((_prefill(c, k) for c, k in ps), ()),
                                sum(((kd,) * b for b, kd in ds), ())))
    longest = lambda comp: max([c + k for c, k, _ in comp.prefills] + [k + 1 for k in comp.decodes])
    return [g for g in grid if longest(g) <= max_model_len and g.shape.num_tokens <= max_tokens]


# ---------------------------------------------------------------------------------------------
# Model shapes


def resolve_shape(spec: str) -> tuple[str, ModelShape]:
    """A model shape from a model name (``llama3-8b``), a preset name (``h100-llama3-8b``: its
    model), or a HuggingFace ``config.json`` (file or folder). Returns (key, shape), key = the
    short model name used in preset names."""
    from .presets import PRESETS, get_preset
    if spec in MODELS:
        return spec, MODELS[spec]
    if spec in PRESETS:
        shape = get_preset(spec).shape
        key = next((k for k, v in MODELS.items() if v == shape), shape.name)
        return key, shape
    p = Path(spec)
    if p.suffix == ".json" or p.exists() or os.sep in spec:
        shape = ModelShape.from_hf_config(p)
        return (p.parent.name if p.suffix == ".json" else p.name) or shape.name, shape
    raise ValueError(f"unknown model shape {spec!r}: give a model ({', '.join(sorted(MODELS))}), a preset "
                     "(`llmsched presets` lists them) or a path to a HuggingFace config.json")


# ---------------------------------------------------------------------------------------------
# The decoder


def _torch():
    import torch
    return torch


def build_decoder(shape: ModelShape, num_layers: int, device: str, dtype, seed: int = 0):
    """A randomly initialised Llama-style decoder (``num_layers`` layers of ``shape``) on
    ``device``; weights ~ N(0, 0.02) (values do not affect timing, only keep activations finite)."""
    torch = _torch()
    nn = torch.nn
    h, d = shape.hidden_size, shape.head_dim
    rms = getattr(nn, "RMSNorm", None) or (lambda n, eps: nn.LayerNorm(n, eps=eps, bias=False))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = rms(h, eps=1e-5)
            self.qkv = nn.Linear(h, (shape.num_heads + 2 * shape.num_kv_heads) * d, bias=False)
            self.o = nn.Linear(shape.num_heads * d, h, bias=False)
            self.norm2 = rms(h, eps=1e-5)
            self.up = nn.Linear(h, (2 if shape.gated_mlp else 1) * shape.intermediate_size, bias=False)
            self.down = nn.Linear(shape.intermediate_size, h, bias=False)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(shape.vocab_size, h)
            self.layers = nn.ModuleList(Layer() for _ in range(num_layers))
            self.norm = rms(h, eps=1e-5)
            self.lm_head = nn.Linear(h, shape.vocab_size, bias=False)

    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device(device):
        model = Decoder().to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


class PreparedBatch:
    """Inputs, KV caches and attention groups of one composition, built outside the timed region.

    ``kv[layer][group]`` = (K, V), each (requests, KV heads, k + c, head dim); the step writes its
    new keys and values at positions k .. k + c - 1 and attends over all k + c.
    """

    def __init__(self, comp: Composition, shape: ModelShape, num_layers: int, device: str, dtype,
                 rope_theta: float = 500000.0, seed: int = 0):
        torch = _torch()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        gen_dev = torch.Generator(device=device).manual_seed(seed)
        d, hkv = shape.head_dim, shape.num_kv_heads
        self.groups = []  # (requests B, chunk c, context k, mask, is_causal)
        positions, emit_rows, row = [], [], 0
        for (c, k, e), b in _counts(comp.prefills).items():
            causal = k == 0 and c > 1
            mask = _lower_right_causal(c, k, device) if (k > 0 and c > 1) else None
            self.groups.append((b, c, k, mask, causal))
            for _ in range(b):
                positions.extend(range(k, k + c))
                row += c
                if e:
                    emit_rows.append(row - 1)
        for k, b in _counts(comp.decodes).items():
            self.groups.append((b, 1, k, None, False))
            positions.extend([k] * b)
            emit_rows.extend(range(row, row + b))
            row += b
        n = row
        self.num_tokens = n
        self.ids = torch.randint(0, shape.vocab_size, (n,), generator=gen).to(device)
        pos = torch.tensor(positions, dtype=torch.float32)
        inv = 1.0 / rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = torch.outer(pos, inv)
        ang = torch.cat([ang, ang], dim=-1)
        self.cos = ang.cos().to(device=device, dtype=dtype)[:, None, :]
        self.sin = ang.sin().to(device=device, dtype=dtype)[:, None, :]
        self.emit = torch.tensor(emit_rows, dtype=torch.long, device=device)
        self.kv = []
        for _ in range(num_layers):
            per = []
            for b, c, k, _, _ in self.groups:
                size = (b, hkv, k + c, d)
                per.append(tuple(torch.randn(size, generator=gen_dev, device=device, dtype=dtype)
                                 for _ in range(2)))
            self.kv.append(per)


def _lower_right_causal(c: int, k: int, device: str):
    """Mask for a c-token chunk after k cached tokens: query i sees keys 0 .. k + i. On CUDA the
    ``causal_lower_right`` bias (SDPA runs it in the flash kernel, without a mask tensor); on CPU
    the same mask as a boolean tensor (the CPU kernels materialise it anyway, and the bias module
    imports torch._dynamo, seconds of start-up)."""
    torch = _torch()
    if device.startswith("cuda"):
        from torch.nn.attention.bias import causal_lower_right
        return causal_lower_right(c, k + c)
    return torch.ones(c, k + c, dtype=torch.bool, device=device).tril(diagonal=k)


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = _torch().cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def forward(model, batch: PreparedBatch, shape: ModelShape, num_layers: int):
    """One engine step through the first ``num_layers`` layers; returns the sampled token ids."""
    torch = _torch()
    F = torch.nn.functional
    hq, hkv, d = shape.num_heads, shape.num_kv_heads, shape.head_dim
    n = batch.num_tokens
    x = model.embed(batch.ids)
    for li in range(num_layers):
        layer = model.layers[li]
        q, k, v = layer.qkv(layer.norm1(x)).split([hq * d, hkv * d, hkv * d], dim=-1)
        q = _rope(q.view(n, hq, d), batch.cos, batch.sin)
        k = _rope(k.view(n, hkv, d), batch.cos, batch.sin)
        v = v.view(n, hkv, d)
        outs, row = [], 0
        for gi, (b, c, ctx, mask, causal) in enumerate(batch.groups):
            rows = slice(row, row + b * c)
            row += b * c
            kc, vc = batch.kv[li][gi]
            kc[:, :, ctx:ctx + c] = k[rows].view(b, c, hkv, d).transpose(1, 2)
            vc[:, :, ctx:ctx + c] = v[rows].view(b, c, hkv, d).transpose(1, 2)
            qg = q[rows].view(b, c, hq, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask, is_causal=causal,
                                               enable_gqa=hq != hkv)
            outs.append(o.transpose(1, 2).reshape(b * c, hq * d))
        x = x + layer.o(torch.cat(outs) if len(outs) > 1 else outs[0])
        u = layer.up(layer.norm2(x))
        if shape.gated_mlp:
            g, u = u.chunk(2, dim=-1)
            u = F.silu(g) * u
        else:
            u = F.gelu(u, approximate="tanh")
        x = x + layer.down(u)
    if batch.emit.numel() == 0:
        return batch.emit
    return model.lm_head(model.norm(x[batch.emit])).argmax(dim=-1)


def make_timer(device: str) -> Callable[[Callable[[], object], int, int], list[float]]:
    """``timer(fn, warmup, repeats)`` -> seconds of each timed call: CUDA events on CUDA
    (GPU time between the events), ``time.perf_counter`` around a synchronised call on CPU."""
    torch = _torch()
    if device.startswith("cuda"):
        def timer(fn, warmup, repeats):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
            for a, b in ev:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            return [a.elapsed_time(b) * 1e-3 for a, b in ev]
    else:
        def timer(fn, warmup, repeats):
            for _ in range(warmup):
                fn()
            out = []
            for _ in range(repeats):
                torch.cpu.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cpu.synchronize()
                out.append(time.perf_counter() - t0)
            return out
    return timer


# ---------------------------------------------------------------------------------------------
# The profiler


@dataclass
class ProfileConfig:
    """Knobs of one profiling run.

    Attributes:
        model_shape: model name, preset name or config.json (see ``resolve_shape``).
        device: "cuda", "cuda:N" or "cpu".
        out: output folder (gets measurements.csv and manifest.json).
        layers: deepest layer count timed (default min(8, model layers) on CUDA, min(4, ...) on
            CPU); also timed:
            layers // 2 (the scaling fit) and layers + layers // 2 (the scaling check).
        quick: the small grid.
        dtype: "bf16", "fp16" or "fp32" (default bf16 on CUDA, fp32 on CPU).
        warmup, repeats: passes before timing, and timed passes per composition and layer count.
        max_tokens: largest batch of the grid, tokens.
        max_memory_gb: skip compositions whose KV + activations would exceed this (default: 70%
            of free GPU memory less the timed layers' weights, or 4 GB on CPU).
        scaling_checks: how many compositions get the third layer count.
        seed: weights, token ids and KV contents.
    """

    model_shape: str
    device: str = "cpu"
    out: str = "runs/profile"
    layers: int | None = None
    quick: bool = False
    dtype: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    max_tokens: int = 16384
    max_memory_gb: float | None = None
    scaling_checks: int = 6
    seed: int = 0
    progress: bool = True


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _device_info(device: str) -> dict:
    torch = _torch()
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return {"device_name": props.name, "device_memory_bytes": float(total), "free_memory_bytes": float(free)}
    try:
        mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        mem = float("nan")
    return {"device_name": platform.processor() or platform.machine() or "cpu", "device_memory_bytes": mem,
            "cpu_threads": torch.get_num_threads()}


def _batch_bytes(comp: Composition, shape: ModelShape, layers: int, elem: int) -> float:
    kv = 2 * comp.kv_tokens() * shape.num_kv_heads * shape.head_dim * elem * layers
    n = comp.shape.num_tokens
    act = n * (3 * shape.hidden_size + (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
               + 3 * shape.intermediate_size) * elem
    return kv + act + comp.shape.num_emit * shape.vocab_size * 4


def profile(cfg: ProfileConfig, timer: Callable | None = None) -> dict:
    """Time the grid and write ``measurements.csv`` and ``manifest.json`` under ``cfg.out``.

    Args:
        timer: override the timing function (``make_timer``'s signature), for tests.

    Returns:
        the manifest (dict).
    """
    torch = _torch()
    key, shape = resolve_shape(cfg.model_shape)
    dev = cfg.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {dev}: CUDA is not available to this torch ({torch.__version__}); "
                         "use --device cpu, or install a CUDA build of torch on a GPU machine")
    if not (dev == "cpu" or dev.startswith("cuda")):
        raise ValueError(f"--device must be cuda, cuda:N or cpu (got {dev!r})")
    on_cuda = dev.startswith("cuda")
    if on_cuda and ":" in dev:
        torch.cuda.set_device(torch.device(dev))
    dtype_name = cfg.dtype or ("bf16" if on_cuda else "fp32")
    if dtype_name not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)} (got {dtype_name!r})")
    dtype = getattr(torch, DTYPES[dtype_name])
    layers = cfg.layers if cfg.layers is not None else min(8 if on_cuda else 4, shape.num_layers)
    if not 2 <= layers <= shape.num_layers:
        raise ValueError(f"--layers must be between 2 and the model's {shape.num_layers} layers (got {layers}); "
                         "two layer counts (layers and layers // 2) are timed to separate per-layer time")
    fewer, check = layers // 2, layers + layers // 2
    warmup = cfg.warmup if cfg.warmup is not None else (1 if cfg.quick else 3)
    repeats = cfg.repeats if cfg.repeats is not None else (3 if cfg.quick else 10)
    if warmup < 0 or repeats < 1:
        raise ValueError(f"--warmup must be >= 0 and --repeats >= 1 (got {warmup}, {repeats})")
    info = _device_info(dev)
    if cfg.max_memory_gb is not None:
        budget = cfg.max_memory_gb * 1e9
    elif on_cuda:
        budget = 0.7 * info["free_memory_bytes"]
    else:
        budget = 4e9
    elem = torch.finfo(dtype).bits // 8
    grid = build_grid(shape.max_model_len, cfg.quick, cfg.max_tokens)
    weights = (shape.num_params - (shape.num_layers - check) * (shape.num_params - 2 * shape.vocab_size
               * shape.hidden_size) / shape.num_layers) * elem
    budget -= weights if on_cuda else 0.0
    skipped = [g.label for g in grid if _batch_bytes(g, shape, layers, elem) > budget]
    grid = [g for g in grid if _batch_bytes(g, shape, layers, elem) <= budget]
    if not grid:
        raise ValueError(f"no composition of the grid fits {budget / 1e9:.1f} GB; raise --max-memory-gb")
    # Scaling checks: spread over the grid, among compositions whose KV fits at the check depth.
    fits = [i for i, g in enumerate(grid) if _batch_bytes(g, shape, check, elem) <= budget]
    step = max(1, len(fits) // max(1, cfg.scaling_checks))
    check_idx = set(fits[step // 2::step][:cfg.scaling_checks]) if cfg.scaling_checks > 0 else set()

    torch.manual_seed(cfg.seed)
    model = build_decoder(shape, check, dev, dtype, cfg.seed)
    time_fn = timer or make_timer(dev)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, checks = [], []
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    bar = Progress(TextColumn("[bold]profile {task.fields[label]:<28}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not cfg.progress)
    t_start = time.time()
    with bar, torch.inference_mode():
        # One-off warm-up (allocator, thread pools, kernel selection) before the first timing.
        first = PreparedBatch(grid[len(grid) // 2], shape, layers, dev, dtype, seed=cfg.seed)
        time_fn(lambda: forward(model, first, shape, layers), 2 * warmup + 2, 1)
        del first
        task = bar.add_task("grid", total=len(grid), label="")
        for i, comp in enumerate(grid):
            bar.update(task, label=comp.label[:28])
            batch = PreparedBatch(comp, shape, check if i in check_idx else layers, dev, dtype, seed=cfg.seed + i)
            med = {}
            for nl in ([fewer, layers] + ([check] if i in check_idx else [])):
                ts = time_fn(lambda: forward(model, batch, shape, nl), warmup, repeats)
                med[nl] = statistics.median(ts)
            if med[layers] <= med[fewer]:  # timing noise swamped the extra layers: time both again, longer
                for nl in (fewer, layers):
                    ts = time_fn(lambda: forward(model, batch, shape, nl), warmup, 2 * repeats + 1)
                    med[nl] = statistics.median(ts)
            per_layer = (med[layers] - med[fewer]) / (layers - fewer)
            fixed = med[fewer] - fewer * per_layer
            s = comp.shape
            rows.append({"kind": comp.kind, **s._asdict(), "seconds": med[layers], "layers_timed": layers,
                         "seconds_fewer": med[fewer], "layers_fewer": fewer,
                         "seconds_full_model": fixed + shape.num_layers * per_layer,
                         "model_layers": shape.num_layers, "repetitions": repeats, "device": dev,
                         "composition": comp.label})
            if i in check_idx:
                pred = fixed + check * per_layer
                checks.append({"composition": comp.label, "layers": check, "measured_s": med[check],
                               "predicted_s": pred, "ape_pct": abs(pred - med[check]) / med[check] * 100})
            del batch
            bar.advance(task)
    write_measurements(out, rows)
    apes = [c["ape_pct"] for c in checks]
    manifest = {
        "tool": "llmsched profile",
        "model_shape_arg": cfg.model_shape,
        "model_key": key,
        "shape": shape.to_dict(),
        "device": dev,
        **info,
        "dtype": dtype_name,
        "torch_version": torch.__version__,
        "cuda_version": getattr(torch.version, "cuda", None),
        "layers_timed": layers,
        "layers_fewer": fewer,
        "model_layers": shape.num_layers,
        "warmup": warmup,
        "repetitions": repeats,
        "timing": "cuda events, median" if on_cuda else "perf_counter + torch.cpu.synchronize, median",
        "attention": "torch scaled_dot_product_attention per (chunk, context) group over a KV tensor; "
                     "lower-right causal mask for chunks over cached context",
        "grid": {"quick": cfg.quick, "max_tokens": cfg.max_tokens, "compositions": len(rows),
                 "labels": [r["composition"] for r in rows],
                 "by_kind": _counts(r["kind"] for r in rows), "skipped_for_memory": skipped,
                 "memory_budget_bytes": budget},
        "scaling_check": {"layers": check, "points": checks,
                          "median_ape_pct": statistics.median(apes) if apes else None,
                          "max_ape_pct": max(apes) if apes else None},
        "seed": cfg.seed,
        "started_unix": t_start,
        "wall_s": time.time() - t_start,
    }
    (out / MANIFEST_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# CLI


def cmd_profile(a) -> int:
    from rich.console import Console
    cfg = ProfileConfig(model_shape=a.model_shape, device=a.device, out=a.out, layers=a.layers, quick=a.quick,
                        dtype=a.dtype, warmup=a.warmup, repeats=a.repeats, max_tokens=a.max_tokens,
                        max_memory_gb=a.max_memory_gb, seed=a.seed, progress=not a.no_progress)
    m = profile(cfg)
    sc = m["scaling_check"]
    msg = (f"{m['grid']['compositions']} compositions of {m['shape']['name']} on {m['device_name']} "
           f"({m['layers_fewer']} and {m['layers_timed']} of {m['model_layers']} layers) -> {a.out}")
    if sc["points"]:
        msg += (f"\nlayer scaling check at {sc['layers']} layers: median error {sc['median_ape_pct']:.2f}%, "
                f"max {sc['max_ape_pct']:.2f}%")
    if m["grid"]["skipped_for_memory"]:
        msg += f"\nskipped for memory: {len(m['grid']['skipped_for_memory'])} compositions (see manifest)"
    Console().print(msg)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="time real forward passes of a model shape over a grid of batches")
    p.add_argument("--model-shape", required=True, help="model (llama3-8b), preset (h100-llama3-8b) or config.json")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--out", required=True, help="output folder (measurements.csv, manifest.json)")
    p.add_argument("--layers", type=int, help="layers timed (default 8 on CUDA, 4 on CPU, at most the "
                                              "model's); layers // 2 is timed too, and the full model's "
                                              "time extrapolated")
    p.add_argument("--quick", action="store_true", help="small grid of small batches (smoke test)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--warmup", type=int, help="untimed passes per composition (default 3; 1 with --quick)")
    p.add_argument("--repeats", type=int, help="timed passes, median taken (default 10; 3 with --quick)")
    p.add_argument("--max-tokens", type=int, default=16384, help="largest batch in the grid, tokens")
    p.add_argument("--max-memory-gb", type=float, help="skip compositions needing more (default 70%% of free "
                                                       "GPU memory; 4 GB on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_profile)
