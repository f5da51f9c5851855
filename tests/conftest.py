"""Shared fixtures. Tests needing ../shared/data skip with a clear reason when it is absent."""
from __future__ import annotations

import pytest

from llmsched_env.cost_model import LinearCostModel
from llmsched_env.data import data_dir
from llmsched_env.engine import Engine, EngineConfig
from llmsched_env.request import RequestSpec


@pytest.fixture
def shared_data():
    d = data_dir(required=False)
    if d is None:
        pytest.skip("reference data ../shared/data not found (set LLMSCHED_DATA)")
    return d


@pytest.fixture
def linear_cost():
    return LinearCostModel(base_s=0.01, per_token_s=1e-4)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Torch on one thread for a test module (tiny models gain nothing from more; CI shares cores).
    Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_engine(specs, num_kv_blocks=64, block_size=4, budget=64, max_seqs=8, cost=None, **kw):
    """A small engine over hand-built specs (block size 4 makes block arithmetic visible)."""
    cfg = EngineConfig(num_kv_blocks=num_kv_blocks, block_size=block_size, max_num_batched_tokens=budget,
                       max_num_seqs=max_seqs, **kw)
    return Engine(specs, cfg, cost or LinearCostModel(base_s=0.01, per_token_s=1e-4))


def spec(rid, arrival=0.0, prompt=8, output=4, ttft=1.0, tbt=0.5, **kw):
    return RequestSpec(rid=rid, arrival_s=arrival, prompt_len=prompt, output_len=output, ttft_slo_s=ttft,
                       tbt_slo_s=tbt, **kw)
