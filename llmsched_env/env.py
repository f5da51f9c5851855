"""``ServingEnv``: the Gymnasium environment around the engine (Engine + ObservationEncoder +
ActionDecoder + Reward; see DESIGN.md). Each ``step`` is exactly one ``Engine.step``."""
from __future__ import annotations

import time
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .action import REPAIRS, ActionDecoder
from .advice import HeuristicAdvisor, hint_features
from .engine import Engine
from .metrics import summarize
from .observation import CLIP, GLOBAL_FEATURES, SLOT_FEATURES, ObservationEncoder, assign_slots
from .plan import BatchPlan
from .presets import get_preset
from .request import RUNNING, RequestSpec
from .reward import SLOReward
from .scenarios import Scenario, get_scenario
from .veto import VetoDecoder
from .workload import WorkloadConfig, build_workload

# Timeline colours (RGB) of ``render_mode="rgb_array"``, by slot state.
_EMPTY, _WAITING, _HELD, _DECODE, _PREFILL, _PREEMPTED = range(6)
_COLOURS = np.array([[245, 245, 245], [190, 190, 190], [250, 200, 90], [60, 130, 220],
                     [60, 170, 90], [220, 60, 60]], dtype=np.uint8)
_HISTORY = 160


class ServingEnv(gym.Env):
    """Engine-level scheduling of an LLM inference server.

    ## Description
    A replica of an LLM serving engine (paged KV cache, per-step token budget, a calibrated GPU
    cost model; ``llmsched_env.engine``) receives a stream of requests with TTFT and TBT targets.
    Every step the agent decides the next batch: which waiting requests to admit, how many prefill
    tokens each prefilling request gets, which running requests decode, pause or give up their KV
    (preemption by recompute). One environment step is one engine step; its length in simulated
    seconds is the batch latency. An episode serves one workload of N requests.

    ## Action Space
    ``MultiDiscrete([4 + C] * K + [B])`` (K request slots, C chunk sizes, B budget levels). Per
    slot: 0 hold (waiting: do not admit; running: pause, keep KV), 1 preempt (running only), 2 run
    everything owed (a decode's token or the whole remaining prefill), 3 fill (as much of the
    remaining prefill as fits the budget and KV left after the fixed choices, in slot order),
    4 + j a prefill chunk of exactly ``chunk_sizes[j]`` tokens. Last entry: the step's token budget
    ``budget_levels[b]`` (None = the engine's). ``action_masks()`` gives the flat boolean mask
    (sb3-contrib convention) of choices feasible on their own; joint limits (budget, KV, running
    cap) are repaired by ``ActionDecoder`` in a documented order (``llmsched_env.action``), each
    repair counted in ``info["repairs"]``. A wrong shape or out-of-range value raises
    ``ValueError`` naming the slot. An all-hold action waits: the clock jumps to the next
    arrival. Which requests are preempted is the action's; their order is the engine's (re-queued
    at the head in admission order). ``encode_plan`` turns any scheduler's plan into the action
    that decodes to exactly it, when the plan's requests are in the K slots and at most one of its
    partial chunks is neither a chunk size nor the rest of a budget level (else
    ``NotExpressible`` says why); every registered baseline is tested this way.

    With a scenario ``veto`` (a heuristic's name, e.g. ``"slai"``) the action is admission control
    over that heuristic instead (``llmsched_env.veto``): ``MultiDiscrete([2] * K + [1])``, per slot
    0 admit (the heuristic may admit the request) or 1 veto (it may not this step; waiting slots
    only), and a one-valued global entry; the heuristic plans every step on the engine without
    the vetoed requests, so the all-zero action is the heuristic exactly. ``encode_plan`` raises
    ``NotExpressible`` there.

    ## Observation Space
    ``Dict(slots=Box(-10, 10, (K * F,), float32), global=Box(-10, 10, (G,), float32))``; ``slots``
    is the (K, F) matrix flattened row by row (slot i = entries i*F .. i*F+F-1; flat because SB3's
    checker expects 1-D vectors; ``obs["slots"].reshape(K, F)`` recovers it). Slot order:
    running requests in admission order, then the head of the waiting queue in queue order; empty
    slots are zero. F = 19 per-request features (phase, prompt, computed and generated tokens,
    age, time since last token, TTFT and next-token slack, targets, KV blocks, preemptions,
    predicted remaining length, whether its SLO can still be met, priority) and G = 12 global
    features (KV free fraction, queue lengths, budget, last latency, time, progress); each is
    listed with its unit and scale in ``llmsched_env.observation``.

    With a scenario ``hint`` (a heuristic's name, e.g. ``"slai"``), two more keys show that
    heuristic's proposal for this step (``llmsched_env.advice``), one-hot: ``hint_slots``
    ``Box(0, 1, (K * A,))`` (slot i's proposed choice = entries i*A .. i*A+A-1) and
    ``hint_budget`` ``Box(0, 1, (B,))``; all zeros when the proposal cannot be expressed.

    ## Rewards
    ``r_t = S_t - lambda * gpus * dt_t``: dt_t is the step's GPU busy time in seconds; S_t is +1
    for each request whose first token arrives within its TTFT target this step, -1 when such a
    request's SLO miss becomes certain (enough TBT gaps over target to fix its P99, or at finish,
    or unfinished at truncation). The undiscounted return equals exactly (requests meeting their
    SLO) - lambda * GPU busy seconds * GPUs; details in ``llmsched_env.reward``. ``info`` carries
    both parts (``reward_slo``, ``reward_gpu``).

    ## Starting State
    ``reset(seed)`` draws the workload: the scenario's workload config with a fresh seed (new
    lengths, tiers and arrivals; for a trace, a new window) and an arrival rate (or trace rate
    scale) uniform in ``rate_range``. ``options={"workload": WorkloadConfig | list[RequestSpec]}``
    pins the workload; ``{"rate": x}`` or ``{"workload_seed": s}`` pin one draw. The engine
    starts empty at time 0 with the first arrivals queued.

    ## Episode End
    Terminated when every request has finished; truncated after ``max_steps`` steps (unfinished
    requests count as SLO misses). Truncation is the environment's own, not a ``TimeLimit``
    wrapper, so that the final reward settles the unfinished requests and the return stays equal
    to the objective. The final ``info`` holds ``metrics`` (the engine's metrics
    summary, the keys of ``llmsched simulate --json``) and ``objective``.

    ## Arguments
    ``ServingEnv(scenario="default", render_mode=None, **overrides)``: ``scenario`` is a name in
    ``llmsched_env.scenarios`` or a ``Scenario``; overrides replace its fields: ``num_slots`` (K,
    default 32), ``waiting_slots`` (8), ``chunk_sizes`` ((32, 128, 512, 2048) tokens),
    ``budget_levels`` ((256, 512, 1024, 2048, None) tokens), ``lam`` (0.5 per GPU-second),
    ``max_steps`` (10,000), ``preset``, ``num_kv_blocks`` (1,024), ``max_num_batched_tokens``,
    ``max_num_seqs``, ``workload`` (a ``WorkloadConfig``), ``rate_range``. ``render_mode``:
    "ansi" (queue, batch and KV bar as text) or "rgb_array" (a timeline of the slots).
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
        preset = get_preset(sc.preset, num_kv_blocks=sc.num_kv_blocks)
        K = sc.num_slots
        max_running = K - sc.waiting_slots
        if sc.max_num_seqs is not None and sc.max_num_seqs > max_running:
            raise ValueError(f"max_num_seqs={sc.max_num_seqs} > num_slots - waiting_slots = {max_running}: "
                             "every running request must have a slot; raise num_slots or lower it")
        self.engine_config = preset.engine_config(max_num_batched_tokens=sc.max_num_batched_tokens,
                                                  max_num_seqs=sc.max_num_seqs or max_running)
        self.cost_model = preset.cost_model
        cfg = self.engine_config
        if sc.veto is not None:
            self.decoder = VetoDecoder(sc.veto, K, cfg.max_num_seqs)
        else:
            self.decoder = ActionDecoder(K, sc.chunk_sizes, sc.budget_levels, cfg.max_num_batched_tokens,
                                         cfg.block_size, cfg.max_num_seqs, cfg.num_kv_blocks)
        self.observer = ObservationEncoder(K, cfg.num_kv_blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.reward_fn = SLOReward(sc.lam, cfg.num_gpus)
        self.action_space = spaces.MultiDiscrete(self.decoder.nvec)
        obs_spaces = {"slots": spaces.Box(-CLIP, CLIP, (K * len(SLOT_FEATURES),), np.float32),
                      "global": spaces.Box(-CLIP, CLIP, (len(GLOBAL_FEATURES),), np.float32)}
        self.advisor = HeuristicAdvisor(sc.hint, self.decoder) if sc.hint else None
        if self.advisor is not None:
            A, B = int(self.decoder.nvec[0]), int(self.decoder.nvec[-1])
            obs_spaces["hint_slots"] = spaces.Box(0.0, 1.0, (K * A,), np.float32)
            obs_spaces["hint_budget"] = spaces.Box(0.0, 1.0, (B,), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self._hint: Optional[np.ndarray] = None
        self.engine: Optional[Engine] = None
        self.specs: list[RequestSpec] = []
        self._slots: list = []
        self._mask: Optional[np.ndarray] = None
        self._done = False

    # --------------------------------------------------------------- episode
    def _draw_workload(self, options: dict) -> tuple[list[RequestSpec], dict]:
        sc = self.scenario
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
        self.specs, wl_info = self._draw_workload(options or {})
        self.engine = Engine(self.specs, self.engine_config, self.cost_model)
        self.reward_fn.reset()
        self.observer.reset()
        if self.advisor is not None:
            self.advisor.reset()
        self.decoder.reset()
        self._steps = 0
        self._done = False
        self._repair_totals = dict.fromkeys(REPAIRS, 0)
        self._t0 = time.perf_counter()
        self._has_pred = any(s.predicted_output_len is not None for s in self.specs)
        self._last_plan = BatchPlan()
        self._history = np.zeros((self.scenario.num_slots, _HISTORY), dtype=np.uint8)
        self._kv_history = np.zeros(_HISTORY)
        self._refresh()
        return self._obs(), {"workload": wl_info, "num_requests": len(self.specs)}

    def _refresh(self) -> None:
        self._slots = assign_slots(self.engine, self.scenario.num_slots)
        self._mask = None

    def _obs(self) -> dict:
        obs = self.observer.encode(self.engine, self._slots, self.reward_fn.alive, self._steps,
                                   self.scenario.max_steps, len(self.specs), self._has_pred)
        if self.advisor is not None:
            self._hint = self.advisor.propose(self.engine, self._slots)
            nvec = self.decoder.nvec
            obs["hint_slots"], obs["hint_budget"] = hint_features(self._hint, self.scenario.num_slots,
                                                                  int(nvec[0]), int(nvec[-1]))
        return obs

    @property
    def hint_action(self) -> Optional[np.ndarray]:
        """The hint heuristic's proposal for the current step as an action (None without a hint
        or when its plan cannot be expressed; see ``llmsched_env.advice``)."""
        return self._hint

    def action_masks(self) -> np.ndarray:
        """Flat boolean mask of the per-slot choices then the budget levels (sb3-contrib)."""
        if self.engine is None:
            raise RuntimeError("call reset() before action_masks()")
        if self._mask is None:
            self._mask = self.decoder.action_mask(self.engine, self._slots)
        return self._mask

    def step(self, action):
        if self.engine is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended; call reset()")
        eng = self.engine
        slots = self._slots
        plan, repairs = self.decoder.decode(eng, slots, action)
        if self.render_mode == "rgb_array":
            self._record(slots, plan)
        result = eng.step(plan)
        slo, gpu = self.reward_fn.step(eng, result)
        self._steps += 1
        terminated = eng.done
        truncated = not terminated and self._steps >= self.scenario.max_steps
        if truncated:
            slo += self.reward_fn.truncate(eng)
        for k, v in repairs.items():
            self._repair_totals[k] += v
        self._last_plan = plan
        self._refresh()
        info: dict[str, Any] = {"reward_slo": slo, "reward_gpu": gpu, "repairs": repairs,
                                "batch_size": len(plan.tokens), "num_tokens": result.num_tokens,
                                "num_preempted": len(plan.preempt), "latency_s": result.latency_s,
                                "now_s": eng.now_s}
        if terminated or truncated:
            self._done = True
            info.update(self.episode_info())
        return self._obs(), slo + gpu, terminated, truncated, info

    def episode_info(self) -> dict:
        """Episode totals: the engine's metrics summary, the objective and the reward parts."""
        m = summarize(self.engine, time.perf_counter() - self._t0)
        m["scheduler"] = "env"  # the same keys as ``llmsched simulate --json``
        m["preset"] = self.scenario.preset
        rf = self.reward_fn
        return {"metrics": m, "objective": m["num_slo_met"] - rf.lam * m["gpu_busy_s"],
                "return_slo": rf.slo_total, "return_gpu": rf.gpu_total,
                "repair_totals": dict(self._repair_totals), "reward_reconciled": rf.reconciled}

    # ------------------------------------------------------- plan <-> action
    @property
    def slots(self) -> list:
        """Requests in slot order for the current step."""
        return list(self._slots)

    @property
    def last_plan(self) -> BatchPlan:
        return self._last_plan

    def decode_action(self, action) -> tuple[BatchPlan, dict]:
        """The plan (and repairs) an action would produce now, without stepping."""
        return self.decoder.decode(self.engine, self._slots, action, peek=True)

    def encode_plan(self, plan: BatchPlan) -> np.ndarray:
        """An action that decodes to exactly ``plan`` now (raises ``NotExpressible``)."""
        return self.decoder.encode(self.engine, self._slots, plan)

    # ----------------------------------------------------------------- render
    def _record(self, slots: list, plan: BatchPlan) -> None:
        col = np.zeros(self.scenario.num_slots, dtype=np.uint8)
        for i, r in enumerate(slots):
            if r.rid in plan.preempt:
                col[i] = _PREEMPTED
            elif r.rid in plan.tokens:
                col[i] = _DECODE if r.num_computed >= r.prefill_target else _PREFILL
            else:
                col[i] = _HELD if r.status == RUNNING else _WAITING
        self._history = np.roll(self._history, -1, axis=1)
        self._history[:, -1] = col
        self._kv_history = np.roll(self._kv_history, -1)
        self._kv_history[-1] = 1.0 - self.engine.free_blocks / self.engine_config.num_kv_blocks

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; use 'ansi' or 'rgb_array'")
            return None
        if self.engine is None:
            raise RuntimeError("call reset() before render()")
        if self.render_mode == "ansi":
            return self._render_text()
        return self._render_frame()

    def _render_text(self) -> str:
        eng = self.engine
        cfg = self.engine_config
        used = cfg.num_kv_blocks - eng.free_blocks
        width = 40
        fill = round(width * used / cfg.num_kv_blocks)
        plan = self._last_plan
        lines = [f"t={eng.now_s:9.3f} s  step {self._steps}/{self.scenario.max_steps}  finished "
                 f"{len(eng.finished)}/{len(self.specs)}  running {len(eng.running)}/{cfg.max_num_seqs}  "
                 f"waiting {eng.num_waiting}",
                 f"KV [{'#' * fill}{'.' * (width - fill)}] {used}/{cfg.num_kv_blocks} blocks",
                 f"last batch: {len(plan.tokens)} requests, {plan.num_tokens} tokens, "
                 f"{len(plan.preempt)} preempted, {eng.last_step_latency_s * 1e3:.1f} ms",
                 "slot   rid  state     phase               output     last step"]
        for i, r in enumerate(self._slots):
            state = "running" if r.status == RUNNING else ("requeued" if r.num_preemptions else "waiting")
            if r.num_computed < r.prefill_target:
                phase = f"prefill {r.num_computed}/{r.prefill_target}"
            else:
                phase = f"decode kv {r.num_computed}"
            ran = plan.tokens.get(r.rid)
            last = "" if ran is None else f"ran {ran}"
            if r.rid in plan.preempt:
                last = "preempted"
            lines.append(f"{i:4d} {r.rid:5d}  {state:9s} {phase:19s} {r.num_generated:4d}/{r.output_len:<5d} {last}")
        hidden = eng.num_waiting - (len(self._slots) - len(eng.running))
        if hidden > 0:
            lines.append(f"  ... {hidden} more waiting beyond the {self.scenario.num_slots} slots")
        return "\n".join(lines) + "\n"

    def _render_frame(self) -> np.ndarray:
        """RGB timeline: the last 160 steps left to right; top band: KV use; one row per slot
        (grey waiting, amber held, blue decode, green prefill, red preempted)."""
        px_w, px_h, band = 3, 6, 30
        K = self.scenario.num_slots
        img = np.full((band + 2 + K * px_h, _HISTORY * px_w, 3), 255, dtype=np.uint8)
        heights = np.round(self._kv_history * band).astype(int)
        rows = np.arange(band)[:, None]
        kv = rows >= (band - heights)[None, :]
        img[:band][np.repeat(kv, px_w, axis=1)] = (150, 80, 200)
        img[band:band + 2] = 0
        slots = np.repeat(np.repeat(self._history, px_h, axis=0), px_w, axis=1)
        img[band + 2:] = _COLOURS[slots]
        return img

    def choice_names(self) -> list[str]:
        return self.decoder.describe()
