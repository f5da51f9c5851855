"""Calibration against the shipped Vidur profiles (goal: held-out MAPE <= 3% at TP 1)."""
import json
import subprocess
import sys

import pytest

from llmsched_env.calibration import ProfileError, calibrate_profile, load_operator_profile


def profiles(d):
    return sorted((d / "profiles" / "compute").glob("*/*/*/mlp.csv"))


def test_every_shipped_profile_within_3_percent(shared_data):
    found = profiles(shared_data)
    assert len(found) >= 8
    for path in found:
        r = calibrate_profile(path, tp=1, holdout_every=4)
        assert r["mape_heldout"] <= 3.0, (path, r["mape_heldout"])
        assert r["n_heldout"] == r["n_fit"] // 3 or abs(r["n_fit"] - 3 * r["n_heldout"]) <= 3


def test_tp4_profiles_fit_too(shared_data):
    for path in profiles(shared_data):
        if "70" in path.parent.name:
            assert calibrate_profile(path, tp=4)["mape_heldout"] <= 4.0


def test_cli_calibrate_json(shared_data):
    path = shared_data / "profiles/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv"
    out = subprocess.run([sys.executable, "-m", "llmsched_env.cli", "calibrate", "--profile", str(path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    for k in ("mape_heldout", "max_ape_heldout", "n_fit", "n_heldout", "coefficients"):
        assert k in r
    assert r["coefficients"]["roofline_total_ms"]["floor"] > 0


def _write(tmp_path, header, rows):
    p = tmp_path / "mlp.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_malformed_profile_names_row_and_column(tmp_path):
    header = "time_stats.mlp_up_proj.median,num_tokens,num_tensor_parallel_workers"
    p = _write(tmp_path, header, ["0.1,1,1", "abc,2,1"])
    with pytest.raises(ProfileError, match=r"row 3, column time_stats.mlp_up_proj.median: 'abc'"):
        load_operator_profile(p)
    p = _write(tmp_path, "time_stats.x.median,num_tokens", ["0.1,1"])
    with pytest.raises(ProfileError, match="missing column"):
        load_operator_profile(p)
    p = _write(tmp_path, header, ["0.1,1,2"])
    with pytest.raises(ProfileError, match=r"no rows with num_tensor_parallel_workers=1; available: \[2\]"):
        load_operator_profile(p)
    with pytest.raises(FileNotFoundError, match="profile not found"):
        load_operator_profile(tmp_path / "nope.csv")


def test_holdout_every_must_leave_data_to_fit(tmp_path):
    p = _write(tmp_path, "time_stats.a.median,num_tokens,num_tensor_parallel_workers",
               [f"{0.1 + i * 0.01},{i},1" for i in range(1, 20)])
    with pytest.raises(ValueError, match="--holdout-every must be >= 2"):
        calibrate_profile(p, holdout_every=1)
    r = calibrate_profile(p, holdout_every=4)
    assert r["mape_heldout"] < 1.0  # a straight line is fitted almost exactly
