"""Cost model: monotone in tokens and context, InferMax constants reproduce hand-computed values,
KV capacity from GPU memory."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched_env.cost_model import BatchShape, InferMaxCostModel, PiecewiseLinear
from llmsched_env.hardware import GPUS, MODELS, kv_capacity_blocks
from llmsched_env.presets import INFERMAX_7B, INFERMAX_70B, get_preset, list_presets


@pytest.fixture(scope="module", params=["h100-llama3-8b", "h100-llama2-7b", "a100-llama3-70b-tp4",
                                        "infermax-a100-llama3-70b-tp4", "infermax-a100-llama2-7b"])
def model(request):
    from llmsched_env.data import data_dir
    if not request.param.startswith("infermax") and data_dir(required=False) is None:
        pytest.skip("reference data ../shared/data not found")
    return get_preset(request.param).cost_model


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 8192)), max_size=4),
       st.lists(st.integers(0, 8192), max_size=64), st.integers(1, 512), st.integers(1, 4096))
def test_monotone_in_tokens_and_context(model, prefills, decodes, extra_tokens, extra_ctx):
    if not prefills and not decodes:
        decodes = [10]
    base = model.batch_time(BatchShape.from_requests(prefills, decodes))
    assert base > 0
    # more tokens in a chunk
    if prefills:
        c, k = prefills[0]
        more = [(c + extra_tokens, k)] + prefills[1:]
        assert model.batch_time(BatchShape.from_requests(more, decodes)) >= base
        longer = [(c, k + extra_ctx)] + prefills[1:]
        assert model.batch_time(BatchShape.from_requests(longer, decodes)) >= base
    # a longer decode context, and one more decode
    if decodes:
        longer = [decodes[0] + extra_ctx] + decodes[1:]
        assert model.batch_time(BatchShape.from_requests(prefills, longer)) >= base
    assert model.batch_time(BatchShape.from_requests(prefills, decodes + [0])) >= base


def test_infermax_70b_hand_computed():
    m = InferMaxCostModel("t", num_layers=80, **INFERMAX_70B)
    # two prefills (c=100,k=0), (c=50,k=200) and three decodes with contexts 99, 199, 299
    s = BatchShape.from_requests([(100, 0), (50, 200)], [99, 199, 299], completed_prefills=1)
    prefill = (4.309e-08 * (100**2 + 50**2 + 2 * 50 * 200) + 0.2112) * 1.1 + 9.03e-04 * 2 + 3.805e-07 * 200
    decode = (1.222e-06 * (100 + 200 + 300) + 0.081) * 1.1 + 3.92e-04 * 3
    other = 0.002 * 153 + 0.159
    assert m.batch_time(s) == pytest.approx(80 * (prefill + decode + other) * 1e-3, rel=1e-12)


def test_infermax_7b_single_prefill_no_batching_factor():
    m = InferMaxCostModel("t", num_layers=32, **INFERMAX_7B)
    s = BatchShape.from_requests([(512, 0)], [])
    ms = 1.6773e-07 * 512**2 + 0.0926 + 0.001534 + 0.00191 * 512 + 0.06486
    assert m.batch_time(s) == pytest.approx(32 * ms * 1e-3, rel=1e-12)
    # MHA set: the 10% batching overhead does not apply with two decodes either
    d2 = m.batch_time(BatchShape.from_requests([], [9, 9]))
    assert d2 == pytest.approx(32 * ((8.513e-06 * 20 + 0.01921) + 2 * 0.00074 + 0.00191 * 2 + 0.06486) * 1e-3)


def test_kv_capacity_formula():
    shape, gpu = MODELS["llama3-8b"], GPUS["h100"]
    per_token = 2 * 32 * 8 * 128 * 2  # bytes
    assert shape.kv_bytes_per_token(1) == per_token
    free = 80e9 * 0.9 - shape.num_params * 2
    assert kv_capacity_blocks(shape, gpu, 1) == int(free / per_token // 16)
    assert 8.0e9 < shape.num_params < 8.1e9  # Llama-3-8B has 8.03 B parameters
    assert 6.7e9 < MODELS["llama2-7b"].num_params < 6.8e9
    assert 70.0e9 < MODELS["llama3-70b"].num_params < 71.0e9


def test_weights_that_do_not_fit_are_explained():
    with pytest.raises(ValueError, match="raise the tensor-parallel degree"):
        kv_capacity_blocks(MODELS["llama3-70b"], GPUS["h100"], 1)


def test_piecewise_linear_is_monotone_and_extrapolates():
    f = PiecewiseLinear([1, 10, 100], [1.0, 2.0, 5.0], tail_slope=0.1)
    assert f(0) == 1.0 and f(5.5) == pytest.approx(1.5) and f(200) == pytest.approx(15.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        PiecewiseLinear([1, 2], [2.0, 1.0], 0.0)


def test_every_preset_builds_and_times_a_batch(shared_data):
    for name in list_presets():
        p = get_preset(name)
        t = p.cost_model.batch_time(BatchShape.from_requests([(1024, 0)], [512] * 16))
        assert 1e-3 < t < 2.0, (name, t)
        assert p.num_kv_blocks > 1000


def test_llama3_70b_h100_uses_the_same_layer_profile_as_llama2_70b(shared_data):
    a = get_preset("h100-llama3-70b-tp4").cost_model
    b = get_preset("h100-llama2-70b-tp4").cost_model
    assert a.layer_tokens.values == b.layer_tokens.values


def test_h100_is_faster_than_a100(shared_data):
    s = BatchShape.from_requests([(2048, 0)], [1000] * 32)
    assert get_preset("h100-llama3-8b").cost_model.batch_time(s) < get_preset("a100-llama3-8b").cost_model.batch_time(s)
    assert get_preset("h100-llama2-7b").cost_model.batch_time(s) < get_preset("a100-llama2-7b").cost_model.batch_time(s)


def test_unknown_preset_lists_known():
    with pytest.raises(KeyError, match="known presets: .*h100-llama3-8b"):
        get_preset("h200-nope")


def test_preset_from_hf_config(tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps({
        "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 688, "vocab_size": 1000, "max_position_embeddings": 2048, "hidden_act": "silu"}))
    p = get_preset(f"shape:{tmp_path}@h100")
    assert not p.calibrated and p.shape.num_layers == 4 and p.shape.head_dim == 64
    t1 = p.cost_model.batch_time(BatchShape.from_requests([(16, 0)], []))
    t2 = p.cost_model.batch_time(BatchShape.from_requests([(4096, 0)], []))
    assert 0 < t1 <= t2 and math.isfinite(t2)
    with pytest.raises(FileNotFoundError, match="model config not found"):
        get_preset(f"shape:{tmp_path}/missing@h100")


def test_block_size_override_keeps_kv_capacity_in_tokens():
    p = get_preset("infermax-a100-llama2-7b")
    base = p.engine_config()
    big = p.engine_config(block_size=64)
    assert big.num_kv_blocks == base.num_kv_blocks * 16 // 64
    assert abs(big.kv_capacity_tokens - base.kv_capacity_tokens) < 64
    assert p.engine_config(block_size=64, num_kv_blocks=10).num_kv_blocks == 10
    assert p.max_request_tokens(num_kv_blocks=10, block_size=16) == 161
