"""Workloads: malformed traces are named precisely; generation is seeded and reproducible."""
import numpy as np
import pytest

from llmsched_env.workload import SLOClass, TraceError, WorkloadConfig, build_workload, load_trace


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, match", [
    ("arrived_at,num_prefill_tokens\n0,5\n", r"row 1 \(header\): missing column\(s\) \['num_decode_tokens'\]"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,3\n1,-4,3\n",
     r"row 3, column 'num_prefill_tokens': '-4' is not a positive integer"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,3\n1,5,x\n", r"row 3, column 'num_decode_tokens': 'x' is not a number"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,3\n2,5,3\n1,5,3\n",
     r"row 4, column 'arrived_at': timestamps are not sorted \(1.0 after 2.0\)"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\nnope,5,3\n", r"row 2, column 'arrived_at': 'nope' is not a number"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,2.5,3\n", r"row 2, column 'num_prefill_tokens': '2.5'"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n", "no requests"),
])
def test_malformed_trace_names_file_row_and_column(tmp_path, text, match):
    p = write(tmp_path, text)
    with pytest.raises(TraceError, match=match) as e:
        load_trace(p, need_timestamps=True)
    assert str(p.name) in str(e.value)


def test_missing_trace_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="give a CSV path"):
        load_trace(tmp_path / "absent.csv")


def test_trace_arrivals_are_scaled_and_windowed(tmp_path):
    p = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,3\n1,6,4\n3,7,5\n7,8,6\n")
    specs = build_workload(WorkloadConfig(num_requests=3, arrival="trace", rate_scale=2.0, trace=str(p),
                                          window_start=1))
    assert [s.arrival_s for s in specs] == [0.0, 1.0, 3.0]
    assert [(s.prompt_len, s.output_len) for s in specs] == [(6, 4), (7, 5), (8, 6)]


def test_same_seed_same_workload_and_different_seed_differs(shared_data):
    cfg = WorkloadConfig(num_requests=300, arrival="gamma", rate=5.0, cv=3.0, trace="splitwise_conv", seed=7,
                         slo_classes=(SLOClass("strict", 0.5, 0.05, 1.0, 0), SLOClass("relaxed", 5, 0.2, 3.0, 1)),
                         predictor_error=0.3)
    a, b = build_workload(cfg), build_workload(cfg)
    assert a == b
    assert build_workload(cfg.with_(seed=8)) != a
    classes = [s.slo_class for s in a]
    assert 0.1 < classes.count("strict") / len(a) < 0.4
    assert all(s.predicted_output_len >= 1 for s in a)


def test_gamma_arrivals_have_the_requested_cv():
    cfg = WorkloadConfig(num_requests=20000, arrival="gamma", rate=10.0, cv=4.0, lengths="fixed", trace=None)
    gaps = np.diff([s.arrival_s for s in build_workload(cfg)])
    assert gaps.mean() == pytest.approx(0.1, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(4.0, rel=0.15)


def test_poisson_lognormal_lengths():
    cfg = WorkloadConfig(num_requests=5000, arrival="poisson", rate=4.0, lengths="lognormal", trace=None,
                         prompt_len=400, output_len=100)
    specs = build_workload(cfg)
    assert np.mean([s.prompt_len for s in specs]) == pytest.approx(400, rel=0.1)
    assert np.mean([s.output_len for s in specs]) == pytest.approx(100, rel=0.1)


def test_oversize_policies(tmp_path):
    p = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0,90,20\n1,10,5\n")
    base = WorkloadConfig(num_requests=2, arrival="trace", trace=str(p), window_start=0, max_total_len=100)
    with pytest.raises(ValueError, match=r"trace row 2\): prompt 90 \+ output 20 > max_total_len 100"):
        build_workload(base)
    assert [s.prompt_len for s in build_workload(base.with_(oversize="drop"))] == [10]
    clipped = build_workload(base.with_(oversize="clip"))
    assert (clipped[0].prompt_len, clipped[0].output_len) == (80, 20)


@pytest.mark.parametrize("kw, match", [
    (dict(num_requests=0), "num_requests=0"), (dict(rate=0.0), "rate=0.0"), (dict(arrival="uniform"), "arrival="),
    (dict(lengths="trace", trace=None), "a trace is needed"), (dict(oversize="ignore"), "oversize="),
])
def test_bad_config_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        WorkloadConfig(**kw)


def test_max_tokens_fixed_cap_trace_column_or_none(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("num_prefill_tokens,num_decode_tokens,max_tokens\n10,5,8\n20,30,30\n")
    base = dict(lengths="trace", trace=str(f), num_requests=2, window_start=0)
    specs = build_workload(WorkloadConfig(**base))
    assert [(s.output_len, s.max_tokens) for s in specs] == [(5, 8), (30, 30)]          # the column
    specs = build_workload(WorkloadConfig(**base, max_tokens=16))
    assert [(s.output_len, s.max_tokens) for s in specs] == [(5, 16), (16, 16)]         # cut at the cap
    specs = build_workload(WorkloadConfig(lengths="fixed", output_len=7, num_requests=2))
    assert [s.max_tokens for s in specs] == [None, None]                                # engine: context left


def test_max_tokens_column_below_the_output_is_a_named_error(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("num_prefill_tokens,num_decode_tokens,max_tokens\n10,5,8\n20,30,12\n")
    with pytest.raises(TraceError, match=r"row 3, column 'max_tokens': 12 < the row's num_decode_tokens 30"):
        load_trace(f)
    with pytest.raises(ValueError, match="max_tokens=0 must be a positive"):
        WorkloadConfig(max_tokens=0)
