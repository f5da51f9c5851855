"""A slot policy as an llmsched scheduler: the part shared by every way of running a learned
policy on an engine (``ppo``: the SB3 policy in torch; ``onnx``: its ONNX export).

Each ``schedule(engine)`` does what the environment does around an agent, with the environment's
own code: ``assign_slots`` puts the engine's requests in the K slots, ``ObservationEncoder``
encodes them, ``ActionDecoder`` masks the choices and decodes the policy's action into a
``BatchPlan`` (with its repairs). Subclasses supply only ``act(obs, mask) -> action``.

The encoder and decoder are built for the engine's own limits (KV capacity, token budget, sequence
cap), so the policy acts on any engine, a vLLM view included. The running set the policy is shown
is capped at ``K - waiting_slots`` as in the environment.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np

from llmsched_env.action import ActionDecoder
from llmsched_env.observation import ObservationEncoder, assign_slots
from llmsched_env.plan import BatchPlan
from llmsched_env.reward import SLOReward

from .vllm_adapter import OracleUnavailable


def output_len_or_cap(req) -> int:
    """The request's true output length where the engine knows it (simulation); inside a serving
    engine (the vLLM view) its ``max_output_len`` cap, so ``slo_alive`` turns 0 no earlier than
    the true length would make it."""
    try:
        return req.output_len
    except OracleUnavailable:
        return req.max_output_len


@dataclass(frozen=True)
class PolicyLayout:
    """What a policy's observation and action mean (from the scenario it was trained on).

    Attributes:
        num_slots: K, request slots.
        waiting_slots: slots kept for waiting requests (running set capped at K - waiting_slots).
        chunk_sizes: fixed prefill chunk choices, tokens.
        budget_levels: token budgets per step, tokens (None = the engine's budget).
        max_steps: the episode truncation the ``step`` feature is scaled by, steps.
        lam: the reward's lambda (satisfied requests per GPU-second); only the SLO bookkeeping
            that feeds ``slo_alive`` is used here.
        nvec: the policy's action sizes, MultiDiscrete ([4 + chunk sizes] * K + [budget levels
            as the training engine resolved them]).
    """
    num_slots: int
    waiting_slots: int
    chunk_sizes: tuple
    budget_levels: tuple
    max_steps: int
    lam: float
    nvec: tuple

    @classmethod
    def from_scenario(cls, sc, nvec) -> "PolicyLayout":
        return cls(sc.num_slots, sc.waiting_slots, tuple(sc.chunk_sizes), tuple(sc.budget_levels),
                   sc.max_steps, float(sc.lam), tuple(int(n) for n in nvec))


class SlotPolicyScheduler:
    """Base class: ``schedule(engine)`` = slots -> observation, mask -> ``act`` -> BatchPlan."""

    def __init__(self, layout: PolicyLayout):
        self.layout = layout
        self._engine_id: Optional[int] = None

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        """The policy's deterministic action for one observation and flat mask."""
        raise NotImplementedError

    def reset(self) -> None:
        self._engine_id = None

    def _setup(self, engine) -> None:
        lo, cfg = self.layout, engine.config
        K = lo.num_slots
        max_running = min(cfg.max_num_seqs, K - lo.waiting_slots)
        self.decoder = ActionDecoder(K, lo.chunk_sizes, lo.budget_levels, cfg.max_num_batched_tokens,
                                     cfg.block_size, max_running, cfg.num_kv_blocks)
        if tuple(self.decoder.nvec.tolist()) != lo.nvec:
            raise ValueError(
                f"the policy's action has sizes {list(lo.nvec)} but on this engine (token budget "
                f"max_num_batched_tokens={cfg.max_num_batched_tokens}) its budget levels "
                f"{list(lo.budget_levels)} resolve to {list(self.decoder.budget_levels)}, sizes "
                f"{self.decoder.nvec.tolist()}; run it on an engine whose budget keeps every level distinct")
        self.observer = ObservationEncoder(K, cfg.num_kv_blocks, max_running, cfg.max_num_batched_tokens)
        # its ``alive`` bookkeeping feeds slo_alive
        self.reward = SLOReward(lo.lam, cfg.num_gpus, output_len=output_len_or_cap)
        self._steps = 0
        self._last: dict[int, int] = {}
        self._engine_id = id(engine)

    def _track(self, engine) -> None:
        """Feed the tokens emitted since the last call to the SLO bookkeeping (as the env does).
        Requests a serving engine's view no longer lists (finished) are skipped."""
        reqs = engine.requests
        emitted = [rid for rid, n in self._last.items() if rid in reqs and len(reqs[rid].token_times) > n]
        if emitted:
            finished = [rid for rid in emitted if reqs[rid].finish_s is not None]
            self.reward.step(engine, SimpleNamespace(emitted=emitted, finished=finished, latency_s=0.0))

    def observe(self, engine) -> tuple[list, dict, np.ndarray]:
        """(slotted requests, observation, flat action mask) for the engine's current state;
        advances the per-engine bookkeeping, so call it once per decision."""
        if self._engine_id != id(engine):
            self._setup(engine)
        else:
            self._track(engine)
        slots = assign_slots(engine, self.layout.num_slots)
        has_pred = any(r.predicted_output_len is not None for r in slots)
        obs = self.observer.encode(engine, slots, self.reward.alive, self._steps, self.layout.max_steps,
                                   engine.num_requests, has_pred)
        return slots, obs, self.decoder.action_mask(engine, slots)

    def schedule(self, engine) -> BatchPlan:
        slots, obs, mask = self.observe(engine)
        plan, _ = self.decoder.decode(engine, slots, self.act(obs, mask))
        self._last = {rid: len(engine.requests[rid].token_times) for rid in plan.tokens}
        self._steps += 1
        return plan
