"""Train the learned scheduler: a rule search, then PPO, on an llmsched scenario.

    python train/ppo.py                                  # the shipped recipe (agents/zoo/default)
    python train/ppo.py --config train/configs/demo.yaml # `make run`: a cut of it, minutes
    python train/ppo.py --total-steps 20000 --init-rule none
    python train/ppo.py --scenario routing               # a learned router (agents/zoo/router)
    tensorboard --logdir runs

Every knob is a field of ``Args`` (its default is the shipped recipe); the CLI is that dataclass
(tyro: ``--field-name value``). ``--config FILE`` reads a YAML mapping of fields that differ from
the defaults (train/configs/); flags override the file.

Stages, top to bottom:
  1. **Start point** (``init_rule``): the actor starts as a heuristic rule of
     ``llmsched_env.priority.HEURISTIC_RULES`` (zero output weights, output bias = the rule's
     action: an exact imitation of it) or, with ``none``, a fresh network.
  2. **Search** (``search_generations`` > 0): CMA-ES (the ``cma`` package) over the 18-dim
     constant action, from the start point, each candidate scored by its mean return on
     ``search_episodes`` training episodes (the same seeds for every candidate of a generation);
     the best mean becomes the actor's output bias. Runs in a spawn pool of ``workers``.
  3. **Critic warm start** (``value_episodes``): the critic is fitted to the discounted returns
     of the start rule's own episodes, so PPO's first advantages are not noise.
  4. **PPO** (Stable-Baselines3, gSDE exploration) over ``total_steps`` agent decisions in
     ``n_envs`` subprocess environments, evaluated every ``eval_interval`` decisions on the
     validation seeds (5000 + k, deterministic actions): TensorBoard ``eval/return``,
     ``eval/slo_attainment``, ``time/decisions_per_s``; the best so far is kept as ``policy_best/``.
  5. **Final table**: the final policy (``policy/``) against ``final_schedulers`` on held-out
     seeds (10000 + k) of ``final_scenario``, printed and written to ``results.json``.

``--scenario routing`` trains a router on ``llmsched/Routing-v0`` through the same stages where
they apply (train/configs/routing.yaml): the start point is a heuristic router cloned from its
decisions (``init_router``), PPO with the same monitor, and the final table puts the learned
router against every heuristic router on held-out seeds; it writes ``router/`` and ``router_best/``.

``--time-limit`` bounds the whole command: each stage stops at its share of the limit and the
final table is cut to what fits. ``--resume`` continues a run from its last checkpoint.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import shlex
import sys
import time

_START = time.monotonic()  # run as a script, --time-limit counts from here, imports included
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402


@dataclass
class Args:
    """The shipped recipe (agents/zoo/default). Tuned values are marked (tuned)."""

    config: Optional[str] = None
    """YAML file of fields that differ from these defaults (train/configs/)"""
    scenario: str = "mixed"
    """scenario name (llmsched_env.scenarios); mixed draws one of five engines and workloads per
    episode (tuned: trained on default alone the policy ties SLAI on a full GPU's cache)"""
    seed: int = 0
    """training seed (networks, exploration, training workloads)"""
    out: str = "runs/ppo"
    """run directory: policy/, policy_best/, checkpoint/, tb/, curve.csv, results.json"""
    time_limit: Optional[float] = None
    """seconds for the whole command (None: no limit)"""
    resume: bool = False
    """continue the run in ``out`` from its last checkpoint"""
    workers: int = 2
    """processes for the search and the final table"""
    # --- start point and search
    init_rule: str = "slai"
    """start rule (fcfs, edf, sarathi, slai) or none (a fresh actor, no search)"""
    search_generations: int = 40
    """CMA-ES generations over the constant action (0: no search) (tuned)"""
    search_popsize: int = 10
    """candidates per generation"""
    search_episodes: int = 6
    """training episodes per candidate"""
    search_sigma: float = 0.15
    """CMA-ES initial step size, action units (tuned)"""
    value_episodes: int = 4
    """episodes of the start rule the critic is fitted on (0: none)"""
    value_epochs: int = 30
    """passes over them"""
    # --- PPO
    total_steps: int = 100_000
    """PPO agent decisions (env steps), all envs together"""
    n_envs: int = 8
    """subprocess environments (8 on 2 cores: more decisions per policy forward, >= 1,000/s)"""
    learning_rate: float = 3e-4
    lr_schedule: Literal["linear", "constant"] = "linear"
    n_steps: int = 256
    """decisions per env per rollout (x n_envs = 2,048 per update)"""
    batch_size: int = 256
    n_epochs: int = 5
    gamma: float = 0.99
    """discount per decision"""
    gae_lambda: float = 0.95
    clip_range: float = 0.1
    """(tuned)"""
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = 0.02
    """(tuned) stop an update's epochs early past this KL"""
    use_sde: bool = True
    """state-dependent exploration (gSDE) (tuned: plain Gaussian noise drifts off the rule)"""
    sde_sample_freq: int = 64
    log_std_init: float = -3.5
    """(tuned) small exploration around the start rule"""
    hidden: tuple[int, ...] = (64, 64)
    """actor and critic hidden layers (tanh)"""
    reward_scale: float = 0.1
    """rewards are multiplied by this for PPO (returns stay reported unscaled)"""
    # --- evaluation
    eval_interval: int = 10_240
    """decisions between validation evaluations"""
    eval_episodes: int = 8
    """validation episodes (seeds 5000 + k)"""
    checkpoint_interval: int = 50_000
    final_episodes: int = 8
    """held-out episodes of the final table (seeds 10000 + k)"""
    final_scenario: str = "default"
    """scenario of the final table (the README's first row; mixed episodes differ too much in
    size for 8 paired episodes to say much)"""
    final_schedulers: tuple[str, ...] = ("fcfs", "sarathi", "vllm-v1:policy=priority", "slai")
    # --- the routing scenario (--scenario routing: a learned router on llmsched/Routing-v0)
    replicas: int = 4
    """replicas of the routing cluster"""
    replica_scheduler: str = "sarathi"
    """every replica's engine scheduler"""
    init_router: str = "kv-aware"
    """heuristic router cloned before PPO (none: a fresh network)"""
    clone_episodes: int = 30
    """training episodes of the cloned router's decisions"""
    clone_epochs: int = 30
    """passes over them (cross-entropy, Adam)"""
    final_routers: tuple[str, ...] = ()
    """routers of the routing final table (empty: every heuristic router)"""


VALIDATION_SEED = 5000
HELD_OUT_SEED = 10_000
ROUTING = "routing"  # the scenario that trains a router instead of an engine scheduler
ROUTING_CONFIG = ROOT / "train" / "configs" / "routing.yaml"


def load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--config {path}: no such file (configs are in train/configs/)")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SystemExit(f"--config {path}: not valid YAML: {e}")
    if not isinstance(doc, dict):
        raise SystemExit(f"--config {path}: must be a mapping of Args fields")
    known = {f.name for f in fields(Args)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SystemExit(f"--config {path}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
    for k in ("hidden", "final_schedulers", "final_routers"):
        if k in doc and isinstance(doc[k], list):
            doc[k] = tuple(doc[k])
    return doc


def _flag(argv: list[str], name: str) -> Optional[str]:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def parse_args(argv=None) -> Args:
    """Args from the CLI over ``--config``'s file over the defaults; ``--scenario routing``
    without a config starts from train/configs/routing.yaml (the routing recipe)."""
    import tyro
    argv = _argv(argv)
    default = Args()
    path = _flag(argv, "--config")
    if path is None and _flag(argv, "--scenario") == ROUTING:
        path = str(ROUTING_CONFIG)
    if path is not None:
        default = replace(default, config=path, **load_config(path))
    a = tyro.cli(Args, args=argv, default=default)
    check_args(a)
    return a


def _argv(argv=None) -> list:
    return list(sys.argv[1:] if argv is None else argv)


def check_args(a: Args) -> None:
    errs = (_routing_errors(a) if a.scenario == ROUTING else _scheduler_errors(a))
    for name in ("total_steps", "value_episodes", "value_epochs", "final_episodes", "clone_episodes",
                 "clone_epochs"):
        if getattr(a, name) < 0:
            errs.append(f"{name}={getattr(a, name)} must be >= 0")
    for name in ("n_envs", "n_steps", "batch_size", "n_epochs", "eval_interval", "eval_episodes",
                 "checkpoint_interval", "workers"):
        if getattr(a, name) < 1:
            errs.append(f"{name}={getattr(a, name)} must be >= 1")
    if not 0 < a.gamma <= 1 or not 0 <= a.gae_lambda <= 1:
        errs.append("gamma must be in (0, 1] and gae_lambda in [0, 1]")
    if a.time_limit is not None and a.time_limit <= 0:
        errs.append(f"time_limit={a.time_limit} must be > 0 seconds")
    if not a.hidden or any(h < 1 for h in a.hidden):
        errs.append(f"hidden={a.hidden} must be one or more layer sizes >= 1")
    if errs:
        raise SystemExit("train/ppo.py: invalid arguments:\n  - " + "\n  - ".join(errs))


def _scheduler_errors(a: Args) -> list[str]:
    from llmsched_env.priority import HEURISTIC_RULES
    from llmsched_env.scenarios import list_scenarios
    errs = []
    for name in ("scenario", "final_scenario"):
        if getattr(a, name) not in list_scenarios():
            errs.append(f"{name} {getattr(a, name)!r} is unknown; known: {ROUTING}, "
                        f"{', '.join(list_scenarios())}")
    if a.init_rule != "none" and a.init_rule not in HEURISTIC_RULES:
        errs.append(f"init_rule {a.init_rule!r}: use none or one of {', '.join(HEURISTIC_RULES)}")
    if a.init_rule == "none" and a.search_generations:
        errs.append("init_rule none starts from a fresh network; the search needs a start rule "
                    "(set --search-generations 0)")
    if a.search_generations < 0:
        errs.append(f"search_generations={a.search_generations} must be >= 0")
    if a.search_popsize < 2 or a.search_episodes < 1:
        errs.append("search_popsize must be >= 2 (CMA-ES needs two candidates) and search_episodes >= 1")
    return errs


def _routing_errors(a: Args) -> list[str]:
    from llmsched_env.router import heuristic_routers
    from llmsched_env.scheduler import make_scheduler
    errs = []
    if a.replicas < 1:
        errs.append(f"replicas={a.replicas} must be >= 1")
    if a.init_router != "none" and a.init_router not in heuristic_routers():
        errs.append(f"init_router {a.init_router!r}: use none or one of {', '.join(heuristic_routers())}")
    unknown = [r for r in a.final_routers if r not in heuristic_routers()]
    if unknown:
        errs.append(f"final_routers {unknown} unknown; known: {', '.join(heuristic_routers())}")
    if a.use_sde:
        errs.append("the routing action is discrete: use --no-use-sde (train/configs/routing.yaml, "
                    "the default for --scenario routing, does)")
    try:
        make_scheduler(a.replica_scheduler)
    except (KeyError, ValueError, TypeError) as e:
        errs.append(f"replica_scheduler {a.replica_scheduler!r}: {e}")
    return errs


class Deadline:
    """The ``--time-limit`` of the whole command, from ``t0`` (monotonic seconds)."""

    #: seconds kept for what follows the final table: saving, closing the pools and environments
    RESERVE_S = 3.0

    def __init__(self, limit_s: Optional[float], t0: Optional[float] = None):
        self.t0 = time.monotonic() if t0 is None else t0
        self.limit_s = limit_s

    def left(self) -> float:
        return math.inf if self.limit_s is None else self.limit_s - (time.monotonic() - self.t0)

    def share(self, fraction: float) -> float:
        """The monotonic time by which a stage that may use ``fraction`` of the limit ends."""
        return math.inf if self.limit_s is None else self.t0 + fraction * self.limit_s


# ------------------------------------------------------------------ search (worker side)
_W: dict = {}


def _worker_init(scenario: str) -> None:
    from llmsched_env.env import ServingEnv
    _W["env"] = ServingEnv(scenario)


def _rule_return(job) -> float:
    """Mean return of the constant action ``action`` on the given training seeds."""
    from agents.episodes import run_episode
    from agents.policy import RuleScheduler
    action, seeds = job
    env = _W["env"]
    sched = RuleScheduler(rule=env.agent.spec.rule_of(action), spec=env.agent.spec)
    return float(np.mean([run_episode(env.scenario, sched, s, env=env)["return"] for s in seeds]))


def search(a: Args, start: np.ndarray, pool, deadline: float, log) -> tuple[np.ndarray, list[dict]]:
    """CMA-ES over the constant action; returns the best mean and the per-generation history."""
    import cma
    es = cma.CMAEvolutionStrategy(start.astype(float).tolist(), a.search_sigma,
                                  {"popsize": a.search_popsize, "bounds": [-1, 1], "seed": a.seed + 1,
                                   "verbose": -9})
    history = []
    rng = np.random.default_rng([a.seed, 17])
    for gen in range(a.search_generations):
        if time.monotonic() > deadline:
            log(f"search: stopped by --time-limit after {gen} generations")
            break
        seeds = [int(s) for s in rng.integers(0, 2 ** 31 - 1, a.search_episodes)]
        cands = es.ask()
        scores = pool.map(_rule_return, [(np.asarray(c), seeds) for c in cands])
        es.tell(cands, [-s for s in scores])
        history.append({"generation": gen + 1, "best": max(scores), "mean": float(np.mean(scores))})
        log(f"search gen {gen + 1:3d}/{a.search_generations}: best {max(scores):7.2f}  mean {np.mean(scores):7.2f}")
    return np.clip(np.asarray(es.result.xfavorite if history else start, np.float32), -1, 1), history


# ------------------------------------------------------------------ PPO side
def make_env(scenario: str, seed: int, reward_scale: float):
    def thunk():
        import gymnasium as gym

        from llmsched_env.env import ServingEnv
        env = ServingEnv(scenario)
        env = gym.wrappers.TransformReward(env, lambda r: r * reward_scale)
        env.reset(seed=seed)
        return env
    return thunk


def build_model(a: Args, venv, tensorboard_log: Optional[str] = None):
    """SB3 PPO with the recipe's settings on ``venv`` (also what eval/bench_env.py times)."""
    import torch as th
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import LinearSchedule
    lr = LinearSchedule(a.learning_rate, 0.0, 1.0) if a.lr_schedule == "linear" else a.learning_rate
    return PPO("MlpPolicy", venv, learning_rate=lr, n_steps=a.n_steps, batch_size=a.batch_size,
               n_epochs=a.n_epochs, gamma=a.gamma, gae_lambda=a.gae_lambda, clip_range=a.clip_range,
               ent_coef=a.ent_coef, vf_coef=a.vf_coef, max_grad_norm=a.max_grad_norm,
               target_kl=a.target_kl, use_sde=a.use_sde, sde_sample_freq=a.sde_sample_freq,
               policy_kwargs={"net_arch": {"pi": list(a.hidden), "vf": list(a.hidden)},
                              "activation_fn": th.nn.Tanh, "log_std_init": a.log_std_init},
               tensorboard_log=tensorboard_log, seed=a.seed, verbose=0, device="cpu")


def actor_of(model) -> "MLPActor":  # noqa: F821
    """The SB3 policy's deterministic actor as a numpy MLPActor."""
    import torch as th

    from agents.policy import MLPActor
    layers = [(m.weight.detach().cpu().numpy(), m.bias.detach().cpu().numpy())
              for m in model.policy.mlp_extractor.policy_net if isinstance(m, th.nn.Linear)]
    an = model.policy.action_net
    layers.append((an.weight.detach().cpu().numpy(), an.bias.detach().cpu().numpy()))
    return MLPActor(layers)


def set_actor_bias(model, action: np.ndarray) -> None:
    """Make the actor output ``action`` everywhere: zero output weights, bias = action."""
    import torch as th
    with th.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(th.as_tensor(action, dtype=th.float32))


def fit_critic(model, a: Args, rule, log) -> None:
    """Fit the value head to the discounted (scaled) returns of ``rule``'s own episodes (the start
    rule's, also after the search: the shipped recipe was trained so; the searched rule returns a
    few percent more, which PPO's first value updates absorb)."""
    import torch as th

    from llmsched_env.env import ServingEnv
    env = ServingEnv(a.scenario)
    spec = env.agent.spec
    action = spec.action_of(rule)
    obs_all, ret_all = [], []
    for k in range(a.value_episodes):
        obs, _ = env.reset(seed=int(np.random.default_rng([a.seed, 23, k]).integers(0, 2 ** 31 - 1)))
        o, r = [obs], []
        while True:
            obs, rew, term, trunc, _ = env.step(action)
            r.append(rew * a.reward_scale)
            if term or trunc:
                break
            o.append(obs)
        g, ret = 0.0, []
        for x in reversed(r):
            g = x + a.gamma * g
            ret.append(g)
        obs_all += o
        ret_all += ret[::-1]
    X = th.as_tensor(np.asarray(obs_all), dtype=th.float32)
    y = th.as_tensor(np.asarray(ret_all), dtype=th.float32)
    pol = model.policy
    params = [*pol.mlp_extractor.value_net.parameters(), *pol.value_net.parameters()]
    opt = th.optim.Adam(params, lr=1e-3)
    for _ in range(a.value_epochs):
        perm = th.randperm(len(X))
        for i in range(0, len(X), 256):
            idx = perm[i:i + 256]
            v = pol.value_net(pol.mlp_extractor.forward_critic(X[idx])).squeeze(-1)
            loss = th.nn.functional.mse_loss(v, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    log(f"critic warm start: {len(X)} decisions of {a.value_episodes} episodes, final MSE {loss.item():.4f}")


def evaluate(actor, spec, scenario: str, seeds) -> dict:
    from agents.episodes import run_episode
    from agents.policy import PPOScheduler
    sched = PPOScheduler(actor=actor, spec=spec)
    rows = [run_episode(scenario, sched, s) for s in seeds]
    return {"return": float(np.mean([r["return"] for r in rows])),
            "slo_attainment": float(np.mean([r["slo_attainment"] for r in rows]))}


def _final_job(job):
    from agents.episodes import run_episode
    from agents.policy import PPOScheduler
    scenario, name, payload, seed = job
    sched = PPOScheduler(actor=payload[0], spec=payload[1]) if payload is not None else name
    row = run_episode(scenario, sched, seed)
    row["scheduler"] = name
    return row


def final_table(a: Args, actor, spec, pool, deadline: Deadline, log) -> dict:
    """Policy vs ``final_schedulers`` on held-out seeds, paired differences with 95% CIs."""
    names = ["policy", *a.final_schedulers]
    rows: dict[str, list] = {n: [] for n in names}
    round_s = 0.0
    for k in range(a.final_episodes):
        if deadline.left() < 1.5 * round_s + Deadline.RESERVE_S:
            log(f"final table: cut to {k} episodes by --time-limit")
            break
        t = time.monotonic()
        jobs = [(a.final_scenario, n, (actor, spec) if n == "policy" else None, HELD_OUT_SEED + k) for n in names]
        for r in pool.map(_final_job, jobs):
            rows[r["scheduler"]].append(r)
        round_s = time.monotonic() - t
    from eval.policy_vs_heuristics import paired_summary
    n_done = len(rows["policy"])
    res = paired_summary(rows.pop("policy"), rows) if n_done else {"policy": {}, "heuristics": {}, "best": None}
    return {"scenario": a.final_scenario, "episodes": n_done, "seeds": f"{HELD_OUT_SEED}..{HELD_OUT_SEED + n_done - 1}",
            "best_heuristic": res["best"], "schedulers": {"policy": res["policy"], **res["heuristics"]}}


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{result['scenario']} scenario, held-out episodes (seeds {result['seeds']}): learned policy vs heuristics")
    for col in ("scheduler", "return", "SLO attain.", "GPU-s", "policy - it [95% CI]"):
        t.add_column(col, justify="right" if col != "scheduler" else "left")
    for name, e in result["schedulers"].items():
        if "return" not in e:  # no episode fitted in the time left
            continue
        d = e.get("policy_minus_return")
        ci = f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" if d and d["n"] >= 2 else ""
        t.add_row(name, f"{e['return']:.2f}", f"{e['slo_attainment']:.3f}", f"{e['gpu_busy_s']:.1f}", ci)
    Console(width=120).print(t)


# ------------------------------------------------------------------ the routing scenario
def make_routing_env(a: Args, seed: int):
    def thunk():
        import gymnasium as gym

        from llmsched_env.routing_env import RoutingEnv
        env = RoutingEnv(num_replicas=a.replicas, scheduler=a.replica_scheduler)
        env = gym.wrappers.TransformReward(env, lambda r: r * a.reward_scale)
        env.reset(seed=seed)
        return env
    return thunk


def clone_router(policy, a: Args, until: float, log) -> dict:
    """Fit ``policy``'s action head to ``init_router``'s decisions on ``clone_episodes`` training
    episodes (reset seeds seed*1000+100_000..; cross-entropy, Adam); returns the fit's summary."""
    import torch as th

    from llmsched_env.router import make_router
    from llmsched_env.routing_env import RoutingEnv
    env = RoutingEnv(num_replicas=a.replicas, scheduler=a.replica_scheduler)
    router = make_router(a.init_router)
    obs, acts = [], []
    episodes = 0
    for ep in range(a.clone_episodes):
        if time.monotonic() > until:
            log(f"cloning: cut to {ep} episodes by --time-limit")
            break
        episodes += 1
        o, _ = env.reset(seed=a.seed * 1000 + 100_000 + ep)
        router.reset(env.cluster)
        done = False
        while not done:
            act = router.route(env.current_request, env.cluster).replica
            obs.append(o)
            acts.append(act)
            o, _, done, _, _ = env.step(act)
    if not obs:
        return {"router": a.init_router, "episodes": 0, "samples": 0}
    x = th.as_tensor(np.asarray(obs))
    y = th.as_tensor(np.asarray(acts))
    opt = th.optim.Adam(policy.parameters(), lr=1e-3)
    gen = th.Generator().manual_seed(a.seed)
    for _ in range(a.clone_epochs):
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
    return {"router": a.init_router, "episodes": episodes, "epochs": a.clone_epochs,
            "samples": len(x), "agreement": float((pred == y).float().mean())}


def evaluate_router_model(model, a: Args, seeds) -> dict:
    """The SB3 router's deterministic return (met - missed) and SLO attainment on ``seeds``."""
    from llmsched_env.routing_env import RoutingEnv
    env = RoutingEnv(num_replicas=a.replicas, scheduler=a.replica_scheduler)
    rets, atts = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        done, ret = False, 0.0
        while not done:
            act, _ = model.predict(obs, deterministic=True)
            obs, r, done, _, info = env.step(int(act))
            ret += r
        rets.append(ret)
        atts.append(info["metrics"]["slo_attainment"])
    return {"return": float(np.mean(rets)), "slo_attainment": float(np.mean(atts))}


def final_routing_table(a: Args, router_dir: Path, pool, deadline: Deadline, log) -> dict:
    """The learned router against ``final_routers`` on held-out seeds (10000 + k): each round
    runs every router on the same ``workers`` workloads; paired 95% t-intervals."""
    from eval.routing_eval import compare_routers, episode_attainment
    from llmsched_env.router import heuristic_routers
    learned = f"learned:path={router_dir}"
    routers = [learned, *(a.final_routers or heuristic_routers())]
    eps: list = []
    round_s = 0.0
    while len(eps) < a.final_episodes:
        if deadline.left() < 1.5 * round_s + Deadline.RESERVE_S:
            log(f"final table: cut to {len(eps)} episodes by --time-limit")
            break
        t = time.monotonic()
        k = len(eps)
        jobs = [(HELD_OUT_SEED + k + i, routers, a.replicas, a.replica_scheduler)
                for i in range(min(a.workers, a.final_episodes - k))]
        eps.extend(pool.map(episode_attainment, jobs))
        round_s = time.monotonic() - t
    return {"scenario": ROUTING, "episodes": len(eps), "seeds": f"{HELD_OUT_SEED}..{HELD_OUT_SEED + len(eps) - 1}",
            "learned": learned, "routers": compare_routers(eps, routers, learned) if eps else {}}


def train_router(a: Args, deadline: Deadline, out: Path, log, command: str) -> dict:
    """``--scenario routing``: clone ``init_router``, then PPO on llmsched/Routing-v0; writes
    ``router/`` (and ``router_best/``), the same logs as the scheduler run, and the final table."""
    import torch as th

    from agents.router_policy import save_router
    from eval.routing_eval import print_routers

    th.manual_seed(a.seed)
    th.set_num_threads(1)
    summary: dict = {"args": asdict(a), "stages": {}}
    pool = mp.get_context("spawn").Pool(a.workers)
    arch = list(a.hidden)
    meta = {"scheduler": a.replica_scheduler, "env": "llmsched/Routing-v0", "seed": a.seed,
            "command": command}
    try:
        venv, model, ckpt = open_run(a, [make_routing_env(a, a.seed * 1000 + i) for i in range(a.n_envs)],
                                     out, log)
        if not a.resume:
            if a.init_router != "none":
                t = time.monotonic()
                bc = clone_router(model.policy, a, deadline.share(0.3), log)
                summary["stages"]["clone"] = {"seconds": time.monotonic() - t, **bc}
                meta["behaviour_cloning"] = bc
                log(f"cloned {a.init_router}: {bc['samples']} decisions"
                    + (f", agreement {bc['agreement']:.3f}" if bc["samples"] else ""))
        val_seeds = [VALIDATION_SEED + k for k in range(a.eval_episodes)]
        monitor = make_monitor(
            a, lambda model: evaluate_router_model(model, a, val_seeds),
            lambda model, res: save_router(model.policy, out / "router_best", a.replicas, arch,
                                           {**meta, "decisions": model.num_timesteps, **res}),
            out, ckpt, deadline.share(0.85), log)
        ppo_s = learn(a, model, monitor, ckpt)
        venv.close()
        router_dir = save_router(model.policy, out / "router", a.replicas, arch,
                                 {**meta, "steps": int(model.num_timesteps), "train_wall_s": round(ppo_s, 1),
                                  "validation_best": monitor.best})
        summary["stages"]["ppo"] = {"seconds": ppo_s, "decisions": int(model.num_timesteps),
                                    "best": monitor.best}
        result = final_routing_table(a, router_dir, pool, deadline, log)
        summary["final"] = result
        (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
        if result["routers"]:
            print_routers(result["routers"], result["learned"],
                          f"{a.replicas} x {a.replica_scheduler}, held-out episodes (seeds {result['seeds']}): "
                          "learned router vs heuristic routers")
        log(f"router saved to {router_dir} (best on validation: {out / 'router_best'}); "
            f"results in {out / 'results.json'}")
        return summary
    finally:
        pool.terminate()


def open_run(a: Args, env_fns, out: Path, log):
    """The vectorised envs and the PPO model of a run: built, or loaded from the run's checkpoint
    with ``--resume``; returns (venv, model, checkpoint path)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
    venv = SubprocVecEnv(env_fns, start_method="spawn") if a.n_envs > 1 else DummyVecEnv(env_fns)
    venv.seed(a.seed)
    ckpt = out / "checkpoint" / "model.zip"
    ckpt.parent.mkdir(exist_ok=True)
    if not a.resume:
        return venv, build_model(a, venv, tensorboard_log=str(out / "tb")), ckpt
    if not ckpt.is_file():
        raise SystemExit(f"--resume: no checkpoint at {ckpt}; run without --resume first")
    model = PPO.load(ckpt, env=venv, tensorboard_log=str(out / "tb"))
    log(f"resumed from {ckpt} at {model.num_timesteps} decisions")
    return venv, model, ckpt


def learn(a: Args, model, monitor, ckpt: Path) -> float:
    """PPO up to ``total_steps`` decisions (a last validation at the end), then the checkpoint;
    returns the seconds it took."""
    t = time.monotonic()
    left = a.total_steps - (model.num_timesteps if a.resume else 0)
    if left > 0:
        model.learn(left, callback=monitor, reset_num_timesteps=not a.resume, tb_log_name="ppo")
        if monitor.last_eval != model.num_timesteps:
            monitor._evaluate()
    model.save(ckpt)
    return time.monotonic() - t


def make_monitor(a: Args, evaluate_model, save_best, out: Path, ckpt: Path, stop_at: float, log):
    """The PPO callback: validation every ``eval_interval`` decisions (``evaluate_model(model)`` ->
    {"return", "slo_attainment"}; curve.csv, TensorBoard ``eval/*``, the best kept by
    ``save_best(model, res)``, ``.best``), a checkpoint every ``checkpoint_interval``, and the
    stop at ``stop_at`` (monotonic s, the --time-limit share of PPO)."""
    from stable_baselines3.common.callbacks import BaseCallback
    curve_path = out / "curve.csv"

    class Monitor(BaseCallback):
        def __init__(self):
            super().__init__()
            self.t0 = time.monotonic()
            self.n0 = 0
            self.next_eval = 0
            self.next_ckpt = a.checkpoint_interval
            self.last_eval = -1
            self.best = {"return": -math.inf}

        def _on_training_start(self):
            self.n0 = self.num_timesteps
            self.next_eval = self.num_timesteps
            self._evaluate()

        def _evaluate(self):
            res = evaluate_model(self.model)
            fresh = not curve_path.exists()
            with open(curve_path, "a", newline="") as f:
                w = csv.writer(f)
                if fresh:
                    w.writerow(["decisions", "return", "slo_attainment"])
                w.writerow([self.num_timesteps, f"{res['return']:.4f}", f"{res['slo_attainment']:.4f}"])
            self.logger.record("eval/return", res["return"])
            self.logger.record("eval/slo_attainment", res["slo_attainment"])
            best = self.best
            if res["return"] > best["return"]:
                best.update(res, decisions=self.num_timesteps)
                save_best(self.model, res)
            self.next_eval += a.eval_interval
            self.last_eval = self.num_timesteps
            log(f"eval @ {self.num_timesteps:7d} decisions: return {res['return']:7.2f}  SLO "
                f"{res['slo_attainment']:.3f}  (best {best['return']:.2f} @ {best['decisions']})")

        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n >= self.next_eval:
                dt = time.monotonic() - self.t0
                self.logger.record("time/decisions_per_s", (n - self.n0) / max(dt, 1e-9))
                self._evaluate()
            if n >= self.next_ckpt:
                self.model.save(ckpt)
                self.next_ckpt += a.checkpoint_interval
            if time.monotonic() > stop_at:
                log(f"PPO: stopped by --time-limit at {n} decisions")
                return False
            return True

    return Monitor()


def main(argv=None, t0: Optional[float] = None) -> dict:
    """The whole run; ``t0`` (monotonic s) is when the ``--time-limit`` clock started (default: now)."""
    a = parse_args(argv)
    deadline = Deadline(a.time_limit, t0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.yaml").write_text(yaml.safe_dump(
        {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(a).items()}, sort_keys=False))
    log_file = open(out / "train.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    if a.scenario == ROUTING:
        try:
            return train_router(a, deadline, out, log, "python train/ppo.py " + shlex.join(_argv(argv)))
        finally:
            log_file.close()

    import torch as th

    from agents.policy import save_policy
    from llmsched_env.priority import HEURISTIC_RULES
    from llmsched_env.scenarios import get_scenario

    th.manual_seed(a.seed)
    th.set_num_threads(1)
    spec = get_scenario(a.scenario).agent
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(a.workers, initializer=_worker_init, initargs=(a.scenario,))
    summary: dict = {"args": asdict(a), "stages": {}}
    try:
        venv, model, ckpt = open_run(a, [make_env(a.scenario, a.seed * 1000 + i, a.reward_scale)
                                         for i in range(a.n_envs)], out, log)
        if not a.resume:
            if a.init_rule != "none":
                rule = HEURISTIC_RULES[a.init_rule]
                start = spec.action_of(rule)
                set_actor_bias(model, start)
                if a.search_generations:
                    t = time.monotonic()
                    best, hist = search(a, start, pool, deadline.share(0.45), log)
                    set_actor_bias(model, best)
                    summary["stages"]["search"] = {"seconds": time.monotonic() - t, "history": hist,
                                                   "action": best.tolist()}
                    save_policy(out / "policy_search", actor_of(model), spec,
                                {"stage": "search", "scenario": a.scenario})
                if a.value_episodes:
                    fit_critic(model, a, rule, log)
        val_seeds = [VALIDATION_SEED + k for k in range(a.eval_episodes)]

        def save_best(model, res):
            save_policy(out / "policy_best", actor_of(model), spec,
                        {"stage": "ppo", "decisions": model.num_timesteps, **res})

        monitor = make_monitor(a, lambda model: evaluate(actor_of(model), spec, a.scenario, val_seeds),
                               save_best, out, ckpt, deadline.share(0.85), log)
        best = monitor.best

        ppo_s = learn(a, model, monitor, ckpt)
        actor = actor_of(model)
        recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(a).items()}
        save_policy(out / "policy", actor, spec, {"stage": "ppo", "scenario": a.scenario,
                                                  "decisions": int(model.num_timesteps), "seed": a.seed,
                                                  "validation_best": best, "args": recipe})
        summary["stages"]["ppo"] = {"seconds": ppo_s, "decisions": int(model.num_timesteps),
                                    "decisions_per_s": (model.num_timesteps - monitor.n0) / max(ppo_s, 1e-9),
                                    "best": best}
        venv.close()
        result = final_table(a, actor, spec, pool, deadline, log)
        summary["final"] = result
        (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
        print_table(result)
        log(f"policy saved to {out / 'policy'} (best on validation: {out / 'policy_best'}); "
            f"results in {out / 'results.json'}")
        return summary
    finally:
        pool.terminate()
        log_file.close()


if __name__ == "__main__":
    main(t0=_START)
