"""Episodes on the environment for training, evaluation and imitation: the environment factory
(with snapshots for exact resume), one episode of a policy or of a heuristic, and the metrics
row every report uses (the same keys for both, so TensorBoard curves and tables line up).

Metrics row keys (all per episode): ``return`` (= SLO term + GPU-cost term), ``return_slo``,
``return_gpu``, ``slo_attainment``, ``ttft_p99_s``, ``tbt_p99_s``, ``gpu_busy_s`` (GPU-seconds),
``preemptions``, ``recomputed_tokens``, ``kv_util`` (mean KV blocks used / capacity over busy
time), ``repairs`` (decoder repairs, all kinds), ``steps`` (engine steps), ``truncated``.
"""
from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Callable, Optional

import gymnasium as gym
import numpy as np

from llmsched_env import Engine, ServingEnv, make_scheduler, run
from llmsched_env.action import NotExpressible
from llmsched_env.advice import HeuristicAdvisor
from llmsched_env.scenarios import get_scenario
from llmsched_env.scheduler import parse_spec

METRIC_KEYS = ("return", "return_slo", "return_gpu", "slo_attainment", "ttft_p99_s", "tbt_p99_s",
               "gpu_busy_s", "preemptions", "recomputed_tokens", "kv_util", "repairs", "steps")


def scenario_overrides(lam: Optional[float] = None, slo_ttft_s: Optional[float] = None,
                       slo_tbt_s: Optional[float] = None, scenario: str = "default", *,
                       hint: Optional[str] = None, veto: Optional[str] = None,
                       num_slots: Optional[int] = None, waiting_slots: Optional[int] = None) -> dict:
    """ServingEnv keyword overrides (None = the scenario's): lambda, the SLO targets
    (``slo_ttft_s`` / ``slo_tbt_s`` set the targets of every SLO tier, seconds), and the agent's
    side of the interface: the heuristic ``hint`` in the observation, the heuristic whose admissions
    a ``veto`` action controls (``llmsched_env.veto``), and the slot window
    (``num_slots`` K, ``waiting_slots``), which leave the engine and the workloads as they are
    as long as K - waiting_slots stays the scenario's."""
    out: dict = {k: v for k, v in (("hint", hint), ("veto", veto), ("num_slots", num_slots),
                                   ("waiting_slots", waiting_slots)) if v is not None}
    if lam is not None:
        out["lam"] = float(lam)
    if slo_ttft_s is not None or slo_tbt_s is not None:
        wl = get_scenario(scenario).workload
        tiers = tuple(replace(c, **({"ttft_s": slo_ttft_s} if slo_ttft_s is not None else {}),
                              **({"tbt_s": slo_tbt_s} if slo_tbt_s is not None else {}))
                      for c in wl.slo_classes)
        out["workload"] = wl.with_(slo_classes=tiers)
    return out


class SnapshotEnv(gym.Wrapper):
    """A ServingEnv that can hand out and take back its complete state (engine, workload, RNG,
    reward bookkeeping) as bytes, so a vectorised training run can be resumed exactly."""

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()

    def snapshot(self) -> bytes:
        return pickle.dumps(self.env)

    def restore(self, blob: bytes) -> None:
        self.env = pickle.loads(blob)


def make_env_fn(scenario: str, overrides: dict, snapshot: bool = True) -> Callable[[], gym.Env]:
    def make():
        env = ServingEnv(scenario, **overrides)
        return SnapshotEnv(env) if snapshot else env
    return make


def metrics_row(info: dict, ret: float) -> dict:
    """The per-episode metrics row from the final ``info`` of an env episode."""
    m = info["metrics"]
    return {"return": ret, "return_slo": info["return_slo"], "return_gpu": info["return_gpu"],
            "slo_attainment": m["slo_attainment"], "ttft_p99_s": m["ttft_p99_s"], "tbt_p99_s": m["tbt_p99_s"],
            "gpu_busy_s": m["gpu_busy_s"], "preemptions": m["num_preemptions"],
            "recomputed_tokens": m["recomputed_tokens"], "kv_util": m["kv_util_mean"],
            "repairs": sum(info["repair_totals"].values()), "steps": m["num_steps"],
            "truncated": m["num_finished"] < m["num_requests"]}


def policy_episode(env: ServingEnv, act: Callable[[dict, np.ndarray], np.ndarray], seed: int) -> dict:
    """One episode of ``act(obs, mask) -> action`` on reset seed ``seed``; its metrics row."""
    obs, _ = env.reset(seed=seed)
    ret = 0.0
    while True:
        obs, r, term, trunc, info = env.step(act(obs, env.action_masks()))
        ret += r
        if term or trunc:
            return metrics_row(info, ret)


def heuristic_episode(env: ServingEnv, spec: str, seed: int) -> dict:
    """One episode of a registered heuristic (``name`` or ``name:opt=value,...`` / the
    ``eval/env_baselines.py`` variants ``name:priority`` and ``name:budgetN``) on reset seed
    ``seed``, through env actions (``encode_plan``); if one of its plans admits a request beyond
    the K slots (no action can say that), the same workload is run directly on the engine and the
    row built from its metrics (return = met - lambda x GPU-s, exactly what the env would pay;
    ``repairs`` 0). On a veto scenario (its action cannot express another scheduler's plan) every
    episode is run directly."""
    name, opts = parse_heuristic(spec)
    sched = make_scheduler(name, **opts)
    sched.reset()
    env.reset(seed=seed)
    if env.scenario.veto is not None:
        return direct_row(env, sched)
    ret = 0.0
    try:
        while True:
            _, r, term, trunc, info = env.step(env.encode_plan(sched.schedule(env.engine)))
            ret += r
            if term or trunc:
                row = metrics_row(info, ret)
                row["via"] = "env"
                return row
    except NotExpressible:
        return direct_row(env, make_scheduler(name, **opts))


def direct_row(env: ServingEnv, sched) -> dict:
    """The metrics row of ``sched`` run directly on the engine over the env's current workload
    (the last ``reset``), truncated where the env would truncate; return = met - lambda x GPU-s,
    exactly what the env would pay; ``repairs`` 0; ``via`` = "direct"."""
    sched.reset()
    m = run(Engine(env.specs, env.engine_config, env.cost_model), sched, max_steps=env.scenario.max_steps)
    gpu = -env.scenario.lam * m["gpu_busy_s"]
    row = metrics_row({"metrics": m, "return_slo": float(m["num_slo_met"]), "return_gpu": gpu,
                       "repair_totals": {}}, m["num_slo_met"] + gpu)
    row["via"] = "direct"
    return row


def parse_heuristic(spec: str) -> tuple[str, dict]:
    """``name``, the shorthands ``name:priority`` / ``name:budgetN``, or a scheduler spec
    ``name:key=value,...`` (``llmsched_env.scheduler.parse_spec``)."""
    name, _, variant = spec.partition(":")
    if variant == "priority":
        return name, {"policy": "priority"}
    if variant.startswith("budget") and variant[6:].isdigit():
        return name, {"token_budget": int(variant[6:])}
    return parse_spec(spec)


def demonstrations(env: ServingEnv, spec: str, seeds, gamma: float = 0.99,
                   on_episode: Optional[Callable] = None, act: Optional[Callable] = None):
    """Behaviour-cloning data: (observations dict of arrays, masks, actions, discounted returns
    with ``gamma``) of heuristic ``spec`` on reset ``seeds``.

    The labels are ``HeuristicAdvisor`` proposals (``llmsched_env.advice``): the heuristic's plan
    as a canonical action, or, when the plan admits requests beyond the K slots, the closest plan
    the slots can express. Without ``act`` the heuristic drives the env and a step it cannot
    express at all ends that episode's data. With ``act`` (DAgger) the env is driven by
    ``act(obs, mask)`` and the heuristic only labels the states the policy visits (valid for
    heuristics whose plan depends on the engine state alone, like slai, sarathi, vllm-v1); a
    state it cannot express is left unlabelled.

    On a veto scenario (``llmsched_env.veto``) the only heuristic a policy can imitate is the one
    it vetoes over, and its label is the all-admit action."""
    name, opts = parse_heuristic(spec)
    if env.scenario.veto is not None and spec != env.scenario.veto:
        raise ValueError(f"a veto policy over {env.scenario.veto!r} can only imitate that heuristic "
                         f"(never vetoing), not {spec!r}")
    advisor = None if env.scenario.veto is not None else HeuristicAdvisor(name, env.decoder, opts)
    admit_all = np.zeros(len(env.action_space.nvec), dtype=np.int64)
    obs_rows: dict[str, list] = {}
    masks, acts, rets = [], [], []
    for seed in seeds:
        rewards, labelled = [], []
        if advisor is not None:
            advisor.reset()
        obs, _ = env.reset(seed=seed)
        while True:
            a = admit_all if advisor is None else advisor.propose(env.engine, env.slots)
            if a is None and act is None:
                break
            mask = env.action_masks().copy()
            if a is not None:
                for k, v in obs.items():
                    obs_rows.setdefault(k, []).append(v)
                masks.append(mask)
                acts.append(a)
            obs, r, term, trunc, _ = env.step(a if act is None else act(obs, mask))
            rewards.append(r)
            labelled.append(a is not None)
            if term or trunc:
                break
        g, back = 0.0, []
        for r, lab in zip(reversed(rewards), reversed(labelled)):
            g = r + gamma * g
            if lab:
                back.append(g)
        rets.extend(reversed(back))
        if on_episode is not None:
            on_episode()
    return ({k: np.stack(v) for k, v in obs_rows.items()}, np.stack(masks), np.stack(acts),
            np.asarray(rets, dtype=np.float32))
