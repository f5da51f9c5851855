"""Requests: the immutable spec a workload produces and the mutable state the engine keeps.

Units: times in seconds from the start of the workload, lengths in tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

WAITING, RUNNING, FINISHED = 0, 1, 2
STATUS_NAMES = {WAITING: "waiting", RUNNING: "running", FINISHED: "finished"}


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as a workload describes it.

    Attributes:
        rid: unique integer id (the key of a BatchPlan).
        arrival_s: arrival time, seconds from the workload's start.
        prompt_len: prompt tokens (>= 1).
        output_len: true number of output tokens (>= 1). Hidden from schedulers other than
            explicit oracles; they should read ``predicted_output_len``.
        ttft_slo_s: time-to-first-token target, seconds.
        tbt_slo_s: time-between-tokens target (applied to the request's P99 gap), seconds.
        slo_class: name of the SLO tier this request belongs to.
        priority: lower value = more important (vLLM's convention).
        predicted_output_len: a predictor's estimate of ``output_len`` (None when no predictor).
        max_tokens: the request's cap on output tokens (vLLM's ``SamplingParams.max_tokens``),
            what a practical scheduler knows of its length; >= ``output_len``. None = the model's
            context left after the prompt (the engine resolves it: ``max_model_len - prompt_len``).
        prefix_group: requests with the same group share the first ``prefix_len`` prompt tokens
            (a system prompt, or a conversation's history); None = no shared prefix.
        prefix_len: tokens at the start of the prompt identical across ``prefix_group``.
    """

    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    ttft_slo_s: float = float("inf")
    tbt_slo_s: float = float("inf")
    slo_class: str = "default"
    priority: int = 0
    predicted_output_len: Optional[int] = None
    max_tokens: Optional[int] = None
    prefix_group: Optional[int] = None
    prefix_len: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < self.output_len:
            raise ValueError(f"request {self.rid}: max_tokens {self.max_tokens} < output_len "
                             f"{self.output_len}; the cap must allow the true output length")
        if not 0 <= self.prefix_len <= self.prompt_len:
            raise ValueError(f"request {self.rid}: prefix_len {self.prefix_len} must be in "
                             f"0..prompt_len ({self.prompt_len})")


class Request:
    """Engine-side state of one request. Schedulers read it; only the Engine writes it.

    Invariants (DESIGN.md): ``num_computed`` tokens have resident KV; the request is prefilling
    while ``num_computed < prefill_target``; in decode ``num_computed == prefill_target +
    num_generated - first_generated`` grows by one per step. After a recompute preemption
    ``num_computed == 0`` and ``prefill_target == prompt_len + num_generated``; after a swap-out
    ``num_computed`` is kept, its KV lies in ``host_blocks`` host blocks and ``num_blocks == 0``
    until the request is scheduled again (swapped in).
    """

    __slots__ = (
        "spec", "rid", "arrival_s", "prompt_len", "output_len", "ttft_slo_s", "tbt_slo_s",
        "priority", "predicted_output_len", "max_tokens",
        "status", "num_computed", "prefill_target", "num_generated", "num_blocks",
        "num_preemptions", "recomputed_tokens", "host_blocks", "token_times", "first_scheduled_s",
        "last_scheduled_s", "finish_s", "admitted_s",
    )

    def __init__(self, spec: RequestSpec):
        self.spec = spec
        self.rid = spec.rid
        self.arrival_s = spec.arrival_s
        self.prompt_len = spec.prompt_len
        self.output_len = spec.output_len
        self.ttft_slo_s = spec.ttft_slo_s
        self.tbt_slo_s = spec.tbt_slo_s
        self.priority = spec.priority
        self.predicted_output_len = spec.predicted_output_len
        self.max_tokens = spec.max_tokens  # the engine resolves None to its context left
        self.status = WAITING
        self.num_computed = 0
        self.prefill_target = spec.prompt_len
        self.num_generated = 0
        self.num_blocks = 0
        self.num_preemptions = 0
        self.recomputed_tokens = 0
        self.host_blocks = 0  # KV blocks in host memory while swapped out (swap mode)
        self.token_times: list[float] = []
        self.first_scheduled_s: Optional[float] = None
        self.last_scheduled_s: Optional[float] = None
        self.admitted_s: Optional[float] = None
        self.finish_s: Optional[float] = None

    @property
    def is_prefilling(self) -> bool:
        """True while tokens of the prefill target (prompt, or prompt + generated after a
        preemption) still lack KV."""
        return self.num_computed < self.prefill_target

    @property
    def remaining_prefill(self) -> int:
        """Prefill tokens still to compute (0 once decoding), tokens."""
        return self.prefill_target - self.num_computed

    @property
    def tokens_owed(self) -> int:
        """Tokens this request may process in the next step: the rest of its prefill, or 1."""
        r = self.prefill_target - self.num_computed
        return r if r > 0 else 1

    @property
    def remaining_output(self) -> int:
        """Output tokens still to emit (uses the true length: oracle information)."""
        return self.output_len - self.num_generated

    @property
    def first_token_s(self) -> Optional[float]:
        return self.token_times[0] if self.token_times else None

    def __repr__(self) -> str:
        return (f"Request(rid={self.rid}, {STATUS_NAMES[self.status]}, computed={self.num_computed}/"
                f"{self.prefill_target}, generated={self.num_generated}/{self.output_len})")
