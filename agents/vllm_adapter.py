"""vLLM's request state seen through the llmsched engine view, and policies chosen by name.

Any llmsched scheduler (``schedule(view) -> BatchPlan``, see ``llmsched_env.scheduler``) reads
an engine through a small read-only view: ``running``, ``iter_waiting()``, ``free_blocks``,
``config``, ``now_s`` and per-request fields named as in ``llmsched_env.request.Request``. This
module builds that view over a vLLM v1 scheduler so the same policy objects run unchanged inside
vLLM (``agents.vllm_hook``). It imports nothing from vLLM: it only reads attributes, so it is
testable without vLLM installed.

Mapping (units: tokens, KV blocks of the vLLM scheduler's ``block_size``, seconds):

==========================  ==================================================================
llmsched                    vLLM v1
==========================  ==================================================================
``rid`` (int)               a counter the hook assigns at ``add_request`` (``request_id`` kept)
``arrival_s``               ``Request.arrival_time`` minus the hook's start time (wall clock)
``prompt_len``              ``num_prompt_tokens``
``num_computed``            ``num_computed_tokens``
``prefill_target``          ``num_tokens`` when (re)admitted: prompt, or prompt + generated after
                            a recompute preemption (the same rule as the llmsched engine)
``num_generated``           ``num_output_tokens``
``num_blocks``              KV blocks held (first KV-cache group)
``priority``                ``priority`` (lower = more important, as in both)
``predicted_output_len``    ``None`` (vLLM has no length predictor)
``output_len``              unknown inside vLLM: reading it raises ``OracleUnavailable``
``max_tokens``              ``max_tokens`` (a cap, not the true length; also ``max_output_len``)
``ttft_slo_s/tbt_slo_s``    ``LLMSCHED_TTFT_SLO_S`` / ``LLMSCHED_TBT_SLO_S`` (default inf)
``token_times``             hook-clock times of the steps that produced the request's tokens
``first/last_scheduled_s``  hook-clock times of the request's first and latest scheduled step
==========================  ==================================================================

Engine-level extras: ``finished`` (snapshots, finish order), ``busy_s`` and
``last_step_latency_s`` (wall time from ``schedule()`` to that step's outputs), ``used_blocks``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

from llmsched_env.engine import EngineConfig
from llmsched_env.request import FINISHED, RUNNING, WAITING
from llmsched_env.scheduler import Scheduler, UnknownScheduler, make_scheduler, parse_spec

DEFAULT_POLICY = "fcfs"


class OracleUnavailable(AttributeError):
    """A scheduler read ``output_len`` (the true output length), which no serving engine knows."""


class CostModelUnavailable(AttributeError):
    """A scheduler read ``view.cost_model`` but none was configured (``LLMSCHED_COST_PRESET``)."""


class PolicySpecError(ValueError):
    """A malformed or unknown policy spec (``LLMSCHED_POLICY``)."""


def parse_policy_spec(spec: str) -> tuple[str, dict]:
    """Split ``"name"`` / ``"name:key=value,key=value"`` / ``"name:VALUE"`` into name and options
    with the project's one spec parser (``llmsched_env.scheduler.parse_spec``); a bare value
    without ``=`` is shorthand for ``path=VALUE`` (so ``onnx:/models/export`` means ``onnx`` with
    ``path="/models/export"``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise PolicySpecError("empty policy spec; give a scheduler name such as 'fcfs' or "
                              "'sarathi:token_budget=512' (LLMSCHED_POLICY)")
    try:
        return parse_spec(spec, bare_key="path")
    except ValueError as e:
        raise PolicySpecError(f"{e} (e.g. 'sarathi:token_budget=512')") from None


def policy_from_spec(spec: str) -> Scheduler:
    """Instantiate the registered llmsched scheduler a spec names (see ``parse_policy_spec``)."""
    name, options = parse_policy_spec(spec)
    try:
        return make_scheduler(name, **options)
    except UnknownScheduler as e:
        raise PolicySpecError(f"policy spec {spec!r}: {e}") from None
    except ValueError as e:
        raise PolicySpecError(f"policy spec {spec!r}: bad options for {name!r}: {e}") from None


class VLLMRequestView:
    """One vLLM ``Request`` with llmsched ``Request`` attribute names (read-only)."""

    __slots__ = ("_req", "_view", "rid", "request_id", "arrival_s", "prefill_target",
                 "token_times", "ttft_slo_s", "tbt_slo_s", "first_scheduled_s",
                 "last_scheduled_s", "admitted_s", "finish_s")

    def __init__(self, req, view: "VLLMEngineView", rid: int, arrival_s: float,
                 ttft_slo_s: float = math.inf, tbt_slo_s: float = math.inf):
        self._req = req
        self._view = view
        self.rid = rid
        self.request_id = req.request_id
        self.arrival_s = arrival_s
        self.prefill_target = req.num_tokens
        self.token_times: list[float] = []
        self.ttft_slo_s = ttft_slo_s
        self.tbt_slo_s = tbt_slo_s
        self.first_scheduled_s: Optional[float] = None
        self.last_scheduled_s: Optional[float] = None
        self.admitted_s: Optional[float] = None
        self.finish_s: Optional[float] = None

    # -- fields read straight from vLLM
    @property
    def prompt_len(self) -> int:
        return self._req.num_prompt_tokens

    @property
    def num_computed(self) -> int:
        return self._req.num_computed_tokens

    @property
    def num_generated(self) -> int:
        return self._req.num_output_tokens

    @property
    def priority(self) -> int:
        return self._req.priority

    @property
    def num_preemptions(self) -> int:
        return self._req.num_preemptions

    @property
    def max_output_len(self) -> int:
        """The request's ``max_tokens`` cap (tokens); not its true length."""
        return self._req.max_tokens

    @property
    def max_tokens(self) -> int:
        """The request's ``max_tokens`` cap (tokens), named as ``Request.max_tokens``."""
        return self._req.max_tokens

    @property
    def predicted_output_len(self) -> Optional[int]:
        return None

    @property
    def output_len(self) -> int:
        raise OracleUnavailable(
            f"request {self.rid} ({self.request_id}): output_len (the true output length) is "
            "unknown inside vLLM; oracle schedulers cannot run in the vLLM hook. Use "
            "predicted_output_len or max_output_len instead")

    @property
    def remaining_output(self) -> int:
        return self.output_len  # raises OracleUnavailable

    @property
    def status(self) -> int:
        if self._req.is_finished():
            return FINISHED
        return RUNNING if self.rid in self._view._running_rids else WAITING

    @property
    def num_blocks(self) -> int:
        return self._view._num_blocks(self._req.request_id)

    # -- derived exactly as llmsched_env.request.Request derives them
    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.prefill_target

    @property
    def remaining_prefill(self) -> int:
        return max(self.prefill_target - self.num_computed, 0)

    @property
    def tokens_owed(self) -> int:
        r = self.prefill_target - self.num_computed
        return r if r > 0 else 1

    @property
    def first_token_s(self) -> Optional[float]:
        return self.token_times[0] if self.token_times else None

    def finished_copy(self) -> "FinishedRequest":
        """A light snapshot for ``view.finished`` that keeps no vLLM objects alive."""
        return FinishedRequest(self.rid, self.request_id, self.arrival_s, self.prompt_len,
                               self.num_generated, self.priority, self.num_preemptions,
                               self.token_times, self.ttft_slo_s, self.tbt_slo_s,
                               self.first_scheduled_s, self.last_scheduled_s, self.admitted_s,
                               self.finish_s)

    def __repr__(self) -> str:
        return (f"VLLMRequestView(rid={self.rid}, id={self.request_id!r}, computed="
                f"{self.num_computed}/{self.prefill_target}, generated={self.num_generated})")


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """A request vLLM finished (stop or length), as ``view.finished`` lists it."""

    rid: int
    request_id: str
    arrival_s: float
    prompt_len: int
    num_generated: int
    priority: int
    num_preemptions: int
    token_times: list
    ttft_slo_s: float
    tbt_slo_s: float
    first_scheduled_s: Optional[float]
    last_scheduled_s: Optional[float]
    admitted_s: Optional[float]
    finish_s: Optional[float]
    status: int = FINISHED
    num_blocks: int = 0

    @property
    def first_token_s(self) -> Optional[float]:
        return self.token_times[0] if self.token_times else None


class VLLMEngineView:
    """The llmsched engine view (``running``, ``iter_waiting()``, ``free_blocks``, ``config``,
    ``now_s``) over a vLLM v1 scheduler, rebuilt cheaply each step by the hook.

    Args:
        sched: the vLLM scheduler (reads ``running``, ``waiting``, ``kv_cache_manager``).
        records: ``request_id -> VLLMRequestView`` kept by the hook across steps.
        config: the limits as an llmsched ``EngineConfig``.
        now_s: the hook clock now, seconds.
        cost_model: a llmsched cost model if one was configured, else None.
        waiting: schedulable waiting vLLM requests in vLLM's queue order.
        finished: ``FinishedRequest`` snapshots in finish order (only appended to).
        busy_s: total wall seconds from each non-empty step's ``schedule()`` to its outputs.
        last_step_latency_s: that time for the last step whose outputs came back, seconds.
    """

    def __init__(self, sched, records: dict, config: EngineConfig, now_s: float,
                 cost_model, waiting: list, finished: list, busy_s: float,
                 last_step_latency_s: float):
        self._sched = sched
        self.config = config
        self.now_s = now_s
        self._cost_model = cost_model
        self.finished = finished
        self.busy_s = busy_s
        self.last_step_latency_s = last_step_latency_s
        self.running: dict[int, VLLMRequestView] = {}
        for req in sched.running:
            rec = records[req.request_id]
            self.running[rec.rid] = rec
        self._running_rids = self.running.keys()
        self._waiting = [records[r.request_id] for r in waiting]
        self.requests = {rec.rid: rec for rec in records.values()}
        for rec in records.values():
            rec._view = self
        self.next_arrival_s = None  # unknown: requests arrive whenever clients send them
        self.done = False
        self.num_steps = sched.current_step

    def iter_waiting(self) -> Iterator[VLLMRequestView]:
        """Schedulable waiting requests in vLLM's queue order (recompute-preempted ones first,
        most recent first; then arrivals in FCFS order or by priority)."""
        return iter(self._waiting)

    @property
    def waiting(self) -> list[VLLMRequestView]:
        return list(self._waiting)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_requests(self) -> int:
        """Requests seen so far (live and finished; at least 1). A server has no episode size:
        learned policies' ``arrived``/``finished`` features are fractions of this."""
        return max(1, len(self.requests) + len(self.finished))

    @property
    def cost_model(self):
        """The llmsched cost model offered to the policy (batch latency estimates, seconds)."""
        if self._cost_model is None:
            raise CostModelUnavailable(
                "this scheduler reads engine.cost_model, but the vLLM hook has none: set "
                "LLMSCHED_COST_PRESET to an llmsched preset (llmsched_env.presets.list_presets()) "
                "matching the served model and GPU")
        return self._cost_model

    @property
    def used_blocks(self) -> int:
        return self.config.num_kv_blocks - self.free_blocks

    @property
    def free_blocks(self) -> int:
        """Free KV blocks now (vLLM's block pool, evictable prefix-cache blocks included)."""
        return self._sched.kv_cache_manager.block_pool.get_num_free_blocks()

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.config.block_size)

    def _num_blocks(self, request_id: str) -> int:
        blocks = self._sched.kv_cache_manager.coordinator.get_blocks(request_id)
        return len(blocks[0]) if blocks else 0

