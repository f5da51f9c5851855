"""Admission control over a heuristic: the agent vetoes waiting requests, the heuristic plans.

A scenario with ``veto = "<scheduler spec>"`` (e.g. ``"slai"``) replaces the per-slot action of
``llmsched_env.action`` by a smaller one. Every step the heuristic plans the batch exactly as it
would on its own (which running requests decode, which prefills get how many tokens, whom to
preempt), except that it does not see the waiting requests the agent vetoed:

    action = MultiDiscrete([2] * K + [1])
      slot i: 0 ``ADMIT``  the heuristic may admit the request in slot i (if it chooses to);
              1 ``VETO``   it may not this step (allowed on waiting slots only).
      last entry: one value (the action keeps the env's layout, K slot choices then one global).

    plan = heuristic.schedule(the engine with the vetoed requests taken out of its waiting queue)

So the all-``ADMIT`` action is the heuristic itself, step for step, and a policy learns a rule of
the kind "which of the requests the heuristic would admit should wait": admission control, the
lever behind SLO-aware schedulers that put requests already past their TTFT target last. Waiting
requests beyond the K slots stay visible to the heuristic (they cannot be vetoed).

Repairs (counted in ``info["repairs"]`` like the slot decoder's): an action of the wrong shape or
out of range raises ValueError naming the slot; ``VETO`` on a running or empty slot is ignored
(``invalid_choice``); when the vetoes would stall the engine (an empty plan with no arrival left
to wait for) they are dropped for that step (``forced_progress``).
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from .action import REPAIRS, ActionDecoder, NotExpressible
from .plan import BatchPlan
from .request import RUNNING
from .scheduler import QueueView

ADMIT, VETO = 0, 1
VETO_CHOICES = ("admit", "veto")


class VetoDecoder:
    """Veto action -> BatchPlan through a heuristic (see the module docstring).

    Args:
        spec: the heuristic's scheduler spec (``name`` or ``name:key=value,...``).
        num_slots: K.
        max_num_seqs: running requests the heuristic may keep (the env's cap, K - waiting_slots).
    """

    num_choices = 2

    def __init__(self, spec: str, num_slots: int, max_num_seqs: int):
        from .scheduler import parse_spec

        self.spec = spec
        self._name, self._options = parse_spec(spec)
        self.K = num_slots
        self.max_num_seqs = max_num_seqs
        self.nvec = np.array([2] * num_slots + [1], dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """A new workload: a fresh heuristic (its own state, e.g. SLAI's batch-time window)."""
        from .scheduler import make_scheduler

        self.scheduler = make_scheduler(self._name, **self._options)
        self.scheduler.reset()

    def action_mask(self, engine, slots: list) -> np.ndarray:
        """Flat bool mask: ``VETO`` only on waiting slots; the global entry's one value."""
        m = np.zeros((self.K, 2), dtype=bool)
        m[:, ADMIT] = True
        for i, r in enumerate(slots):
            m[i, VETO] = r.status != RUNNING
        return np.concatenate((m.reshape(-1), [True]))

    def check_action(self, action) -> np.ndarray:
        """The action as int64, or ValueError naming the first bad slot (the slot decoder's checks:
        shape K + 1, integers, each within its range)."""
        return np.asarray(ActionDecoder.check_action(self, action), dtype=np.int64)

    def decode(self, engine, slots: list, action, peek: bool = False) -> tuple[BatchPlan, dict]:
        """(plan, repairs) for ``action``. Advances the heuristic's own state as its ``schedule``
        does, so call it once per engine step; ``peek=True`` plans on a copy instead."""
        a = self.check_action(action)
        repairs = dict.fromkeys(REPAIRS, 0)
        vetoed = set()
        for i in np.nonzero(a[:self.K] == VETO)[0]:
            if i < len(slots) and slots[i].status != RUNNING:
                vetoed.add(slots[i].rid)
            else:
                repairs["invalid_choice"] += 1
        sched = copy.deepcopy(self.scheduler) if peek else self.scheduler
        # Vetoes with nothing left to arrive may leave nothing to run: keep the heuristic as it
        # was, to plan again without them.
        backup = copy.deepcopy(sched) if vetoed and engine.next_arrival_s is None else None
        waiting = [r for r in engine.iter_waiting() if r.rid not in vetoed]
        plan = sched.schedule(QueueView(engine, waiting, self.max_num_seqs))
        if backup is not None and not plan.tokens and not engine.done:
            plan = backup.schedule(QueueView(engine, list(engine.iter_waiting()), self.max_num_seqs))
            repairs["forced_progress"] += 1
            if not peek:
                self.scheduler = backup
        return plan, {k: v for k, v in repairs.items() if v}

    def encode(self, engine, slots: list, plan: BatchPlan) -> np.ndarray:
        raise NotExpressible(f"a veto action only says which waiting requests {self.spec} may not admit; "
                             "another scheduler's plan cannot be encoded (run it directly on the engine)")

    def describe(self) -> list[str]:
        return list(VETO_CHOICES)
