"""Load a saved policy directory and run it: as an action function on env observations, or as an
llmsched ``Scheduler`` on any engine (registered as ``ppo``).

A policy directory (written by train/ppo.py; the shipped one is ``agents/zoo/default``) holds
  * ``policy.pt``   the policy network and its constructor arguments (``BasePolicy.save``);
  * ``policy.yaml`` the scenario and overrides it was trained on (slot count K, chunk sizes and
    budget levels define the action), ``obs_normalization`` (null: the env's features are
    already scaled, the network takes raw observations), the command and training summary.

    from agents.loader import load_policy
    pol = load_policy("agents/zoo/default")
    env = pol.make_env()                        # the scenario it was trained on
    obs, _ = env.reset(seed=10_000)
    action = pol.act(obs, env.action_masks())   # deterministic

As a scheduler (``make_scheduler("ppo", path=DIR)``; on the command line ``llmsched simulate
--scheduler ppo`` / ``llmsched compare --schedulers ppo,slai`` with ``LLMSCHED_PPO_PATH=DIR`` in the
environment; without either the shipped ``agents/zoo/default`` is used): each ``schedule(engine)`` slots the engine's requests, encodes
them with the environment's own ``ObservationEncoder``, masks and decodes the action with its
own ``ActionDecoder`` (built for that engine's limits), so the policy acts on any engine state.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import yaml

from llmsched_env.action import ActionDecoder
from llmsched_env.observation import ObservationEncoder, assign_slots
from llmsched_env.plan import BatchPlan
from llmsched_env.reward import SLOReward
from llmsched_env.scenarios import get_scenario
from llmsched_env.scheduler import register


class LoadedPolicy:
    """A trained policy: ``act(obs, mask) -> action``, plus the scenario it was trained on."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        if not (d / "policy.pt").is_file() or not (d / "policy.yaml").is_file():
            raise FileNotFoundError(f"{d} is not a policy directory: it needs policy.pt and policy.yaml "
                                    "(written by train/ppo.py under <run>/policy/)")
        import torch as th

        import agents.policy_net  # noqa: F401  (the policy classes policy.pt names)
        with open(d / "policy.yaml") as f:
            self.meta = yaml.safe_load(f)
        if self.meta.get("obs_normalization"):
            raise ValueError(f"{d}: observation normalisation {self.meta['obs_normalization']!r} is not supported")
        module, _, cls = self.meta["policy_class"].rpartition(".")
        policy_cls = getattr(__import__(module, fromlist=[cls]), cls)
        th.distributions.Distribution.set_default_validate_args(False)
        self.policy = policy_cls.load(str(d / "policy.pt"), device="cpu")
        self.policy.set_training_mode(False)
        self.directory = d

    @property
    def scenario_name(self) -> str:
        return self.meta["scenario"]

    def env_overrides(self) -> dict:
        from agents.rollout import scenario_overrides
        o = self.meta.get("overrides") or {}
        return scenario_overrides(o.get("lam"), o.get("slo_ttft_s"), o.get("slo_tbt_s"), self.scenario_name)

    def make_env(self, **extra):
        from llmsched_env import ServingEnv
        return ServingEnv(self.scenario_name, **{**self.env_overrides(), **extra})

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        """Deterministic action (the mode of the masked distribution)."""
        action, _ = self.policy.predict(obs, deterministic=True, action_masks=mask)
        return action


def load_policy(directory: str | Path) -> LoadedPolicy:
    return LoadedPolicy(directory)


@register("ppo")
class PPOScheduler:
    """A trained policy as a scheduler. Option ``path``: the policy directory (default: the
    shipped ``agents/zoo/default``). The engine may have any limits: the action decoder is built
    for its KV capacity, token budget and sequence cap (capped at K - waiting_slots so every
    running request has a slot, as in the environment)."""

    def __init__(self, path: Optional[str] = None):
        self.path = path or os.environ.get("LLMSCHED_PPO_PATH") or str(Path(__file__).resolve().parent / "zoo" / "default")
        self.policy = load_policy(self.path)
        self.scenario = get_scenario(self.policy.scenario_name).with_(
            **{k: v for k, v in self.policy.env_overrides().items() if k != "workload"})
        # the token budgets the policy chose among in training, tokens (ascending)
        self._train_levels = self.policy.make_env().decoder.budget_levels
        self._engine_id = None

    def reset(self) -> None:
        self._engine_id = None

    def _setup(self, engine) -> None:
        sc, cfg = self.scenario, engine.config
        K = sc.num_slots
        max_running = min(cfg.max_num_seqs, K - sc.waiting_slots)
        self.decoder = ActionDecoder(K, sc.chunk_sizes, sc.budget_levels, cfg.max_num_batched_tokens,
                                     cfg.block_size, max_running, cfg.num_kv_blocks)
        self.observer = ObservationEncoder(K, cfg.num_kv_blocks, max_running, cfg.max_num_batched_tokens)
        self.reward = SLOReward(sc.lam, cfg.num_gpus)  # its ``alive`` bookkeeping feeds slo_alive
        # An engine with a smaller token budget has fewer distinct budget levels: each trained
        # level maps to the largest engine level not above it (the top level to the engine's top).
        levels = self.decoder.budget_levels
        bmap = [max([i for i, v in enumerate(levels) if v <= min(t, cfg.max_num_batched_tokens)] or [0])
                for t in self._train_levels]
        bmap[-1] = len(levels) - 1
        self._bmap = np.asarray(bmap)
        self._steps = 0
        self._last: dict[int, int] = {}
        self._engine_id = id(engine)

    def _track(self, engine) -> None:
        """Feed the tokens emitted since the last call to the SLO bookkeeping (as the env does)."""
        reqs = engine.requests
        emitted = [rid for rid, n in self._last.items() if len(reqs[rid].token_times) > n]
        if emitted:
            finished = [rid for rid in emitted if reqs[rid].finish_s is not None]
            self.reward.step(engine, SimpleNamespace(emitted=emitted, finished=finished, latency_s=0.0))

    def schedule(self, engine) -> BatchPlan:
        if self._engine_id != id(engine):
            self._setup(engine)
        else:
            self._track(engine)
        slots = assign_slots(engine, self.scenario.num_slots)
        has_pred = any(r.predicted_output_len is not None for r in slots)
        obs = self.observer.encode(engine, slots, self.reward.alive, self._steps, self.scenario.max_steps,
                                   engine.num_requests, has_pred)
        mask = self.decoder.action_mask(engine, slots)
        n = len(mask) - len(self.decoder.budget_levels)
        action = self.policy.act(obs, np.concatenate([mask[:n], mask[n:][self._bmap]]))
        action = np.asarray(action).copy()
        action[-1] = self._bmap[action[-1]]
        plan, _ = self.decoder.decode(engine, slots, action)
        self._last = {rid: len(engine.requests[rid].token_times) for rid in plan.tokens}
        self._steps += 1
        return plan
