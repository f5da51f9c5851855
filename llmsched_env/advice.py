"""A heuristic's proposal for the current step, as an environment action.

Two users: imitation (the proposal is the label a policy is cloned to) and residual learning (a
scenario with ``hint = "<scheduler spec>"`` shows the proposal in the observation, so the policy
starts from the heuristic's decision and learns where to depart from it).

The proposal is the heuristic's own plan, encoded (``ActionDecoder.encode``). Two cases need more:

* The plan admits a request beyond the K slots, which no action can say. The label is then the
  plan of a copy of the heuristic run on a ``QueueView`` whose waiting queue is cut to the
  slotted requests, else the plan cut to the slotted requests; if neither is expressible there is no
  proposal (None).
* Canonical form: a waiting request the heuristic left out only because nothing was left (no
  budget, no free KV or no free seat) gets FILL rather than HOLD when that changes nothing
  (``ActionDecoder.widen_fills``; checked by decoding). So "do what the heuristic says, but skip
  this one" is a change of one slot: the budget it frees flows to the next FILL in slot order.
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from .action import ActionDecoder, NotExpressible
from .plan import BatchPlan
from .scheduler import QueueView


class HeuristicAdvisor:
    """Calls a heuristic once per step and turns its plan into an action of ``decoder``.

    Args:
        spec: scheduler spec (``name`` or ``name:key=value,...``).
        decoder: the environment's ``ActionDecoder``.
        options: extra scheduler options (override the spec's).
    """

    def __init__(self, spec: str, decoder: ActionDecoder, options: Optional[dict] = None):
        from .scheduler import parse_spec

        self.spec = spec
        self._name, opts = parse_spec(spec)
        self._options = {**opts, **(options or {})}
        self.decoder = decoder
        self.reset()

    def reset(self) -> None:
        """A new workload (the heuristic's own state, e.g. SLAI's batch-time window, starts over)."""
        from .scheduler import make_scheduler

        self.scheduler = make_scheduler(self._name, **self._options)
        self.scheduler.reset()

    def propose(self, engine, slots: list) -> Optional[np.ndarray]:
        """The canonical action closest to the heuristic's plan, or None. Call once per engine
        step: stateful heuristics update themselves from the engine on every call."""
        dec = self.decoder
        plan = self.scheduler.schedule(engine)
        try:
            action = dec.encode(engine, slots, plan)
        except NotExpressible:
            action = self._window_action(engine, slots, plan)
            if action is None:
                return None
        return dec.widen_fills(engine, slots, action)

    def _window_action(self, engine, slots, plan) -> Optional[np.ndarray]:
        dec = self.decoder
        try:
            return dec.encode(engine, slots, copy.deepcopy(self.scheduler).schedule(
                QueueView(engine, [r for r in slots if r.rid not in engine.running])))
        except NotExpressible:
            pass
        seen = {r.rid for r in slots}
        try:
            return dec.encode(engine, slots, BatchPlan(tokens={k: v for k, v in plan.tokens.items() if k in seen},
                                                       preempt={k for k in plan.preempt if k in seen}))
        except NotExpressible:
            return None


def hint_features(action: Optional[np.ndarray], num_slots: int, num_choices: int,
                  num_budgets: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot of a proposal: (K*A per-slot choices, B budget levels), float32; all zeros when
    there is no proposal."""
    s = np.zeros((num_slots, num_choices), dtype=np.float32)
    b = np.zeros(num_budgets, dtype=np.float32)
    if action is not None:
        s[np.arange(num_slots), action[:num_slots]] = 1.0
        b[action[-1]] = 1.0
    return s.reshape(-1), b
