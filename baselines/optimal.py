"""The optimal schedule bound: a CP-SAT model of the whole batch schedule, and its replay.

Following InferMax (Kim et al., "The Effect of Scheduling and Preemption on the Efficiency of LLM
Inference Serving"), the schedule of a small workload is a constraint problem over batches
j = 0..J-1 and requests i. Its solution is replayed through the engine by the ``optimal``
scheduler, so its metrics come from the same code as every heuristic's.

Model (units: tokens, KV blocks, integer time units of ``unit_s`` seconds)
--------------------------------------------------------------------------
State after batch j, per request: ``k`` (KV tokens resident = the engine's ``num_computed``),
``g`` (output tokens emitted), ``d`` (finished), ``dec`` (past its current prefill). Decisions:
``c`` (tokens in batch j) and ``p`` (evicted just before batch j). With P the prompt length and O
the output length, the engine's phase logic reduces to one rule, because the prefill target is
always ``P + g`` (P at first, ``P + generated`` after a recompute preemption, and unchanged while
prefilling):

* ``k_before = 0`` if evicted else ``k[j-1]``; ``k = k_before + c`` (0 once finished);
* ``k <= P + g[j-1]``: a prefill chunk may be anything up to what remains, and a decoding request
  (``k_before = P + g - 1``) can take only 1 token;
* the batch emits a token for the request iff ``k == P + g[j-1]`` (prefill completed, or decode);
* a request is *decoding* in batch j iff it runs and has emitted since its last (re)prefill began
  (the engine's classification, which the cost model needs: a 1-token last chunk of a prefill is
  not a decode);
* eviction needs KV (``k[j-1] >= 1``), an unfinished request, and no tokens in the same batch
  (the engine forbids both); the ``--no-preemption`` switch fixes every eviction flag to 0.

Per batch: tokens <= ``max_num_batched_tokens``; requests holding KV during the batch (including
those that finish in it, as the engine counts them) <= ``max_num_seqs``; KV blocks
``sum ceil(k / block_size)`` after the batch <= ``num_kv_blocks`` (the engine checks before
freeing finished requests, and so does the model). Every request finishes by batch J-1.
Used batches come first (``u[j] >= u[j+1]``); an unused batch has no tokens and no latency.

Time and arrivals: batch j starts at ``S_j = max(E_{j-1}, arrival of each member)`` and ends at
``E_j = S_j + L_j``, exactly the engine's clock when the replay idles (empty plans, which jump to
the next arrival) until the batch's members have arrived. Idling never helps any objective here
(tokens are emitted at batch ends), so the model never idles otherwise. ``L_j`` is the batch
latency from ``baselines.optimal_cost`` (exact up to coefficient rounding).

Prefix caching: the model has none (a preempted request recomputes its whole KV, as in vLLM
without prefix caching), so every engine this module runs, the heuristics' and the replay's, has
``prefix_caching`` off (``without_prefix_cache``); values and bounds are for that engine.

Objectives: ``gpu_time`` minimises GPU busy seconds (sum of L_j x GPUs, InferMax's measure);
``slo`` maximises the requests meeting their SLO exactly as ``llmsched_env.metrics`` defines it
(TTFT, and the numpy-interpolated P99 of the request's token gaps, encoded exactly through its two
order statistics); ``return`` maximises the env's episode return: requests meeting their SLO -
``lam`` x GPU busy seconds x GPUs.

The number of batches J
-----------------------
J is bounded from a heuristic's schedule (see :func:`batch_bound`): a schedule of J batches costs
at least J x (the cheapest possible batch), so for ``gpu_time`` no schedule better than the best
heuristic's cost H has more than H / L_min batches; for ``return`` (lam > 0) likewise from the best
heuristic's return; without preemption no schedule has more batches than tokens to process,
sum(P + O - 1). Those bounds are rigorous: an OPTIMAL status is optimal over *all* schedules. For
``slo`` with preemption no finite bound is known; J = sum(P + O - 1) is then an assumption, and
the result says ``j_rigorous = False``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from ortools.sat.python import cp_model

from llmsched_env.cost_model import BatchShape, CalibratedCostModel, CostModel, InferMaxCostModel
from llmsched_env.engine import Engine, EngineConfig
from llmsched_env.plan import BatchPlan, PlanError
from llmsched_env.request import RequestSpec
from llmsched_env.scheduler import NeedsOptions, register

from .optimal_cost import check_supported, choose_unit_s, latency_expr, min_batch_latency_s, Features

OBJECTIVES = ("gpu_time", "slo", "return")
SOLVER_MEMORY_MB = 3500  # default cap of the CP-SAT process: a search ends with what it has before 4 GB
#: relative tolerance within which a schedule's GPU time equal to the relaxation bound is optimal
#: (both are sums of the same float coefficients; 1e-9 is far below any cost difference)
BOUND_MATCH = 1e-9


class BuildTimeout(TimeoutError):
    """The time limit ended while a model was being built (``solve`` then reports the best known
    schedule with status UNKNOWN); ``model`` is the model cut short."""

    def __init__(self, message: str, model=None):
        super().__init__(message)
        self.model = model


# --------------------------------------------------------------------------- heuristic schedules
@dataclass
class RecordedRun:
    """A scheduler's run on the engine: its metrics summary and its nonempty batches, in order."""

    name: str
    summary: dict
    plans: list[BatchPlan]
    latency_s: list[float] = field(default_factory=list)  # engine latency of each batch, seconds


def without_prefix_cache(config: EngineConfig) -> EngineConfig:
    """``config`` with prefix caching off: the engine the model describes (module docstring)."""
    return replace(config, prefix_caching=False) if config.prefix_caching else config


def record_run(specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel, scheduler) -> RecordedRun:
    """Run ``scheduler`` to completion (prefix caching off) and keep its batches (idle steps
    dropped; evictions of a preempt-only step carried to the next batch, where the engine's
    effect is the same)."""
    from llmsched_env.simulate import run

    config = without_prefix_cache(config)
    plans: list[BatchPlan] = []
    lats: list[float] = []
    carried: set[int] = set()

    def on_step(engine, plan, result):
        nonlocal carried
        if plan.tokens:
            plans.append(BatchPlan(dict(plan.tokens), set(plan.preempt) | carried))
            lats.append(result.latency_s)
            carried = set()
        else:
            carried |= set(plan.preempt)

    summary = run(Engine(specs, config, cost), scheduler, on_step=on_step)
    return RecordedRun(getattr(scheduler, "name", type(scheduler).__name__), summary, plans, lats)


def objective_value(summary: dict, objective: str, lam: float) -> float:
    """An objective in natural units from a metrics summary (GPU-seconds, requests, or return)."""
    if objective == "gpu_time":
        return summary["gpu_busy_s"]
    if objective == "slo":
        return float(summary["num_slo_met"])
    return summary["num_slo_met"] - lam * summary["gpu_busy_s"]


def better(a: float, b: float, objective: str) -> bool:
    return a < b if objective == "gpu_time" else a > b


RESERVE = "reserve (hint only)"


class ReserveScheduler:
    """A schedule that never preempts, for hints and J bounds (not registered: it reads the true
    output lengths). FCFS with chunked prefill; a request is admitted only while the KV blocks
    that every admitted request will need at its longest (prompt + output - 1 tokens) fit, so the
    cache can never overflow."""

    name = RESERVE

    def reset(self) -> None:
        pass

    def schedule(self, engine) -> BatchPlan:
        cfg = engine.config
        budget = cfg.max_num_batched_tokens
        final = lambda r: engine.blocks_for(r.prompt_len + r.output_len - 1)  # noqa: E731
        reserved = sum(final(r) for r in engine.running.values())
        tokens = {}
        for r in engine.running.values():
            if budget <= 0:
                break
            n = min(r.tokens_owed, budget)
            tokens[r.rid] = n
            budget -= n
        resident = len(engine.running)
        for r in engine.iter_waiting():
            if budget <= 0 or resident >= cfg.max_num_seqs or reserved + final(r) > cfg.num_kv_blocks:
                break
            n = min(r.tokens_owed, budget)
            tokens[r.rid] = n
            budget -= n
            reserved += final(r)
            resident += 1
        return BatchPlan(tokens)


PACKED = "prefill packing (hint only)"
PACK_MAX_REQUESTS = 10  # the search is exponential in the requests (at most (J_p)^n assignments)
PACK_MAX_NODES = 200_000  # search nodes per batch count (each a partial assignment), to bound its time


def packed_prefill_plans(specs: Sequence[RequestSpec], config: EngineConfig, extra_batches: int = 1,
                         deadline: Optional[float] = None, lone: bool = False) -> list[list[BatchPlan]]:
    """Offline schedules that pack prompts into the fewest prefill batches, every request arrived
    (``gpu_time`` candidates, not registered: they read the true output lengths).

    Only for at most ``PACK_MAX_REQUESTS`` requests, where the cache holds every request at its
    longest and every prompt fits the token budget B (otherwise ``[]``). For J_p = ceil(sum P /
    B) .. + ``extra_batches`` prefill batches, an exhaustive search assigns each request's last
    prefill chunk to one of them; a batch whose last chunks exceed B gives its excess, as first
    chunks of its largest prompts, to the free room of earlier batches (the split that
    ``baselines.prefill_packing`` prices). A request skips decoding in the prefill
    batches after its own as far as its slack allows, then decodes every batch until done.
    The search minimises the batch count max_i(batch of i + O_i) (the longest requests go
    early), then the split tokens, then the split chunks. Returns one plan list per J_p that
    has an assignment; with ``lone``, also one per (request, prefill batch) that holds that
    request's prompt alone (a cost model that charges batches with several prefills more, as
    InferMax's multi-batch factor, may prefer it). Cost: at most J_p^n assignments, pruned by
    the best so far, and at most ``PACK_MAX_NODES`` nodes (or until ``deadline``, a
    ``time.perf_counter()`` value) per search."""
    cfg = config
    bs, B = cfg.block_size, cfg.max_num_batched_tokens
    reqs = sorted(specs, key=lambda s: (-s.output_len, -s.prompt_len, s.rid))
    if (len(reqs) > min(cfg.max_num_seqs, PACK_MAX_REQUESTS) or any(s.prompt_len > B for s in reqs)
            or sum(-(-(s.prompt_len + s.output_len - 1) // bs) for s in reqs) > cfg.num_kv_blocks):
        return []
    P = [s.prompt_len for s in reqs]
    O = [s.output_len for s in reqs]
    j_p = -(-sum(P) // B)
    out = []
    for nb in range(j_p, min(len(reqs), j_p + extra_batches) + 1):
        lone_choices = [None] + ([(i, b) for i in range(len(reqs)) for b in range(nb)] if lone else [])
        for alone in lone_choices:
            for skip in (True, False) if lone else (True,):
                plans = _packed(reqs, P, O, B, nb, alone, deadline, skip)
                if plans is not None:
                    out.append(plans)
    return out


def _packed(reqs, P: list[int], O: list[int], B: int, nb: int, alone: Optional[tuple[int, int]],
            deadline: Optional[float], skip: bool = True) -> Optional[list[BatchPlan]]:
    """``packed_prefill_plans``' search for ``nb`` prefill batches (``alone``: request index i
    and batch b, i's prompt alone in b, no other chunk there; ``skip``: requests skip decoding in
    prefill batches as far as their slack allows, else decode at once), as plans, or None."""
    best: list = [None, (math.inf,)]  # [(where, pieces), (span, split tokens, split chunks)]
    load = [0] * nb
    where = [0] * len(reqs)
    nodes = [0]
    lone_i, lone_b = alone if alone is not None else (-1, -1)

    def place(i: int, span: int, over: int) -> None:
        nodes[0] += 1
        if nodes[0] % 256 == 0 and deadline is not None and time.perf_counter() > deadline:
            nodes[0] = PACK_MAX_NODES  # out of time: the search ends with what it has
        if nodes[0] >= PACK_MAX_NODES or (span, over) >= best[1][:2]:
            return
        if i == len(reqs):
            pieces = _split_pieces(where, P, O, load, B, closed=lone_b, skip=skip)
            if pieces is not None:
                rank = (span, sum(p[2] for p in pieces), len(pieces))
                if rank < best[1]:
                    best[0], best[1] = (list(where), pieces), rank
            return
        for b in range(nb):
            if (i == lone_i) != (b == lone_b):
                continue
            before = max(0, load[b] - B)
            load[b] += P[i]
            if b > 0 or load[b] <= B:  # the first batch has no earlier room to give its excess to
                where[i] = b
                place(i + 1, max(span, b + O[i]), over + max(0, load[b] - B) - before)
            load[b] -= P[i]

    place(0, 0, 0)  # (span, over): lower bounds of the rank, pruning
    if best[0] is None:
        return None
    (where, pieces), (span, _, _) = best
    given = {i: size for i, _, size in pieces}
    decodes = _decode_batches(where, O, nb, span, skip)
    plans = []
    for j in range(span):
        tokens = {reqs[i].rid: size for i, b, size in pieces if b == j}
        tokens.update({reqs[i].rid: P[i] - given.get(i, 0) for i, b in enumerate(where) if b == j})
        tokens.update({reqs[i].rid: 1 for i in range(len(reqs)) if j in decodes[i]})
        if tokens:
            plans.append(BatchPlan(tokens))
    return plans


def _decode_batches(where: list[int], O: list[int], nb: int, span: int, skip: bool = True) -> list[set[int]]:
    """The batches each request decodes in: it skips the prefill batches after its own as far as
    its slack in ``span`` batches allows (leaving their room to prompts; with ``skip`` only),
    then decodes every batch."""
    out = []
    for w, o in zip(where, O):
        skipped = min(max(0, nb - 1 - w), span - w - o) if skip else 0
        out.append(set(range(w + 1 + skipped, w + o + skipped)))
    return out


def _split_pieces(where: list[int], P: list[int], O: list[int], load: list[int], B: int, closed: int = -1,
                  skip: bool = True) -> Optional[list[tuple[int, int, int]]]:
    """The first chunks (request index, batch, tokens) that carry each prefill batch's excess
    over B (its last chunks and decodes, ``_decode_batches``) into the free room of earlier
    batches; largest prompts give first, one piece each, into the earliest batch with room (not
    ``closed``, which holds one prompt alone). None if some excess finds no room."""
    nb = len(load)
    span = max(w + o for w, o in zip(where, O))
    decodes = _decode_batches(where, O, nb, span, skip)
    free = [B - load[b] - sum(b in d for d in decodes) for b in range(nb)]
    if free[0] < 0:
        return None
    pieces = []
    for b in range(1, nb):
        for i in sorted((i for i, w in enumerate(where) if w == b), key=lambda i: -P[i]):
            if free[b] >= 0:
                break
            for e in range(b):
                if e == closed:
                    continue
                size = min(-free[b], P[i] - 1, free[e])
                if size > 0:
                    pieces.append((i, e, size))
                    free[e] -= size
                    free[b] += size
                    break
        if free[b] < 0:
            return None
    return pieces


PACED = "paced prefill (hint only)"


def paced_prefill_plans(specs: Sequence[RequestSpec], config: EngineConfig, spans: int = 8,
                        sizes: Optional[Sequence[int]] = None) -> list[list[BatchPlan]]:
    """Offline schedules that spread prefill as evenly as the requests' deadlines allow, every
    request arrived (``gpu_time`` candidates, not registered: they read the true output lengths).

    For J = max O .. max O + ``spans`` - 1 batches, request i must emit its first token by batch
    J - O_i; the prompt tokens follow the taut string of those deadlines (the least concave
    majorant of D_t, the prompts due by batch t: the most even pacing, which the relaxation of
    ``baselines.bound.deadline_tokens_s`` prices), earliest deadline first, on top of a decode of
    every request past its prefill; once the prompts are done every unfinished request decodes
    each batch. With ``sizes`` (ascending batch sizes, tokens: e.g. the knots of the token cost's
    lower convex envelope, where the cost equals the envelope), a batch that prefills is rounded
    up to the next of them (unless that more than doubles it), so that batches alternate between
    sizes the envelope prices exactly.
    Only where the cache holds every request at its longest and the sequence limit all of them
    (otherwise ``[]``)."""
    from .bound import least_concave_majorant

    cfg = config
    B, bs = cfg.max_num_batched_tokens, cfg.block_size
    if (len(specs) > cfg.max_num_seqs
            or sum(-(-(s.prompt_len + s.output_len - 1) // bs) for s in specs) > cfg.num_kv_blocks):
        return []
    longest = max(s.output_len for s in specs)
    out = []
    for J in range(longest, longest + spans):
        due = sorted(specs, key=lambda s: (J - s.output_len, s.rid))
        step: dict[int, int] = {}
        for s in due:  # D_t steps up by P at each deadline t = J - O
            step[J - s.output_len] = step.get(J - s.output_len, 0) + s.prompt_len
        pts = [(-1, 0)]
        for t in sorted(step):
            pts.append((t, pts[-1][1] + step[t]))
        hull = least_concave_majorant(pts)
        left = {s.rid: s.prompt_len for s in due}
        emitted = {s.rid: 0 for s in due}
        plans, done, seg = [], 0, 0
        j = 0
        while any(emitted[s.rid] < s.output_len for s in due):
            tokens = {s.rid: 1 for s in due if left[s.rid] == 0 and 0 < emitted[s.rid] < s.output_len}
            while seg + 1 < len(hull) and hull[seg + 1][0] < j:
                seg += 1
            if seg + 1 < len(hull):  # cumulative prompt tokens due by batch j on the taut string
                (x0, y0), (x1, y1) = hull[seg], hull[seg + 1]
                target = y0 + (y1 - y0) * (j - x0) // (x1 - x0)
            else:
                target = hull[-1][1]
            room = min(max(0, target - done), B - len(tokens))
            if sizes and room > 0:  # the next size, unless that more than doubles the batch
                size = min(next((k for k in sizes if k >= len(tokens) + room), B), B)
                room = size - len(tokens) if size <= 2 * (len(tokens) + room) else room
            for s in due:
                if room <= 0:
                    break
                if left[s.rid] > 0:
                    n = min(left[s.rid], room)
                    tokens[s.rid] = n
                    left[s.rid] -= n
                    done += n
                    room -= n
            for rid in tokens:
                if left[rid] == 0:
                    emitted[rid] += 1
            if tokens:
                plans.append(BatchPlan(tokens))
            j += 1
        out.append(plans)
    return out


def heuristic_runs(specs, config, cost, skip=("optimal",), deadline: Optional[float] = None
                   ) -> dict[str, RecordedRun]:
    """Every registered scheduler that builds with default options and finishes the workload.

    Schedulers that cannot be built from their name (``NeedsOptions``: ``optimal`` needs a
    solution) or refuse the workload by design (``WorkloadNotServable``) are left out, as are
    those in ``skip``. ``deadline`` (a ``time.perf_counter()`` value): no new scheduler is started
    after it (at least one is always run, so there is a schedule to report).
    """
    from llmsched_env.scheduler import NeedsOptions, WorkloadNotServable, heuristic_schedulers, make_scheduler

    out = {}
    for name in heuristic_schedulers():
        if name in skip:
            continue
        if out and deadline is not None and time.perf_counter() > deadline:
            break
        try:
            out[name] = record_run(specs, config, cost, make_scheduler(name))
        except (NeedsOptions, WorkloadNotServable):
            continue  # documented: needs a solution/model, or refuses this workload by design
    return out


# --------------------------------------------------------------------------- the J bound
def batch_bound(specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel, objective: str,
                preemption: bool, incumbent: Optional[float], incumbent_batches: int, lam: float
                ) -> tuple[int, bool, str]:
    """(J, rigorous, why): how many batches the model gets, whether J provably cannot cut off a
    better schedule, and a one-line explanation. ``incumbent`` is the best known objective value
    (natural units), ``incumbent_batches`` that schedule's batch count."""
    tokens = sum(s.prompt_len + s.output_len - 1 for s in specs)
    l_min = min_batch_latency_s(cost, min(s.prompt_len for s in specs))
    g = config.num_gpus
    cands = []
    if not preemption:
        cands.append((tokens, f"tokens to process sum(P+O-1) = {tokens} (each batch >= 1 token)"))
    if incumbent is not None and objective == "gpu_time":
        j = math.floor(incumbent / g / l_min * (1 + 1e-9))
        cands.append((j, f"best heuristic's {incumbent / g:.6g} busy s / cheapest batch {l_min:.6g} s = {j}"))
    if incumbent is not None and objective == "return" and lam > 0:
        j = math.floor((len(specs) - incumbent) / (lam * g * l_min) * (1 + 1e-9))
        cands.append((j, f"(requests - best heuristic's return) / (lam x GPUs x cheapest batch "
                         f"{l_min:.6g} s) = {j}"))
    if cands:
        j, why = min(cands)
        rigorous = True
    else:
        j, why, rigorous = tokens, (f"tokens sum(P+O-1) = {tokens}: an assumption (no finite bound is "
                                    "known for this objective with preemption)"), False
    if j < incumbent_batches:
        j, why = incumbent_batches, f"the hint's {incumbent_batches} batches"
    return max(1, j), rigorous, why


# --------------------------------------------------------------------------- the model
@dataclass
class SolveResult:
    """Outcome of :func:`solve`. Objective and bound in natural units (GPU-seconds for
    ``gpu_time``, requests for ``slo``, return for ``return``); None where there is none.

    Attributes:
        status: CP-SAT status name (OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN).
        objective, bound, gap: the best schedule's value (replayed on the engine with the real
            cost model; the model's own value differs by its coefficient rounding), the proven
            bound, |obj - bound| / max(1, |obj|).
        solve_s: solver wall time, seconds.
        num_batches: J, the batches the model had; ``batches_used`` those the solution uses.
        j_rigorous, j_why: whether J provably does not cut off better schedules, and why.
        plans: the solution's batches (replay them with the ``optimal`` scheduler).
        model_latency_s: the model's latency of each used batch, seconds.
        unit_s: the model's integer time unit, seconds.
        hint: name and objective of the heuristic schedule given as a hint (None if none).
        heuristics: objective value of every heuristic run, natural units.
        solutions: (wall s, objective, bound) of every improving solution.
        build_s: seconds before the search (heuristics, model, hint).
        source: where the reported schedule comes from: "solver", "hint: NAME" (the solver
            found nothing better), or "heuristic: NAME (why)" (the solver never ran).
        model: the ScheduleModel built (whole or cut by the limit; None if none), kept so that
            it is destroyed when the result is dropped, not inside the call's time limit:
            destroying 10^5-10^6 CP-SAT constraints takes seconds.
    """

    status: str
    objective: Optional[float]
    bound: Optional[float]
    gap: Optional[float]
    solve_s: float
    num_batches: int
    batches_used: int
    j_rigorous: bool
    j_why: str
    plans: list[BatchPlan]
    model_latency_s: list[float]
    unit_s: float
    objective_name: str
    preemption: bool
    hint: Optional[tuple[str, float]] = None
    heuristics: dict = field(default_factory=dict)
    solutions: list = field(default_factory=list)
    build_s: float = 0.0
    source: str = "solver"
    model: object = field(default=None, repr=False, compare=False)

    @property
    def proven(self) -> bool:
        return self.status == "OPTIMAL"

    def to_dict(self) -> dict:
        return {"status": self.status, "objective": self.objective_name, "value": self.objective,
                "bound": self.bound, "gap": self.gap, "solve_s": self.solve_s, "build_s": self.build_s,
                "preemption": self.preemption, "num_batches": self.num_batches,
                "batches_used": self.batches_used, "j_rigorous": self.j_rigorous, "j_why": self.j_why,
                "unit_s": self.unit_s, "hint": self.hint, "heuristics": self.heuristics, "source": self.source,
                "solutions": self.solutions,
                "plans": [{"tokens": p.tokens, "preempt": sorted(p.preempt)} for p in self.plans],
                "model_latency_s": self.model_latency_s}


class ScheduleModel:
    """The CP-SAT model of a workload's batch schedule (see the module docstring).

    Args:
        specs: the requests (every one must fit the config, as the engine checks).
        config: engine limits.
        cost: the engine's cost model.
        num_batches: J.
        objective: "gpu_time", "slo" or "return".
        preemption: allow evictions.
        lam: GPU-second price of the ``return`` objective (per GPU-second).
        deadline: a ``time.perf_counter()`` value; building raises BuildTimeout once it passes.
    """

    def __init__(self, specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel, num_batches: int,
                 objective: str = "gpu_time", preemption: bool = True, lam: float = 1.0,
                 deadline: Optional[float] = None):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} must be one of {', '.join(OBJECTIVES)}")
        if lam < 0:
            raise ValueError(f"lam={lam} must be >= 0 (price per GPU-second)")
        if num_batches < 1:
            raise ValueError(f"num_batches={num_batches} must be >= 1")
        check_supported(cost)
        Engine(specs, config, cost)  # the engine's workload checks (raises WorkloadRejected)
        self.specs = sorted(specs, key=lambda s: (s.arrival_s, s.rid))
        self.config, self.cost, self.J = config, cost, num_batches
        self.objective, self.preemption, self.lam = objective, preemption, lam
        self.unit_s = choose_unit_s(cost)
        self.deadline = deadline
        self.m = cp_model.CpModel()
        self._build()

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise BuildTimeout(f"time limit reached while building the {self.J}-batch model", self)

    def q_time(self, seconds: float, up: bool) -> int:
        """A time in integer units, rounded up (arrivals) or down (deadlines)."""
        x = seconds / self.unit_s
        return int(math.ceil(x - 1e-9)) if up else int(math.floor(x + 1e-9))

    # ---------------------------------------------------------------- variables and constraints
    def _build(self) -> None:
        m, cfg, J = self.m, self.config, self.J
        n = len(self.specs)
        bs = cfg.block_size
        budget = min(cfg.max_num_batched_tokens, sum(s.prompt_len + s.output_len for s in self.specs))
        self.budget = budget
        max_o = max(s.output_len for s in self.specs)
        self.u = [m.new_bool_var(f"u{j}") for j in range(J)]
        for j in range(J - 1):
            m.add_implication(self.u[j + 1], self.u[j])
        for j in range(min(J, max_o)):  # each batch emits at most one token per request
            m.add(self.u[j] == 1)
        false = m.new_constant(0)
        self.cells: list[list[dict]] = []  # [i][j]
        for i, s in enumerate(self.specs):
            P, O = s.prompt_len, s.output_len
            k_ub = P + O - 1
            row = []
            k_prev, g_prev, dec_prev, d_prev = 0, 0, false, false
            for j in range(J):
                if j % 16 == 0:
                    self._check_deadline()
                t = f"_{s.rid}_{j}"
                c = m.new_int_var(0, min(k_ub, budget), "c" + t)
                x = m.new_bool_var("x" + t)
                e = m.new_bool_var("e" + t)
                k = m.new_int_var(0, k_ub, "k" + t)
                g = m.new_int_var(0, O, "g" + t)
                d = m.new_bool_var("d" + t)
                dec = m.new_bool_var("dec" + t)
                is_d = m.new_bool_var("isd" + t)
                is_p = m.new_bool_var("isp" + t)
                cp = m.new_int_var(0, min(k_ub, budget), "cp" + t)
                m.add(c >= 1).only_enforce_if(x)
                m.add(c == 0).only_enforce_if(~x)
                m.add_implication(d_prev, ~x)
                if self.preemption and j > 0:
                    p = m.new_bool_var("p" + t)
                    m.add_implication(p, ~x)
                    m.add_implication(p, ~d_prev)
                    m.add(k_prev >= 1).only_enforce_if(p)
                    kb = m.new_int_var(0, k_ub, "kb" + t)
                    m.add(kb == k_prev).only_enforce_if(~p)
                    m.add(kb == 0).only_enforce_if(p)
                    keep = m.new_bool_var("keep" + t)  # dec_prev and not evicted
                    m.add_bool_and([dec_prev, ~p]).only_enforce_if(keep)
                    m.add_bool_or([~dec_prev, p, keep])
                else:
                    p = false
                    kb = k_prev if not isinstance(k_prev, int) else m.new_constant(k_prev)
                    keep = dec_prev
                m.add(k == kb + c).only_enforce_if(~d_prev)
                m.add(k == 0).only_enforce_if(d_prev)
                m.add(k <= P + g_prev)
                m.add(k >= P + g_prev).only_enforce_if(e)
                m.add(k <= P + g_prev - 1).only_enforce_if(~e)
                m.add(g == g_prev + e)
                m.add(g >= O).only_enforce_if(d)
                m.add(g <= O - 1).only_enforce_if(~d)
                # phase: decoding iff running and past the current prefill
                m.add_bool_and([x, dec_prev]).only_enforce_if(is_d)
                m.add_bool_or([~x, ~dec_prev, is_d])
                m.add(is_p + is_d == x)
                m.add(cp == c - is_d)
                m.add_bool_or([e, keep]).only_enforce_if(dec)
                m.add_implication(e, dec)
                m.add_implication(keep, dec)
                m.add_implication(x, self.u[j])
                row.append(dict(c=c, x=x, e=e, k=k, g=g, d=d, dec=dec, is_d=is_d, is_p=is_p, cp=cp, p=p,
                                kb=kb, cp_ub=min(k_ub, budget), k_ub=k_ub, g_prev=g_prev, d_prev=d_prev))
                k_prev, g_prev, dec_prev, d_prev = k, g, dec, d
            m.add(row[-1]["d"] == 1)
            self.cells.append(row)

        # per-batch limits and latency
        self.lat = []
        self.features = []
        c2_ub = sum(min(s.prompt_len + s.output_len - 1, budget) ** 2 for s in self.specs)
        ck_ub = sum(min(s.prompt_len + s.output_len - 1, budget) * (s.prompt_len + s.output_len) for s in self.specs)
        kv_ub = sum(s.prompt_len + s.output_len for s in self.specs)
        bounds = dict(c2=c2_ub, ck=ck_ub, ctx=kv_ub, kv=kv_ub)
        for j in range(J):
            self._check_deadline()
            col = [self.cells[i][j] for i in range(n)]
            m.add(sum(c["c"] for c in col) <= budget)
            m.add(sum(c["c"] for c in col) >= 1).only_enforce_if(self.u[j])
            if cfg.max_num_seqs < n:
                nz = []
                for c in col:
                    b = m.new_bool_var("res")
                    m.add(c["k"] <= c["k_ub"] * b)
                    nz.append(b)
                m.add(sum(nz) <= cfg.max_num_seqs)
            if cfg.num_kv_blocks * bs < kv_ub:
                blocks = []
                for c in col:
                    if bs == 1:
                        blocks.append(c["k"])
                    else:
                        b = m.new_int_var(0, -(-c["k_ub"] // bs), "blk")
                        m.add(b * bs >= c["k"])
                        blocks.append(b)
                m.add(sum(blocks) <= cfg.num_kv_blocks)
            f = Features(m, col, budget)
            expr = latency_expr(self.cost, f, self.unit_s, bounds)
            ub = int(math.ceil(self.cost.batch_time(BatchShape.from_requests(
                prefills=[(budget, kv_ub)], decode_contexts=[kv_ub] * n, completed_prefills=n)) * 2 / self.unit_s)) + 10
            L = m.new_int_var(0, ub, f"L{j}")
            self.lat_ub = ub
            m.add(L == expr).only_enforce_if(self.u[j])
            m.add(L == 0).only_enforce_if(~self.u[j])
            self.lat.append(L)
            self.features.append(f)
        self.busy = sum(self.lat)

        arrivals = [self.q_time(s.arrival_s, up=True) for s in self.specs]
        need_time = self.objective != "gpu_time" or any(a > arrivals[0] for a in arrivals)
        self.met = []
        if need_time:
            self._build_time(arrivals)
        if self.objective != "gpu_time":
            self._build_slo(arrivals)
        g = cfg.num_gpus
        if self.objective == "gpu_time":
            self.obj_expr = self.busy
            self.m.minimize(self.obj_expr)
        elif self.objective == "slo":
            self.obj_expr = sum(self.met)
            self.m.maximize(self.obj_expr)
        else:
            # met x W - lam x GPUs x unit_s x W x busy, with W making the price an integer >= 1000
            # (the price is then rounded by < 0.05%; reported returns are recomputed exactly)
            price = self.lam * g * self.unit_s
            self.w = max(1, int(math.ceil(1000 / price * (1 - 1e-12)))) if price > 0 else 1
            self.obj_expr = self.w * sum(self.met) - int(round(price * self.w)) * self.busy
            self.m.maximize(self.obj_expr)
        self.hint_raw = None
        self.hint_plans: list[BatchPlan] = []
        self.hint_latency_s: list[float] = []

    def _build_time(self, arrivals: list[int]) -> None:
        m, J = self.m, self.J
        horizon = max(arrivals) + J * self.lat_ub
        self.start, self.end = [], []
        prev_end = min(arrivals)
        for j in range(J):
            self._check_deadline()
            terms = [prev_end]
            for i, a in enumerate(arrivals):
                if a > arrivals[0]:
                    t = m.new_int_var(0, a, "arr")
                    m.add(t == a).only_enforce_if(self.cells[i][j]["x"])
                    m.add(t == 0).only_enforce_if(~self.cells[i][j]["x"])
                    terms.append(t)
            if len(terms) > 1:
                s = m.new_int_var(0, horizon, f"S{j}")
                m.add_max_equality(s, terms)
            else:
                s = prev_end
            end = m.new_int_var(0, horizon, f"E{j}")
            m.add(end == s + self.lat[j])
            self.start.append(s)
            self.end.append(end)
            prev_end = end
        self.horizon = horizon

    def _build_slo(self, arrivals: list[int]) -> None:
        """met_i -> TTFT and P99-TBT targets hold (metrics.py's definitions, exactly)."""
        m, J = self.m, self.J
        for i, s in enumerate(self.specs):
            self._check_deadline()
            met = m.new_bool_var(f"met{s.rid}")
            self.met.append(met)
            row = self.cells[i]
            ttft = self.q_time(s.ttft_slo_s, up=False) if math.isfinite(s.ttft_slo_s) else None
            tbt = self.q_time(s.tbt_slo_s, up=False) if math.isfinite(s.tbt_slo_s) else None
            gaps = s.output_len - 1
            # emitted[j]: g >= 1 after batch j
            started = []
            for j in range(J):
                b = m.new_bool_var("ge1")
                m.add(row[j]["g"] >= 1).only_enforce_if(b)
                m.add(row[j]["g"] <= 0).only_enforce_if(~b)
                started.append(b)
            if ttft is not None:
                if ttft < 0:
                    m.add(met == 0)
                for j in range(J):
                    first = [met, row[j]["e"]] + ([~started[j - 1]] if j else [])
                    m.add(self.end[j] <= arrivals[i] + ttft).only_enforce_if(first)
            if tbt is None or gaps == 0:
                continue
            # numpy percentile(gaps, 99), linear: order statistics lo and lo+1 (ascending, 0-based)
            num = 99 * (gaps - 1)
            lo = num // 100
            frac = num - 100 * lo  # in hundredths
            top_lo = gaps - 1 - lo  # gaps allowed above V_lo (the lo-th order statistic)
            top_hi = max(0, top_lo - 1)  # gaps allowed above V_hi
            last = []  # time of the last emission after batch j
            for j in range(J):
                t = m.new_int_var(0, self.horizon, "last")
                m.add(t == self.end[j]).only_enforce_if(row[j]["e"])
                if j:
                    m.add(t == last[j - 1]).only_enforce_if(~row[j]["e"])
                last.append(t)
            v_hi = m.new_int_var(0, self.horizon, "vhi")
            v_lo = m.new_int_var(0, self.horizon, "vlo")
            ex_hi, ex_lo = [], []
            for j in range(1, J):
                is_gap = [met, row[j]["e"], started[j - 1]]
                gap = self.end[j] - last[j - 1]
                a = m.new_bool_var("xhi")  # this gap is above V_hi
                b = m.new_bool_var("xlo")  # this gap is above V_lo
                m.add_implication(a, b)
                m.add(v_hi >= gap).only_enforce_if(is_gap + [~a])
                m.add(v_lo >= gap).only_enforce_if(is_gap + [~b])
                ex_hi.append(a)
                ex_lo.append(b)
            m.add(sum(ex_hi) <= top_hi)
            m.add(sum(ex_lo) <= top_lo)
            m.add((100 - frac) * v_lo + frac * v_hi <= 100 * tbt).only_enforce_if(met)

    # ---------------------------------------------------------------- hints and solutions
    def fix_plans(self, plans: Sequence[BatchPlan]) -> cp_model.CpModel:
        """A copy of the model with every decision fixed to ``plans`` (None if they don't fit J)."""
        if len(plans) > self.J:
            return None
        idx = {s.rid: i for i, s in enumerate(self.specs)}
        fixed = self.m.clone()
        for j in range(self.J):
            plan = plans[j] if j < len(plans) else BatchPlan()
            for i, s in enumerate(self.specs):
                cell = self.cells[i][j]
                fixed.add(cell["c"] == plan.tokens.get(s.rid, 0))
                if self.preemption and j > 0:
                    fixed.add(cell["p"] == int(s.rid in plan.preempt))
            if any(r not in idx for r in list(plan.tokens) + list(plan.preempt)):
                return None
            if plan.preempt and (not self.preemption or j == 0):
                return None
        return fixed

    def hint_from_plans(self, plans: Sequence[BatchPlan], time_limit_s: float = 10.0) -> Optional[float]:
        """Complete ``plans`` to a full assignment (a quick solve with the decisions fixed) and
        add it as the solver's hint. Returns the model's objective value of the plans in natural
        units, or None when they are not a feasible schedule of this model (or the completion
        did not finish within ``time_limit_s``)."""
        from .cpsat_run import solve_bounded
        fixed = self.fix_plans(plans)
        if fixed is None:
            return None
        out = solve_bounded(fixed, time.perf_counter() + time_limit_s)
        if not out.has_solution:
            return None
        self.m.clear_hints()
        proto = self.m.proto
        for idx in range(len(proto.variables)):
            var = self.m.get_int_var_from_proto_index(idx)
            self.m.add_hint(var, out.value(var))
        self.hint_raw = int(round(out.objective))
        self.hint_plans, self.hint_latency_s = self.plans_from(out)
        self.hint_value = self.exact_value(out)
        return self.hint_value

    def add_cutoff(self) -> None:
        """Only schedules at least as good as the hint's (CP-SAT's presolve can drop a hint, so
        the hint's value also becomes a constraint; the hint's schedule is the fallback)."""
        if self.hint_raw is None:
            return
        if self.objective == "gpu_time":
            self.m.add(self.obj_expr <= self.hint_raw)
        else:
            self.m.add(self.obj_expr >= self.hint_raw)

    def natural(self, raw: float) -> float:
        """A raw objective (or bound) in natural units."""
        g = self.config.num_gpus
        if self.objective == "gpu_time":
            return raw * self.unit_s * g
        if self.objective == "slo":
            return raw
        return raw / self.w

    def exact_value(self, solver) -> float:
        """The solution's objective in natural units, from its met count and busy time (no
        rounding of the price)."""
        busy_s = solver.value(self.busy) * self.unit_s * self.config.num_gpus
        if self.objective == "gpu_time":
            return busy_s
        met = sum(solver.boolean_value(v) for v in self.met)
        return float(met) if self.objective == "slo" else met - self.lam * busy_s

    def plans_from(self, solver) -> tuple[list[BatchPlan], list[float]]:
        plans, lats = [], []
        for j in range(self.J):
            if not solver.boolean_value(self.u[j]):
                break
            tokens, preempt = {}, set()
            for i, s in enumerate(self.specs):
                cell = self.cells[i][j]
                c = solver.value(cell["c"])
                if c:
                    tokens[s.rid] = int(c)
                if self.preemption and j > 0 and solver.boolean_value(cell["p"]):
                    preempt.add(s.rid)
            plans.append(BatchPlan(tokens, preempt))
            lats.append(solver.value(self.lat[j]) * self.unit_s)
        return plans, lats


class _Progress:
    """Prints each improving solution (objective, bound, gap, time) with rich; keeps the rows
    (wall s, objective, bound) in natural units."""

    def __init__(self, model, console=None):
        self.model = model
        self.console = console
        self.rows = []

    def __call__(self, wall_s: float, raw_obj: float, raw_bound: float) -> None:
        obj = self.model.natural(raw_obj)
        bound = self.model.natural(raw_bound)
        gap = _gap(obj, bound, self.model.objective)
        self.rows.append((round(wall_s, 4), obj, bound))
        if self.console is not None:
            self.console.print(f"  solution {len(self.rows):3d}  t={wall_s:7.2f} s  "
                               f"objective [bold]{obj:.6g}[/]  bound {bound:.6g}  gap {gap:.2%}")


def _gap(obj: float, bound: float, objective: str) -> float:
    scale = abs(obj) if objective == "gpu_time" else max(1.0, abs(obj))
    return abs(obj - bound) / scale if scale > 0 else 0.0


def solve(specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel, objective: str = "gpu_time",
          preemption: bool = True, time_limit_s: float = 60.0, num_workers: int = 1, lam: float = 1.0,
          max_batches: Optional[int] = None, hint: bool = True, seed: int = 0, console=None,
          heuristics: Optional[dict] = None, extra_hints: Optional[dict] = None,
          memory_limit_mb: Optional[int] = SOLVER_MEMORY_MB) -> SolveResult:
    """Solve a workload's schedule for ``objective``; see the module docstring for the model.

    Args:
        time_limit_s: wall-clock limit of the whole call, seconds: running the heuristics,
            building the model, the hint and the search all count. When it ends the call, the
            best schedule known (the solver's, else the best heuristic's) and the proven bound
            are returned; ``status`` is the solver's (UNKNOWN when it proved nothing and found
            nothing better than the hint, or never ran).
        num_workers: CP-SAT search workers (1 = deterministic for a given seed, modulo the limit).
        lam: price per GPU-second in the ``return`` objective.
        max_batches: cap J below the derived bound (then J is not rigorous).
        hint: warm-start from the best heuristic's schedule (every registered heuristic is run).
        console: a rich Console to print improving solutions on (None = silent).
        heuristics: precomputed ``heuristic_runs`` (else they are run here).
        memory_limit_mb: address-space cap of the CP-SAT process, MB (None: none); when it is
            reached the search stops and the best known schedule and bound are reported.
        extra_hints: more candidate schedules ``{name: plans}`` (e.g. the no-preemption optimum
            when solving with preemption); the best of these and the heuristic's is the hint.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} must be one of {', '.join(OBJECTIVES)}")
    if not time_limit_s > 0:
        raise ValueError(f"time limit {time_limit_s} s must be > 0")
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    check_supported(cost)
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    runs = heuristics if heuristics is not None else heuristic_runs(specs, config, cost, deadline=deadline)
    values = {name: objective_value(r.summary, objective, lam) for name, r in runs.items()
              if r.summary["num_finished"] == r.summary["num_requests"]}
    # candidates for the J bound and the hint: heuristics, plus a schedule that never preempts
    # (a preempting schedule is outside the no-preemption problem and cannot bound it)
    cands = {n: runs[n] for n in values if preemption or not any(p.preempt for p in runs[n].plans)}
    reserve = record_run(specs, config, cost, ReserveScheduler())
    cands[RESERVE] = reserve
    if objective == "gpu_time" and len({s.arrival_s for s in specs}) > 1:
        # busy time ignores idling, so a schedule planned as if every request had arrived at
        # once is valid (its replay idles until each batch's members arrive) and costs the same
        cands.update(all_arrived_runs(specs, config, cost, preemption, deadline))
    cand_values = {n: objective_value(r.summary, objective, lam) for n, r in cands.items()}
    best = None
    for name, v in cand_values.items():
        if best is None or better(v, cand_values[best], objective):
            best = name
    incumbent = cand_values[best]
    fallback = (best, cands[best], incumbent)
    lb = None
    if objective == "gpu_time":
        lb = relaxation_bound(specs, config, cost, objective, preemption, lam, _bound_time(deadline))
        if lb is not None and incumbent <= lb * (1 + BOUND_MATCH):
            # the relaxation proves the best known schedule optimal: no search is needed
            return unsolved(objective, preemption, fallback, values, len(cands[best].plans), True,
                            "not needed: the relaxation bound proves the schedule optimal",
                            time.perf_counter() - t0, "equal to the relaxation bound of baselines.bound",
                            bound=lb, status="OPTIMAL")
    inc_batches = len(cands[best].plans)
    J, rigorous, why = batch_bound(specs, config, cost, objective, preemption, incumbent, inc_batches, lam)
    if max_batches is not None and max_batches < J:
        J, rigorous, why = max_batches, False, f"capped by max_batches={max_batches}"
    left = lambda: deadline - time.perf_counter()  # noqa: E731
    try:
        m = ScheduleModel(specs, config, cost, J, objective, preemption, lam, deadline=deadline)
        hint_info = None
        hints = {best: cands[best].plans} | dict(extra_hints or {})
        if hint and hints:
            scored = []
            for name, plans in hints.items():
                if left() <= 0:
                    break
                v = m.hint_from_plans(plans, time_limit_s=min(10.0, left()))
                if v is not None:
                    scored.append((v, name, plans))
            if scored:
                v, name, plans = (min if objective == "gpu_time" else max)(scored, key=lambda t: t[0])
                if left() > 0 and m.hint_from_plans(plans, time_limit_s=min(10.0, left())) is not None:
                    hint_info = (name, v)
        if left() <= 0.05:
            raise BuildTimeout("time limit reached before the search", m)
    except BuildTimeout as e:
        return replace(unsolved(objective, preemption, fallback, values, J, rigorous, why, time.perf_counter() - t0,
                                "the time limit ended before the search started",
                                bound=relaxation_bound(specs, config, cost, objective, preemption, lam, _bound_time(deadline))),
                       model=e.model)
    build_s = time.perf_counter() - t0
    m.add_cutoff()
    cb = _Progress(m, console)
    from .cpsat_run import solve_bounded
    out = solve_bounded(m.m, deadline, num_workers, seed, memory_limit_mb=memory_limit_mb, on_solution=cb)
    status = out.status
    source = "solver"
    has_bound = out.bound is not None and not out.killed
    if out.has_solution:
        model_obj = m.exact_value(out)
        bound = model_obj if status == "OPTIMAL" else m.natural(out.bound)
        if status != "OPTIMAL" and lb is not None and bound < lb:
            bound = lb  # the relaxation proves more than the search did
        plans, lats = m.plans_from(out)
        # the model rounds coefficients: the engine's value is the schedule's, and a candidate
        # (all valued by the engine) may beat it
        real = engine_value(specs, config, cost, plans, objective, lam)
        obj = model_obj if real is None else real
        if better(incumbent, obj, objective):
            source = f"heuristic: {best} (the solver's schedule is worth {obj:.6g} on the engine)"
            plans, lats, obj = list(cands[best].plans), list(cands[best].latency_s), incumbent
        gap = _gap(obj, bound, objective)
    elif m.hint_raw is not None and status in ("UNKNOWN", "INFEASIBLE"):
        # no solution within the limit: the hint's schedule stands, with the solver's bound if it
        # proved one (the status stays UNKNOWN: the solver proved nothing about the schedule)
        obj = m.hint_value
        bound = m.natural(out.bound) if has_bound and status == "UNKNOWN" else None
        if bound is not None and ((bound > obj + 1e-9) if objective == "gpu_time" else (bound < obj - 1e-9)):
            bound = None  # stopped before any search (e.g. in presolve): no bound was proven
        rel = lb if lb is not None else relaxation_bound(specs, config, cost, objective, preemption, lam, _bound_time(deadline))
        if bound is None or (rel is not None and better(bound, rel, objective)):
            bound = rel  # the relaxation proves more than the solver did (or the solver proved nothing)
        if status == "INFEASIBLE":  # cannot be true (the hint satisfies every constraint): numerical failure
            status = "UNKNOWN (solver reported INFEASIBLE despite a feasible hint: no bound)"
        plans, lats = m.hint_plans, m.hint_latency_s
        real = engine_value(specs, config, cost, plans, objective, lam)
        obj = obj if real is None else real
        gap = None if bound is None else _gap(obj, bound, objective)
        source = f"hint: {hint_info[0] if hint_info else best}" + (f" ({out.note})" if out.note else "")
    elif status == "UNKNOWN":
        return replace(unsolved(objective, preemption, fallback, values, J, rigorous, why, build_s,
                                out.note or "the solver found no schedule within the limit", solve_s=out.wall_s,
                                bound=relaxation_bound(specs, config, cost, objective, preemption, lam, _bound_time(deadline))), model=m)
    else:
        obj = gap = bound = None
        plans, lats = [], []
    return SolveResult(status, obj, bound, gap, out.wall_s, J, len(plans), rigorous, why, plans, lats,
                       m.unit_s, objective, preemption, hint_info, values, cb.rows, build_s, source, model=m)


def engine_value(specs, config, cost, plans: Sequence[BatchPlan], objective: str, lam: float) -> Optional[float]:
    """``objective`` of replaying ``plans`` on the engine (prefix caching off, the real cost
    model), or None if the replay does not finish the workload."""
    try:
        run = record_run(specs, config, cost, OptimalScheduler(plans))
    except (PlanError, RuntimeError):
        return None
    s = run.summary
    return objective_value(s, objective, lam) if s["num_finished"] == s["num_requests"] else None


def all_arrived_runs(specs, config, cost, preemption: bool, deadline: Optional[float] = None
                     ) -> dict[str, RecordedRun]:
    """Every heuristic's schedule (and the never-preempting reserve schedule) planned as if every
    request had arrived at t = 0; names end in "(all arrived)". For the ``gpu_time`` objective
    only: replayed on the real arrivals, a schedule idles until each batch's members have arrived,
    with the same batches and busy time. Schedules that preempt are left out when ``preemption``
    is off."""
    at_once = [replace(s, arrival_s=0.0) for s in specs]
    runs = heuristic_runs(at_once, config, cost, deadline=deadline)
    runs[RESERVE] = record_run(at_once, config, cost, ReserveScheduler())
    lone = isinstance(cost, InferMaxCostModel) and cost.multi_factor > 1
    knots = None
    if isinstance(cost, CalibratedCostModel):  # its token cost is not convex: pace at the envelope's knots
        from .bound import token_cost_envelope
        knots = [int(x) for x in token_cost_envelope(cost, config.max_num_batched_tokens)[0]]
    engine = without_prefix_cache(config)
    offline = [(PACKED, p) for p in packed_prefill_plans(at_once, engine, deadline=deadline, lone=lone)]
    offline += [(PACED, p) for p in paced_prefill_plans(at_once, engine)
                + (paced_prefill_plans(at_once, engine, sizes=knots) if knots else [])]
    seen = set()
    for k, (name, plans) in enumerate(offline):
        if deadline is not None and time.perf_counter() > deadline:
            break  # out of time: the schedules replayed so far stand
        key = tuple(tuple(sorted(p.tokens.items())) for p in plans)
        if key not in seen:
            seen.add(key)
            runs[f"{name} {k + 1}"] = record_run(at_once, config, cost, OptimalScheduler(plans))
    return {f"{name} (all arrived)": r for name, r in runs.items()
            if r.summary["num_finished"] == r.summary["num_requests"]
            and (preemption or not any(p.preempt for p in r.plans))}


def _bound_time(deadline: float) -> float:
    """Seconds for a relaxation bound inside ``solve``: what is left, within [0.5, 10]."""
    return max(0.5, min(10.0, deadline - time.perf_counter()))


def relaxation_bound(specs, config, cost, objective: str, preemption: bool, lam: float,
                     time_limit_s: float = 1.0) -> Optional[float]:
    """The bound of ``baselines.bound`` on ``objective`` for the model's engine (prefix caching
    off; natural units; None if the cost model has no relaxation): a GPU-second lower bound, an
    SLO-met upper bound, or their combination."""
    from .bound import UnsupportedBound, gpu_time_lower_bound, slo_upper_bound
    config = without_prefix_cache(config)
    try:
        if objective == "gpu_time":
            return gpu_time_lower_bound(specs, config, cost, preemption, time_limit_s).value
        met = slo_upper_bound(specs, config, cost, time_limit_s).value
        if objective == "slo":
            return float(met)
        return met - lam * gpu_time_lower_bound(specs, config, cost, preemption, time_limit_s).value
    except UnsupportedBound:
        return None


def unsolved(objective: str, preemption: bool, fallback: tuple, values: dict, J: int, rigorous: bool, why: str,
             build_s: float, note: str, solve_s: float = 0.0, bound: Optional[float] = None,
             status: str = "UNKNOWN") -> SolveResult:
    """The result that reports a known candidate's schedule instead of a solver's:
    ``fallback = (name, RecordedRun, value)`` with its engine latencies, and ``bound`` if one was
    proven elsewhere (e.g. by a relaxation). Status UNKNOWN when the limit ended the call before
    the solver found anything; OPTIMAL when the relaxation bound meets the candidate."""
    name, run, obj = fallback
    gap = None if bound is None else _gap(obj, bound, objective)
    return SolveResult(status, obj, bound, gap, solve_s, J, len(run.plans), rigorous, why, list(run.plans),
                       list(run.latency_s), 0.0, objective, preemption, None, values, [], build_s,
                       f"heuristic: {name} ({note})")


# --------------------------------------------------------------------------- replay
@register("optimal")
class OptimalScheduler:
    """Replays a solved schedule (``SolveResult.plans``) through the engine.

    Before each batch it idles (empty plan: the engine jumps to the next arrival) until every
    request of the batch has arrived, exactly as the model times batches.

    Args:
        plans: the batches to replay, in order (e.g. ``solve(...).plans``). Required: this
            scheduler does not solve by itself (``llmsched solve`` does), so
            ``make_scheduler("optimal")`` without plans raises ValueError.
    """

    needs_solution = True  # not a heuristic (llmsched_env.scheduler.is_heuristic)

    def __init__(self, plans: Optional[Sequence[BatchPlan]] = None):
        if plans is None:
            raise NeedsOptions("the optimal scheduler replays a solved schedule: pass plans="
                             "baselines.optimal.solve(...).plans (or run `llmsched solve`)")
        self.plans = [BatchPlan(dict(p.tokens), set(p.preempt)) for p in plans]
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def schedule(self, engine) -> BatchPlan:
        if engine.config.prefix_caching:
            raise ValueError("the optimal schedule is solved for an engine without prefix caching (the "
                             "model has none): replay it with EngineConfig(prefix_caching=False) "
                             "(baselines.optimal.without_prefix_cache; CLI --no-prefix-caching)")
        if self._next >= len(self.plans):
            raise RuntimeError(f"optimal replay exhausted after {len(self.plans)} batches with "
                               f"{engine.num_requests - len(engine.finished)} requests unfinished: the "
                               "schedule was solved for another workload or config")
        plan = self.plans[self._next]
        if any(r not in engine.requests for r in plan.tokens):
            return BatchPlan()
        self._next += 1
        return BatchPlan(dict(plan.tokens), set(plan.preempt))


def replay(specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel, result: SolveResult) -> dict:
    """Replay a solved schedule through the engine (prefix caching off) with the real cost model.

    Returns the engine's metrics summary plus ``latency_error``: the largest and total relative
    difference between the model's batch latencies and the engine's (the linearisation error).
    """
    from llmsched_env.simulate import run

    real: list[float] = []
    summary = run(Engine(specs, without_prefix_cache(config), cost), OptimalScheduler(result.plans),
                  on_step=lambda e, p, res: None if res.idle else real.append(res.latency_s))
    model = result.model_latency_s
    if len(real) != len(model):
        raise RuntimeError(f"replay ran {len(real)} batches, the solution has {len(model)}")
    rel = [abs(m - r) / r for m, r in zip(model, real)]
    summary["latency_error"] = {"max_rel": max(rel, default=0.0),
                                "total_rel": abs(sum(model) - sum(real)) / sum(real) if real else 0.0,
                                "model_busy_s": sum(model), "real_busy_s": sum(real)}
    return summary
