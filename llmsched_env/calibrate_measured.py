"""``llmsched calibrate --measurements DIR``: fit ``measured.py``'s cost model to a profile, report
its held-out errors and its attention next to the analytic model, and save the measured preset
(``presets.get_preset`` loads it back by name or path).

This command sits above both ``measured`` (the measurement format and the fit) and ``presets``;
neither imports it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

from .hardware import GPUS, GPUSpec, ModelShape, kv_capacity_blocks
from .measured import (KINDS, PRESET_FORMAT, MeasuredCostModel, MeasurementError, Measurements, error_table,
                       fit_measured, heldout_mask, load_measurements)
from .presets import MEASURED_PRESETS_DIR, PRESETS, attention_for, get_preset


def gpu_key(device_name: str) -> str | None:
    """The ``GPUS`` key of a device name ("NVIDIA H100 80GB HBM3" -> "h100"), or None."""
    low = device_name.lower()
    return next((k for k in GPUS if re.search(rf"\b{k}\b", low)), None)


def attention_comparison(model: MeasuredCostModel, shape: ModelShape, device_name: str) -> dict:
    """Measured attention coefficients next to the analytic ``AttentionModel`` of the same shape
    at TP 1 on the matching GPU (H100 when the device is not a known GPU: then for reference only),
    and the shipped preset with that GPU and model when there is one."""
    key = gpu_key(device_name)
    gpu = GPUS[key or "h100"]
    ana = attention_for(shape, gpu, 1)
    preset = None
    for name in PRESETS:
        if name.startswith(f"{gpu.name}-") and not name.startswith("infermax"):
            try:
                p = get_preset(name)
            except Exception:  # a shipped preset whose data is absent: skip it
                continue
            if p.tp == 1 and p.shape.num_heads == shape.num_heads and p.shape.head_dim == shape.head_dim \
                    and p.shape.num_kv_heads == shape.num_kv_heads:
                preset = name
                break
    flops_per_pair = 4.0 * shape.num_heads * shape.head_dim
    kv_bytes = 2.0 * shape.num_kv_heads * shape.head_dim * shape.dtype_bytes
    att = model.attention
    rows = [
        ("prefill s per (query x key) pair", att.prefill_pair_s, ana._pf),
        ("prefill s per KV token read", att.prefill_kv_s, ana._pb),
        ("prefill s per request", att.prefill_seq_s, ana.per_seq_s),
        ("decode s per KV token", att.decode_kv_s, max(ana._df, ana._db)),
        ("decode s per request", att.decode_seq_s, ana.per_seq_s),
    ]
    return {
        "gpu": gpu.name, "matched_device": key is not None, "preset": preset,
        "terms": [{"term": t, "measured": mv, "analytic": av} for t, mv, av in rows],
        "prefill_flops_per_s": {"measured": flops_per_pair / att.prefill_pair_s if att.prefill_pair_s > 0 else None,
                                "analytic": gpu.peak_flops * ana.prefill_flops_eff, "peak": gpu.peak_flops},
        "decode_bytes_per_s": {"measured": kv_bytes / att.decode_kv_s if att.decode_kv_s > 0 else None,
                               "analytic": gpu.mem_bandwidth * ana.decode_bw_eff, "peak": gpu.mem_bandwidth},
    }


def default_name(manifest: dict) -> str:
    """``<gpu>-<model>-measured``, e.g. ``h100-llama3-8b-measured`` (``cpu`` on CPU)."""
    gpu = gpu_key(manifest.get("device_name", "")) if str(manifest["device"]).startswith("cuda") else None
    dev = gpu or re.sub(r"[^a-z0-9]+", "-", str(manifest["device"]).split(":")[0].lower())
    model = re.sub(r"[^a-z0-9.]+", "-", str(manifest.get("model_key") or manifest["shape"]["name"]).lower()).strip("-")
    return f"{dev}-{model}-measured"


def _gpu_spec(manifest: dict) -> GPUSpec:
    key = gpu_key(manifest.get("device_name", "")) if str(manifest["device"]).startswith("cuda") else None
    if key:
        return GPUS[key]
    mem = float(manifest.get("device_memory_bytes") or "nan")
    if not math.isfinite(mem) or mem <= 0:
        raise MeasurementError("manifest has no device_memory_bytes, needed for the KV capacity")
    return GPUSpec(str(manifest["device"]).split(":")[0], 0.0, 0.0, mem, "")


def preset_document(name: str, model: MeasuredCostModel, m: Measurements, report: dict) -> dict:
    """The JSON a measured preset is saved as (``load_measured_preset`` reads it back)."""
    shape = ModelShape(**m.manifest["shape"])
    gpu = _gpu_spec(m.manifest)
    blocks = kv_capacity_blocks(shape, gpu, 1)
    held = report["heldout"]["full_model"]["mixed"]
    med = "n/a" if held["median_ape_pct"] is None else f"{held['median_ape_pct']:.2f}%"
    return {
        "format": PRESET_FORMAT, "name": name, "gpu": asdict(gpu), "shape": shape.to_dict(), "tp": 1,
        "num_kv_blocks": blocks, "block_size": 16,
        "provenance": (f"measured: llmsched profile on {m.manifest.get('device_name', m.manifest['device'])} "
                       f"({m.manifest.get('dtype')}); held-out mixed-batch median APE {med}"),
        "cost_model": model.describe(),
        "fit_report": {k: report[k] for k in ("split", "heldout", "fit")},
    }


def calibrate_measurements(folder: str | Path, holdout_every: int = 4, name: str | None = None,
                           out: str | Path | None = None) -> dict:
    """Fit, evaluate on held-out compositions, compare attention with the analytic model, and save
    the preset JSON (to ``out``, default ``<measured presets dir>/<name>.json``). Returns the report
    (``saved`` = the path, or None with ``not_saved`` = why, e.g. a model too big for one GPU)."""
    m = load_measurements(folder)
    held = heldout_mask(m.kinds, holdout_every)
    if not held.any():
        raise MeasurementError(f"{m.folder}: {len(held)} compositions leave none to hold out at "
                               f"--holdout-every {holdout_every}")
    model = fit_measured(m, ~held)
    shape = ModelShape(**m.manifest["shape"])
    report = {
        "measurements": str(m.folder),
        "split": f"held out: every {holdout_every}th composition of each kind in grid order "
                 f"({int(held.sum())} held out, {int((~held).sum())} fitted)",
        "heldout": error_table(model, m, held),
        "fit": error_table(model, m, ~held),
        "coefficients": model.describe(),
        "attention_comparison": attention_comparison(model, shape, m.manifest.get("device_name", "")),
        "scaling_check": m.manifest.get("scaling_check"),
    }
    name = name or default_name(m.manifest)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    report["preset"] = name
    report["_model"] = model
    try:
        doc = preset_document(name, model, m, report)
    except ValueError as e:  # e.g. the weights do not fit one GPU: no TP-1 KV capacity
        report["saved"], report["not_saved"] = None, str(e)
        return report
    path = Path(out) if out else MEASURED_PRESETS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    report["saved"] = str(path)
    return report

def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}%"


def cmd_calibrate_measurements(a) -> int:
    from rich.console import Console
    from rich.table import Table
    r = calibrate_measurements(a.measurements, getattr(a, "holdout_every", 4) or 4, a.name, a.out)
    r.pop("_model")
    status = 0 if r["saved"] else 2
    if a.json:
        print(json.dumps(r, indent=2, default=str))
        return status
    con = Console()
    con.print(r["split"] + "; APE vs the full-model time (full) and vs the time at the deepest layer count "
              "timed (timed)")
    t = Table(title="held-out absolute percentage error")
    for c in ("kind", "n", "full: median", "full: mean", "full: max", "timed: median", "timed: mean"):
        t.add_column(c, justify="right")
    for kind in KINDS + ("all",):
        f, tl = r["heldout"]["full_model"][kind], r["heldout"]["timed_layers"][kind]
        t.add_row(kind, str(f["n"]), _pct(f["median_ape_pct"]), _pct(f["mean_ape_pct"]), _pct(f["max_ape_pct"]),
                  _pct(tl["median_ape_pct"]), _pct(tl["mean_ape_pct"]))
    con.print(t)
    cmp_ = r["attention_comparison"]
    t = Table(title=f"attention per layer: measured vs analytic ({cmp_['gpu']}"
                    f"{', preset ' + cmp_['preset'] if cmp_['preset'] else ''}"
                    f"{'' if cmp_['matched_device'] else '; device is not that GPU: reference only'})")
    for c in ("term", "measured", "analytic", "ratio"):
        t.add_column(c, justify="right")
    for row in cmp_["terms"]:
        ratio = row["measured"] / row["analytic"] if row["analytic"] else float("nan")
        t.add_row(row["term"], f"{row['measured']:.4g}", f"{row['analytic']:.4g}", f"{ratio:.3g}")
    for k, unit in (("prefill_flops_per_s", "FLOP/s"), ("decode_bytes_per_s", "B/s")):
        v = cmp_[k]
        meas = "-" if v["measured"] is None else f"{v['measured']:.4g} ({v['measured'] / v['peak']:.1%} of peak)"
        t.add_row(f"effective {k.split('_')[0]} {unit}", meas,
                  f"{v['analytic']:.4g} ({v['analytic'] / v['peak']:.1%})", "")
    con.print(t)
    c = r["coefficients"]
    con.print(f"overhead {c['overhead_s'] * 1e3:.4g} ms/step, embedding {c['emb_tokens']['tail_slope_s_per_token'] * 1e9:.4g} "
              f"ns/token, per-layer token table {len(c['layer_tokens']['knots'])} knots, "
              f"LM head table {len(c['lm_head']['knots'])} knots")
    if r["saved"]:
        con.print(f"saved preset [bold]{r['preset']}[/] -> {r['saved']}")
    else:
        con.print(f"[red]error:[/] preset {r['preset']} not saved: {r['not_saved']} (measured presets are TP 1)")
    return status
