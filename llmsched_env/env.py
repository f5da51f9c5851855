"""``ServingEnv``: the Gymnasium environment around the engine (Engine + the agent interface +
Reward; see DESIGN.md). Each ``step`` is one decision of the agent, covering the engine steps
until the next decision point."""
from __future__ import annotations

import time
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .agent import ACTION_DIM, OBS_FEATURES, OBS_HIGH, OBS_LOW, AgentInterface
from .engine import Engine
from .metrics import summarize
from .plan import BatchPlan
from .presets import get_preset
from .request import RequestSpec
from .reward import SLOReward, objective
from .scenarios import Scenario, get_scenario
from .workload import WorkloadConfig, build_workload

_HISTORY = 160  # decisions shown by render_mode="rgb_array"
_COLOURS = np.array([[150, 80, 200], [60, 130, 220], [190, 190, 190]], dtype=np.uint8)


class ServingEnv(gym.Env):
    """Engine-level scheduling of an LLM inference server, one decision at a time.

    ## Description
    A replica of an LLM serving engine (paged KV cache, per-step token budget, a calibrated GPU
    cost model; ``llmsched_env.engine``) receives a stream of requests with TTFT and TBT targets.
    The agent sets a priority rule; every engine step until its next decision, one plan builder
    (``llmsched_env.priority``) turns the rule into the batch: which waiting requests to admit,
    how large each prefill chunk is, which running requests decode, and which give up their KV
    (preemption by recompute) when KV runs short. An episode serves one workload of N requests.

    ## Action Space
    ``Box(-1, 1, (18,), float32)`` (``llmsched_env.agent.ACTION_FIELDS``): 15 weights of the
    request score (over ``priority.REQUEST_FEATURES``: phase, due, TBT and TTFT slack, late,
    at-risk, priority, age rank, prefill left and progress, predicted output, context,
    preempted), the token budget (64-8,192 tokens, log scale), the KV reserve (0-20% of the
    cache) and the admission threshold. Every action is feasible by construction; entries are
    clipped to [-1, 1]; a wrong shape or NaN raises ``ValueError`` naming the field. The
    heuristic orders FCFS, EDF, Sarathi and SLAI are points of this space
    (``priority.HEURISTIC_RULES``, ``AgentSpec.action_of``).

    ## Observation Space
    ``Box(-1, 4, (22,), float32)``: scale-free summaries of the engine (KV use, counts as
    fractions and logs, slack relative to targets, mean batch time relative to TBT targets),
    listed in ``llmsched_env.agent.OBS_FEATURES``. No feature grows with uptime or episode
    progress; every running and waiting request is summarised (no slot cap).

    ## Rewards
    A step's reward is the sum over its engine steps of ``S - lambda * gpus * dt`` (dt: a step's
    GPU busy time, seconds; S: +1 when a request's first token arrives within its TTFT target,
    -1 when such a request's SLO miss becomes certain; ``llmsched_env.reward``). The undiscounted
    return equals exactly (requests meeting their SLO) - lambda * GPU busy seconds * GPUs.
    ``info`` carries both parts (``reward_slo``, ``reward_gpu``) and ``engine_steps``.

    ## Decision points
    The agent is asked at the first step, whenever the number of running, waiting or
    prefilling requests changed (arrival, finish, admission, prefill done, preemption), and
    after at most ``agent.max_interval`` (16) engine steps (``AgentInterface.sync``). A
    semi-MDP: discount per decision, or by ``info["elapsed_s"]`` for a time discount.

    ## Starting State
    ``reset(seed)`` draws the workload: the scenario's workload config with a fresh seed and an
    arrival rate (or trace rate scale) uniform in ``rate_range``. ``options={"workload":
    WorkloadConfig | list[RequestSpec]}`` pins the workload; ``{"rate": x}`` or
    ``{"workload_seed": s}`` pin one draw. The engine starts empty at time 0.

    ## Episode End
    Terminated when every request has finished; truncated after ``max_steps`` engine steps
    (unfinished requests count as SLO misses, settled in the final reward). The final ``info``
    holds ``metrics`` (the keys of ``llmsched simulate --json``), ``objective``,
    ``total_engine_steps`` and ``decisions``.

    ## Arguments
    ``ServingEnv(scenario="default", render_mode=None, **overrides)``: ``scenario`` is a name in
    ``llmsched_env.scenarios`` or a ``Scenario``; overrides replace its fields (``lam``,
    ``max_steps``, ``preset``, ``num_kv_blocks``, ``max_num_batched_tokens``, ``max_num_seqs``,
    ``workload``, ``rate_range``, ``agent``, ``variants``). A scenario with ``variants`` (override
    mappings) draws one per episode at reset, uniformly: its engine limits, workload and rates. ``render_mode``: "ansi" (queue, batch, KV and the
    rule as text) or "rgb_array" (the last 160 decisions: KV use, running and waiting requests).

    ## Version History
    * v1: one step per decision; a priority rule as the action (replaces v0's per-slot
      hold/preempt/run/fill/chunk action, its slots and hint/veto modes).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 10}

    def __init__(self, scenario: str | Scenario = "default", render_mode: Optional[str] = None, **overrides):
        sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
        if not isinstance(sc, Scenario):
            raise TypeError(f"scenario must be a name or a Scenario, not {type(sc).__name__}")
        if overrides:
            sc = sc.with_(**overrides)
        sc.check()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}; supported: {self.metadata['render_modes']}")
        self.scenario = sc
        self.render_mode = render_mode
        # (scenario, engine config, cost model) per variant; a plain scenario is its own one variant
        self._variants = [self._build(sc.with_(**v, variants=())) for v in sc.variants] or [self._build(sc)]
        self.variant, self.engine_config, self.cost_model = self._variants[0]
        self.agent = AgentInterface(sc.agent)
        self.reward_fn = SLOReward(sc.lam, self.engine_config.num_gpus)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, (len(OBS_FEATURES),), np.float32)
        self.engine: Optional[Engine] = None
        self.specs: list[RequestSpec] = []
        self._last_plan = BatchPlan()
        self._done = False
        self._history = np.zeros((3, _HISTORY))

    @staticmethod
    def _build(sc: Scenario) -> tuple:
        preset = get_preset(sc.preset, num_kv_blocks=sc.num_kv_blocks)
        kw = {} if sc.max_num_seqs is None else {"max_num_seqs": sc.max_num_seqs}
        return sc, preset.engine_config(max_num_batched_tokens=sc.max_num_batched_tokens, **kw), preset.cost_model

    # --------------------------------------------------------------- episode
    def _draw_workload(self, options: dict) -> tuple[list[RequestSpec], dict]:
        sc = self.variant
        unknown = set(options) - {"workload", "rate", "workload_seed"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; known: workload, rate, workload_seed")
        wl = options.get("workload")
        if wl is not None and not isinstance(wl, WorkloadConfig):
            specs = list(wl)
            if not specs or not all(isinstance(s, RequestSpec) for s in specs):
                raise ValueError("options['workload'] must be a WorkloadConfig or a non-empty list of RequestSpec")
            return specs, {"source": "pinned specs"}
        if wl is None:
            wl = sc.workload
            seed = options.get("workload_seed")
            if seed is None:
                seed = int(self.np_random.integers(0, 2 ** 31 - 1))
            rate = options.get("rate")
            if rate is None and sc.rate_range is not None:
                rate = float(self.np_random.uniform(*sc.rate_range))
            wl = wl.with_(seed=seed)
            if rate is not None:
                wl = wl.with_(rate_scale=rate) if wl.arrival == "trace" else wl.with_(rate=rate)
        return build_workload(wl), {"source": "config", "seed": wl.seed,
                                    "rate": wl.rate_scale if wl.arrival == "trace" else wl.rate}

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        k = int(self.np_random.integers(len(self._variants))) if len(self._variants) > 1 else 0
        self.variant, self.engine_config, self.cost_model = self._variants[k]
        self.reward_fn.num_gpus = self.engine_config.num_gpus
        self.specs, wl_info = self._draw_workload(options or {})
        wl_info["variant"] = k
        self.engine = Engine(self.specs, self.engine_config, self.cost_model)
        self.reward_fn.reset()
        self.agent.reset()
        self.agent.sync(self.engine)  # the first step is always a decision point
        self._steps = 0
        self._done = False
        self._last_plan = BatchPlan()
        self._history[:] = 0
        self._t0 = time.perf_counter()
        return self.agent.observe(self.engine), {"workload": wl_info, "num_requests": len(self.specs)}

    def step(self, action):
        if self.engine is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended; call reset()")
        eng, agent, reward_fn = self.engine, self.agent, self.reward_fn
        agent.decide(action)
        max_steps = self.scenario.max_steps
        slo = gpu = 0.0
        start_s = eng.now_s
        n = 0
        terminated = truncated = False
        while True:
            plan = agent.plan(eng)
            result = eng.step(plan)
            s, g = reward_fn.step(eng, result)
            slo += s
            gpu += g
            n += 1
            self._steps += 1
            self._last_plan = plan
            if eng.done:
                terminated = True
                break
            if self._steps >= max_steps:
                truncated = True
                slo += reward_fn.truncate(eng)
                break
            if agent.sync(eng):
                break
        if self.render_mode == "rgb_array":
            cfg = self.engine_config
            self._history = np.roll(self._history, -1, axis=1)
            self._history[:, -1] = (eng.used_blocks / cfg.num_kv_blocks, len(eng.running) / cfg.max_num_seqs,
                                    min(1.0, np.log2(1 + eng.num_waiting) / 8))
        info: dict[str, Any] = {"reward_slo": slo, "reward_gpu": gpu, "engine_steps": n,
                                "elapsed_s": eng.now_s - start_s, "now_s": eng.now_s}
        if terminated or truncated:
            self._done = True
            info.update(self.episode_info())
        return agent.observe(eng), slo + gpu, terminated, truncated, info

    def episode_info(self) -> dict:
        """Episode totals: the engine's metrics summary, the objective and the reward parts."""
        m = summarize(self.engine, time.perf_counter() - self._t0)
        m["scheduler"] = "env"  # the same keys as ``llmsched simulate --json``
        m["preset"] = self.scenario.preset
        rf = self.reward_fn
        return {"metrics": m, "objective": objective(m, rf.lam),
                "return_slo": rf.slo_total, "return_gpu": rf.gpu_total, "reward_reconciled": rf.reconciled,
                "total_engine_steps": self._steps, "decisions": self.agent.num_decisions}

    @property
    def last_plan(self) -> BatchPlan:
        return self._last_plan

    # ----------------------------------------------------------------- render
    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; use 'ansi' or 'rgb_array'")
            return None
        if self.engine is None:
            raise RuntimeError("call reset() before render()")
        if self.render_mode == "rgb_array":
            return self._render_frame()
        eng = self.engine
        cfg = self.engine_config
        used = cfg.num_kv_blocks - eng.free_blocks
        width = 40
        fill = round(width * used / cfg.num_kv_blocks)
        plan = self._last_plan
        rule = self.agent.rule
        lines = [f"t={eng.now_s:9.3f} s  engine step {self._steps}/{self.scenario.max_steps}  decision "
                 f"{self.agent.num_decisions}  finished {len(eng.finished)}/{len(self.specs)}  running "
                 f"{len(eng.running)}/{cfg.max_num_seqs}  waiting {eng.num_waiting}",
                 f"KV [{'#' * fill}{'.' * (width - fill)}] {used}/{cfg.num_kv_blocks} blocks",
                 f"last batch: {len(plan.tokens)} requests, {plan.num_tokens} tokens, "
                 f"{len(plan.preempt)} preempted, {eng.last_step_latency_s * 1e3:.1f} ms"]
        if rule is not None:
            top = sorted(rule.named_weights().items(), key=lambda kv: -abs(kv[1]))[:5]
            lines.append(f"rule: budget {rule.token_budget} tokens, reserve {rule.kv_reserve:.3f}, threshold "
                         f"{rule.admit_threshold:.2f}; " + ", ".join(f"{k} {v:+.2f}" for k, v in top))
        return "\n".join(lines) + "\n"

    def _render_frame(self) -> np.ndarray:
        """Three bands over the last 160 decisions, left to right: KV use (purple), running
        requests / max_num_seqs (blue), log waiting queue (grey); band height = the fraction."""
        band, px_w = 30, 3
        img = np.full((3 * (band + 2), _HISTORY * px_w, 3), 255, dtype=np.uint8)
        rows = np.arange(band)[:, None]
        for k in range(3):
            filled = rows >= (band - np.round(self._history[k] * band).astype(int))[None, :]
            top = k * (band + 2)
            img[top:top + band][np.repeat(filled, px_w, axis=1)] = _COLOURS[k]
            img[top + band:top + band + 2] = 0
        return img
