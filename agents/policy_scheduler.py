"""A slot policy as an llmsched scheduler: the part shared by every way of running a learned
policy on an engine (``ppo``: the SB3 policy in torch; ``onnx``: its ONNX export).

Each ``schedule(engine)`` does what the environment does around an agent, with the environment's
own code: ``assign_slots`` puts the engine's requests in the K slots, ``ObservationEncoder``
encodes them, ``ActionDecoder`` masks the choices and decodes the policy's action into a
``BatchPlan`` (with its repairs). Subclasses supply only ``act(obs, mask) -> action``.

The encoder and decoder are built for the engine's own limits (KV capacity, token budget, sequence
cap), so the policy acts on any engine, a vLLM view included. On an engine whose token budget is
below some of the policy's budget levels, those levels mean the engine's budget. The running set the policy is shown
is capped at ``K - waiting_slots`` as in the environment.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np

from llmsched_env.action import ActionDecoder
from llmsched_env.advice import HeuristicAdvisor, hint_features
from llmsched_env.observation import ObservationEncoder, assign_slots
from llmsched_env.plan import BatchPlan
from llmsched_env.reward import SLOReward
from llmsched_env.veto import VetoDecoder

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
        hint: the heuristic whose proposal the observation shows (``llmsched_env.advice``), or None.
        veto: the heuristic whose admissions the action vetoes (``llmsched_env.veto``), or None.
    """
    num_slots: int
    waiting_slots: int
    chunk_sizes: tuple
    budget_levels: tuple
    max_steps: int
    lam: float
    nvec: tuple
    hint: Optional[str] = None
    veto: Optional[str] = None

    @classmethod
    def from_scenario(cls, sc, nvec) -> "PolicyLayout":
        return cls(sc.num_slots, sc.waiting_slots, tuple(sc.chunk_sizes), tuple(sc.budget_levels),
                   sc.max_steps, float(sc.lam), tuple(int(n) for n in nvec), sc.hint, sc.veto)


class SlotPolicyScheduler:
    """Base class: ``schedule(engine)`` = slots -> observation, mask -> ``act`` -> BatchPlan."""

    learned = True  # a learned policy, not a heuristic (llmsched_env.scheduler.is_heuristic)

    def __init__(self, layout: PolicyLayout):
        self.layout = layout
        self._ready = False  # set up for the current workload (reset() starts a new one)

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        """The policy's deterministic action for one observation and flat mask."""
        raise NotImplementedError

    def reset(self) -> None:
        """A new workload: the next ``schedule`` sets up for its engine. (Not keyed on the engine
        object: a serving engine such as the vLLM hook hands over a fresh view every step.)"""
        self._ready = False

    def _setup(self, engine) -> None:
        lo, cfg = self.layout, engine.config
        K = lo.num_slots
        max_running = min(cfg.max_num_seqs, K - lo.waiting_slots)
        if lo.veto is not None:
            self.decoder = VetoDecoder(lo.veto, K, max_running)
        else:
            self.decoder = ActionDecoder(K, lo.chunk_sizes, lo.budget_levels, cfg.max_num_batched_tokens,
                                         cfg.block_size, max_running, cfg.num_kv_blocks)
        self._budget_map = self._map_budget_levels(cfg.max_num_batched_tokens)
        self.observer = ObservationEncoder(K, cfg.num_kv_blocks, max_running, cfg.max_num_batched_tokens)
        # its ``alive`` bookkeeping feeds slo_alive
        self.reward = SLOReward(lo.lam, cfg.num_gpus, output_len=output_len_or_cap)
        self._steps = 0
        self._last: dict[int, int] = {}
        # the env decides "a predictor is configured" once per workload; a serving engine only
        # shows requests as they come, so the flag turns on with the first prediction seen and stays
        self._has_pred = False
        self.advisor = HeuristicAdvisor(lo.hint, self.decoder) if lo.hint else None
        self._ready = True

    def _map_budget_levels(self, engine_budget: int) -> Optional[np.ndarray]:
        """None when the engine resolves the policy's budget levels as training did; else, for
        each level the policy can choose, the decoder's index of that budget on this engine
        (levels above the engine's ``max_num_batched_tokens`` become it, so several levels may
        map to one). Raises ValueError when the policy's action cannot be related to the engine's."""
        lo, dec = self.layout, self.decoder
        if tuple(dec.nvec.tolist()) == lo.nvec:
            return None
        # the training engine's budget was above every explicit level (else they would have merged
        # and nvec would show fewer levels): its sorted levels are the explicit ones, then None
        trained = sorted({b for b in lo.budget_levels if b is not None})
        trained += [None] if None in lo.budget_levels else []
        if len(trained) != lo.nvec[-1] or tuple(dec.nvec[:-1].tolist()) != lo.nvec[:-1]:
            raise ValueError(f"the policy's action has sizes {list(lo.nvec)} but this engine's decoder "
                             f"{dec.nvec.tolist()} (budget levels {list(lo.budget_levels)}, engine token "
                             f"budget {engine_budget}): the policy does not fit this engine")
        return np.array([dec.budget_levels.index(dec.max_budget if b is None else min(b, dec.max_budget))
                         for b in trained], dtype=np.int64)

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
        if not self._ready:
            self._setup(engine)
        else:
            self._track(engine)
        lo = self.layout
        slots = assign_slots(engine, lo.num_slots)
        self._has_pred = self._has_pred or any(r.predicted_output_len is not None for r in slots)
        obs = self.observer.encode(engine, slots, self.reward.alive, self._steps, lo.max_steps,
                                   engine.num_requests, self._has_pred)
        if self.advisor is not None:
            hint = self.advisor.propose(engine, slots)
            if hint is not None and self._budget_map is not None:  # the decoder's level -> the policy's
                hint = hint.copy()
                hint[-1] = int(np.argmax(self._budget_map == hint[-1]))
            obs["hint_slots"], obs["hint_budget"] = hint_features(hint, lo.num_slots, lo.nvec[0], lo.nvec[-1])
        mask = self.decoder.action_mask(engine, slots)
        if self._budget_map is not None:  # every budget level is always allowed
            mask = np.concatenate((mask[:-len(self.decoder.budget_levels)], np.ones(self.layout.nvec[-1], bool)))
        return slots, obs, mask

    def schedule(self, engine) -> BatchPlan:
        slots, obs, mask = self.observe(engine)
        action = self.act(obs, mask)
        if self._budget_map is not None:
            action = np.array(action, dtype=np.int64)
            action[-1] = self._budget_map[action[-1]]
        plan, _ = self.decoder.decode(engine, slots, action)
        self._last = {rid: len(engine.requests[rid].token_times) for rid in plan.tokens}
        self._steps += 1
        return plan
