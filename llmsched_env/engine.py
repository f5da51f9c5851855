"""The serving engine: the only code that advances time.

``Engine.step(plan)`` validates a BatchPlan against every limit, applies it (preemptions first,
then the batch), asks the cost model how long the batch takes, and records which tokens came out
when. Units: seconds for time, tokens for lengths, blocks (of ``block_size`` tokens) for KV.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from .cost_model import BatchShape, CostModel
from .plan import BatchPlan, PlanError
from .prefix_cache import PrefixCache
from .request import FINISHED, RUNNING, STATUS_NAMES, WAITING, Request, RequestSpec


PREEMPTION_MODES = ("recompute", "swap")


@dataclass(frozen=True)
class EngineConfig:
    """Limits of one model replica.

    Attributes:
        num_kv_blocks: KV-cache capacity, blocks.
        block_size: tokens per KV block (vLLM's default 16).
        max_num_batched_tokens: token budget of one step, tokens.
        max_num_seqs: most requests resident (holding KV, i.e. running) at once, after a step.
        max_model_len: longest sequence (prompt + output) the model accepts, tokens.
        num_gpus: GPUs per replica (the tensor-parallel degree); GPU cost = busy s x num_gpus.
        preemption_mode: what a preemption does with the victim's KV. "recompute" (vLLM's
            default): the KV is dropped and recomputed when the request returns. "swap": the KV
            moves to host memory and back when the request is next scheduled, each block costing
            ``swap_s_per_block`` of the step's time each way (vLLM v0's ``preemption_mode="swap"``).
            A victim whose blocks do not fit the host space left is recomputed instead (where
            vLLM v0 aborts the server), and counted as a recompute.
        swap_space_blocks: host-memory KV capacity for swapped-out requests, blocks (vLLM v0's
            ``swap_space``, 4 GiB per GPU by default; the presets convert it).
        swap_s_per_block: time to copy one KV block between GPU and host memory, seconds (one
            direction; copies are serial with the batch, as vLLM v0's worker does them before
            running the model).
        prefix_caching: keep freed full blocks cached by content (LRU) so a request that needs
            them again starts with them computed (vLLM v1's automatic prefix caching, see
            ``prefix_cache.py``; on by default, as in vLLM v1): a waiting request's
            ``num_computed`` is its cache hit.
    """

    num_kv_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    max_model_len: int = 1 << 30
    num_gpus: int = 1
    preemption_mode: str = "recompute"
    swap_space_blocks: int = 0
    swap_s_per_block: float = 0.0
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_kv_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs",
                     "max_model_len", "num_gpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if self.preemption_mode not in PREEMPTION_MODES:
            problems.append(f"preemption_mode={self.preemption_mode!r} must be one of "
                            f"{', '.join(PREEMPTION_MODES)}")
        if not isinstance(self.swap_space_blocks, int) or self.swap_space_blocks < 0:
            problems.append(f"swap_space_blocks={self.swap_space_blocks!r} must be an integer >= 0")
        elif self.preemption_mode == "swap" and self.swap_space_blocks == 0:
            problems.append("preemption_mode='swap' needs swap_space_blocks >= 1 (host memory for "
                            "swapped-out KV)")
        if not (isinstance(self.swap_s_per_block, (int, float)) and 0 <= self.swap_s_per_block < float("inf")):
            problems.append(f"swap_s_per_block={self.swap_s_per_block!r} must be a finite number "
                            "of seconds >= 0")
        if problems:
            raise ValueError("impossible EngineConfig: " + "; ".join(problems))

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size


class WorkloadRejected(ValueError):
    """A request can never be served under this config (named with its numbers)."""


class SchedulerStalled(RuntimeError):
    """The scheduler returned an empty plan while nothing can ever change (no future arrivals)."""


class StepResult:
    """What one ``Engine.step`` did. Tokens are emitted at ``end_s``.

    Attributes:
        start_s, end_s, latency_s: step timing, seconds (latency 0 for an idle step).
        num_tokens: tokens processed.
        emitted: ids of requests that emitted one output token at ``end_s``.
        finished: ids of requests that finished (subset of ``emitted``).
        preempted: ids of requests preempted before the step (swapped out or recomputed).
        swapped_out: the subset of ``preempted`` whose KV went to host memory (swap mode).
        admitted: ids of waiting requests that joined the batch (swapped-in ones included).
        idle: True when the plan processed no tokens (an empty plan jumps the clock to the next
            arrival; a preempt-only plan takes only its swap-out time, none under recompute).
        transfer_s: host-memory copy time inside the step (swap-outs and swap-ins), seconds.
    """

    __slots__ = ("start_s", "end_s", "latency_s", "num_tokens", "emitted", "finished",
                 "preempted", "swapped_out", "admitted", "idle", "shape", "transfer_s")

    def __init__(self, start_s, end_s, num_tokens, emitted, finished, preempted, admitted, idle,
                 shape, swapped_out=(), transfer_s=0.0):
        self.start_s = start_s
        self.end_s = end_s
        self.latency_s = end_s - start_s if not idle else 0.0
        self.swapped_out = list(swapped_out)
        self.transfer_s = transfer_s
        self.num_tokens = num_tokens
        self.emitted = emitted
        self.finished = finished
        self.preempted = preempted
        self.admitted = admitted
        self.idle = idle
        self.shape = shape


class Engine:
    """A paged-KV LLM serving engine driven one BatchPlan at a time.

    Args:
        workload: request specs (any order; sorted by arrival time, then id).
        config: replica limits.
        cost_model: gives each batch's latency in seconds.
        open_arrivals: more requests will be handed over with ``add_arrival`` (a cluster's
            router does, as each request arrives) until ``close_arrivals()``. While arrivals are
            open the engine cannot know its next arrival: an empty plan, or running out of work,
            leaves it ``awaiting_arrival`` (its clock stays) instead of jumping the clock, and
            the next ``add_arrival`` jumps it. Fed the same requests in the same order, an open
            engine makes exactly the steps of one given the whole workload up front.

    Raises:
        WorkloadRejected: a request longer than the model's context or the KV cache, or
            duplicate ids.
    """

    def __init__(self, workload: Sequence[RequestSpec], config: EngineConfig, cost_model: CostModel,
                 open_arrivals: bool = False):
        self.config = config
        self.cost_model = cost_model
        specs = sorted(workload, key=lambda s: (s.arrival_s, s.rid))
        self._check_workload(specs)
        self._pending: list[RequestSpec] = specs
        self._next_arrival = 0
        self._open = open_arrivals
        self._awaiting = False  # an empty plan waits for an arrival not handed over yet
        self.requests: dict[int, Request] = {}      # every arrived request, by id
        self.running: dict[int, Request] = {}       # resident, in admission order
        self._waiting_new: dict[int, Request] = {}  # fresh arrivals, in arrival order
        self._waiting_preempted: deque[Request] = deque()  # most recently preempted first
        self.finished: list[Request] = []
        self.now_s = 0.0
        self.num_steps = 0
        self.used_blocks = 0
        self.max_used_blocks = 0
        self.busy_s = 0.0
        self.num_preemptions = 0
        self.recomputed_tokens = 0
        self.processed_tokens = 0
        self.host_blocks = 0        # KV blocks of swapped-out requests in host memory
        self.num_swap_outs = 0
        self.swapped_blocks = 0     # blocks copied either way between GPU and host
        self.transfer_s = 0.0       # host-copy time, seconds (included in busy_s)
        self.prefix_hit_tokens = 0  # tokens admitted with their KV found in the prefix cache
        self._prefix = PrefixCache(config.block_size) if config.prefix_caching else None
        self.kv_block_seconds = 0.0  # integral of used blocks over busy time, block*s
        self.last_step_latency_s = 0.0
        self._admit_arrivals()
        if not self.running and not self._has_waiting():
            self._jump_to_next_arrival()

    # ----------------------------------------------------------------- views
    def _has_waiting(self) -> bool:
        return bool(self._waiting_new) or bool(self._waiting_preempted)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting_new) + len(self._waiting_preempted)

    def iter_waiting(self) -> Iterator[Request]:
        """Waiting requests in queue order: preempted ones first (most recent first, as vLLM
        re-queues them at the head), then new arrivals in arrival order."""
        yield from self._waiting_preempted
        yield from self._waiting_new.values()

    @property
    def waiting(self) -> list[Request]:
        return list(self.iter_waiting())

    @property
    def free_blocks(self) -> int:
        return self.config.num_kv_blocks - self.used_blocks

    @property
    def done(self) -> bool:
        """True once every request of the workload has finished (never while arrivals are open)."""
        return len(self.finished) == len(self._pending) and not self._open

    @property
    def awaiting_arrival(self) -> bool:
        """True when arrivals are open and nothing can happen before the next one: no work, or
        the last plan was empty (the scheduler waits for an arrival)."""
        return self._open and (self._awaiting or (not self.running and not self._has_waiting()))

    def add_arrival(self, spec: RequestSpec) -> None:
        """Hand over one more request (arrivals must be open, in arrival order). It joins the
        waiting queue at once if it has arrived by ``now_s`` (e.g. during the step just
        taken), else the engine jumps its clock to it when it is ``awaiting_arrival``.

        Raises:
            ValueError: arrivals are closed, or ``spec`` arrives before the last request handed over.
            WorkloadRejected: the request can never be served here, or its id is taken.
        """
        if not self._open:
            raise ValueError(f"request {spec.rid}: arrivals are closed (build the engine with "
                             "open_arrivals=True and hand requests over before close_arrivals())")
        pending = self._pending
        if pending and spec.arrival_s < pending[-1].arrival_s:
            raise ValueError(f"request {spec.rid} arrives at {spec.arrival_s} s, before request "
                             f"{pending[-1].rid} ({pending[-1].arrival_s} s) handed over earlier; "
                             "hand requests over in arrival order")
        if spec.rid in self.requests or any(s.rid == spec.rid for s in pending[self._next_arrival:]):
            raise WorkloadRejected(f"request {spec.rid}: duplicate id")
        self._check_workload([spec])
        pending.append(spec)
        if self.awaiting_arrival:
            self._awaiting = False
            if spec.arrival_s > self.now_s:
                self.now_s = spec.arrival_s
        self._admit_arrivals()

    def close_arrivals(self) -> None:
        """No more ``add_arrival``: from now on the engine behaves as one given its whole
        workload; a scheduler that was waiting for an arrival is asked again."""
        self._open = False
        self._awaiting = False

    @property
    def num_requests(self) -> int:
        return len(self._pending)

    @property
    def next_arrival_s(self) -> Optional[float]:
        if self._next_arrival < len(self._pending):
            return self._pending[self._next_arrival].arrival_s
        return None

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.config.block_size)

    # ------------------------------------------------------------------ step
    def step(self, plan: BatchPlan) -> StepResult:
        """Validate and apply one BatchPlan; advance the clock by the batch latency.

        Raises:
            PlanError: the plan breaks a limit (every violation is named; nothing changes).
            SchedulerStalled: an empty plan while no future arrival can change anything.
        """
        cfg = self.config
        bs = cfg.block_size
        tokens = plan.tokens
        preempt = plan.preempt
        violations: list[str] = []
        requests = self.requests
        running = self.running

        freed = 0
        for rid in preempt:
            req = requests.get(rid)
            if req is None or req.status != RUNNING:
                violations.append(f"preempt: request {rid} is not running "
                                  f"({self._describe(rid)}); only running requests can be preempted")
            elif rid in tokens:
                violations.append(f"preempt: request {rid} is both preempted and scheduled")
            else:
                freed += req.num_blocks

        total = 0
        delta_blocks = 0
        admitted = 0
        n_prefill = n_decode = n_emit = 0
        sum_c = sum_c2 = sum_ck = sum_k = sum_kv = 0
        batch: list[tuple[Request, int, int]] = []  # (request, tokens, its blocks after the step)
        for rid, n in tokens.items():
            req = requests.get(rid)
            if req is None or req.status == FINISHED:
                violations.append(f"tokens: request {rid} is not waiting or running "
                                  f"({self._describe(rid)})")
                continue
            k = req.num_computed
            owed = req.prefill_target - k
            if type(n) is not int and not (hasattr(n, "__index__") and not isinstance(n, bool)):
                violations.append(f"tokens: request {rid} got {n!r}; token counts are integers")
                continue
            if owed > 0:
                if n < 1 or n > owed:
                    violations.append(f"prefill chunk: request {rid} got {n} tokens; allowed 1..{owed}"
                                      f" (prefill {k}/{req.prefill_target} computed)")
                    continue
                n_prefill += 1
                sum_c += n
                sum_c2 += n * n
                sum_ck += n * k
                sum_k += k
                if n == owed:
                    n_emit += 1
            else:
                if n != 1:
                    violations.append(f"decode: request {rid} got {n} tokens; a decode step processes "
                                      "exactly 1")
                    continue
                n_decode += 1
                n_emit += 1
                sum_kv += k + 1
            if req.status == WAITING:
                admitted += 1
            total += n
            nb = -(-(k + n) // bs)
            delta_blocks += nb - req.num_blocks
            batch.append((req, n, nb))

        if total > cfg.max_num_batched_tokens:
            violations.append(f"token budget: {total} tokens > max_num_batched_tokens "
                              f"{cfg.max_num_batched_tokens}")
        resident = len(running) - len(preempt) + admitted
        if resident > cfg.max_num_seqs:
            violations.append(f"sequence limit: {resident} resident requests after the step > "
                              f"max_num_seqs {cfg.max_num_seqs}")
        blocks_after = self.used_blocks - freed + delta_blocks
        if blocks_after > cfg.num_kv_blocks:
            violations.append(f"KV capacity: {blocks_after} blocks needed after the step > "
                              f"{cfg.num_kv_blocks} blocks (block_size {bs}); preempt or shrink chunks")
        if violations:
            raise PlanError(violations, self.num_steps, self.now_s)
        if not batch and not preempt and self.next_arrival_s is None and not self.done:
            self._jump_to_next_arrival()  # raises SchedulerStalled, before any state changes

        # ---- apply: preemptions first, then the batch
        self._awaiting = False
        now = self.now_s
        preempted_ids = []
        # A plan is a mapping and a set: the outcome must not depend on their iteration order.
        # Victims are applied newest-admitted first, each re-queued at the head, so they end up
        # at the head of the waiting queue in admission order (vLLM's order for successive victims).
        swapped_ids = []
        moved = 0  # blocks copied to or from host memory this step
        swap = cfg.preemption_mode == "swap"
        for rid in ([r for r in reversed(running) if r in preempt] if preempt else ()):
            req = running.pop(rid)
            nb = req.num_blocks
            self.used_blocks -= nb
            if swap and self.host_blocks + nb <= cfg.swap_space_blocks:
                req.host_blocks = nb
                self.host_blocks += nb
                moved += nb
                self.num_swap_outs += 1
                swapped_ids.append(rid)
            else:
                self.recomputed_tokens += req.num_computed
                req.recomputed_tokens += req.num_computed
                dropped = req.num_computed
                req.num_computed = 0
                req.prefill_target = req.prompt_len + req.num_generated
                if self._prefix is not None:
                    self._prefix.release(req, dropped)
                    req.num_computed = self._prefix.reuse(req)
            req.num_blocks = 0
            req.num_preemptions += 1
            req.status = WAITING
            self._waiting_preempted.appendleft(req)
            self.num_preemptions += 1
            preempted_ids.append(rid)

        self.num_steps += 1
        if not batch:
            # Idle: an empty plan waits for the next arrival; a preempt-only plan takes only its
            # swap-out copies (its victims are runnable at once, so the clock must not skip ahead).
            transfer = 0.0
            if not preempt:
                self._jump_to_next_arrival()
            elif moved:
                transfer = self._copy(moved)
                self.busy_s += transfer
                self.now_s = now + transfer
            return StepResult(now, self.now_s, 0, [], [], preempted_ids, [], True, None,
                              swapped_ids, transfer)

        shape = BatchShape(total, n_prefill, sum_c, sum_c2, sum_ck, sum_k, n_decode, sum_kv, n_emit)
        latency = self.cost_model.batch_time(shape)
        emitted = []
        finished = []
        admitted_ids = []
        used = blocks_after  # less what finishing requests free
        if admitted:
            # Admitted requests join ``running`` in waiting-queue order, whatever the plan's order.
            joining = [req for req, _, _ in batch if req.status == WAITING]
            if len(joining) > 1:
                joining.sort(key=self._queue_position)
            for req in joining:
                self._remove_waiting(req)
                req.status = RUNNING
                running[req.rid] = req
                admitted_ids.append(req.rid)
                if req.admitted_s is None:
                    req.admitted_s = now
                if req.host_blocks:  # swap in: its KV comes back from host memory
                    moved += req.host_blocks
                    self.host_blocks -= req.host_blocks
                    req.host_blocks = 0
                elif self._prefix is not None:
                    self._prefix.claim(req, req.num_computed)
                    self.prefix_hit_tokens += req.num_computed
        transfer = self._copy(moved) if moved else 0.0
        latency += transfer
        end = now + latency
        for req, n, nb in batch:
            if req.first_scheduled_s is None:
                req.first_scheduled_s = now
            req.last_scheduled_s = now
            k = req.num_computed + n
            req.num_computed = k
            req.num_blocks = nb
            if k >= req.prefill_target:
                req.num_generated += 1
                req.token_times.append(end)
                emitted.append(req.rid)
                if req.num_generated >= req.output_len:
                    req.status = FINISHED
                    req.finish_s = end
                    used -= nb
                    req.num_blocks = 0
                    if self._prefix is not None:
                        self._prefix.release(req, k)
                        self._prefix.forget(req)
                    del running[req.rid]
                    self.finished.append(req)
                    finished.append(req.rid)
        self.processed_tokens += total
        self.kv_block_seconds += blocks_after * latency
        if blocks_after > self.max_used_blocks:
            self.max_used_blocks = blocks_after
        self.used_blocks = used
        if self._prefix is not None:
            excess = len(self._prefix) - (cfg.num_kv_blocks - used)
            if excess > 0:  # the step's allocations took cached blocks: least recently freed first
                for req, tokens in self._prefix.evict(excess):
                    req.num_computed = tokens
        self.busy_s += latency
        self.last_step_latency_s = latency
        self.now_s = end
        self._admit_arrivals()
        if not running and not self._has_waiting():
            self._jump_to_next_arrival(stalled_ok=True)
        return StepResult(now, end, total, emitted, finished, preempted_ids, admitted_ids, False,
                          shape, swapped_ids, transfer)

    # -------------------------------------------------------------- internals
    def _copy(self, blocks: int) -> float:
        """Account ``blocks`` copied between GPU and host memory; returns their time, seconds."""
        seconds = blocks * self.config.swap_s_per_block
        self.swapped_blocks += blocks
        self.transfer_s += seconds
        return seconds

    def _queue_position(self, req: Request) -> tuple:
        if req.rid in self._waiting_new:
            return (1, req.arrival_s, req.rid)
        return (0, self._waiting_preempted.index(req), 0)

    def _remove_waiting(self, req: Request) -> None:
        if self._waiting_new.pop(req.rid, None) is None:
            self._waiting_preempted.remove(req)

    def _admit_arrivals(self) -> None:
        pending = self._pending
        i = self._next_arrival
        now = self.now_s
        n = len(pending)
        max_len = self.config.max_model_len
        while i < n and pending[i].arrival_s <= now:
            req = Request(pending[i])
            if req.max_tokens is None:
                req.max_tokens = max_len - req.prompt_len
            self.requests[req.rid] = req
            self._waiting_new[req.rid] = req
            if self._prefix is not None and req.spec.prefix_group is not None:
                req.num_computed = self._prefix.reuse(req)
            i += 1
        self._next_arrival = i

    def _jump_to_next_arrival(self, stalled_ok: bool = False) -> None:
        nxt = self.next_arrival_s
        if nxt is None:
            if self.done or stalled_ok:
                return
            if self._open:
                self._awaiting = True  # the next add_arrival jumps the clock
                return
            raise SchedulerStalled(
                f"step {self.num_steps}: the plan was empty with {self.num_waiting} waiting and "
                f"{len(self.running)} running requests and no future arrivals, so nothing would "
                "ever change; a scheduler must run something when work is runnable")
        if nxt > self.now_s:
            self.now_s = nxt
        self._admit_arrivals()

    def _describe(self, rid: int) -> str:
        req = self.requests.get(rid)
        if req is None:
            ids = {s.rid for s in self._pending[self._next_arrival:]}
            return "not yet arrived" if rid in ids else "unknown id"
        return STATUS_NAMES[req.status]

    def _check_workload(self, specs: Sequence[RequestSpec]) -> None:
        cfg = self.config
        problems = []
        seen = set()
        for s in specs:
            if s.rid in seen:
                problems.append(f"request {s.rid}: duplicate id")
            seen.add(s.rid)
            total = s.prompt_len + s.output_len
            if total > cfg.max_model_len:
                problems.append(f"request {s.rid}: prompt {s.prompt_len} + output {s.output_len} = "
                                f"{total} tokens > max_model_len {cfg.max_model_len}")
            # The largest KV a request ever holds is prompt + output - 1 tokens.
            need = self.blocks_for(total - 1)
            if need > cfg.num_kv_blocks:
                problems.append(f"request {s.rid}: needs {need} KV blocks ({total - 1} tokens) > "
                                f"capacity {cfg.num_kv_blocks} blocks")
            if len(problems) >= 10:
                problems.append("... (stopped after 10)")
                break
        if problems:
            raise WorkloadRejected(
                "workload rejected before simulation:\n  - " + "\n  - ".join(problems) +
                "\nUse a preset with more context/KV, or build the workload with "
                "oversize='drop' or 'clip' (CLI: --oversize).")
