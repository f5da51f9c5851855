"""Train a learned router with PPO on ``llmsched/Routing-v0`` (standalone, until train/ppo.py
takes ``--scenario routing``; see docs/cluster.md).

    python train/route_ppo.py --steps 60000 --out agents/zoo/router

The policy is first cloned from a heuristic router's decisions (``--bc-from``, default
kv-aware; ``--bc-episodes`` episodes, cross-entropy on its actions), then fine-tuned by PPO on
the env's reward (``--steps``; 0 = behaviour cloning only). Writes the router directory (``agents.router_policy``: weights-only ``router.pt`` and
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


def clone(policy, env: RoutingEnv, router_spec: str, episodes: int, epochs: int, seed: int) -> dict:
    """Fit ``policy``'s action head to a heuristic router's decisions on ``episodes`` training
    episodes (reset seeds seed+100_000..; cross-entropy, Adam); returns the fit's summary."""
    import numpy as np
    import torch as th
    from llmsched_env.router import make_router
    router = make_router(router_spec)
    obs, acts = [], []
    for ep in range(episodes):
        o, _ = env.reset(seed=seed + 100_000 + ep)
        router.reset(env.cluster)
        done = False
        while not done:
            act = router.route(env._request, env.cluster).replica
            obs.append(o)
            acts.append(act)
            o, _, done, _, _ = env.step(act)
    x = th.as_tensor(np.asarray(obs))
    y = th.as_tensor(np.asarray(acts))
    opt = th.optim.Adam(policy.parameters(), lr=1e-3)
    gen = th.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = th.randperm(len(x), generator=gen)
        for i in range(0, len(x), 256):
            idx = perm[i:i + 256]
            _, logp, _ = policy.evaluate_actions(x[idx], y[idx])
            loss = -logp.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with th.no_grad():
        pred = policy.get_distribution(x).distribution.logits.argmax(-1)
    return {"router": router_spec, "episodes": episodes, "epochs": epochs, "samples": len(x),
            "agreement": float((pred == y).float().mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60_000, help="environment steps (routing decisions)")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--scheduler", default="sarathi", help="every replica's scheduler")
    ap.add_argument("--net-arch", default="64,64", help="hidden layer sizes of policy and value nets")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-steps", type=int, default=2048, help="PPO rollout length")
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--bc-from", default="kv-aware", help="heuristic router to clone first ('none' = no cloning)")
    ap.add_argument("--bc-episodes", type=int, default=30)
    ap.add_argument("--bc-epochs", type=int, default=30)
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
    bc = None
    if a.bc_from != "none":
        bc = clone(model.policy, env, a.bc_from, a.bc_episodes, a.bc_epochs, a.seed)
        print(f"cloned {a.bc_from}: {bc['samples']} decisions, agreement {bc['agreement']:.3f}", flush=True)
    if a.steps > 0:
        model.learn(a.steps)
    wall = time.perf_counter() - t0
    d = save_router(model.policy, a.out, a.replicas, arch, {
        "scheduler": a.scheduler, "env": "llmsched/Routing-v0", "steps": a.steps, "train_wall_s": round(wall, 1),
        "behaviour_cloning": bc,
        "command": "python train/route_ppo.py " + shlex.join(sys.argv[1:] if argv is None else argv)})
    print(f"trained {a.steps} steps in {wall:.0f} s; router saved to {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
