"""The Scheduler protocol and the registry of schedulers by name.

A scheduler is anything with ``schedule(engine) -> BatchPlan``. It reads the engine (the view:
``running``, ``iter_waiting()``, ``free_blocks``, ``config``, ``now_s``, request fields) and never
writes it. ``reset()`` is called before a new workload. Register a scheduler with
``@register("name")`` on its class (constructor keyword arguments are its options).
"""
from __future__ import annotations

import importlib
from typing import Callable, Protocol, runtime_checkable

from .plan import BatchPlan


@runtime_checkable
class Scheduler(Protocol):
    name: str

    def schedule(self, engine) -> BatchPlan:
        """The plan for the next step, given the engine's current state (read-only)."""

    def reset(self) -> None:
        """Forget per-workload state."""


REGISTRY: dict[str, Callable[..., Scheduler]] = {}


def register(name: str):
    """Class decorator: make the scheduler available as ``make_scheduler(name)``."""
    def deco(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"scheduler name {name!r} registered twice")
        REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco


def _load_builtin() -> None:
    importlib.import_module("baselines")


# Learned policies: registered when first asked for by name (not listed with the heuristics).
ON_DEMAND = {"ppo": "agents.loader"}


def available_schedulers() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


class UnknownScheduler(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def make_scheduler(name: str, **options) -> Scheduler:
    """Instantiate a registered scheduler. Raises UnknownScheduler listing the known names."""
    _load_builtin()
    if name not in REGISTRY and name in ON_DEMAND:
        importlib.import_module(ON_DEMAND[name])
    if name not in REGISTRY:
        raise UnknownScheduler(f"unknown scheduler {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](**options)
    except TypeError as e:
        raise ValueError(f"bad options for scheduler {name!r}: {e}") from None
