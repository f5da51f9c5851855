"""The Router protocol, the RoutePlan it answers with, and the registry of routers by name.

A cluster (``llmsched_env.cluster``) asks its router once per arrival which replica gets the
request. The router reads the cluster (``cluster.replicas``: one ``ReplicaState`` each, with the
replica's engine and its load counters; ``cluster.now_s``) and never writes it; it answers with
a ``RoutePlan``, which the cluster validates as the engine validates a BatchPlan: a plan naming
no replica of the cluster is an error that says so, never a silent choice.

Routers are named by the same spec grammar as schedulers (``llmsched_env.scheduler.parse_spec``):
``name:key=value,...``, e.g. ``p2c:seed=3`` or ``least-tokens:decode=oracle``. The built-in
heuristic routers live in ``baselines.routers`` and the learned one in ``agents.router_policy``;
they are found by the lazy ``module:Class`` strings in ``BUILTIN`` (imported only when named).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from .scheduler import lazy_class, parse_spec, registrar


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Where one arriving request goes: ``replica`` is an index into ``cluster.replicas``."""

    replica: int


class RouteError(ValueError):
    """An invalid RoutePlan. ``violations`` names each problem; the cluster is unchanged."""

    def __init__(self, violations: list[str], rid: int, now_s: float):
        self.violations = violations
        head = f"invalid RoutePlan for request {rid} (t={now_s:.6f} s): {len(violations)} violation(s)"
        super().__init__(head + "\n  - " + "\n  - ".join(violations))


@runtime_checkable
class Router(Protocol):
    name: str

    def route(self, request, cluster) -> RoutePlan:
        """The replica for ``request`` (a RequestSpec arriving now), given the cluster's state."""

    def reset(self, cluster) -> None:
        """Forget per-workload state; called before a new workload with the cluster it routes for."""


# name -> "module:Class"; imported on first use so that naming a router loads only its module
BUILTIN: dict[str, str] = {
    "round-robin": "baselines.routers:RoundRobinRouter",
    "random": "baselines.routers:RandomRouter",
    "lor": "baselines.routers:LeastOutstandingRequestsRouter",
    "least-tokens": "baselines.routers:LeastTokensRouter",
    "p2c": "baselines.routers:PowerOfTwoRouter",
    "kv-aware": "baselines.routers:KVAwareRouter",
    "affinity": "baselines.routers:AffinityRouter",
    "learned": "agents.router_policy:LearnedRouter",
}
REGISTRY: dict[str, Callable[..., Router]] = {}


class UnknownRouter(KeyError):
    def __str__(self) -> str:
        return self.args[0]


register_router = registrar(REGISTRY, "router")  # class decorator: make_router(name) builds it


def available_routers() -> list[str]:
    return sorted(set(REGISTRY) | set(BUILTIN))


def heuristic_routers() -> list[str]:
    """Every router buildable from its name alone (not ``learned``, which needs a policy)."""
    return [n for n in available_routers() if n != "learned"]


def _router_class(name: str):
    return lazy_class(REGISTRY, BUILTIN, name, "router", UnknownRouter)


def make_router(spec: str, **options) -> Router:
    """A router from its name or spec (``name:key=value,...``; keyword options override the
    spec's). Raises UnknownRouter listing the known names, ValueError for bad options."""
    try:
        name, spec_options = parse_spec(spec)
    except ValueError as e:
        raise ValueError(str(e).replace("scheduler spec", "router spec")) from None
    cls = _router_class(name)
    try:
        router = cls(**{**spec_options, **options})
    except TypeError as e:
        raise ValueError(f"bad options for router {name!r}: {e}") from None
    router.spec = spec.strip()
    return router
