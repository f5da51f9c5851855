"""The Scheduler protocol and the registry of schedulers by name.

A scheduler is anything with ``schedule(engine) -> BatchPlan``. It reads the engine through
``EngineView`` (what the Engine, ``QueueView`` and the vLLM hook's view all provide) and never
writes it. ``reset()`` is called before a new workload. Register a scheduler with
``@register("name")`` on its class (constructor keyword arguments are its options).

Everywhere a scheduler is named (CLI, evaluation, the vLLM hook) a *spec* may carry options:
``name:key=value,key=value``, e.g. ``vllm-v1:policy=priority`` or ``sarathi:token_budget=256``
or ``ppo:path=agents/zoo/default``. Values are parsed as int, float, true/false/none, else string.
"""
from __future__ import annotations

import importlib
import types
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Optional, Protocol, Sequence, runtime_checkable

from .plan import BatchPlan

if TYPE_CHECKING:
    from .engine import EngineConfig
    from .request import Request


@runtime_checkable
class EngineView(Protocol):
    """What a scheduler may read (never write). Requests are ``Request``s or objects with the same
    fields (the vLLM hook's views); times are seconds on the engine's clock, sizes KV blocks.

    ``cost_model`` is there in the simulator but not in a real engine (the vLLM hook has none
    unless one is configured): a scheduler that reads it must say so when it is absent.
    """

    config: "EngineConfig"
    now_s: float                #: the clock: the next step starts now
    busy_s: float               #: seconds the engine has spent running batches so far
    last_step_latency_s: float  #: the previous batch's latency (0 before the first)
    running: Mapping[int, "Request"]   #: resident requests by id, in admission order
    requests: Mapping[int, "Request"]  #: every request that has arrived, by id
    finished: Sequence["Request"]      #: finished requests, in finishing order

    @property
    def num_requests(self) -> int:
        """Requests in the workload (arrived or not)."""

    @property
    def used_blocks(self) -> int:
        """KV blocks held by resident requests."""

    @property
    def free_blocks(self) -> int:
        """KV blocks free for the next step (the cache's capacity less ``used_blocks``)."""

    @property
    def host_blocks(self) -> int:
        """KV blocks swapped out to host memory (0 unless ``config.preemption_mode == "swap"``)."""

    @property
    def num_waiting(self) -> int:
        """Arrived requests not resident (new and preempted)."""

    @property
    def waiting(self) -> list:
        """The waiting queue, head first (a copy: prefer ``iter_waiting``)."""

    def iter_waiting(self) -> Iterator["Request"]:
        """The waiting queue, head first: preempted requests (newest victim first), then new ones."""

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks that hold ``num_tokens`` tokens."""


@runtime_checkable
class Scheduler(Protocol):
    name: str

    def schedule(self, engine: EngineView) -> BatchPlan:
        """The plan for the next step, given the engine's current state (read-only)."""

    def reset(self) -> None:
        """Forget per-workload state."""


class QueueView:
    """An ``EngineView``: the engine as a scheduler sees it with a different waiting queue (``waiting``, in queue
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


#: Built-in schedulers, imported only when first made ("module:Class"); a plugin registers with
#: ``@register`` instead. Importing llmsched_env never imports baselines/ or agents/.
BUILTIN: dict[str, str] = {
    "edf": "baselines.edf:EDFScheduler",
    "faster-transformer": "baselines.faster_transformer:FasterTransformerScheduler",
    "fastserve": "baselines.fastserve:FastServeScheduler",
    "fcfs": "baselines.vllm_v1:FCFSScheduler",
    "infermax-srf": "baselines.infermax_srf:InferMaxSRFScheduler",
    "lightllm": "baselines.lightllm:LightLLMScheduler",
    "ltr": "baselines.ltr:LTRScheduler",
    "no-preempt": "baselines.no_preempt:NoPreemptScheduler",
    "orca": "baselines.orca:OrcaScheduler",
    "sarathi": "baselines.sarathi:SarathiScheduler",
    "sglang": "baselines.sglang:SGLangScheduler",
    "sjf": "baselines.srpt:SJFScheduler",
    "slai": "baselines.slai:SLAIScheduler",
    "srpt": "baselines.srpt:SRPTScheduler",
    "trtllm-max-util": "baselines.trtllm_max_util:TRTLLMMaxUtilScheduler",
    "trtllm-no-evict": "baselines.trtllm_no_evict:TRTLLMNoEvictScheduler",
    "vllm-v0": "baselines.vllm_v0:VLLMV0Scheduler",
    "vllm-v1": "baselines.vllm_v1:VLLMV1Scheduler",
    "optimal": "baselines.optimal:OptimalScheduler",  # OR-Tools loads here, only when used
    "ppo": "agents.policy:PPOScheduler",
    "rule": "agents.policy:RuleScheduler",
    "onnx": "agents.onnx_runtime:OnnxScheduler",  # onnxruntime loads when a policy is served
}
#: Built-ins that are not heuristics: learned policies and the agent interface's fixed rules,
#: and the optimal replay (it needs a solved schedule).
NOT_HEURISTIC = {"ppo", "rule", "onnx", "optimal"}
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
    """True for registered heuristics: not learned policies (``ppo``, ``onnx``, ``rule``; a plugin
    sets the class attribute ``learned = True``) and buildable from the name alone (not
    ``optimal``, which sets ``needs_solution = True``)."""
    name = parse_spec(name)[0]
    if name in BUILTIN:
        return name not in NOT_HEURISTIC
    cls = scheduler_class(name)
    return not getattr(cls, "learned", False) and not getattr(cls, "needs_solution", False)


def heuristic_schedulers() -> list[str]:
    """Every registered heuristic (see ``is_heuristic``), sorted."""
    return [n for n in available_schedulers() if is_heuristic(n)]


def available_schedulers() -> list[str]:
    return sorted(set(REGISTRY) | set(BUILTIN))


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


def lazy_class(registry: dict, builtin: dict, name: str, kind: str, unknown: type):
    """The class registered under ``name`` in ``registry``, importing the module that
    ``builtin[name]`` ("module:Class") names on first use; ``unknown`` (an exception class) when
    there is none."""
    if name not in registry:
        if name not in builtin:
            known = ", ".join(sorted(set(registry) | set(builtin)))
            raise unknown(f"unknown {kind} {name!r}; registered: {known}")
        module, _, cls = builtin[name].partition(":")
        importlib.import_module(module)  # registers the class
        if name not in registry:
            raise unknown(f"{kind} {name!r}: {module} did not register {cls}")
    return registry[name]


def scheduler_class(name: str):
    """The class registered under ``name``, importing a built-in's module on first use."""
    return lazy_class(REGISTRY, BUILTIN, name, "scheduler", UnknownScheduler)


def _check_option_types(cls, name: str, options: dict) -> None:
    """Options whose constructor annotation is int, float, bool or str (or None of them) must have
    that type (an int passes for a float): ``sarathi:token_budget=abc`` is named as such."""
    import typing
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not evaluate here: let the constructor decide
        return
    simple = (int, float, bool, str, type(None))
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None:
            continue
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if not all(t in simple for t in allowed):
            continue
        ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool) and bool not in allowed)
                 for t in allowed) or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            want = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"scheduler {name!r}: option {key}={value!r} must be {want}")


def make_scheduler(name: str, /, **options) -> Scheduler:
    """Instantiate a registered scheduler from its name or spec (``name:key=value,...``; keyword
    options override the spec's). Raises UnknownScheduler listing the known names."""
    name, spec_options = parse_spec(name)
    options = {**spec_options, **options}
    cls = scheduler_class(name)
    _check_option_types(cls, name, options)
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"bad options for scheduler {name!r}: {e}") from None
