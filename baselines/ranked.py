"""RankedScheduler: the shared engine loop of the rank-based literature schedulers (srpt, sjf,
ltr, fastserve, edf). Each subclass only defines the rank key.

Rules, per step, with a token budget (default the engine's ``max_num_batched_tokens``) and
chunked prefill:

1. Rank every waiting and running request by ``key(req)`` (lower first; ties by arrival, id).
2. In rank order, give each request what it is owed (rest of its prefill, or 1 decode token)
   capped by the budget left. When a request lacks KV blocks (or, if waiting, a sequence slot),
   preempt (recompute) running requests ranked *below* it, lowest first, skipping those
   ``preemptible`` protects, but only if enough can be freed; otherwise it is skipped this step,
   and if it was waiting no later-ranked waiting request is admitted this step (no overtaking
   in the queue). Running requests below keep being scheduled. A subclass may set
   ``preempt_for_waiting = False`` (EDF, whose deadlines grow with service): a *waiting*
   request is then admitted only into free KV and seats, never by evicting a resident one,
   because with recompute preemption such keys make resident and waiting requests swap places
   every few steps (measured on splitwise_conv, 1000 requests, rate scale 4, 3000 KV blocks:
   2.1e5 preemptions and 55x FCFS's GPU time for EDF) -- the rank then only decides admission
   order, who runs when the budget is short, and the victims of a resident's KV shortage.
   Under swap preemption (``EngineConfig.preemption_mode="swap"``) a waiting request displaces
   only residents whose KV fits the host space left, so displaced requests are swapped, never
   recomputed.
3. Progress guard: if that leaves nothing to run while requests are resident, the lowest-ranked
   running request is preempted even if protected, so the engine never stalls.

The top-ranked request is never a victim, so it always progresses; its key can only change once
it emits a token, which bounds preemption ping-pong.
"""
from __future__ import annotations

from llmsched_env.request import RUNNING

from .plan_builder import PlanBuilder


class RankedScheduler:
    """Base class; subclasses implement ``key`` (and optionally ``preemptible``, ``_observe``,
    ``_after_plan``).

    Args:
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    preempt_for_waiting = True

    def __init__(self, token_budget: int | None = None):
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        self.token_budget = token_budget

    def reset(self) -> None:
        pass

    def key(self, req, engine):
        raise NotImplementedError

    def preemptible(self, req) -> bool:
        return True

    def _observe(self, engine) -> None:
        """Hook: update state from the engine before ranking (read only)."""

    def _after_plan(self, engine, order: list, plan) -> None:
        """Hook: update state knowing which requests the plan runs."""

    def schedule(self, engine):
        self._observe(engine)
        b = PlanBuilder(engine, self.token_budget)
        reqs = list(engine.running.values())
        reqs.extend(engine.iter_waiting())
        keyed = sorted(((self.key(r, engine), r.arrival_s, r.rid, r) for r in reqs),
                       key=lambda t: t[:3])
        order = [t[3] for t in keyed]
        rank = {r.rid: i for i, r in enumerate(order)}
        admitting = True
        cfg = engine.config
        # Under swap preemption a waiting request displaces only residents whose KV fits the
        # host space left: one the engine would recompute instead would make displacing thrash.
        host_room = (cfg.swap_space_blocks - engine.host_blocks
                     if cfg.preemption_mode == "swap" else None)
        for req in order:
            if b.budget <= 0:
                break
            if req.rid in b.preempt:
                continue
            waiting = req.status != RUNNING
            if waiting and not admitting:
                continue
            n = b.chunk(req)
            need = b.blocks_needed(req, n)
            seat = 1 if waiting and b.resident >= b.max_seqs else 0
            if need > b.free or seat:
                if waiting and not self.preempt_for_waiting:
                    admitting = False
                    continue
                my_rank = rank[req.rid]
                victims, freed = [], b.free
                for v in reversed(order):
                    if rank[v.rid] <= my_rank or (freed >= need and len(victims) >= seat):
                        break
                    if v.status == RUNNING and v.rid not in b.preempt and self.preemptible(v):
                        if waiting and host_room is not None and v.num_blocks > host_room - (freed - b.free):
                            continue
                        victims.append(v)
                        freed += v.num_blocks
                if freed < need or len(victims) < seat:
                    admitting = admitting and not waiting
                    continue
                if host_room is not None:
                    host_room -= freed - b.free
                for v in victims:
                    b.evict(v)
            b.add(req, n)
        if not b.tokens and not b.preempt and engine.running:
            lowest = next(r for r in reversed(order) if r.status == RUNNING)
            b.evict(lowest)
        plan = b.plan()
        self._after_plan(engine, order, plan)
        return plan
