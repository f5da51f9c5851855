"""Train a MaskablePPO scheduling policy on an llmsched scenario.

    python train/ppo.py                                   # short default run (a few minutes)
    python train/ppo.py --config train/configs/default.yaml --total-steps 200000
    python train/ppo.py --config train/configs/default.yaml --resume   # continue that run exactly
    tensorboard --logdir runs

Every knob is a field of ``Args`` below, with its default. A YAML config (``--config``, RL-Zoo
style: one mapping of field names, see train/configs/) replaces defaults; command-line flags
(``--field-name value``; booleans ``--flag`` / ``--no-flag``) replace the config.

Steps, top to bottom:
  1. check the arguments (unknown scenario, negative steps, ... fail at once);
  2. build ``n_envs`` environments in subprocesses (``SubprocVecEnv``) and the policy:
     ``set`` = agents.policy_net.SlotSetPolicy (per-slot encoder + attention, per-slot logits) or
     ``mlp`` = a plain MLP on the flattened observation;
  3. optional warm start: behaviour cloning of ``bc_heuristic`` (its plans as canonical actions,
     ``llmsched_env.advice.HeuristicAdvisor``), value head fitted to the demonstrations'
     discounted returns (``--no-bc-policy-loss``: the value head only). With ``--hint`` the
     observation also shows a heuristic's proposal, and ``--hint-prior`` makes the policy a
     residual on it (the shipped recipe, train/configs/default.yaml);
  4. PPO, with TensorBoard scalars (names in the README, "Training"), a rich progress bar,
     periodic deterministic evaluation against the reference heuristic on validation seeds,
     and checkpoints from which ``--resume`` continues bit for bit;
  5. save the policy (``<run>/policy/``, and ``<run>/policy_best/``: the best on the validation
     seeds so far; each policy.pt + policy.yaml, loadable with
     ``agents.loader.load_policy`` or as scheduler ``ppo`` with ``path=<run>/policy``) and print
     policy vs reference on held-out seeds.

Observations are not normalised: the environment already scales each feature to O(1) and clips
to [-10, 10] (llmsched_env/observation.py), so the saved policy takes raw env observations.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch as th  # noqa: E402
import yaml  # noqa: E402


@dataclass
class Args:
    # --- run
    config: Optional[str] = None
    """YAML file of field values (train/configs/<scenario>.yaml); flags override it"""
    scenario: str = "default"
    """scenario name (llmsched_env.scenarios)"""
    total_steps: int = 12_288
    """environment steps of PPO (all envs together), not counting imitation"""
    n_envs: int = 2
    """parallel environments, each in its own process (SubprocVecEnv)"""
    seed: int = 0
    """seed of torch, the PPO sampler and the training workloads"""
    output_dir: str = "runs"
    """runs are written to <output_dir>/<run_name>/ (TensorBoard events, checkpoints, policy)"""
    run_name: Optional[str] = None
    """default: <scenario>_<policy>_s<seed>"""
    resume: bool = False
    """continue <output_dir>/<run_name> from its latest checkpoint (same steps, same logs)"""
    checkpoint_interval: int = 8192
    """environment steps between checkpoints (taken at the next rollout boundary)"""
    torch_threads: int = 1
    """torch intra-op threads of the learner"""
    # --- objective (None = the scenario's own)
    lam: Optional[float] = None
    """lambda, satisfied requests per GPU-second"""
    slo_ttft_s: Optional[float] = None
    """TTFT target of every SLO tier, seconds"""
    slo_tbt_s: Optional[float] = None
    """TBT target of every SLO tier, seconds"""
    # --- the agent's view (None = the scenario's own; the engine and workloads stay the scenario's)
    hint: Optional[str] = None
    """heuristic whose proposal each step is part of the observation (residual learning), e.g. slai"""
    veto: Optional[str] = None
    """heuristic that plans every step while the agent only vetoes admissions of waiting requests
    (the action is admission control over it: llmsched_env.veto), e.g. slai"""
    num_slots: Optional[int] = None
    """K, request slots in the observation and action"""
    waiting_slots: Optional[int] = None
    """slots kept for waiting requests; keep K - waiting_slots at the scenario's to keep its engine"""
    # --- policy network
    policy: str = "set"
    """set (per-slot encoder + attention, per-slot logits) or mlp (flattened observation)"""
    embed_dim: int = 64
    """set: slot embedding size D"""
    num_heads: int = 4
    """set: attention heads"""
    attention: bool = True
    """set: one attention layer across slots (else pooling only)"""
    head_hidden: int = 64
    """set: hidden units of the per-slot, budget and value heads"""
    hint_prior: float = 0.0
    """set with --hint: beta, the hint's one-hot x beta is added to the logits (residual policy;
    the mode is the heuristic's proposal until the learned correction outweighs beta); 0 = off"""
    mlp_arch: str = "256,256"
    """mlp: hidden layer sizes"""
    # --- PPO
    learning_rate: float = 3e-4
    lr_schedule: str = "linear"
    """linear (to 0 at total_steps) or constant"""
    n_steps: int = 1024
    """rollout length per env"""
    batch_size: int = 256
    n_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = None
    # --- imitation warm start
    bc_heuristic: Optional[str] = "slai"
    """heuristic to imitate first; none = no warm start (PPO from a random policy)"""
    bc_episodes: int = 3
    """demonstration episodes (reset seeds 1_000_000 + i, disjoint from eval seeds)"""
    bc_epochs: int = 8
    bc_dagger_rounds: int = 1
    """DAgger rounds after cloning (policy drives, heuristic labels; for state-only heuristics)"""
    bc_dagger_episodes: int = 2
    """episodes per DAgger round"""
    bc_dagger_epochs: int = 4
    """epochs over all data after each DAgger round"""
    bc_lr: float = 1e-3
    bc_batch_size: int = 256
    bc_policy_loss: bool = True
    """fit the policy to the heuristic's actions; false = fit only the value head (with a
    --hint-prior residual policy, which already acts as the heuristic)"""
    # --- evaluation
    reference: str = "slai"
    """heuristic shown next to the policy (TensorBoard ref/*, final table)"""
    eval_interval: int = 8192
    """environment steps between evaluations (0 = only at the end)"""
    eval_episodes: int = 3
    """validation episodes per evaluation (reset seeds eval_seed ..)"""
    eval_seed: int = 5000
    final_eval_episodes: int = 4
    """held-out episodes of the closing table (reset seeds 10_000 ..); 0 = skip"""
    final_eval_seed: int = 10_000
    progress: bool = True


EVAL_NOTE = "held-out seeds are never used in training (training workloads come from the env's RNG)"


# ------------------------------------------------------------------------------------ arguments
def parse_args(argv=None) -> Args:
    """Args from defaults <- YAML config <- command-line flags; checked."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            ap.add_argument(flag, type=str, default=None, metavar=f.name.upper())
    ns = vars(ap.parse_args(argv))
    values: dict = {}
    if ns["config"]:
        values.update(load_config(ns["config"]))
    values.update({k: v for k, v in ns.items() if v is not None})
    if values.get("resume"):
        # a resumed run keeps the arguments it was started with, except those given again now
        probe = make_args(values)
        saved = run_dir_of(probe) / "args.yaml"
        if saved.is_file():
            with open(saved) as f:
                values = {**yaml.safe_load(f), **values}
    return make_args(values)


def run_dir_of(a: Args) -> Path:
    return Path(a.output_dir) / (a.run_name or f"{a.scenario}_{a.policy}_s{a.seed}")


def load_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"--config {path}: no such file (configs are in train/configs/)")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: expected a mapping of Args fields, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _convert(name: str, typ, value):
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and "Optional" in str(typ)):
        return None
    base = str(typ).replace("Optional[", "").rstrip("]")
    try:
        if base == "int":
            v = float(value)
            if v != int(v):
                raise ValueError
            return int(v)
        if base == "float":
            return float(value)
        if base == "bool":
            if isinstance(value, bool):
                return value
            return {"true": True, "false": False, "1": True, "0": False}[str(value).lower()]
        return str(value)
    except (ValueError, KeyError):
        raise SystemExit(f"argument {name}: {value!r} is not a valid {base}") from None


def make_args(values: dict) -> Args:
    """Build and check Args from a mapping (config values, flags); exits with a clear message."""
    names = {f.name: f for f in dataclasses.fields(Args)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SystemExit(f"unknown argument(s) {unknown}; known: {sorted(names)}")
    a = Args(**{k: _convert(k, names[k].type, v) for k, v in values.items()})
    check_args(a)
    return a


def check_args(a: Args) -> None:
    from llmsched_env.scenarios import get_scenario, list_scenarios
    from llmsched_env.scheduler import available_schedulers
    errs = []
    if a.scenario not in list_scenarios():
        errs.append(f"unknown scenario {a.scenario!r}; known: {', '.join(list_scenarios())}")
    for name in ("total_steps", "checkpoint_interval", "eval_interval", "bc_episodes", "bc_epochs",
                 "bc_dagger_rounds", "bc_dagger_episodes", "bc_dagger_epochs",
                 "final_eval_episodes"):
        if getattr(a, name) < 0:
            errs.append(f"{name}={getattr(a, name)} must be >= 0")
    for name in ("n_envs", "n_steps", "batch_size", "n_epochs", "embed_dim", "num_heads", "head_hidden",
                 "eval_episodes", "torch_threads", "bc_batch_size"):
        if getattr(a, name) < 1:
            errs.append(f"{name}={getattr(a, name)} must be >= 1")
    if a.policy not in ("set", "mlp"):
        errs.append(f"policy={a.policy!r}: choose set or mlp")
    if a.policy == "set" and a.embed_dim % a.num_heads:
        errs.append(f"embed_dim={a.embed_dim} must be a multiple of num_heads={a.num_heads}")
    if a.lr_schedule not in ("linear", "constant"):
        errs.append(f"lr_schedule={a.lr_schedule!r}: choose linear or constant")
    if not (0 < a.gamma <= 1 and 0 <= a.gae_lambda <= 1):
        errs.append(f"gamma={a.gamma} must be in (0, 1] and gae_lambda={a.gae_lambda} in [0, 1]")
    if a.hint_prior < 0 or (a.hint_prior and (a.hint is None or a.policy != "set")):
        errs.append(f"hint_prior={a.hint_prior} needs --hint HEURISTIC and --policy set, and must be >= 0")
    if a.veto is not None and a.bc_heuristic is not None and a.bc_heuristic != a.veto:
        errs.append(f"bc_heuristic={a.bc_heuristic!r} with veto={a.veto!r}: a veto policy can only imitate its own "
                    f"heuristic (never vetoing); use --bc-heuristic {a.veto} or none")
    if a.learning_rate <= 0 or a.bc_lr <= 0:
        errs.append("learning_rate and bc_lr must be > 0")
    if a.lam is not None and a.lam < 0:
        errs.append(f"lam={a.lam} must be >= 0")
    for name in ("slo_ttft_s", "slo_tbt_s"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            errs.append(f"{name}={getattr(a, name)} must be > 0 seconds")
    try:
        [int(x) for x in a.mlp_arch.split(",") if x.strip()]
    except ValueError:
        errs.append(f"mlp_arch={a.mlp_arch!r}: comma-separated layer sizes, e.g. 256,256")
    if a.scenario in list_scenarios():  # the agent's side of the scenario: the scenario's own checks
        view = {k: getattr(a, k) for k in ("hint", "veto", "num_slots", "waiting_slots") if getattr(a, k) is not None}
        try:
            get_scenario(a.scenario).with_(**view).check()
        except ValueError as e:
            errs.append(str(e))
    known = available_schedulers()
    for name in ("reference", "bc_heuristic"):
        spec = getattr(a, name)
        if spec is not None and spec.partition(":")[0] not in known:
            errs.append(f"{name}={spec!r}: unknown scheduler; registered: {', '.join(known)}")
    if errs:
        raise SystemExit("bad arguments:\n  " + "\n  ".join(errs))


# ---------------------------------------------------------------------------------- the model
def build_model(a: Args, venv, overrides: dict):
    from sb3_contrib import MaskablePPO

    from agents.policy_net import FastMaskableMultiInputPolicy, SlotSetPolicy
    from llmsched_env.observation import SLOT_FEATURES

    if a.policy == "set":
        policy_cls = SlotSetPolicy
        policy_kwargs = dict(num_features=len(SLOT_FEATURES), embed_dim=a.embed_dim, num_heads=a.num_heads,
                             attention=a.attention, head_hidden=a.head_hidden, hint_prior=a.hint_prior)
    else:
        policy_cls = FastMaskableMultiInputPolicy
        sizes = [int(x) for x in a.mlp_arch.split(",") if x.strip()]
        policy_kwargs = dict(net_arch=dict(pi=sizes, vf=sizes))
    lr0 = a.learning_rate
    lr = (lambda progress: lr0 * progress) if a.lr_schedule == "linear" else lr0
    return MaskablePPO(policy_cls, venv, learning_rate=lr, n_steps=a.n_steps, batch_size=a.batch_size,
                       n_epochs=a.n_epochs, gamma=a.gamma, gae_lambda=a.gae_lambda, clip_range=a.clip_range,
                       ent_coef=a.ent_coef, vf_coef=a.vf_coef, max_grad_norm=a.max_grad_norm,
                       target_kl=a.target_kl, policy_kwargs=policy_kwargs, seed=a.seed, device="cpu", verbose=0)


def behaviour_cloning(a: Args, model, overrides: dict, logger, console) -> dict:
    """Fit the policy to ``bc_heuristic``'s actions (cross-entropy of the masked distribution)
    and the value head to the discounted returns; then ``bc_dagger_rounds`` rounds of DAgger:
    the policy drives, the heuristic labels the states it reaches, and the policy is refitted on
    all the data (plain cloning alone drifts into states the heuristic never shows it)."""
    from rich.progress import track

    from agents.rollout import demonstrations
    from llmsched_env import ServingEnv

    env = ServingEnv(a.scenario, **overrides)
    t0 = time.perf_counter()
    pol = model.policy
    opt = th.optim.Adam(pol.parameters(), lr=a.bc_lr)
    rng = np.random.default_rng(a.seed)
    epoch_no = 0

    def fit(obs, masks, acts, rets, epochs):
        nonlocal epoch_no
        n = len(acts)
        pol.set_training_mode(True)
        for _ in range(epochs):
            order = rng.permutation(n)
            nll_sum = acc_sum = v_sum = 0.0
            for i in range(0, n, a.bc_batch_size):
                idx = order[i:i + a.bc_batch_size]
                o = {k: th.as_tensor(v[idx]) for k, v in obs.items()}
                act = th.as_tensor(acts[idx])
                values, logp, _ = pol.evaluate_actions(o, act, action_masks=masks[idx])
                nll = -logp.mean()
                vloss = th.nn.functional.mse_loss(values.flatten(), th.as_tensor(rets[idx]))
                opt.zero_grad()
                ((nll if a.bc_policy_loss else 0.0) + a.vf_coef * vloss).backward()
                th.nn.utils.clip_grad_norm_(pol.parameters(), a.max_grad_norm)
                opt.step()
                with th.no_grad():
                    mode = pol.get_distribution(o, action_masks=masks[idx]).mode()
                acc_sum += float((mode == act).all(1).float().sum())
                nll_sum += float(nll.detach()) * len(idx)
                v_sum += float(vloss.detach()) * len(idx)
            logger.record("bc/nll", nll_sum / n)
            logger.record("bc/exact_action_fraction", acc_sum / n)
            logger.record("bc/value_mse", v_sum / n)
            logger.record("bc/samples", n)
            logger.dump(step=epoch_no)
            epoch_no += 1
        pol.set_training_mode(False)
        console.print(f"BC on {n:,} states, {epochs} epochs: nll {nll_sum / n:.3f}  exact actions "
                      f"{acc_sum / n:.3f}  value mse {v_sum / n:.3f}")

    base = 1_000_000 + a.seed * 10_000
    seeds = [base + i for i in range(a.bc_episodes)]
    data = demonstrations(env, a.bc_heuristic, track(seeds, description=f"demos {a.bc_heuristic}",
                                                     disable=not a.progress, console=console), gamma=a.gamma)
    fit(*data, a.bc_epochs)
    for r in range(a.bc_dagger_rounds):
        seeds = [base + a.bc_episodes + r * a.bc_dagger_episodes + i for i in range(a.bc_dagger_episodes)]
        new = demonstrations(env, a.bc_heuristic, track(seeds, description=f"DAgger {r + 1}", disable=not a.progress,
                                                        console=console), gamma=a.gamma, act=policy_act_fn(pol))
        data = ({k: np.concatenate([data[0][k], new[0][k]]) for k in data[0]},
                *(np.concatenate([x, y]) for x, y in zip(data[1:], new[1:])))
        fit(*data, a.bc_dagger_epochs)
    return {"samples": int(len(data[2])), "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------- monitoring
def make_monitor(a: Args, overrides: dict, run_dir: Path, console, command: str = ""):
    """The training callback: episode metrics, evaluations, checkpoints, progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.rollout import METRIC_KEYS, heuristic_episode, policy_episode
    from llmsched_env import ServingEnv

    class Monitor(BaseCallback):
        def __init__(self):
            super().__init__()
            self.eval_env = ServingEnv(a.scenario, **overrides)
            self.seeds = [a.eval_seed + i for i in range(a.eval_episodes)]
            self.reference = None
            self.next_eval = a.eval_interval if a.eval_interval else None
            self.next_ckpt = a.checkpoint_interval if a.checkpoint_interval else None
            self.last_eval: dict = {}
            self.best = -float("inf")
            self.bar = None
            self.t0 = time.perf_counter()
            self.steps0 = 0

        # state that must survive a resume
        def state(self) -> dict:
            return {"next_eval": self.next_eval, "next_ckpt": self.next_ckpt, "last_eval": self.last_eval,
                    "best": self.best}

        def load_state(self, s: dict) -> None:
            self.next_eval, self.next_ckpt, self.last_eval = s["next_eval"], s["next_ckpt"], s["last_eval"]
            self.best = s["best"]

        def _on_training_start(self) -> None:
            self.steps0 = self.num_timesteps
            self.t0 = time.perf_counter()
            if a.progress:
                self.bar = Progress(TextColumn("[bold]PPO"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("steps  {task.fields[sps]:.0f} steps/s  {task.fields[info]}"),
                                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)
                self.bar.start()
                self.task = self.bar.add_task("ppo", total=a.total_steps, completed=self.num_timesteps, sps=0.0,
                                              info=self._eval_text())

        def _eval_text(self) -> str:
            if not self.last_eval:
                return ""
            e = self.last_eval
            return (f"eval return {e['policy']:.1f} vs {a.reference} {e['reference']:.1f}  "
                    f"SLO {e['policy_slo']:.3f} vs {e['reference_slo']:.3f}")

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "metrics" in info:
                    self._log_episode(info)
            if self.bar is not None and self.n_calls % 64 == 0:
                sps = (self.num_timesteps - self.steps0) / max(1e-9, time.perf_counter() - self.t0)
                self.bar.update(self.task, completed=self.num_timesteps, sps=sps, info=self._eval_text())
            return True

        def _log_episode(self, info: dict) -> None:
            from agents.rollout import metrics_row
            row = metrics_row(info, info["return_slo"] + info["return_gpu"])
            for k in METRIC_KEYS:
                self.logger.record_mean(f"episode/{k}", float(row[k]))

        def _on_rollout_start(self) -> None:
            if self.next_ckpt is not None and self.num_timesteps >= self.next_ckpt:
                save_checkpoint(run_dir, self.model, self)
                while self.next_ckpt <= self.num_timesteps:
                    self.next_ckpt += a.checkpoint_interval

        def _on_rollout_end(self) -> None:
            if self.next_eval is not None and self.num_timesteps >= self.next_eval:
                self.evaluate()
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += a.eval_interval

        def evaluate(self) -> dict:
            """Deterministic policy vs the reference heuristic on the validation seeds."""
            if self.reference is None:
                self.reference = [heuristic_episode(self.eval_env, a.reference, s) for s in self.seeds]
            act = policy_act_fn(self.model.policy)
            rows = [policy_episode(self.eval_env, act, s) for s in self.seeds]
            for k in METRIC_KEYS:
                self.logger.record(f"eval/{k}", float(np.mean([r[k] for r in rows])))
                self.logger.record(f"ref/{k}", float(np.mean([r[k] for r in self.reference])))
            diff = float(np.mean([p["return"] - r["return"] for p, r in zip(rows, self.reference)]))
            self.logger.record("eval/return_minus_ref", diff)
            self.last_eval = {"policy": float(np.mean([r["return"] for r in rows])),
                              "reference": float(np.mean([r["return"] for r in self.reference])),
                              "policy_slo": float(np.mean([r["slo_attainment"] for r in rows])),
                              "reference_slo": float(np.mean([r["slo_attainment"] for r in self.reference])),
                              "step": self.num_timesteps}
            if self.last_eval["policy"] > self.best:  # model selection on validation seeds only
                self.best = self.last_eval["policy"]
                save_policy(a, self.model, run_dir / "policy_best", overrides_desc(a),
                            {"command": command, "selected_at_step": int(self.num_timesteps), "validation_return": self.best,
                             "validation_seeds": self.seeds})
            return self.last_eval

        def _on_training_end(self) -> None:
            if self.bar is not None:
                self.bar.update(self.task, completed=self.num_timesteps, info=self._eval_text())
                self.bar.stop()

    return Monitor()


def policy_act_fn(policy):
    """obs dict, flat mask -> deterministic action (numpy)."""
    def act(obs, mask):
        action, _ = policy.predict(obs, deterministic=True, action_masks=mask)
        return action
    return act


# ------------------------------------------------------------------------ checkpoints, saving
def save_checkpoint(run_dir: Path, model, monitor) -> Path:
    """Everything a resumed run needs to continue bit for bit: parameters and optimizer state
    (model.zip), env states, the last observations, RNG states, the episode-info buffer."""
    d = run_dir / "checkpoints" / f"step_{model.num_timesteps:09d}"
    d.mkdir(parents=True, exist_ok=True)
    model.save(d / "model.zip")
    state = {"num_timesteps": model.num_timesteps, "envs": model.get_env().env_method("snapshot"),
             "last_obs": model._last_obs, "last_episode_starts": model._last_episode_starts,
             "ep_info_buffer": list(model.ep_info_buffer), "torch_rng": th.get_rng_state(),
             "numpy_rng": np.random.get_state(), "monitor": monitor.state()}
    with open(d / "state.pkl", "wb") as f:
        pickle.dump(state, f)
    (run_dir / "checkpoints" / "latest").write_text(d.name)
    return d


def load_checkpoint(run_dir: Path, venv, monitor):
    from collections import deque

    from sb3_contrib import MaskablePPO
    latest = run_dir / "checkpoints" / "latest"
    if not latest.exists():
        raise SystemExit(f"--resume: no checkpoint in {run_dir}/checkpoints (start the run without --resume)")
    d = run_dir / "checkpoints" / latest.read_text().strip()
    model = MaskablePPO.load(d / "model.zip", env=venv, device="cpu")
    with open(d / "state.pkl", "rb") as f:
        state = pickle.load(f)
    for i, blob in enumerate(state["envs"]):
        venv.env_method("restore", blob, indices=[i])
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    th.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    monitor.load_state(state["monitor"])
    return model, state["num_timesteps"]


def overrides_desc(a: Args) -> dict:
    return {"lam": a.lam, "slo_ttft_s": a.slo_ttft_s, "slo_tbt_s": a.slo_tbt_s, "hint": a.hint,
            "veto": a.veto, "num_slots": a.num_slots, "waiting_slots": a.waiting_slots}


def save_policy(a: Args, model, out: Path, overrides_desc: dict, extra: dict) -> Path:
    """<out>/policy.pt (the policy alone: network + constructor arguments) and policy.yaml (the
    scenario and overrides it was trained on, the command, the training summary)."""
    out.mkdir(parents=True, exist_ok=True)
    model.policy.save(out / "policy.pt")
    meta = {"scenario": a.scenario, "overrides": overrides_desc, "policy": a.policy,
            "policy_class": f"{type(model.policy).__module__}.{type(model.policy).__name__}",
            "obs_normalization": None, "num_timesteps": int(model.num_timesteps),
            "args": dataclasses.asdict(a), **extra}
    with open(out / "policy.yaml", "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
    return out


# --------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    a = parse_args(argv)
    command = "python train/ppo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from rich.console import Console
    from rich.table import Table
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from agents.rollout import heuristic_episode, make_env_fn, policy_episode, scenario_overrides
    from llmsched_env import ServingEnv

    th.set_num_threads(a.torch_threads)
    th.distributions.Distribution.set_default_validate_args(False)
    console = Console()
    overrides = scenario_overrides(a.lam, a.slo_ttft_s, a.slo_tbt_s, a.scenario, hint=a.hint, veto=a.veto,
                                   num_slots=a.num_slots, waiting_slots=a.waiting_slots)
    run_dir = run_dir_of(a)
    if run_dir.exists() and not a.resume and (run_dir / "checkpoints").exists():
        raise SystemExit(f"{run_dir} already holds a run: pass --resume to continue it, or another --run-name")
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]llmsched PPO[/]: scenario {a.scenario}, policy {a.policy}, {a.total_steps:,} steps, "
                  f"{a.n_envs} envs -> {run_dir}")

    venv = SubprocVecEnv([make_env_fn(a.scenario, overrides) for _ in range(a.n_envs)], start_method="fork")
    monitor = make_monitor(a, overrides, run_dir, console, command)
    extra: dict = {"command": command}
    t_start = time.perf_counter()
    if a.resume:
        model, done = load_checkpoint(run_dir, venv, monitor)
        console.print(f"resumed at step {done:,}")
    else:
        model = build_model(a, venv, overrides)
        with open(run_dir / "args.yaml", "w") as f:
            yaml.safe_dump(dataclasses.asdict(a), f, sort_keys=False)
    logger = configure(str(run_dir), ["tensorboard"])
    model.set_logger(logger)
    if not a.resume and a.bc_heuristic:
        bc = behaviour_cloning(a, model, overrides, configure(str(run_dir / "bc"), ["tensorboard"]), console)
        extra["bc"] = {"heuristic": a.bc_heuristic, **bc}
        # the optimizer starts afresh for PPO: Adam moments of the imitation loss do not apply
        model.policy.optimizer = model.policy.optimizer_class(model.policy.parameters(), lr=a.learning_rate,
                                                              **model.policy.optimizer_kwargs)
        if a.eval_interval:
            monitor.init_callback(model)
            e = monitor.evaluate()
            logger.dump(step=0)
            console.print(f"after imitation: eval return {e['policy']:.2f} vs {a.reference} {e['reference']:.2f}")
    remaining = a.total_steps - model.num_timesteps
    t_ppo = time.perf_counter()
    steps0 = model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=monitor, reset_num_timesteps=False, log_interval=1)
    ppo_s = time.perf_counter() - t_ppo
    if a.checkpoint_interval:
        save_checkpoint(run_dir, model, monitor)  # the end state: a later --resume with more steps continues
    sps = (model.num_timesteps - steps0) / max(ppo_s, 1e-9)
    venv.close()
    extra.update({"train_seconds": round(time.perf_counter() - t_start, 1), "ppo_steps_per_s": round(sps, 1)})
    policy_dir = save_policy(a, model, run_dir / "policy", overrides_desc(a), extra)
    console.print(f"policy saved to {policy_dir} ({model.num_timesteps:,} steps, {ppo_s:.0f} s of PPO, "
                  f"{sps:.0f} env steps/s)")

    result = {"run_dir": str(run_dir), "policy_dir": str(policy_dir), "num_timesteps": model.num_timesteps,
              "steps_per_s": sps}
    if a.final_eval_episodes:
        env = ServingEnv(a.scenario, **overrides)
        seeds = [a.final_eval_seed + i for i in range(a.final_eval_episodes)]
        act = policy_act_fn(model.policy)
        pol = [policy_episode(env, act, s) for s in seeds]
        ref = [heuristic_episode(env, a.reference, s) for s in seeds]
        t = Table(title=f"held-out reset seeds {seeds[0]}..{seeds[-1]} ({EVAL_NOTE}); "
                        "full comparison: eval/policy_vs_heuristics.py")
        for c in ("", "return", "SLO attainment", "GPU-s", "TTFT P99 s", "TBT P99 s", "preemptions"):
            t.add_column(c, justify="right")
        for name, rows in (("policy", pol), (a.reference, ref)):
            t.add_row(name, *(f"{np.mean([r[k] for r in rows]):.{p}f}" for k, p in
                              (("return", 2), ("slo_attainment", 3), ("gpu_busy_s", 1), ("ttft_p99_s", 2),
                               ("tbt_p99_s", 3), ("preemptions", 1))))
        diff = [p["return"] - r["return"] for p, r in zip(pol, ref)]
        t.add_row("difference", f"{np.mean(diff):+.2f}", "", "", "", "", "")
        console.print(t)
        result.update({"policy_return": float(np.mean([r["return"] for r in pol])),
                       "reference_return": float(np.mean([r["return"] for r in ref]))})
    return result


if __name__ == "__main__":
    main()
