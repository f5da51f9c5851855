"""A cluster: R model replicas on one global clock, and a Router placing each arrival.

    Workload ──> Router ──RoutePlan──> Engine[0..R-1] <── BatchPlan <── Scheduler (one per replica)

Each replica is an ``Engine`` (its own preset, limits and cost model: replicas may differ) with
its own scheduler, and is stepped only by that engine. The cluster keeps one clock: it always
advances the replica whose next event is earliest, and routes an arrival before any replica
steps at or after its arrival time, so a request arriving during a replica's step joins that
replica's queue at the end of the step, exactly as on a single engine. A replica with nothing
to do (or whose scheduler waits for an arrival) has no next event until a request is routed to
it. One replica is the cluster with R = 1: the same requests, in the same order, reach the same
engine, so it reproduces ``simulate.run`` on that engine exactly (tested).

What a router sees: ``cluster.replicas[i]`` (a ``ReplicaState``: the replica's engine and load
counters kept up to date after every step, O(1) to read) at the arrival time. A replica in the
middle of a step is seen as of the end of that step (the engine applies a step at once).

Cluster metrics (``cluster_metrics``; units: seconds, GPU-seconds):
  * attainment and every single-replica key, pooled over all requests (``metrics.summarize``
    over the replicas' engines: percentiles over every request, counters summed);
  * ``load_imbalance``: max over replicas of GPU busy seconds / their mean (1 = even; R = all
    work on one replica); ``requests_imbalance``: the same for requests routed;
  * ``gpu_seconds``: GPU busy seconds summed over replicas (``gpu_busy_s``), and
    ``gpu_seconds_provisioned``: makespan x every GPU of the cluster (what a fleet pays for);
  * goodput per GPU (``cluster_goodput``): the highest arrival rate with attainment >= 90%,
    divided by the cluster's GPU count.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from .cost_model import CostModel
from .engine import Engine, EngineConfig
from .metrics import summarize
from .request import RequestSpec
from .router import RouteError, RoutePlan, Router, make_router
from .scheduler import Scheduler, make_scheduler


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: its engine limits, cost model and scheduler (a spec, built afresh for every
    run so that a run never depends on an earlier one; or an instance, reset before each run).
    ``preset`` is the preset's name, for reports."""

    config: EngineConfig
    cost_model: CostModel
    scheduler: str | Scheduler = "fcfs"
    preset: str = ""


def replicas_from_preset(preset, num_replicas: int, scheduler: str = "fcfs",
                         engine_overrides: Optional[dict] = None) -> list[ReplicaSpec]:
    """``num_replicas`` identical replicas of a preset (a name or ``Preset``)."""
    from .presets import get_preset
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas={num_replicas!r} must be an integer >= 1")
    p = get_preset(preset) if isinstance(preset, str) else preset
    cfg = p.engine_config(**(engine_overrides or {}))
    return [ReplicaSpec(cfg, p.cost_model, scheduler, p.name) for _ in range(num_replicas)]


class ReplicaState:
    """One replica as the cluster runs it, and as routers see it (read-only for them).

    Attributes:
        index: position in ``cluster.replicas``.
        spec: the ``ReplicaSpec``.
        engine: the replica's Engine (everything a scheduler may read).
        routed: requests routed here so far.
        routed_prompt_tokens: their prompt tokens, summed.
        finished_output_tokens: output tokens of the finished ones, summed.
        generated_tokens: output tokens emitted here so far, summed.
        waiting_kv_blocks: KV blocks the waiting queue needs to start (prompt, or prompt plus
            generated tokens after a preemption), summed: Llumnix's "blocks of all waiting
            requests".
        ttft_ratio_ewma: exponential moving average (weight 1/8) of TTFT / TTFT target over the
            requests that finished here (0 before any); scale-free, a "recent latency".
    """

    __slots__ = ("index", "spec", "engine", "scheduler", "routed", "routed_prompt_tokens",
                 "finished_output_tokens", "generated_tokens", "waiting_kv_blocks", "ttft_ratio_ewma")

    EWMA = 0.125

    def __init__(self, index: int, spec: ReplicaSpec):
        self.index = index
        self.spec = spec
        self.scheduler = make_scheduler(spec.scheduler) if isinstance(spec.scheduler, str) else spec.scheduler
        self.scheduler.reset()
        self.engine = Engine((), spec.config, spec.cost_model, open_arrivals=True)
        self.routed = 0
        self.routed_prompt_tokens = 0
        self.finished_output_tokens = 0
        self.generated_tokens = 0
        self.waiting_kv_blocks = 0
        self.ttft_ratio_ewma = 0.0

    @property
    def outstanding_requests(self) -> int:
        """Requests routed here and not finished (waiting or running)."""
        return self.routed - len(self.engine.finished)

    @property
    def kv_used_fraction(self) -> float:
        """KV blocks in use / capacity."""
        return self.engine.used_blocks / self.spec.config.num_kv_blocks

    @property
    def kv_demand_fraction(self) -> float:
        """(KV blocks in use + blocks the waiting queue needs) / capacity: Llumnix's
        ``kv_blocks_ratio`` load; above 1 the replica cannot start all it holds."""
        return (self.engine.used_blocks + self.waiting_kv_blocks) / self.spec.config.num_kv_blocks

    @property
    def known_tokens_left(self) -> int:
        """Tokens the engine must still process for the requests here, counting only what is
        known without output lengths: sum over unfinished requests of (prompt - 1 +
        recomputed - found in the prefix cache - processed) tokens. Adding each unfinished
        request's (expected) output length gives its work left: for a never-preempted request
        with k of p prompt tokens computed and g tokens generated, (p - k) + (out - g - 1) while
        prefilling, out - g while decoding. A waiting request's prefix-cache hit counts from its
        admission (until then its blocks may be evicted). Exact from the engine's counters, O(1)."""
        e = self.engine
        return (self.routed_prompt_tokens - self.routed + e.recomputed_tokens - e.prefix_hit_tokens
                - e.processed_tokens + self.finished_output_tokens)

    @property
    def prompt_tokens_left(self) -> int:
        """Prompt (and recompute) tokens still to process, minus one per request still
        prefilling: ``known_tokens_left`` plus the tokens the unfinished requests have generated.
        Adding the expected decode tokens left of each unfinished request gives its work left.
        Never negative; O(1)."""
        e = self.engine
        return (self.routed_prompt_tokens - self.routed + e.recomputed_tokens - e.prefix_hit_tokens
                - e.processed_tokens + self.generated_tokens)

    def _on_route(self, spec: RequestSpec) -> None:
        self.engine.add_arrival(spec)
        self.routed += 1
        self.routed_prompt_tokens += spec.prompt_len
        self.waiting_kv_blocks += self.engine.blocks_for(spec.prompt_len)

    def _on_step(self, result) -> None:
        e = self.engine
        reqs = e.requests
        blocks = e.blocks_for
        for rid in result.admitted:
            self.waiting_kv_blocks -= blocks(reqs[rid].prefill_target)
        for rid in result.preempted:
            self.waiting_kv_blocks += blocks(reqs[rid].prefill_target)
        self.generated_tokens += len(result.emitted)
        if result.finished:
            w = self.EWMA
            for rid in result.finished:
                r = reqs[rid]
                self.finished_output_tokens += r.num_generated
                target = r.ttft_slo_s
                ratio = (r.token_times[0] - r.arrival_s) / target if 0 < target < math.inf else 0.0
                self.ttft_ratio_ewma += w * (ratio - self.ttft_ratio_ewma)


class Cluster:
    """R replicas on one clock and a router (see the module docstring).

    Args:
        replicas: one ``ReplicaSpec`` per replica (at least one).
        router: a ``Router`` or a router spec (``"least-tokens"``, ``"p2c:seed=1"``); None when
            routes come from outside (``next_arrival`` / ``route``, as the Routing env does).

    Use ``run(workload)`` for a whole simulation, or drive it one arrival at a time:
    ``reset(workload)``; ``while (spec := next_arrival()) is not None: route(plan)``;
    ``drain()``.
    """

    def __init__(self, replicas: Sequence[ReplicaSpec], router: Router | str | None = None):
        replicas = list(replicas)
        if not replicas:
            raise ValueError("a cluster needs at least one replica")
        for i, r in enumerate(replicas):
            if not isinstance(r, ReplicaSpec):
                raise TypeError(f"replica {i}: expected a ReplicaSpec, got {type(r).__name__}")
        self.specs = replicas
        self.router = make_router(router) if isinstance(router, str) else router
        self.replicas: list[ReplicaState] = []
        self.now_s = 0.0
        self._arrivals: list[RequestSpec] = []
        self._next = 0
        self._heap: list = []
        self._pending: Optional[RequestSpec] = None
        self._assignment: dict[int, int] = {}

    @property
    def num_replicas(self) -> int:
        return len(self.specs)

    @property
    def engines(self) -> list[Engine]:
        return [r.engine for r in self.replicas]

    @property
    def assignment(self) -> dict[int, int]:
        """Request id -> the replica it was routed to."""
        return self._assignment

    @property
    def done(self) -> bool:
        return self._next >= len(self._arrivals) and self._pending is None and all(
            r.engine.done for r in self.replicas)

    # ------------------------------------------------------------- driving
    def reset(self, workload: Sequence[RequestSpec]) -> None:
        """Fresh engines and schedulers for ``workload``; the router (if any) is reset too."""
        specs = sorted(workload, key=lambda s: (s.arrival_s, s.rid))
        checked = []
        for r in self.specs:  # every request must fit every replica: a router may pick any
            if r.config not in checked:
                Engine(specs, r.config, r.cost_model)  # raises WorkloadRejected naming the requests
                checked.append(r.config)
        self.replicas = [ReplicaState(i, s) for i, s in enumerate(self.specs)]
        self._arrivals = specs
        self._next = 0
        self._heap = []
        self._pending = None
        self._assignment = {}
        self.now_s = 0.0
        if self.router is not None:
            self.router.reset(self)
        if not specs:
            self._close()

    def next_arrival(self) -> Optional[RequestSpec]:
        """Step replicas (earliest event first) until the next arrival is due, and return it
        (to be placed with ``route``); None once every request has been routed."""
        if self._pending is not None:
            return self._pending
        if self._next >= len(self._arrivals):
            return None
        spec = self._arrivals[self._next]
        t = spec.arrival_s
        heap = self._heap
        while heap and heap[0][0] < t:
            self._step(heapq.heappop(heap)[1])
        self._pending = spec
        if t > self.now_s:
            self.now_s = t
        return spec

    def route(self, plan: RoutePlan) -> None:
        """Place the pending arrival (``next_arrival``'s) on ``plan.replica``.

        Raises:
            RouteError: not a RoutePlan, or no such replica (the cluster is unchanged).
        """
        spec = self._pending
        if spec is None:
            raise RuntimeError("no arrival to route: call next_arrival() first")
        R = len(self.replicas)
        if not isinstance(plan, RoutePlan):
            raise RouteError([f"expected a RoutePlan, got {type(plan).__name__} {plan!r}"], spec.rid, self.now_s)
        i = plan.replica
        if type(i) is not int and not (hasattr(i, "__index__") and not isinstance(i, bool)):
            raise RouteError([f"replica {i!r} is not an integer index"], spec.rid, self.now_s)
        if not 0 <= i < R:
            raise RouteError([f"unknown replica {i}: the cluster has replicas 0..{R - 1}"], spec.rid, self.now_s)
        i = int(i)
        rep = self.replicas[i]
        was_waiting = rep.engine.awaiting_arrival
        rep._on_route(spec)
        self._assignment[spec.rid] = i
        self._pending = None
        self._next += 1
        if was_waiting and not rep.engine.awaiting_arrival:
            heapq.heappush(self._heap, (rep.engine.now_s, i))
        if self._next >= len(self._arrivals):
            self._close()

    def drain(self) -> None:
        """After the last arrival: step every replica until all requests have finished."""
        if self._pending is not None or self._next < len(self._arrivals):
            raise RuntimeError("drain() before every arrival was routed")
        heap = self._heap
        while heap:
            self._step(heapq.heappop(heap)[1])

    def run(self, workload: Sequence[RequestSpec], progress: bool = False) -> dict:
        """Route and serve ``workload``; return ``cluster_metrics`` of the run."""
        if self.router is None:
            raise ValueError("this cluster has no router: give one, or drive it with next_arrival()/route()")
        t0 = time.perf_counter()
        self.reset(workload)
        route = self.router.route
        nxt = self.next_arrival
        place = self.route
        bar = _progress(progress, len(self._arrivals))
        n = 0
        while (spec := nxt()) is not None:
            place(route(spec, self))
            n += 1
            if bar is not None and n % 500 == 0:
                bar[0].update(bar[1], completed=n)
        self.drain()
        if bar is not None:
            bar[0].update(bar[1], completed=n)
            bar[0].stop()
        return cluster_metrics(self, time.perf_counter() - t0)

    # ------------------------------------------------------------ internals
    def _step(self, i: int) -> None:
        rep = self.replicas[i]
        eng = rep.engine
        result = eng.step(rep.scheduler.schedule(eng))
        rep._on_step(result)
        if eng.now_s > self.now_s:
            self.now_s = eng.now_s
        if not eng.awaiting_arrival and not eng.done:
            heapq.heappush(self._heap, (eng.now_s, i))

    def _close(self) -> None:
        for rep in self.replicas:
            eng = rep.engine
            was_waiting = eng.awaiting_arrival
            eng.close_arrivals()
            if was_waiting and not eng.done:
                heapq.heappush(self._heap, (eng.now_s, rep.index))


def _progress(show: bool, total: int):
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    bar = Progress(TextColumn("[bold]cluster"), BarColumn(), MofNCompleteColumn(), TextColumn("routed"),
                   TimeElapsedColumn())
    bar.start()
    return bar, bar.add_task("routed", total=total)


def _imbalance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return max(values) / mean if mean > 0 else 1.0


def replica_row(rep: ReplicaState) -> dict:
    """One replica's own metrics (``metrics.summarize`` of its engine) plus its name and load."""
    row = summarize(rep.engine)
    row.pop("wall_s")
    row.pop("steps_per_s")
    return {"replica": rep.index, "preset": rep.spec.preset,
            "scheduler": getattr(rep.scheduler, "name", str(rep.spec.scheduler)), "routed": rep.routed, **row}


def cluster_metrics(cluster: Cluster, wall_s: float = 0.0, per_replica: bool = True) -> dict:
    """Every single-replica summary key pooled over the cluster (``metrics.summarize`` of all
    engines), plus ``replicas`` (R), ``router``, ``load_imbalance``, ``requests_imbalance``,
    ``gpu_seconds`` (busy, summed), ``gpu_seconds_provisioned`` (makespan x GPUs) and, with
    ``per_replica``, one row per replica under ``per_replica``."""
    engines = cluster.engines
    s = summarize(engines, wall_s)
    busy = [e.busy_s * e.config.num_gpus for e in engines]
    s["replicas"] = cluster.num_replicas
    s["router"] = getattr(cluster.router, "spec", getattr(cluster.router, "name", None))
    s["load_imbalance"] = _imbalance(busy)
    s["requests_imbalance"] = _imbalance([r.routed for r in cluster.replicas])
    s["gpu_seconds"] = s["gpu_busy_s"]
    s["gpu_seconds_provisioned"] = s["makespan_s"] * s["num_gpus"]
    if per_replica:
        s["per_replica"] = [replica_row(r) for r in cluster.replicas]
    return s


def simulate_cluster(workload, replicas: Sequence[ReplicaSpec], router: Router | str,
                     progress: bool = False, per_replica: bool = True) -> dict:
    """One cluster simulation: build the workload (a WorkloadConfig or specs), run, summarise."""
    from .workload import WorkloadConfig, build_workload
    specs = build_workload(workload) if isinstance(workload, WorkloadConfig) else list(workload)
    c = Cluster(replicas, router)
    s = c.run(specs, progress=progress)
    if not per_replica:
        s.pop("per_replica")
    return s


def cluster_goodput(workload, replicas: Sequence[ReplicaSpec], router: str,
                    rates: Sequence[float] = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64), threshold: float = 0.9,
                    refine: int = 4) -> dict:
    """Goodput of a cluster: the highest rate (requests/s, or trace rate scale) with pooled
    SLO attainment >= ``threshold`` (``simulate.sweep_goodput``), and ``goodput_per_gpu`` = that
    rate / the cluster's GPU count."""
    from .simulate import sweep_goodput, with_rate

    def attainment(r: float) -> float:
        return simulate_cluster(with_rate(workload, r), replicas, router, per_replica=False)["slo_attainment"]

    out = sweep_goodput(attainment, rates, threshold, refine)
    gpus = sum(r.config.num_gpus for r in replicas)
    out["num_gpus"] = gpus
    out["goodput_per_gpu"] = out["goodput"] / gpus
    out["unit"] = "rate scale" if workload.arrival == "trace" else "requests/s"
    return out
