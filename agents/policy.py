"""The learned scheduler: a saved actor network, loaded without torch, run through the agent
interface (``llmsched_env.agent``) as the schedulers ``ppo`` and ``rule``.

A policy directory holds ``policy.npz`` (the actor's layers ``W0, b0, W1, b1, ...``: observation
(22) -> tanh hidden layers -> action mean (18)) and ``policy.yaml`` (format, the AgentSpec it was
trained with, observation and action field names, training summary). The deterministic action is
the actor's mean clipped to [-1, 1]; the value head is not saved (it is not needed to act).

Schedulers:
  * ``ppo:path=DIR`` (default ``agents/zoo/default``): the saved actor decides at every decision
    point; works on any engine limits (no slot cap; every request is summarised).
  * ``rule:name=slai`` (or fcfs, edf, sarathi, or ``path=DIR`` of a saved constant rule): one
    fixed rule of ``llmsched_env.priority`` through the same interface, for comparisons.
"""
from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from llmsched_env.agent import ACTION_DIM, ACTION_FIELDS, OBS_FEATURES, AgentInterface, AgentSpec
from llmsched_env.priority import HEURISTIC_RULES, Rule, running_state
from llmsched_env.scheduler import register

FORMAT = "llmsched-policy"
FORMAT_VERSION = 1
DEFAULT_PATH = Path(__file__).resolve().parent / "zoo" / "default"


class PolicyError(ValueError):
    """A policy directory that cannot be loaded (the message says which file and field)."""


class MLPActor:
    """The actor's mean action in numpy: tanh hidden layers, a linear output, clipped to [-1, 1]."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]):
        self.layers = [(np.asarray(W, np.float32), np.asarray(b, np.float32)) for W, b in layers]

    @property
    def obs_dim(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def act_dim(self) -> int:
        return self.layers[-1][0].shape[0]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float32)
        last = len(self.layers) - 1
        for i, (W, b) in enumerate(self.layers):
            x = x @ W.T + b
            if i < last:
                np.tanh(x, out=x)
        return np.clip(x, -1.0, 1.0)


def save_policy(path: str | Path, actor: MLPActor, spec: AgentSpec, meta: Optional[dict] = None) -> Path:
    """Write ``policy.npz`` and ``policy.yaml`` into directory ``path`` (created)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (W, b) in enumerate(actor.layers):
        arrays[f"W{i}"], arrays[f"b{i}"] = W, b
    np.savez(d / "policy.npz", **arrays)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "activation": "tanh",
           "layers": len(actor.layers), "observation": list(OBS_FEATURES), "action": list(ACTION_FIELDS),
           "agent": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()},
           "meta": meta or {}}
    (d / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return d


class LoadedPolicy:
    """A policy directory, validated: ``actor``, ``spec`` (AgentSpec), ``meta`` (training summary)."""

    def __init__(self, path: str | Path):
        d = Path(path)
        if not d.is_dir():
            raise PolicyError(f"policy directory {d} does not exist; train one with `python train/ppo.py` "
                              f"or use the shipped one, {DEFAULT_PATH}")
        for name in ("policy.yaml", "policy.npz"):
            if not (d / name).is_file():
                raise PolicyError(f"{d / name} is missing; a policy directory holds policy.yaml and policy.npz "
                                  "(written by agents.policy.save_policy)")
        try:
            doc = yaml.safe_load((d / "policy.yaml").read_text())
        except yaml.YAMLError as e:
            raise PolicyError(f"{d / 'policy.yaml'} is not valid YAML: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PolicyError(f"{d / 'policy.yaml'}: not an llmsched policy (format must be {FORMAT!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise PolicyError(f"{d / 'policy.yaml'}: format_version {doc.get('format_version')!r}; this llmsched "
                              f"reads version {FORMAT_VERSION} (retrain with train/ppo.py)")
        if doc.get("observation") != list(OBS_FEATURES) or doc.get("action") != list(ACTION_FIELDS):
            raise PolicyError(f"{d / 'policy.yaml'}: its observation or action fields differ from this llmsched's "
                              "(llmsched_env.agent.OBS_FEATURES / ACTION_FIELDS); retrain with train/ppo.py")
        known = {f.name for f in fields(AgentSpec)}
        agent = doc.get("agent") or {}
        if not isinstance(agent, dict) or set(agent) - known:
            raise PolicyError(f"{d / 'policy.yaml'}: field 'agent' must map AgentSpec fields ({', '.join(sorted(known))})")
        self.spec = AgentSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in agent.items()})
        try:
            self.spec.check()
        except ValueError as e:
            raise PolicyError(f"{d / 'policy.yaml'}: {e}") from None
        try:
            with np.load(d / "policy.npz") as z:
                n = int(doc.get("layers", 0))
                layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]
        except (KeyError, ValueError, OSError) as e:
            raise PolicyError(f"{d / 'policy.npz'}: cannot read layers W0..W{{n-1}}, b0..: {e}") from None
        if not layers:
            raise PolicyError(f"{d / 'policy.yaml'}: 'layers' must be >= 1")
        dims = [layers[0][0].shape[1]]
        for i, (W, b) in enumerate(layers):
            if W.ndim != 2 or b.shape != (W.shape[0],) or W.shape[1] != dims[-1]:
                raise PolicyError(f"{d / 'policy.npz'}: layer {i} has W {W.shape}, b {b.shape}; they do not chain")
            if not (np.isfinite(W).all() and np.isfinite(b).all()):
                raise PolicyError(f"{d / 'policy.npz'}: layer {i} has non-finite weights")
            dims.append(W.shape[0])
        if dims[0] != len(OBS_FEATURES) or dims[-1] != ACTION_DIM:
            raise PolicyError(f"{d / 'policy.npz'}: maps {dims[0]} -> {dims[-1]}; expected "
                              f"{len(OBS_FEATURES)} observation features -> {ACTION_DIM} action fields")
        self.path = d
        self.actor = MLPActor(layers)
        self.meta = doc.get("meta") or {}


class AgentScheduler:
    """Base of the agent-interface schedulers: the agent interface, asked at decision points
    (``learned = True`` keeps ``rule`` out of the heuristic baselines too: it is a point of the
    learned action space, not a port of a serving system)."""

    learned = True
    spec: AgentSpec

    def __init__(self):
        self.agent = AgentInterface(self.spec)

    def reset(self) -> None:
        self.agent.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def schedule(self, engine):
        agent = self.agent
        running = running_state(engine)  # read once for the step's sync, observation and plan
        if agent.sync(engine, running):
            self.decide(engine, running)
        return agent.plan(engine, running)

    def decide(self, engine, running: Optional[list[tuple]] = None) -> None:
        """Decide before this step (``running``: ``running_state(engine)`` when already read)."""
        self.agent.decide(self.act(self.agent.observe(engine, running)))


@register("ppo")
class PPOScheduler(AgentScheduler):
    """The learned policy at ``path`` (a directory of ``policy.yaml`` + ``policy.npz``).

    Args:
        path: policy directory (default: the shipped ``agents/zoo/default``).
        actor, spec: instead, an in-memory actor and its AgentSpec (from Python: training's
            evaluations).
    """

    def __init__(self, path: str | None = None, actor: MLPActor | None = None, spec: AgentSpec | None = None):
        if actor is None:
            self.policy = LoadedPolicy(path or DEFAULT_PATH)
            actor, spec = self.policy.actor, self.policy.spec
        self.spec = spec or AgentSpec()
        self._actor = actor
        super().__init__()

    def act(self, obs):
        return self._actor(obs)


@register("rule")
class RuleScheduler(AgentScheduler):
    """One fixed priority rule through the agent interface (no learning).

    Args:
        name: a ``llmsched_env.priority.HEURISTIC_RULES`` entry (fcfs, edf, sarathi, slai).
        path: instead, a policy directory whose actor has no hidden layers and zero weights (a
            constant action, as the search stage of train/ppo.py saves it) — or any policy, whose
            action at an empty engine is then used throughout.
        token_budget, kv_reserve, admit_threshold: replace the rule's knobs.
        rule, spec: instead, a ``Rule`` object (from Python) and the AgentSpec to run it with.
    """

    def __init__(self, name: str = "slai", path: str | None = None, token_budget: int | None = None,
                 kv_reserve: float | None = None, admit_threshold: float | None = None,
                 rule: Rule | None = None, spec: AgentSpec | None = None):
        if rule is not None:
            self.spec = spec or AgentSpec()
        elif path is not None:
            pol = LoadedPolicy(path)
            self.spec = pol.spec
            rule = pol.spec.rule_of(pol.actor(np.zeros(len(OBS_FEATURES), np.float32)))
        else:
            if name not in HEURISTIC_RULES:
                raise ValueError(f"unknown rule {name!r}; known: {', '.join(HEURISTIC_RULES)}")
            self.spec = AgentSpec()
            rule = HEURISTIC_RULES[name]
        rule = replace(rule, **{k: v for k, v in (("token_budget", token_budget), ("kv_reserve", kv_reserve),
                                                 ("admit_threshold", admit_threshold)) if v is not None})
        self.rule = rule
        super().__init__()

    def decide(self, engine, running: Optional[list[tuple]] = None) -> None:
        self.agent.adopt(self.rule)


def constant_actor(action: np.ndarray) -> MLPActor:
    """An actor that always outputs ``action`` (a linear layer with zero weights)."""
    a = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
    return MLPActor([(np.zeros((ACTION_DIM, len(OBS_FEATURES)), np.float32), a)])
