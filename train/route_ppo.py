"""Train a learned router with PPO on ``llmsched/Routing-v0`` (standalone, until train/ppo.py
takes ``--scenario routing``; see docs/cluster.md).

    python train/route_ppo.py --steps 60000 --out agents/zoo/router

Writes the router directory (``agents.router_policy``: weights-only ``router.pt`` and
``router.yaml``) and a TensorBoard log under ``<out>/tb`` (SB3's ``rollout/ep_rew_mean``...).
Training episodes use reset seeds from ``--seed``; held-out evaluation (eval/routing_eval.py)
uses seeds from 10,000.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.router_policy import save_router  # noqa: E402
from llmsched_env.routing_env import RoutingEnv  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60_000, help="environment steps (routing decisions)")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--scheduler", default="sarathi", help="every replica's scheduler")
    ap.add_argument("--net-arch", default="64,64", help="hidden layer sizes of policy and value nets")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--n-steps", type=int, default=2048, help="PPO rollout length")
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/router")
    a = ap.parse_args(argv)
    import torch as th
    from stable_baselines3 import PPO
    th.set_num_threads(1)
    arch = [int(x) for x in a.net_arch.split(",")]
    env = RoutingEnv(num_replicas=a.replicas, scheduler=a.scheduler)
    model = PPO("MlpPolicy", env, learning_rate=a.lr, n_steps=a.n_steps, batch_size=256, gamma=a.gamma,
                policy_kwargs=dict(net_arch=dict(pi=arch, vf=arch), activation_fn=th.nn.Tanh),
                tensorboard_log=str(Path(a.out) / "tb"), seed=a.seed, verbose=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(a.steps)
    wall = time.perf_counter() - t0
    d = save_router(model.policy, a.out, a.replicas, arch, {
        "scheduler": a.scheduler, "env": "llmsched/Routing-v0", "steps": a.steps, "train_wall_s": round(wall, 1),
        "command": "python train/route_ppo.py " + shlex.join(sys.argv[1:] if argv is None else argv)})
    print(f"trained {a.steps} steps in {wall:.0f} s; router saved to {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
