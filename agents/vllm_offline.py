"""vLLM's v1 scheduler in-process without a model or GPU: for tests and benchmarks of the hook.

``build_scheduler`` makes a real vLLM scheduler (``LLMSchedScheduler`` or vLLM's own) over a
tiny Llama-shaped ``config.json`` (no weights, no tokenizer) and one full-attention KV-cache
group; ``fake_step`` runs one engine step with a stand-in model that samples ``TOKEN`` whenever a
request's prefill is complete, and ``BatchQueue`` runs vLLM's async engine loop (the next step
scheduled while the last is in flight) with that model. Units: tokens, KV blocks of
``block_size`` tokens.
"""
from __future__ import annotations

import functools
import json
import os
from collections import deque
from pathlib import Path

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import torch  # noqa: E402
from vllm.config import (CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig,  # noqa: E402
                         VllmConfig)
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig,  # noqa: E402
                                        KVCacheGroupSpec)
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

TOKEN = 7  # what the stand-in model samples

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 1000, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5, "torch_dtype": "float32", "tie_word_embeddings": False,
}


def tiny_model_config(folder: str | Path, max_model_len: int = 2048) -> ModelConfig:
    """A vLLM ModelConfig over a tiny Llama ``config.json`` written into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    return ModelConfig(model=str(folder), skip_tokenizer_init=True, max_model_len=max_model_len,
                       dtype="float32")


def build_scheduler(model_config: ModelConfig, cls, num_blocks: int = 32, block_size: int = 16,
                    budget: int = 64, max_seqs: int = 4, sched_policy: str = "fcfs",
                    prefix_caching: bool = False, reserve_full: bool = False,
                    additional_config: dict | None = None, async_scheduling: bool = False,
                    **kwargs):
    """A vLLM scheduler of class ``cls`` (``num_blocks`` includes vLLM's one null block);
    ``kwargs`` go to the class (e.g. ``policy=`` for ``LLMSchedScheduler``). With
    ``async_scheduling`` the config says so, as ``vllm serve`` sets it by default (pass vLLM's
    ``AsyncScheduler`` as ``cls`` for vLLM's own; drive it with ``BatchQueue``)."""
    sc = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                         max_model_len=model_config.max_model_len, enable_chunked_prefill=True,
                         is_encoder_decoder=False, policy=sched_policy,
                         scheduler_reserve_full_isl=reserve_full,
                         async_scheduling=async_scheduling)
    cc = CacheConfig(block_size=block_size, enable_prefix_caching=prefix_caching)
    cc.num_gpu_blocks = num_blocks
    vc = VllmConfig(model_config=model_config, scheduler_config=sc, cache_config=cc,
                    device_config=DeviceConfig(device="cpu"),
                    additional_config=additional_config or {})
    # vLLM's CPU platform turns async scheduling off; a GPU server keeps it (vLLM's default).
    vc.scheduler_config.async_scheduling = async_scheduling
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=16,
                             dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec(["layers.0"], spec)])
    return cls(vllm_config=vc, kv_cache_config=kv,
               structured_output_manager=StructuredOutputManager(vc), block_size=block_size,
               **kwargs)


def block_hasher(sched):
    """The request block hasher vLLM's engine core gives requests when prefix caching is on."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    fn = get_hash_fn_by_name(sched.cache_config.prefix_caching_hash_algo)
    init_none_hash(fn)
    return get_request_block_hasher(sched.hash_block_size, fn)


@functools.lru_cache(maxsize=1024)
def _sampling_params(output: int) -> SamplingParams:
    # Shared between requests (the scheduler only reads them): building one costs ~0.1 ms.
    return SamplingParams(max_tokens=output, ignore_eos=True)


def make_request(i: int, prompt: int, output: int, priority: int = 0,
                 arrival_time: float = 1000.0, first_token: int | None = None,
                 hasher=None) -> Request:
    """Request ``req-{i}``: ``prompt`` prompt tokens (the first is ``first_token``, default
    ``i``, then ones: equal first tokens make a shared prefix), exactly ``output`` output
    tokens. ``hasher``: ``block_hasher(sched)`` where prefix caching should see the prompt."""
    first = i % 1000 if first_token is None else first_token
    return Request(request_id=f"req-{i}", prompt_token_ids=[first] + [1] * (prompt - 1),
                   sampling_params=_sampling_params(output),
                   pooling_params=None, arrival_time=arrival_time + i * 1e-3, priority=priority,
                   block_hasher=hasher)


def model_output(sched, out) -> ModelRunnerOutput:
    """The stand-in model's output for a step just scheduled: ``TOKEN`` for every request whose
    scheduled tokens reach the end of its prefill (what vLLM marks ``is_prefill_chunk=False``)."""
    ids = list(out.num_scheduled_tokens)
    requests = sched.requests
    sampled = [[] if requests[r].is_prefill_chunk else [TOKEN] for r in ids]
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: k for k, r in enumerate(ids)},
                             sampled_token_ids=sampled)


def fake_step(sched):
    """One synchronous engine step: schedule, stand in for the forward pass, feed the outputs
    back. Returns the SchedulerOutput."""
    out = sched.schedule()
    sched.update_from_output(out, model_output(sched, out))
    return out


class BatchQueue:
    """vLLM's async engine loop (``EngineCore.step_with_batch_queue``, batch queue of 2) with the
    stand-in model: each ``step()`` schedules the next batch while the last one is in flight
    and feeds an output back only when the queue is full or nothing more can be scheduled."""

    size = 2

    def __init__(self, sched):
        self.sched = sched
        self.queue: deque = deque()

    def step(self):
        """One call of the engine loop; returns the SchedulerOutput scheduled in it, or None."""
        sched, queue = self.sched, self.queue
        scheduled = None
        if sched.has_requests():
            scheduled = sched.schedule()
            queue.appendleft((scheduled, model_output(sched, scheduled)))
            if len(queue) < self.size and (scheduled.total_num_scheduled_tokens > 0
                                           or sched.has_requests()):
                return scheduled
        elif not queue:
            return None
        out, result = queue.pop()
        sched.update_from_output(out, result)
        return scheduled

    def busy(self) -> bool:
        return bool(self.queue) or self.sched.has_requests()
