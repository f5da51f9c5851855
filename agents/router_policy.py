"""The learned router: a trained PPO policy over ``llmsched_env.routing_env`` observations, as a
cluster ``Router`` (registered as ``learned``), and its save/load format.

A router directory (written by ``train/ppo.py --scenario routing``; the shipped one is ``agents/zoo/router``)
holds
  * ``router.yaml``: the number of replicas, the network's layer sizes, the training command
    and its result;
  * ``router.pt``: the policy network's weights only (a ``state_dict`` of tensors), loaded with
    ``torch.load(weights_only=True)``: loading a router runs no code from the file.

    llmsched simulate --replicas 4 --router learned:path=agents/zoo/router --scheduler sarathi

At each arrival the router encodes the cluster with the env's own ``RoutingObservation`` and
routes to the policy's most likely replica (deterministic).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from llmsched_env.router import RoutePlan, register_router
from llmsched_env.routing_env import RoutingObservation

DEFAULT_PATH = Path(__file__).resolve().parent / "zoo" / "router"


def build_policy(num_replicas: int, net_arch: list[int]):
    """An SB3 actor-critic network for ``num_replicas`` replicas (untrained)."""
    import torch as th
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy
    obs_space = RoutingObservation(num_replicas).space()
    return ActorCriticPolicy(obs_space, spaces.Discrete(num_replicas), lambda _: 0.0,
                             net_arch=dict(pi=list(net_arch), vf=list(net_arch)), activation_fn=th.nn.Tanh)


def save_router(policy, directory: str | Path, num_replicas: int, net_arch: list[int], meta: dict) -> Path:
    import torch as th
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    th.save({k: v.detach().cpu() for k, v in policy.state_dict().items()}, d / "router.pt")
    info = {"num_replicas": num_replicas, "net_arch": list(net_arch), **meta}
    (d / "router.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return d


def load_router_policy(directory: str | Path):
    """(policy, meta) from a router directory; errors name the file and what to do."""
    import torch as th
    d = Path(directory)
    for f in ("router.pt", "router.yaml"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d} is not a router directory: it needs router.pt and router.yaml "
                                    "(written by train/ppo.py --scenario routing)")
    try:
        meta = yaml.safe_load((d / "router.yaml").read_text())
        R, arch = int(meta["num_replicas"]), [int(x) for x in meta["net_arch"]]
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{d}/router.yaml: malformed ({type(e).__name__}: {e}); it needs num_replicas and "
                         "net_arch") from None
    policy = build_policy(R, arch)
    try:
        state = th.load(d / "router.pt", map_location="cpu", weights_only=True)
        policy.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 (a truncated or foreign file)
        raise ValueError(f"{d}/router.pt: cannot load the weights ({type(e).__name__}: {e})") from None
    policy.set_training_mode(False)
    return policy, meta


@register_router("learned")
class LearnedRouter:
    """Routes with a trained policy. Options: ``path`` (a router directory; default
    ``$LLMSCHED_ROUTER_PATH``, else the shipped ``agents/zoo/router``). The cluster must have
    the number of replicas the policy was trained for."""

    learned = True

    def __init__(self, path: str | None = None):
        self.path = Path(path or os.environ.get("LLMSCHED_ROUTER_PATH") or DEFAULT_PATH)
        self.policy, self.meta = load_router_policy(self.path)
        self.encoder = RoutingObservation(int(self.meta["num_replicas"]))

    def reset(self, cluster) -> None:
        self.encoder.reset(cluster)

    def route(self, request, cluster) -> RoutePlan:
        import torch as th
        obs = self.encoder.encode(cluster, request)
        with th.no_grad():
            dist = self.policy.get_distribution(th.as_tensor(obs[None]))
            logits = dist.distribution.logits[0].numpy()
        return RoutePlan(int(np.argmax(logits)))
