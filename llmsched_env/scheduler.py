"""The Scheduler protocol and the registry of schedulers by name.

A scheduler is anything with ``schedule(engine) -> BatchPlan``. It reads the engine (the view:
``running``, ``iter_waiting()``, ``free_blocks``, ``config``, ``now_s``, request fields) and never
writes it. ``reset()`` is called before a new workload. Register a scheduler with
``@register("name")`` on its class (constructor keyword arguments are its options).

Everywhere a scheduler is named (CLI, evaluation, the vLLM hook) a *spec* may carry options:
``name:key=value,key=value``, e.g. ``vllm-v1:policy=priority`` or ``sarathi:token_budget=256``
or ``ppo:path=agents/zoo/default``. Values are parsed as int, float, true/false/none, else string.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Callable, Optional, Protocol, runtime_checkable

from .plan import BatchPlan


@runtime_checkable
class Scheduler(Protocol):
    name: str

    def schedule(self, engine) -> BatchPlan:
        """The plan for the next step, given the engine's current state (read-only)."""

    def reset(self) -> None:
        """Forget per-workload state."""


class QueueView:
    """The engine as a scheduler sees it with a different waiting queue (``waiting``, in queue
    order) and, optionally, a lower cap on running requests (``max_num_seqs``); read-only,
    everything else is the engine's."""

    def __init__(self, engine, waiting: list, max_num_seqs: Optional[int] = None):
        self._engine = engine
        self._waiting = waiting
        cfg = engine.config
        self.config = cfg if max_num_seqs is None or max_num_seqs >= cfg.max_num_seqs else \
            replace(cfg, max_num_seqs=max_num_seqs)

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def iter_waiting(self):
        return iter(self._waiting)

    @property
    def waiting(self):
        return list(self._waiting)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)


class WorkloadNotServable(ValueError):
    """A scheduler's documented refusal to serve a workload (e.g. a whole-prompt scheduler and a
    prompt over its token budget). Distinct from a PlanError, which is a scheduler bug."""


class NeedsOptions(ValueError):
    """A scheduler that cannot be built from its name alone (e.g. ``optimal`` needs a solved
    schedule, ``ppo`` a policy file)."""


REGISTRY: dict[str, Callable[..., Scheduler]] = {}


def registrar(registry: dict, kind: str) -> Callable:
    """A ``register(name)`` class decorator that adds classes to ``registry`` under ``name``
    (and sets ``cls.name``); registering a second class under one name is an error."""
    def register(name: str):
        def deco(cls):
            if name in registry and registry[name] is not cls:
                raise ValueError(f"{kind} name {name!r} registered twice")
            registry[name] = cls
            cls.name = name
            return cls
        return deco
    return register


register = registrar(REGISTRY, "scheduler")
register.__doc__ = "Class decorator: make the scheduler available as ``make_scheduler(name)``."


def is_heuristic(name: str) -> bool:
    """True for registered heuristics: not learned policies (class attribute ``learned = True``:
    ``ppo``, ``onnx``) and buildable from the name alone (not ``optimal``, which sets
    ``needs_solution = True``)."""
    _load_builtin()
    cls = REGISTRY[parse_spec(name)[0]]
    return not getattr(cls, "learned", False) and not getattr(cls, "needs_solution", False)


def heuristic_schedulers() -> list[str]:
    """Every registered heuristic (see ``is_heuristic``), sorted."""
    return [n for n in available_schedulers() if is_heuristic(n)]


def _load_builtin() -> None:
    importlib.import_module("baselines")
    importlib.import_module("agents.policy")  # the learned policy "ppo" and fixed rules "rule" (numpy only)
    importlib.import_module("agents.onnx_runtime")  # its ONNX export, "onnx" (onnxruntime loads when used)


def available_schedulers() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


class UnknownScheduler(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str, bare_key: Optional[str] = None) -> tuple[str, dict]:
    """``"name:key=value,..."`` -> (name, options). With ``bare_key``, an option part without any
    ``=`` is shorthand for ``bare_key=VALUE`` (the vLLM hook: ``onnx:/models/export`` means
    ``path="/models/export"``). Raises ValueError on a malformed spec."""
    name, _, rest = spec.strip().partition(":")
    name, rest = name.strip(), rest.strip()
    if not name:
        raise ValueError(f"scheduler spec {spec!r} has no scheduler name before ':'")
    if rest and bare_key is not None and "=" not in rest:
        return name, {bare_key: rest}
    options = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ValueError(f"scheduler spec {spec!r}: option {item!r} is not key=value")
        options[key] = _value(val.strip())
    return name, options


def split_specs(text: str) -> list[str]:
    """Comma-separated scheduler specs, where a spec's own options are comma-separated too:
    ``"fcfs,vllm-v1:policy=priority,token_budget=256,sarathi"`` -> fcfs, vllm-v1:policy=priority,
    token_budget=256, sarathi (an item ``key=value`` without ``:`` continues the previous spec)."""
    specs: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item.split("=", 1)[0] and specs and ":" in specs[-1]:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def make_scheduler(name: str, **options) -> Scheduler:
    """Instantiate a registered scheduler from its name or spec (``name:key=value,...``; keyword
    options override the spec's). Raises UnknownScheduler listing the known names."""
    _load_builtin()
    name, spec_options = parse_spec(name)
    options = {**spec_options, **options}
    if name not in REGISTRY:
        raise UnknownScheduler(f"unknown scheduler {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](**options)
    except TypeError as e:
        raise ValueError(f"bad options for scheduler {name!r}: {e}") from None
