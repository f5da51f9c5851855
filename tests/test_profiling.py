"""``llmsched profile`` and ``llmsched calibrate --measurements``: a tiny shape on CPU."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from llmsched_env import cli, measured, profiling
from llmsched_env.cost_model import BatchShape, PiecewiseLinear
from llmsched_env.hardware import ModelShape
from llmsched_env.calibrate_measured import calibrate_measurements
from llmsched_env.measured import (MeasuredAttention, MeasuredCostModel, MeasurementError,
                                   load_measurements, synthetic_measurements)
from llmsched_env.presets import get_preset, list_presets
from llmsched_env.simulate import simulate
from llmsched_env.workload import WorkloadConfig

TINY = {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512, "hidden_act": "silu"}
TINY_SHAPE = ModelShape("tiny", 8, 64, 4, 2, 128, 256, 512)


def known_model(layers: int = 8) -> MeasuredCostModel:
    return MeasuredCostModel(layers, PiecewiseLinear([1.0], [2e-4], 3e-6), PiecewiseLinear([0.0], [0.0], 1e-7),
                             PiecewiseLinear([1.0], [5e-5], 2e-6), MeasuredAttention(4e-9, 2e-8, 1e-5, 5e-8, 3e-6),
                             1.5e-3)


@pytest.fixture
def tiny_config(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    return d / "config.json"


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # real CPU timing on one thread


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One real CPU profile of the tiny shape (quick grid, 1 timed pass: fast, noisy)."""
    d = tmp_path_factory.mktemp("prof")
    cfgdir = d / "tiny"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_text(json.dumps(TINY))
    m = profiling.profile(profiling.ProfileConfig(str(cfgdir / "config.json"), "cpu", str(d / "run"), quick=True,
                                                  warmup=0, repeats=1, progress=False))
    return d / "run", m


def test_profile_writes_measurements_and_manifest(real_run):
    out, m = real_run
    with (out / "measurements.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == profiling.CSV_COLUMNS
        rows = list(reader)
    grid = profiling.build_grid(512, quick=True)
    assert len(rows) == len(grid) == m["grid"]["compositions"]
    assert {r["kind"] for r in rows} == {"prefill", "decode", "mixed"}
    for r, comp in zip(rows, grid):
        assert BatchShape(*(int(r[f]) for f in measured.SHAPE_FIELDS)) == comp.shape
        assert r["composition"] == comp.label
        assert float(r["seconds"]) > 0 and float(r["seconds_fewer"]) > 0
        assert (int(r["layers_timed"]), int(r["layers_fewer"]), int(r["model_layers"])) == (4, 2, 4)
        assert r["device"] == "cpu" and r["repetitions"] == "1"
    man = json.loads((out / "manifest.json").read_text())
    assert man["shape"]["hidden_size"] == 64 and man["dtype"] == "fp32"
    assert man["torch_version"] and man["model_key"] == "tiny"
    sc = man["scaling_check"]
    assert sc["layers"] == 6 and len(sc["points"]) >= 3
    assert all(math.isfinite(p["ape_pct"]) and p["measured_s"] > 0 for p in sc["points"])


def test_layer_scaling_is_fixed_plus_layers_times_per_layer(tmp_path, tiny_config, monkeypatch):
    """With a clock that is exactly a + b x layers, the profiler's scaled full-model time and its
    scaling check are exact; a clock that is not linear in layers fails the check."""
    seen = []
    real_forward = profiling.forward

    def spy(model, batch, shape, num_layers):
        seen.append((batch.num_tokens, num_layers))
        return real_forward(model, batch, shape, num_layers)

    monkeypatch.setattr(profiling, "forward", spy)

    def clock(power):
        def timer(fn, warmup, repeats):
            fn()
            n, layers = seen[-1]
            return [1e-3 + 1e-6 * n + 2e-4 * layers ** power * (1 + n / 100)] * repeats
        return timer

    cfg = profiling.ProfileConfig(str(tiny_config), "cpu", str(tmp_path / "lin"), quick=True, warmup=0, repeats=1,
                                  progress=False)
    man = profiling.profile(cfg, timer=clock(1))
    m = load_measurements(tmp_path / "lin")
    for s, full in zip(m.shapes, m.seconds_full):
        assert full == pytest.approx(1e-3 + 1e-6 * s.num_tokens + 2e-4 * 4 * (1 + s.num_tokens / 100), rel=1e-9)
    assert man["scaling_check"]["max_ape_pct"] < 1e-6
    cfg.out, cfg.max_tokens = str(tmp_path / "quad"), 40
    man = profiling.profile(cfg, timer=clock(2))
    assert man["scaling_check"]["median_ape_pct"] > 10


def test_calibrate_recovers_a_known_model(tmp_path):
    true = known_model()
    grid = profiling.build_grid(512, quick=True)
    synthetic_measurements(true, grid, tmp_path / "syn", TINY_SHAPE)
    r = calibrate_measurements(tmp_path / "syn", out=tmp_path / "p.json")
    fit = r["_model"]
    for term in ("prefill_pair_s", "prefill_kv_s", "prefill_seq_s", "decode_kv_s", "decode_seq_s"):
        assert getattr(fit.attention, term) == pytest.approx(getattr(true.attention, term), rel=1e-6), term
    assert fit.overhead_s == pytest.approx(true.overhead_s, rel=1e-6)
    assert fit.emb_tokens(1000) == pytest.approx(true.emb_tokens(1000), rel=1e-6)
    for n in (1, 7, 100, 400, 5000):
        assert fit.layer_tokens(n) == pytest.approx(true.layer_tokens(n), rel=1e-6)
    for e in (1, 5, 40):
        assert fit.lm_head_s(e) == pytest.approx(true.lm_head_s(e), rel=1e-6)
    for kind in ("prefill", "decode", "mixed", "all"):
        assert r["heldout"]["full_model"][kind]["median_ape_pct"] < 1e-6
    assert r["heldout"]["full_model"]["mixed"]["n"] >= 3


def test_calibrate_with_noise_reports_honest_heldout_error(tmp_path):
    grid = profiling.build_grid(8192)
    synthetic_measurements(known_model(32), grid, tmp_path / "noisy", TINY_SHAPE, noise=0.02, seed=1)
    r = calibrate_measurements(tmp_path / "noisy", out=tmp_path / "p.json")
    mixed = r["heldout"]["timed_layers"]["mixed"]
    assert 0.1 < mixed["median_ape_pct"] < 5
    assert mixed["mean_ape_pct"] >= mixed["median_ape_pct"] * 0.5


def test_fitted_preset_loads_by_name_and_simulates(tmp_path, monkeypatch):
    synthetic_measurements(known_model(), profiling.build_grid(512, quick=True), tmp_path / "syn", TINY_SHAPE)
    presets = tmp_path / "presets"
    r = calibrate_measurements(tmp_path / "syn", name="tiny-measured", out=presets / "tiny-measured.json")
    assert r["saved"] == str(presets / "tiny-measured.json")
    monkeypatch.setenv("LLMSCHED_MEASURED_PRESETS", str(presets))
    assert "tiny-measured" in list_presets()
    p = get_preset("tiny-measured")
    by_path = get_preset(str(presets / "tiny-measured.json"))
    s = BatchShape.from_requests([(64, 128)], [100] * 8, completed_prefills=1)
    assert p.name == "tiny-measured" and p.calibrated and p.tp == 1
    assert p.cost_model.batch_time(s) == pytest.approx(known_model().batch_time(s), rel=1e-6)
    assert by_path.cost_model.batch_time(s) == p.cost_model.batch_time(s)
    assert p.num_kv_blocks > 0 and p.shape.max_model_len == 512
    wl = WorkloadConfig(num_requests=20, lengths="fixed", trace=None, prompt_len=100, output_len=10, rate=50.0)
    out = simulate(wl, "fcfs", p)
    assert out["num_finished"] == 20 and out["preset"] == "tiny-measured"
    json.dumps(p.describe())


def test_round_trip_through_the_cli(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert cli.main(["profile", "--model-shape", str(tiny_config), "--device", "cpu", "--out", str(run), "--quick",
                     "--layers", "2", "--warmup", "0", "--repeats", "1", "--no-progress"]) == 0
    assert cli.main(["calibrate", "--measurements", str(run), "--out", str(tmp_path / "x.json"), "--json"]) == 0
    out = capsys.readouterr().out
    rep = json.loads(out[out.index("{\n"):])
    assert rep["preset"] == "cpu-tiny-measured" and rep["heldout"]["full_model"]["mixed"]["n"] >= 3
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["name"] == "cpu-tiny-measured" and doc["cost_model"]["kind"] == "measured"
    assert doc["cost_model"]["num_layers"] == 4
    assert get_preset(str(tmp_path / "x.json")).cost_model.batch_time(BatchShape.from_requests([(8, 0)])) > 0


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.mark.parametrize("argv, needle", [
    (["profile", "--model-shape", "no-such-model", "--device", "cpu", "--out", "X"], "unknown model shape"),
    (["profile", "--model-shape", "missing/config.json", "--device", "cpu", "--out", "X"], "model config not found"),
    (["profile", "--model-shape", "llama3-8b", "--device", "cpu", "--out", "X", "--layers", "1"], "--layers"),
    (["profile", "--model-shape", "llama3-8b", "--device", "tpu", "--out", "X"], "--device"),
    (["calibrate", "--measurements", "no/such/folder"], "measurements folder not found"),
    (["simulate", "--preset", "no/such/preset.json"], "measured preset not found"),
])
def test_bad_inputs_give_clear_errors(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err


def test_malformed_measurements(tmp_path):
    synthetic_measurements(known_model(), profiling.build_grid(512, quick=True), tmp_path / "ok", TINY_SHAPE)
    rows = list(csv.reader((tmp_path / "ok" / "measurements.csv").open()))
    header, body = rows[0], rows[1:]
    bad = tmp_path / "bad"
    (bad).mkdir()
    (bad / "manifest.json").write_text((tmp_path / "ok" / "manifest.json").read_text())

    body2 = [list(r) for r in body]
    body2[2][header.index("seconds")] = "fast"
    _write_csv(bad / "measurements.csv", header, body2)
    with pytest.raises(MeasurementError, match=r"row 4, column seconds: 'fast' is not a number"):
        load_measurements(bad)

    _write_csv(bad / "measurements.csv", [h for h in header if h != "decode_kv"],
               [[v for h, v in zip(header, r) if h != "decode_kv"] for r in body])
    with pytest.raises(MeasurementError, match="missing column.*decode_kv"):
        load_measurements(bad)

    body3 = [list(r) for r in body]
    body3[0][header.index("num_tokens")] = "999"
    _write_csv(bad / "measurements.csv", header, body3)
    with pytest.raises(MeasurementError, match="row 2: num_tokens 999"):
        load_measurements(bad)

    _write_csv(bad / "measurements.csv", header, body[:5])
    with pytest.raises(MeasurementError, match="coefficients"):
        calibrate_measurements(bad, out=tmp_path / "p.json")

    (bad / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        load_measurements(bad)

    notpreset = tmp_path / "np.json"
    notpreset.write_text(json.dumps({"name": "x"}))
    with pytest.raises(MeasurementError, match="not a measured preset"):
        get_preset(str(notpreset))


def test_grid_respects_limits():
    g = profiling.build_grid(300, quick=True, max_tokens=64)
    assert g and all(c.shape.num_tokens <= 64 for c in g)
    assert all(c + k <= 300 for comp in g for c, k, _ in comp.prefills)
    assert all(k + 1 <= 300 for comp in g for k in comp.decodes)
    full = profiling.build_grid(8192)
    kinds = [c.kind for c in full]
    assert kinds.count("mixed") >= 20 and kinds.count("decode") >= 30 and kinds.count("prefill") >= 30
    assert len({c.label for c in full}) == len(full)
    assert np.all([c.shape.num_emit == sum(e for *_, e in c.prefills) + len(c.decodes) for c in full])


def test_model_too_big_for_one_gpu_is_fitted_but_not_saved(tmp_path):
    big = ModelShape("big", 80, 8192, 64, 8, 28672, 128256, 8192)
    synthetic_measurements(known_model(80), profiling.build_grid(512, quick=True), tmp_path / "big", big,
                           device="cuda")
    man = json.loads((tmp_path / "big" / "manifest.json").read_text())
    man["device_name"] = "NVIDIA H100 80GB HBM3"
    (tmp_path / "big" / "manifest.json").write_text(json.dumps(man))
    r = calibrate_measurements(tmp_path / "big", out=tmp_path / "big.json")
    assert r["saved"] is None and "raise the tensor-parallel degree" in r["not_saved"]
    assert r["preset"] == "h100-synthetic-measured" and not (tmp_path / "big.json").exists()
    assert r["attention_comparison"]["matched_device"] and r["attention_comparison"]["gpu"] == "h100"
