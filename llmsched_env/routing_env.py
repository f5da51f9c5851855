"""``RoutingEnv`` (``llmsched/Routing-v0``): the Gymnasium environment of request routing over a
cluster (``llmsched_env.cluster``), and ``RoutingObservation``, the features it shows, shared
with the learned router (``agents.router_policy``)."""
from __future__ import annotations

import math
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .cluster import Cluster, ReplicaSpec, replicas_from_preset
from .metrics import slo_met
from .router import RoutePlan
from .workload import WorkloadConfig, build_workload
from .scenarios import TIERS

CLIP = 10.0
# per replica: name, meaning (all scale-free: fractions of the replica's own limits or targets)
REPLICA_FEATURES = (
    ("waiting", "waiting requests / max_num_seqs"),
    ("running", "running requests / max_num_seqs"),
    ("kv_used", "KV blocks in use / capacity"),
    ("kv_demand", "(KV in use + blocks the waiting queue needs) / capacity"),
    ("tokens_left", "log1p(estimated tokens left / max_num_batched_tokens): prompt tokens left plus the "
                    "mean finished output per unfinished request (least-tokens' count)"),
    ("ttft_recent", "EWMA of TTFT / TTFT target over the requests finished here"),
    ("step_latency", "last step's latency / the arriving request's TBT target"),
)
# of the arriving request
REQUEST_FEATURES = (
    ("prompt", "log1p(prompt tokens / 1024)"),
    ("ttft_target", "log1p(TTFT target, s)"),
    ("tbt_target", "log1p(TBT target / 0.1 s)"),
)


class RoutingObservation:
    """The observation of one routing decision: ``len(REPLICA_FEATURES)`` features per replica
    (replica order), then ``len(REQUEST_FEATURES)`` of the arriving request; float32, clipped
    to [0, 10]. No feature grows with uptime or episode progress. The mean output length behind
    ``tokens_left`` is that of the requests finished in the cluster (``prior_output_tokens``
    before any). ``reset(cluster)`` checks the replica count."""

    def __init__(self, num_replicas: int, prior_output_tokens: float = 128.0):
        self.num_replicas = num_replicas
        self.prior = prior_output_tokens
        self.size = num_replicas * len(REPLICA_FEATURES) + len(REQUEST_FEATURES)

    def space(self) -> spaces.Box:
        return spaces.Box(0.0, CLIP, (self.size,), np.float32)

    def reset(self, cluster: Cluster) -> None:
        if cluster.num_replicas != self.num_replicas:
            raise ValueError(f"this observation is for {self.num_replicas} replicas; the cluster has "
                             f"{cluster.num_replicas}")

    def encode(self, cluster: Cluster, request) -> np.ndarray:
        reps = cluster.replicas
        out_sum = sum(r.finished_output_tokens for r in reps)
        out_n = sum(len(r.engine.finished) for r in reps)
        mean_out = out_sum / out_n if out_n else self.prior
        tbt = request.tbt_slo_s if 0 < request.tbt_slo_s < math.inf else 0.1
        x = []
        for r in reps:
            e = r.engine
            cfg = e.config
            left = r.prompt_tokens_left + r.outstanding_requests * mean_out
            x += [e.num_waiting / cfg.max_num_seqs, len(e.running) / cfg.max_num_seqs, r.kv_used_fraction,
                  r.kv_demand_fraction, math.log1p(left / cfg.max_num_batched_tokens), r.ttft_ratio_ewma,
                  e.last_step_latency_s / tbt]
        ttft = request.ttft_slo_s if request.ttft_slo_s < math.inf else 60.0
        x += [math.log1p(request.prompt_len / 1024), math.log1p(ttft), math.log1p(tbt / 0.1)]
        return np.clip(np.asarray(x, dtype=np.float32), 0.0, CLIP)


class RoutingEnv(gym.Env):
    """Request routing across the replicas of an LLM-serving cluster.

    ## Description
    R replicas of a serving engine (each an ``Engine`` with a paged KV cache and a calibrated
    cost model, ``llmsched_env.cluster``) each run a heuristic scheduler (``scheduler``, default
    Sarathi-Serve). Requests with TTFT and TBT targets arrive; at each arrival the agent picks
    the replica that serves it. Between decisions the cluster runs on its one clock (the replica
    whose next event is earliest steps first) until the next arrival. An episode serves one
    workload; after the last arrival the replicas drain.

    ## Action Space
    ``Discrete(R)``: the replica index for the arriving request (``RoutePlan(action)``).

    ## Observation Space
    ``Box(0, 10, (R * 7 + 3,), float32)``: per replica (in replica order) waiting and running
    requests as fractions of ``max_num_seqs``, KV in use and KV wanted (in use + what the
    waiting queue needs) as fractions of capacity, log1p of the estimated tokens left in units
    of the step token budget, the EWMA of TTFT / target of its finished requests, and its last
    step latency / the request's TBT target; then the arriving request's log1p(prompt / 1024),
    log1p(TTFT target s), log1p(TBT target / 0.1 s). Scale-free, none grows with uptime
    (``REPLICA_FEATURES``, ``REQUEST_FEATURES``).

    ## Rewards
    For each request that finishes between two decisions: +1 if it met its SLO (TTFT and P99
    TBT within target), -1 if not. The undiscounted return is (met - missed) over the workload,
    i.e. ``N * (2 * attainment - 1)``; ``info`` carries ``met`` and ``missed`` of the step.

    ## Starting State
    ``reset(seed)`` draws a workload: ``num_requests`` requests with splitwise_conv trace
    lengths (prompt + output <= 8,192 tokens), Poisson arrivals at a rate uniform in
    ``rate_range`` (requests/s for the whole cluster; the default 14-22 for 4 replicas of 1,024
    KV blocks is near saturation: round-robin attains about 0.99 at 12, 0.90 at 16, 0.78 at 20,
    and the heuristic routers differ), SLO tiers strict (TTFT 0.5 s, TBT 60 ms)
    and relaxed (4 s, 200 ms), half each. ``options={"workload": [RequestSpec, ...] |
    WorkloadConfig}`` pins it; ``{"rate": x}`` pins the rate. The first observation is at the
    first arrival.

    ## Episode End
    Terminated after the last request is routed and every request has finished (the last
    step's reward settles all of them); never truncated. The final ``info`` holds ``metrics``
    (``cluster.cluster_metrics``, the keys of ``llmsched simulate --replicas --json``).

    ## Arguments
    ``RoutingEnv(num_replicas=4, scheduler="sarathi", preset="h100-llama3-8b",
    num_kv_blocks=1024, num_requests=400, rate_range=(14.0, 22.0), workload=None,
    replicas=None)``: ``replicas`` (a list of ``ReplicaSpec``) replaces the R identical
    replicas (heterogeneous clusters); ``workload`` (a ``WorkloadConfig``) replaces the default
    one (its seed is redrawn each episode; with ``rate_range`` None its rate is kept).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 10}

    def __init__(self, num_replicas: int = 4, scheduler: str = "sarathi", preset: str = "h100-llama3-8b",
                 num_kv_blocks: Optional[int] = 1024, num_requests: int = 400,
                 rate_range: Optional[tuple[float, float]] = (14.0, 22.0), workload: Optional[WorkloadConfig] = None,
                 replicas: Optional[list[ReplicaSpec]] = None, render_mode: Optional[str] = None):
        if replicas is None:
            over = {"num_kv_blocks": num_kv_blocks} if num_kv_blocks else {}
            replicas = replicas_from_preset(preset, num_replicas, scheduler, over)
        self.cluster = Cluster(replicas)
        R = self.cluster.num_replicas
        if rate_range is not None and not 0 < rate_range[0] <= rate_range[1]:
            raise ValueError(f"rate_range={rate_range!r} must satisfy 0 < low <= high (requests/s)")
        self.rate_range = rate_range
        self.workload = workload or WorkloadConfig(
            num_requests=num_requests, arrival="poisson", rate=sum(rate_range) / 2 if rate_range else 18.0,
            lengths="trace", trace="splitwise_conv", slo_classes=TIERS, oversize="drop", max_total_len=8192)
        self.encoder = RoutingObservation(R)
        self.observation_space = self.encoder.space()
        self.action_space = spaces.Discrete(R)
        self.render_mode = render_mode
        self._request = None

    def _settle(self) -> tuple[int, int]:
        met = missed = 0
        for i, rep in enumerate(self.cluster.replicas):
            fin = rep.engine.finished
            for r in fin[self._seen[i]:]:
                if slo_met(r):
                    met += 1
                else:
                    missed += 1
            self._seen[i] = len(fin)
        return met, missed

    def draw_workload(self, options: Optional[dict] = None) -> list:
        """The requests of the next episode (from ``self.np_random`` and ``options``, as ``reset``)."""
        options = options or {}
        wl = options.get("workload")
        if wl is not None and not isinstance(wl, WorkloadConfig):
            return list(wl)
        cfg = wl or self.workload
        rate = options.get("rate")
        if rate is None and self.rate_range is not None and wl is None:
            rate = float(self.np_random.uniform(*self.rate_range))
        if rate is not None:
            cfg = cfg.with_(rate=rate)
        if wl is None:
            cfg = cfg.with_(seed=int(self.np_random.integers(2 ** 31)))
        return build_workload(cfg)

    @property
    def current_request(self):
        """The arrival the next ``step`` routes (None once the episode has ended)."""
        return self._request

    def episode_workload(self, seed: int) -> list:
        """The requests ``reset(seed=seed)`` serves (for running other routers on them)."""
        super().reset(seed=seed)
        return self.draw_workload()

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        specs = self.draw_workload(options)
        self.cluster.reset(specs)
        self.encoder.reset(self.cluster)
        self._seen = [0] * self.cluster.num_replicas
        self._request = self.cluster.next_arrival()
        return self.encoder.encode(self.cluster, self._request), {}

    def step(self, action):
        if self._request is None:
            raise RuntimeError("step() after the episode ended: call reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not a replica index in 0..{self.action_space.n - 1}")
        self.cluster.route(RoutePlan(int(action)))
        self._request = self.cluster.next_arrival()
        info: dict[str, Any] = {}
        if self._request is None:
            self.cluster.drain()
        met, missed = self._settle()
        info.update(met=met, missed=missed)
        if self._request is None:
            from .cluster import cluster_metrics
            info["metrics"] = cluster_metrics(self.cluster)
            obs = np.zeros(self.observation_space.shape, np.float32)
            return obs, float(met - missed), True, False, info
        return self.encoder.encode(self.cluster, self._request), float(met - missed), False, False, info

    def render(self):
        if self.render_mode != "ansi":
            return None
        lines = [f"t={self.cluster.now_s:.3f} s"]
        for r in self.cluster.replicas:
            e = r.engine
            bar = "#" * int(20 * r.kv_used_fraction)
            lines.append(f"replica {r.index}: waiting {e.num_waiting:4d} running {len(e.running):4d} "
                         f"KV [{bar:<20s}] routed {r.routed}")
        return "\n".join(lines)
