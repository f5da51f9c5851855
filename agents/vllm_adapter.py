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
``num_computed``            ``num_computed_tokens`` (with async scheduling: including the step in
                            flight, as vLLM plans the next step on it)
``prefill_target``          ``num_tokens`` when (re)admitted: prompt, or prompt + generated after
                            a recompute preemption (the same rule as the llmsched engine); while
                            the first token after it is in flight (async), ``num_computed + 1``,
                            so a decoding request always has its ``token_times``
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

Engine-level extras: ``requests`` (live requests by rid; a finished one moves to ``finished``),
``finished`` (a ``FinishedLog``: ``len`` counts all finished so far, the latest
are kept as snapshots), ``busy_s`` and ``last_step_latency_s`` (wall seconds the engine spent on
steps: from a step's ``schedule()``, or the previous step's outputs if later, to its outputs),
``num_waiting``, ``used_blocks``.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
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

    __slots__ = ("_req", "_view", "rid", "request_id", "arrival_s", "_target", "token_times",
                 "ttft_slo_s", "tbt_slo_s", "first_scheduled_s", "last_scheduled_s", "admitted_s",
                 "finish_s", "priority", "predicted_output_len")

    def __init__(self, req, view: "VLLMEngineView", rid: int, arrival_s: float,
                 ttft_slo_s: float = math.inf, tbt_slo_s: float = math.inf):
        self._req = req
        self._view = view
        self.rid = rid
        self.request_id = req.request_id
        self.arrival_s = arrival_s
        self._target = req.num_tokens  # set again by the hook at each (re)admission
        self.token_times: list[float] = []
        self.ttft_slo_s = ttft_slo_s
        self.tbt_slo_s = tbt_slo_s
        self.first_scheduled_s: Optional[float] = None
        self.last_scheduled_s: Optional[float] = None
        self.admitted_s: Optional[float] = None
        self.finish_s: Optional[float] = None
        # fixed for a vLLM request's life, so copied once (policies read them every step)
        self.priority: int = req.priority  # lower = more important, as in llmsched
        self.predicted_output_len: Optional[int] = None  # vLLM has no length predictor

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
    def num_preemptions(self) -> int:
        return self._req.num_preemptions

    @property
    def max_output_len(self) -> int:
        """The request's ``max_tokens`` cap (tokens); not its true length."""
        return self._req.max_tokens

    @property
    def max_tokens(self) -> int:
        """The request's ``max_tokens`` cap (tokens), named as ``Request.max_tokens`` (a
        streaming session's update may change it)."""
        return self._req.max_tokens

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
        view = self._view
        return RUNNING if self.rid in view._running_rids or self.rid in view._finishing \
            else WAITING

    @property
    def prefill_target(self) -> int:
        """Tokens to compute before the next first token: waiting, what a (re)admission computes
        (``num_tokens``); running, that number at admission -- until the token of the step that
        completed it comes back (async scheduling): vLLM runs the request again at once, 1
        token, so the view shows it as prefilling with 1 token left (``num_computed + 1``),
        never as a decode without a token."""
        req = self._req
        view = self._view
        if self.rid not in view._running_rids and self.rid not in view._finishing:
            return req.num_tokens
        target = self._target
        if req.num_output_placeholders and req.num_output_tokens <= target - req.num_prompt_tokens:
            return req.num_computed_tokens + 1
        return target

    @property
    def num_blocks(self) -> int:
        blocks = self._view._req_blocks.get(self.request_id)
        return len(blocks) if blocks else 0

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
        req = self._req
        return FinishedRequest(self.rid, self.request_id, self.arrival_s, req.num_prompt_tokens,
                               req.num_output_tokens, req.max_tokens, req.priority,
                               req.num_preemptions, self.token_times, self.ttft_slo_s,
                               self.tbt_slo_s, self.first_scheduled_s, self.last_scheduled_s,
                               self.admitted_s, self.finish_s)

    def __repr__(self) -> str:
        return (f"VLLMRequestView(rid={self.rid}, id={self.request_id!r}, computed="
                f"{self.num_computed}/{self.prefill_target}, generated={self.num_generated})")


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """A request vLLM finished (stop, length or abort), as ``view.finished`` lists it."""

    rid: int
    request_id: str
    arrival_s: float
    prompt_len: int
    num_generated: int
    max_tokens: int
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


class FinishedLog(Sequence):
    """Requests finished so far in finish order, of which only the latest ``capacity`` are kept
    (a server runs for ever; memory must not grow with uptime).

    ``len()`` counts every request finished so far and indices are positions in that full
    sequence, so the usual "what finished since I last looked" read, ``log[seen:]`` with
    ``seen = len(log)`` from the last step, returns the new ones as long as fewer than
    ``capacity`` finish between two reads (at most ``max_num_seqs`` finish per step).
    Iterating yields the kept ones; indexing a dropped position raises IndexError.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"FinishedLog capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self._kept: deque = deque(maxlen=capacity)
        self._count = 0

    def append(self, item) -> None:
        self._kept.append(item)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return iter(self._kept)

    def __getitem__(self, k):
        first = self._count - len(self._kept)
        if isinstance(k, slice):
            return [self._kept[i - first] for i in range(*k.indices(self._count)) if i >= first]
        i = k + self._count if k < 0 else k
        if not first <= i < self._count:
            raise IndexError(f"finished request #{k} is not kept (the log keeps the last "
                             f"{self.capacity} of {self._count})")
        return self._kept[i - first]


class VLLMEngineView:
    """The llmsched ``EngineView`` (``running``, ``iter_waiting()``, ``free_blocks``, ``config``,
    ``now_s``, ...) over a vLLM v1 scheduler. The hook keeps one and ``refresh``-es it each step;
    the per-step work is proportional to the running batch (waiting requests are read lazily
    from vLLM's queue).

    Args:
        sched: the vLLM scheduler (reads ``running``, ``waiting``, ``kv_cache_manager``).
        records: ``request_id -> VLLMRequestView``, kept by the hook.
        requests: ``rid -> VLLMRequestView`` of the live requests, kept by the hook.
        config: the limits as an llmsched ``EngineConfig``.
        cost_model: a llmsched cost model if one was configured, else None.
        finished: a ``FinishedLog`` of ``FinishedRequest`` snapshots, kept by the hook.
        waiting_statuses: the vLLM request statuses a schedulable waiting request has.
        running_status: vLLM's status of a running request.
        stale: preempted vLLM requests whose in-flight output may not have come back (the
            hook adds them; ``refresh`` drops those whose output has come back).

    Attributes set by ``refresh``: ``now_s`` (hook clock, s), ``busy_s`` (s the engine was busy
    running steps), ``last_step_latency_s`` (s, the last step whose outputs came back),
    ``num_steps`` (vLLM's step counter), ``running`` (rid -> request, vLLM's running order;
    with async scheduling, not those whose last token is in flight: vLLM will not run them
    again and they finish when it comes back, as they would have in a synchronous engine; until
    then they hold their seats, so ``config.max_num_seqs`` is the engine's less their number).
    """

    def __init__(self, sched, records: dict, requests: dict, config: EngineConfig, cost_model,
                 finished: FinishedLog, waiting_statuses: tuple, running_status, stale: set):
        self._sched = sched
        self._records = records
        self.requests = requests
        self.config = config
        self._config = config  # the engine's; ``config`` has fewer seats while finishing requests hold some
        self._cost_model = cost_model
        self.finished = finished
        self._waiting_statuses = waiting_statuses
        self._running_status = running_status
        self._stale = stale
        self._req_blocks = sched.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks
        self._block_pool = sched.kv_cache_manager.block_pool
        self.running: dict[int, VLLMRequestView] = {}
        self._running_rids = self.running.keys()
        self._finishing: set[int] = set()
        self.now_s = 0.0
        self.busy_s = 0.0
        self.last_step_latency_s = 0.0
        self.num_steps = 0
        self._num_waiting: Optional[int] = None
        self.next_arrival_s = None  # unknown: requests arrive whenever clients send them
        self.done = False

    def refresh(self, now_s: float, busy_s: float, last_step_latency_s: float) -> None:
        """Take vLLM's state now (the hook calls this before each policy decision)."""
        records = self._records
        running = {}
        finishing = self._finishing
        finishing.clear()
        for req in self._sched.running:
            rec = records[req.request_id]
            placeholders = req.num_output_placeholders
            if placeholders and (req.num_computed_tokens + 2 - placeholders
                                 >= req.num_prompt_tokens + req.max_tokens):
                finishing.add(rec.rid)  # its last token is in flight: vLLM will not run it again
            else:
                running[rec.rid] = rec
        self.running = running
        self._running_rids = running.keys()
        # a request whose last token is in flight still holds its vLLM seat until it comes back
        self.config = self._config if not finishing else replace(
            self._config, max_num_seqs=max(1, self._config.max_num_seqs - len(finishing)))
        self.now_s = now_s
        self.busy_s = busy_s
        self.last_step_latency_s = last_step_latency_s
        self.num_steps = self._sched.current_step
        self._num_waiting = None
        if self._stale:
            for r in [r for r in self._stale if not r.num_stale_output_tokens]:
                self._stale.discard(r)

    def iter_waiting(self) -> Iterator[VLLMRequestView]:
        """Schedulable waiting requests in vLLM's queue order (recompute-preempted ones first,
        most recent first; then arrivals in FCFS order or by priority). Not listed, as vLLM's
        own loop skips them: requests blocked on a grammar or streaming input, and preempted
        ones whose in-flight output (async scheduling) has not come back yet."""
        records = self._records
        statuses = self._waiting_statuses
        for r in self._sched.waiting:
            if r.status in statuses and not (r.num_stale_output_tokens and not r.drop_stale_output):
                rec = records.get(r.request_id)
                if rec is not None:
                    yield rec

    @property
    def waiting(self) -> list[VLLMRequestView]:
        return list(self.iter_waiting())

    @property
    def num_waiting(self) -> int:
        """``len(waiting)``, without walking the queue: vLLM's queue length less the few that
        cannot be scheduled (blocked ones are in vLLM's ``deferred_waiting``, preempted ones
        with output in flight in the hook's ``stale`` set)."""
        if self._num_waiting is None:
            sched, statuses = self._sched, self._waiting_statuses
            n = len(sched.waiting)
            for r in (sched.deferred_waiting | self._stale) if self._stale else \
                    sched.deferred_waiting:
                if r.status not in statuses:
                    n -= not r.is_finished() and r.status != self._running_status
                elif r.num_stale_output_tokens and not r.drop_stale_output:
                    n -= 1
            self._num_waiting = n
        return self._num_waiting

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
        return self._block_pool.get_num_free_blocks()

    @property
    def host_blocks(self) -> int:
        return 0  # vLLM v1 preempts by recomputation only: nothing is ever swapped out

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.config.block_size)
