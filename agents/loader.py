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
from typing import Optional

import numpy as np
import yaml

from llmsched_env.scenarios import get_scenario
from llmsched_env.scheduler import register

from .obs_norm import ObsNormalization
from .policy_scheduler import PolicyLayout, SlotPolicyScheduler


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
        module, _, cls = self.meta["policy_class"].rpartition(".")
        policy_cls = getattr(__import__(module, fromlist=[cls]), cls)
        th.distributions.Distribution.set_default_validate_args(False)
        self.policy = policy_cls.load(str(d / "policy.pt"), device="cpu")
        self.policy.set_training_mode(False)
        self.directory = d
        space = self.policy.observation_space
        try:
            self.obs_norm = ObsNormalization.from_meta(self.meta.get("obs_normalization"),
                                                       {k: space[k].shape[0] for k in space.spaces})
        except ValueError as e:
            raise ValueError(f"{d}/policy.yaml: {e}") from None

    @property
    def scenario_name(self) -> str:
        return self.meta["scenario"]

    def env_overrides(self) -> dict:
        from agents.rollout import scenario_overrides
        o = self.meta.get("overrides") or {}
        return scenario_overrides(o.get("lam"), o.get("slo_ttft_s"), o.get("slo_tbt_s"), self.scenario_name,
                                  hint=o.get("hint"), veto=o.get("veto"), num_slots=o.get("num_slots"),
                                  waiting_slots=o.get("waiting_slots"))

    def layout(self) -> PolicyLayout:
        """The observation/action layout of the scenario it was trained on."""
        sc = get_scenario(self.scenario_name).with_(
            **{k: v for k, v in self.env_overrides().items() if k != "workload"})
        return PolicyLayout.from_scenario(sc, self.policy.action_space.nvec)

    def make_env(self, **extra):
        from llmsched_env import ServingEnv
        return ServingEnv(self.scenario_name, **{**self.env_overrides(), **extra})

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        """Deterministic action (the mode of the masked distribution)."""
        if self.obs_norm is not None:
            obs = self.obs_norm.apply(obs)
        action, _ = self.policy.predict(obs, deterministic=True, action_masks=mask)
        return action


def load_policy(directory: str | Path) -> LoadedPolicy:
    return LoadedPolicy(directory)


@register("ppo")
class PPOScheduler(SlotPolicyScheduler):
    """A trained policy as a scheduler (see ``agents.policy_scheduler``). Option ``path``: the
    policy directory (default: the shipped ``agents/zoo/default``). The engine may have any limits:
    the action decoder is built for its KV capacity, token budget and sequence cap (capped at
    K - waiting_slots so every running request has a slot, as in the environment)."""

    def __init__(self, path: Optional[str] = None):
        self.path = path or os.environ.get("LLMSCHED_PPO_PATH") or str(Path(__file__).resolve().parent / "zoo" / "default")
        self.policy = load_policy(self.path)
        super().__init__(self.policy.layout())

    def act(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        return self.policy.act(obs, mask)
