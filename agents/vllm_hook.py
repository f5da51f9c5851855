"""An llmsched policy as vLLM's scheduler: ``--scheduler-cls agents.vllm_hook.LLMSchedScheduler``.

Pinned to vLLM 0.33.0 (v1 engine). ``LLMSchedScheduler`` subclasses vLLM's own
``vllm.v1.core.sched.scheduler.Scheduler``, or its ``AsyncScheduler`` when async scheduling is
on (vLLM's default; ``LLMSchedAsyncScheduler``, chosen at construction). Each step it shows
vLLM's request state to any registered llmsched scheduler through the engine view of
``agents.vllm_adapter`` and carries out the ``BatchPlan`` the policy returns, with the llmsched
engine's ordering contract (only the plan's contents matter, never its iteration order):

- ``plan.preempt``: these running requests are preempted (recompute), by vLLM's
  ``_preempt_request``, newest admitted first, so they head the waiting queue in admission order
  (what successive victims of vLLM's newest-first rule give);
- ``plan.tokens`` for running requests: each runs with that many tokens (a prefill chunk, or 1
  decode token); running requests left out keep their KV and do not run this step;
- ``plan.tokens`` for waiting requests: admitted in waiting-queue order with that prefill chunk.

The hook imposes no limit of its own: the view's ``config`` carries vLLM's token budget,
``max_num_seqs`` and KV cache size; a policy whose own ``token_budget`` (or ``max_decodes``) is
lower is logged once at INFO with both numbers.

KV allocation (``kv_cache_manager.allocate_slots``, prefix caching, watermark, vLLM's full-prompt
admission check), token budgets, the ``SchedulerOutput`` and everything after the forward pass
(``update_from_output``: sampling, stop checks, freeing) stay vLLM's. Where vLLM cannot do what
the plan says, the hook falls back to vLLM's own rule and counts it in ``hook_stats`` (and logs
the first of each kind): a running request whose blocks do not fit preempts vLLM's victim (the
newest running request, or the lowest priority under ``--scheduling-policy priority``); a waiting
request that cannot be allocated is not admitted this step; chunks are clamped to what the
request is owed and to the budget; ids that are not running/waiting are ignored. Features the
hook does not drive (speculative decoding, multimodal/encoder inputs, KV/EC connectors, LoRA,
pipeline parallelism, Mamba/hybrid alignment, prefix replay, paused scheduling) make it hand the step to vLLM's ``Scheduler.schedule()`` unchanged, counted
under ``fallback_steps``.

Choosing the policy (first found wins):

1. the ``policy`` constructor argument (a spec string or a scheduler object; tests, embedding);
2. ``--additional-config '{"llmsched_policy": "sarathi:token_budget=512"}'``;
3. the environment variable ``LLMSCHED_POLICY`` (e.g. ``fcfs``, ``sarathi:token_budget=512``,
   ``onnx:/path/to/export``, a policy exported by ``llmsched export``, see docs/export.md);
4. ``fcfs`` (vLLM v1's own FCFS rule expressed as an llmsched scheduler).

Optional environment: ``LLMSCHED_TTFT_SLO_S`` / ``LLMSCHED_TBT_SLO_S`` (SLO targets, seconds,
shown to the policy on every request) and ``LLMSCHED_COST_PRESET`` (an llmsched preset whose
cost model is offered to the policy as ``view.cost_model``). See docs/vllm.md.
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from vllm.logger import init_logger
from vllm.v1.core.sched.interface import PauseState
from vllm.v1.core.sched.output import NewRequestData, SchedulerOutput
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreEventType
from vllm.v1.request import RequestStatus

from llmsched_env.engine import EngineConfig
from llmsched_env.plan import BatchPlan

from .vllm_adapter import (DEFAULT_POLICY, CostModelUnavailable, FinishedLog, OracleUnavailable,
                           VLLMEngineView, VLLMRequestView, policy_from_spec)

VLLM_VERSION = "0.33.0"

logger = init_logger("vllm.llmsched_hook")


@dataclass
class HookStats:
    """What the hook did, counted since the scheduler started (steps, requests, tokens).

    Attributes:
        policy_steps: steps whose plan the hook carried out.
        fallback_steps: steps handed to vLLM's own ``schedule()``, by reason.
        plan_preemptions: preemptions the policy asked for and vLLM made.
        fallback_preemptions: preemptions by vLLM's rule because a planned request's KV did not fit.
        refused_admissions: planned admissions vLLM could not make (KV, sequence limit, budget,
            blocked request, output of a preempted request still in flight), by reason.
        clamped: planned token counts cut to what the request is owed, the budget or
            ``max_model_len``.
        ignored: plan entries naming requests that are neither running nor waiting.
        prefix_cache_tokens: prompt tokens admitted requests found in vLLM's prefix cache (their
            planned chunk shrinks accordingly).
        policy_errors: steps whose policy raised (vLLM's own ``schedule()`` ran instead).
        in_flight: planned running requests vLLM cannot run this step because of a step in
            flight: its output has not come back (synchronous scheduler called twice), or it
            already reaches ``max_tokens`` (async scheduling; vLLM skips these too).
        idle_with_waiting: steps whose plan was empty while requests waited and none ran (the
            policy's choice, carried out; a policy that always does this never serves them).
    """

    policy_steps: int = 0
    fallback_steps: Counter = field(default_factory=Counter)
    plan_preemptions: int = 0
    fallback_preemptions: int = 0
    refused_admissions: Counter = field(default_factory=Counter)
    clamped: int = 0
    ignored: int = 0
    prefix_cache_tokens: int = 0
    policy_errors: int = 0
    in_flight: int = 0
    idle_with_waiting: int = 0


def _env_seconds(name: str) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return math.inf
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of seconds")
    return value


class LLMSchedScheduler(Scheduler):
    """vLLM's v1 scheduler with an llmsched policy deciding each batch (see the module docstring).

    With async scheduling on (vLLM's default) constructing this class gives a
    ``LLMSchedAsyncScheduler``, the same hook on vLLM's ``AsyncScheduler``, so one
    ``--scheduler-cls agents.vllm_hook.LLMSchedScheduler`` serves either way.

    Args: as vLLM's ``Scheduler``, plus
        policy: a policy spec string or an llmsched scheduler object (overrides
            ``additional_config["llmsched_policy"]`` and ``LLMSCHED_POLICY``).
        cost_model: an llmsched cost model offered to the policy as ``view.cost_model``.

    Attributes:
        llmsched_policy: the llmsched scheduler deciding the batches.
        hook_stats: ``HookStats``.
        last_plan: the BatchPlan of the last policy step (None before any).
        clock: returns wall-clock seconds (``time.time``); the view's times are seconds since
            the scheduler started on this clock.
    """

    def __new__(cls, *args, **kwargs):
        if cls is LLMSchedScheduler:
            vllm_config = kwargs.get("vllm_config", args[0] if args else None)
            if vllm_config is not None and vllm_config.scheduler_config.async_scheduling:
                cls = LLMSchedAsyncScheduler
        return super().__new__(cls)

    def __init__(self, *args, policy=None, cost_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        extra = self.vllm_config.additional_config
        spec = policy
        if spec is None and isinstance(extra, dict):
            spec = extra.get("llmsched_policy")
        if spec is None:
            spec = os.environ.get("LLMSCHED_POLICY") or DEFAULT_POLICY
        self.llmsched_policy = policy_from_spec(spec) if isinstance(spec, str) else spec
        self.llmsched_policy.reset()
        if cost_model is None and os.environ.get("LLMSCHED_COST_PRESET"):
            from llmsched_env.presets import get_preset
            cost_model = get_preset(os.environ["LLMSCHED_COST_PRESET"]).cost_model
        self.llmsched_cost_model = cost_model
        self._ttft_slo_s = _env_seconds("LLMSCHED_TTFT_SLO_S")
        self._tbt_slo_s = _env_seconds("LLMSCHED_TBT_SLO_S")
        self.hook_stats = HookStats()
        self.last_plan: BatchPlan | None = None
        self.clock = time.time
        self._t0 = self.clock()
        self._records: dict[str, VLLMRequestView] = {}  # request_id -> view of a live request
        self._by_rid: dict[int, VLLMRequestView] = {}  # the same by rid: view.requests
        self._busy_s = 0.0
        self._last_latency_s = 0.0
        self._last_return_s = -math.inf  # hook clock when the last non-empty step's output came
        self._in_flight_since: dict[int, float] = {}  # id(SchedulerOutput) -> schedule time
        self._next_rid = 0
        self._warned: set[str] = set()
        # The engine's own limits, nothing lower: vLLM's token budget is the smaller of
        # max_num_scheduled_tokens and max_num_batched_tokens (equal unless set apart).
        self.llmsched_config = EngineConfig(
            num_kv_blocks=self.kv_cache_manager.block_pool.num_gpu_blocks - 1,  # one null block
            block_size=self.block_size,
            max_num_batched_tokens=min(self.max_num_scheduled_tokens,
                                       self.scheduler_config.max_num_batched_tokens),
            max_num_seqs=self.max_num_active_reqs,
            max_model_len=self.max_model_len,
            num_gpus=self.parallel_config.tensor_parallel_size,
            prefix_caching=bool(self.cache_config.enable_prefix_caching),
        )
        # At most max_num_active_reqs finish per step: the log keeps several steps' worth.
        self._finished = FinishedLog(max(4 * self.max_num_active_reqs, 1024))
        self._stale: set = set()  # preempted with output in flight (async): not resumable yet
        self._view = VLLMEngineView(self, self._records, self._by_rid, self.llmsched_config,
                                    cost_model, self._finished,
                                    (RequestStatus.WAITING, RequestStatus.PREEMPTED),
                                    RequestStatus.RUNNING, self._stale)
        self._unsupported = self._unsupported_features()
        name = getattr(self.llmsched_policy, "name", type(self.llmsched_policy).__name__)
        if self._unsupported:
            logger.warning("llmsched policy %r is NOT driving this engine: vLLM's own scheduler "
                           "runs every step because the hook does not support: %s", name,
                           ", ".join(self._unsupported))
        else:
            logger.info("llmsched policy %r schedules this engine (vLLM %s hook, %s scheduling)",
                        name, VLLM_VERSION,
                        "async" if isinstance(self, AsyncScheduler) else "synchronous")
        self._log_policy_limits(name)

    def _log_policy_limits(self, name: str) -> None:
        """Say once, at INFO, where the policy's own limits are below the engine's: the hook
        passes the engine's limits on unchanged, so these are the policy's choice."""
        cfg = self.llmsched_config
        own = getattr(self.llmsched_policy, "token_budget", None)
        if isinstance(own, int) and own < cfg.max_num_batched_tokens:
            logger.info("llmsched policy %r plans at most %d tokens per step (its token_budget), "
                        "below vLLM's budget of %d (max_num_batched_tokens)", name, own,
                        cfg.max_num_batched_tokens)
        own = getattr(self.llmsched_policy, "max_decodes", None)
        if isinstance(own, int) and own < cfg.max_num_seqs:
            logger.info("llmsched policy %r runs at most %d decodes per step (its max_decodes), "
                        "below vLLM's max_num_seqs of %d", name, own, cfg.max_num_seqs)

    # ------------------------------------------------------------ what is supported
    def _unsupported_features(self) -> list[str]:
        checks = {
            "speculative decoding": self.num_spec_tokens > 0 or self.num_lookahead_tokens > 0,
            "KV connector": self.connector is not None,
            "EC connector": self.ec_connector is not None,
            "multimodal/encoder inputs": self.max_num_encoder_input_tokens > 0
            or self.is_encoder_decoder,
            "LoRA": self.lora_config is not None,
            "pipeline parallelism": self.use_pp,
            "Mamba/hybrid block alignment": self.need_mamba_block_aligned_split,
            "prefix replay": self.prefix_replay_tokens > 0 or self.num_prefill_lookahead > 0,
            "aux output connector": self.aux_output_connector is not None,
            "pooling/diffusion models": self.num_sampled_tokens_per_step != 1,
        }
        return [name for name, on in checks.items() if on]

    def _step_fallback_reason(self) -> str | None:
        if self._unsupported:
            return "unsupported: " + ", ".join(self._unsupported)
        if self._pause_state != PauseState.UNPAUSED:
            return "paused"
        if self.kv_holding_waiting:
            return "waiting requests holding KV"
        return None

    def _note(self, kind: str, msg: str, *args) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("llmsched hook: " + msg + " (further cases counted in hook_stats)",
                           *args)
        else:
            logger.debug("llmsched hook: " + msg, *args)

    # ------------------------------------------------------------ request records
    def add_request(self, request) -> None:
        known = request.request_id in self.requests
        super().add_request(request)
        if not known and request.request_id in self.requests:
            rec = VLLMRequestView(request, self._view, self._next_rid,
                                  request.arrival_time - self._t0, self._ttft_slo_s,
                                  self._tbt_slo_s)
            self._records[request.request_id] = rec
            self._by_rid[rec.rid] = rec
            self._next_rid += 1

    def finish_requests(self, request_ids, finished_status):
        finished = super().finish_requests(request_ids, finished_status)
        if finished:
            now = self.clock() - self._t0
            for req in finished:
                self._retire(req.request_id, now)
        return finished

    def _retire(self, request_id: str, now: float) -> None:
        """A request finished: it leaves ``view.requests`` for a snapshot in ``view.finished``."""
        rec = self._records.pop(request_id, None)
        if rec is not None:
            del self._by_rid[rec.rid]
            rec.finish_s = now
            self._finished.append(rec.finished_copy())

    def _preempt_request(self, request, timestamp, drop_stale_output=False):
        super()._preempt_request(request, timestamp, drop_stale_output)
        if request.num_stale_output_tokens:
            self._stale.add(request)

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        now = self.clock() - self._t0
        started = self._in_flight_since.pop(id(scheduler_output), None)
        if started is not None:
            # With async scheduling the step ran on the GPU from the previous step's end.
            self._last_latency_s = max(now - max(started, self._last_return_s), 0.0)
            self._busy_s += self._last_latency_s
            self._last_return_s = now
        records = self._records
        for req_id in scheduler_output.num_scheduled_tokens:
            rec = records.get(req_id)
            if rec is None:
                continue
            req = rec._req
            missing = req.num_output_tokens - len(rec.token_times)
            if missing > 0:
                rec.token_times.extend([now] * missing)
            if req.is_finished():
                self._retire(req_id, now)
        return outputs

    def make_view(self) -> VLLMEngineView:
        """The llmsched engine view of vLLM's state now (what the policy is shown)."""
        if len(self._records) > len(self.requests):
            # vLLM dropped a request on a path the hook does not see: forget it too.
            now = self.clock() - self._t0
            for req_id in [r for r in self._records if r not in self.requests]:
                self._retire(req_id, now)
        self._view.refresh(self.clock() - self._t0, self._busy_s, self._last_latency_s)
        return self._view

    # ------------------------------------------------------------ the step
    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        output = self._schedule(throttle_prefills)
        if output.total_num_scheduled_tokens:
            now = self.clock() - self._t0
            if len(self._in_flight_since) > 64:  # outputs that never came back
                self._in_flight_since.clear()
            self._in_flight_since[id(output)] = now
            records = self._records
            for req_id in output.num_scheduled_tokens:
                rec = records.get(req_id)
                if rec is not None:
                    if rec.first_scheduled_s is None:
                        rec.first_scheduled_s = rec.admitted_s = now
                    rec.last_scheduled_s = now
            # (Re)admissions, by the policy or by vLLM's own schedule(): the prefill target.
            for new in output.scheduled_new_reqs:
                rec = records.get(new.req_id)
                if rec is not None:
                    rec._target = rec._req.num_tokens
            for req_id in output.scheduled_cached_reqs.resumed_req_ids:
                rec = records.get(req_id)
                if rec is not None:
                    rec._target = rec._req.num_tokens
        return output

    def _schedule(self, throttle_prefills: bool) -> SchedulerOutput:
        reason = self._step_fallback_reason()
        if reason is not None:
            self.hook_stats.fallback_steps[reason] += 1
            return super().schedule(throttle_prefills)
        view = self.make_view()
        try:
            plan = self.llmsched_policy.schedule(view)
        except (OracleUnavailable, CostModelUnavailable):
            raise  # configuration errors: the policy can never run here as configured
        except Exception:
            self.hook_stats.policy_errors += 1
            if self.hook_stats.policy_errors == 1:
                logger.exception("llmsched hook: the policy raised; vLLM's own scheduler runs "
                                 "this step (and every step where it raises; counted in "
                                 "hook_stats.policy_errors)")
            else:
                logger.debug("llmsched hook: the policy raised again", exc_info=True)
            self.hook_stats.fallback_steps["policy error"] += 1
            return super().schedule(throttle_prefills)
        if not isinstance(plan, BatchPlan):
            raise TypeError(f"llmsched policy {self.llmsched_policy!r} returned "
                            f"{type(plan).__name__}, not a BatchPlan")
        self.last_plan = plan
        self.hook_stats.policy_steps += 1
        if not plan and not self.running and view.num_waiting:
            self.hook_stats.idle_with_waiting += 1
            self._note("idle", "the policy scheduled nothing with %s requests waiting and none "
                       "running", view.num_waiting)
        return self._carry_out(plan, view)

    def _victim(self):
        """vLLM's own preemption rule (used only when the plan's allocation fails)."""
        if self.policy == SchedulingPolicy.PRIORITY:
            return max(self.running, key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]

    def _carry_out(self, plan: BatchPlan, view: VLLMEngineView) -> SchedulerOutput:
        self.current_step += 1
        stats = self.hook_stats
        timestamp = time.monotonic()
        self.kv_cache_manager.new_step_starts()
        budget = self.llmsched_config.max_num_batched_tokens
        by_rid, records, tokens = self._by_rid, self._records, plan.tokens
        was_running = view.running  # as the policy saw it
        num_scheduled: dict[str, int] = {}
        new_blocks_of: dict = {}
        new_reqs: list = []
        resumed_reqs: list = []
        running_reqs: list = []

        # 1. The plan's preemptions. As in the llmsched engine, whatever the set's order: the
        #    newest admitted first, each to the head of waiting, so they end up there in
        #    admission order -- what successive victims of vLLM's newest-first rule give.
        if plan.preempt:
            victims = set()
            for rid in plan.preempt:
                if rid not in was_running or rid in tokens:
                    stats.ignored += 1
                    self._note("bad-preempt", "plan preempts request %s, which is not running or "
                               "is also scheduled; ignored", rid)
                    continue
                victims.add(was_running[rid]._req)
            if victims:
                order = [r for r in reversed(self.running) if r in victims]
                self.running = [r for r in self.running if r not in victims]
                for req in order:
                    self._preempt_request(req, timestamp,
                                          drop_stale_output=self.requires_kv_delivery)
                stats.plan_preemptions += len(order)

        # 2. Running requests in the plan, in vLLM's running order.
        running_status, step = RequestStatus.RUNNING, self.current_step
        allocate, lookahead = self.kv_cache_manager.allocate_slots, self.num_lookahead_tokens
        model_room = self.max_model_len - self.num_sampled_tokens_per_step  # less computed: most to run
        for req in list(self.running) if tokens else ():
            if req.status != running_status:
                continue  # preempted by a fallback earlier in this loop
            rec = records[req.request_id]
            n = tokens.get(rec.rid)
            if n is None:
                continue
            computed, placeholders = req.num_computed_tokens, req.num_output_placeholders
            if (placeholders and computed + 2 - placeholders
                    >= req.num_prompt_tokens + req.max_tokens) \
                    or step < req.next_decode_eligible_step:
                stats.in_flight += 1  # vLLM's rule: the step in flight reaches max_tokens
                continue
            owed = req.num_tokens_with_spec + placeholders - computed
            if owed <= 0:  # its last step's output has not come back (synchronous Scheduler)
                stats.in_flight += 1
                continue
            ok = min(max(int(n), 1), owed, budget, model_room - computed)
            if ok != n:
                stats.clamped += 1
                self._note("clamp", "request %s: planned %s tokens, ran %s (owed %s, budget %s)",
                           rec.rid, n, ok, owed, budget)
            if ok <= 0:
                continue
            while True:
                blocks = allocate(req, ok, num_lookahead_tokens=lookahead)
                if blocks is not None:
                    break
                victim = self._victim()
                self.running.remove(victim)
                if victim in running_reqs:
                    running_reqs.remove(victim)
                    budget += num_scheduled.pop(victim.request_id)
                    new_blocks_of.pop(victim.request_id)
                self._preempt_request(victim, timestamp,
                                      drop_stale_output=self.requires_kv_delivery)
                stats.fallback_preemptions += 1
                self._note("kv-fallback", "request %s's %s tokens do not fit the KV cache; "
                           "preempted %s by vLLM's rule", rec.rid, ok,
                           records[victim.request_id].rid)
                if victim is req:
                    break
            if blocks is None:
                continue
            running_reqs.append(req)
            new_blocks_of[req.request_id] = blocks
            num_scheduled[req.request_id] = ok
            budget -= ok

        # 3. Waiting requests in the plan, admitted in waiting-queue order whatever the plan's
        #    order (the llmsched engine's rule: equal plans have equal effects).
        joining: dict = {}
        for rid, n in tokens.items() if len(tokens) > len(num_scheduled) else ():
            if rid in was_running:
                continue  # handled above
            rec = by_rid.get(rid)
            if rec is None:
                stats.ignored += 1
                self._note("bad-id", "plan schedules request %s, which is neither running nor "
                           "waiting; ignored", rid)
                continue
            req = rec._req
            if req.status not in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
                refused = "blocked (grammar/streaming)"
            elif req.num_stale_output_tokens and not req.drop_stale_output:
                refused = "output in flight"  # vLLM's rule: resume once it has come back
            else:
                joining[req] = (rec, n)
                continue
            stats.refused_admissions[refused] += 1
            self._note("refused-" + refused, "request %s not admitted: %s", rid, refused)
        if joining:
            in_order = []
            for req in self.waiting:
                if req in joining:
                    in_order.append(req)
                    if len(in_order) == len(joining):
                        break
            admitted = []
            for req in in_order:
                rec, n = joining[req]
                refused = self._admit(req, rec, int(n), budget, timestamp)
                if isinstance(refused, str):
                    stats.refused_admissions[refused] += 1
                    self._note("refused-" + refused, "request %s not admitted: %s", rec.rid,
                               refused)
                    continue
                ok, blocks = refused
                if req.status == RequestStatus.WAITING:
                    new_reqs.append(req)
                else:
                    resumed_reqs.append(req)
                admitted.append(req)
                new_blocks_of[req.request_id] = blocks
                num_scheduled[req.request_id] = ok
                budget -= ok
                req.status = RequestStatus.RUNNING
            if admitted:
                self._remove_from_waiting(admitted)

        return self._make_output(new_reqs, resumed_reqs, running_reqs, num_scheduled,
                                 new_blocks_of)

    def _remove_from_waiting(self, admitted: list) -> None:
        queue = self.waiting
        if isinstance(queue, deque):  # FCFS: admissions are usually at the head
            left = set(admitted)
            while left and queue[0] in left:
                left.discard(queue.popleft())
            for req in left:
                queue.remove(req)
        elif len(admitted) == 1:
            queue.remove_request(admitted[0])
        else:
            queue.remove_requests(admitted)

    def _admit(self, req, rec, n: int, budget: int, timestamp: float):
        """Admit one waiting request with a chunk of up to ``n`` tokens; returns
        ``(tokens, blocks)`` or the reason it was refused."""
        if len(self.running) + self.num_waiting_for_streaming_input >= self.max_num_active_reqs:
            return "sequence limit"
        if budget <= 0:
            return "token budget"
        if not self._handle_blocked_waiting_request(req):
            return "blocked (grammar/streaming)"
        computed_blocks, num_cached = self.kv_cache_manager.empty_kv_cache_blocks, 0
        looked_up = req.num_computed_tokens == 0
        if looked_up:
            computed_blocks, num_cached, req.shared_prefix_boundary, _ = (
                self._get_local_prefix_cache_hit(req))
        owed = req.num_tokens - num_cached
        ok = min(max(n, 1), owed, budget)
        if not 1 <= n <= req.num_tokens or ok < min(n, owed):
            self.hook_stats.clamped += 1  # a cut by the prefix cache is not a clamp
        self.hook_stats.prefix_cache_tokens += num_cached
        blocks = self.kv_cache_manager.allocate_slots(
            req, ok, num_new_computed_tokens=num_cached, new_computed_blocks=computed_blocks,
            num_lookahead_tokens=self.num_lookahead_tokens,
            full_sequence_must_fit=self.scheduler_reserve_full_isl,
            has_scheduled_reqs=bool(self.running))
        if blocks is None:
            return "KV cache"
        if looked_up:
            self.kv_cache_manager.record_prefix_cache_stats(req, num_cached)
        if req.prefill_stats and req.num_preemptions <= 0:
            req.prefill_stats.set(num_prompt_tokens=req.num_prompt_tokens,
                                  num_local_cached_tokens=num_cached,
                                  num_external_cached_tokens=0)
        self.deferred_waiting.discard(req)  # the caller takes it out of self.waiting
        self.running.append(req)
        if self.log_stats:
            req.record_event(EngineCoreEventType.SCHEDULED, timestamp)
        req.num_computed_tokens = num_cached
        if num_cached + ok < req.num_tokens:
            self._inflight_prefills.add(req)
        return ok, self.kv_cache_manager.get_blocks(req.request_id)

    def _make_output(self, new_reqs, resumed_reqs, running_reqs, num_scheduled,
                     new_blocks_of) -> SchedulerOutput:
        """The SchedulerOutput for this step, built as vLLM's ``schedule()`` builds it for the
        configurations the hook supports."""
        total = sum(num_scheduled.values())
        if total > 0:
            self.num_executed_steps += 1
        if self.use_v2_model_runner:
            new_reqs = new_reqs + resumed_reqs
            resumed_reqs = []
            new_data = [NewRequestData.from_request(r, new_blocks_of[r.request_id].get_block_ids(),
                                                    r._all_token_ids, uses_mrope=self.model_uses_mrope)
                        for r in new_reqs]
        else:
            new_data = [NewRequestData.from_request(r, new_blocks_of[r.request_id].get_block_ids(),
                                                    uses_mrope=self.model_uses_mrope)
                        for r in new_reqs]
        cached = self._make_cached_request_data(running_reqs, resumed_reqs, num_scheduled, {},
                                                new_blocks_of)
        if not self.use_v2_model_runner:
            self.prev_step_scheduled_req_ids.clear()
            self.prev_step_scheduled_req_ids.update(num_scheduled)
        self.kv_cache_manager.take_boundary_state_offloads()  # Mamba only; drained every step
        copies, retained = self.kv_cache_manager.take_kv_cache_block_copies()
        if copies:
            self._free_cow_retained_blocks(retained, self.sched_step_seq + 1)
        output = SchedulerOutput(
            scheduled_new_reqs=new_data,
            scheduled_cached_reqs=cached,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=total,
            scheduled_spec_decode_tokens={},
            scheduled_encoder_inputs={},
            preempted_req_ids=self.reset_preempted_req_ids,
            finished_req_ids=self.finished_req_ids,
            free_encoder_mm_hashes=self.encoder_cache_manager.get_freed_mm_hashes(),
            encoder_input_updates=self._get_encoder_input_updates(num_scheduled, new_data, {}),
            new_block_ids_to_zero=self._get_new_block_ids_to_zero(),
            kv_cache_block_copies=copies or None,
            num_spec_tokens_to_schedule=self.num_spec_tokens,
            skip_drafts=self.can_skip_drafts,
            ec_manager_metadata=self.encoder_cache_manager.get_manager_metadata(),
        )
        if self.defer_block_free and total > 0:
            self.sched_step_seq += 1
        self._update_after_schedule(output)
        return output


class LLMSchedAsyncScheduler(LLMSchedScheduler, AsyncScheduler):
    """The hook on vLLM's ``AsyncScheduler`` (what ``LLMSchedScheduler(...)`` builds when async
    scheduling is on): the next step is planned while the last one runs, on vLLM's in-flight
    state (``num_computed_tokens`` includes the step in flight; its sampled tokens are output
    placeholders until they come back). A decode in flight runs again at once, as under vLLM's
    own async scheduler; a request whose first token is in flight shows as prefilling with 1
    token left (``VLLMRequestView.prefill_target``)."""
