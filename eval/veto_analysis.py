"""Why the shipped policy acts through vetoes (``llmsched_env.veto``), measured: which departures
from slai the per-slot action and the veto action can express, what random vetoes cost, and what
a veto policy vetoes. Validation seeds (5,000..) by default; README, "Results", quotes it.

    python eval/veto_analysis.py [--episodes 10] [--seed 5000] [--policy agents/zoo/default]

Rules, all on the default scenario with K = 48 slots, 24 of them for waiting requests ("late" =
a waiting request whose SLO can no longer be met, feature ``slo_alive`` = 0):

* per-slot action, starting from slai's proposal (``hint="slai"``):
  - hold late (guarded): late requests slai admits get HOLD when an on-time waiting request has
    FILL, so the freed budget flows to it;
  - hold late: the same without the guard;
  - fill late: late requests slai admits with RUN or a chunk get FILL (served after fixed choices);
  - swap: late requests slai admits get HOLD and on-time ones it holds get FILL;
* veto action over slai (``veto="slai"``):
  - veto late: late requests are vetoed while an on-time request waits;
  - random p: each waiting request vetoed with probability p.

Then, for ``slai, defer late`` (``eval/headroom_defer_late.py``) driving the hinted env, how many
slots its action differs from slai's proposal in, over the steps where they differ; and for
``--policy`` (a veto policy), what share of late and on-time waiting requests it vetoes.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agents.rollout import policy_episode  # noqa: E402
from eval.headroom_defer_late import SlaiDeferLate  # noqa: E402
from eval.stats import t_interval  # noqa: E402
from llmsched_env import ServingEnv  # noqa: E402
from llmsched_env.action import FILL, HOLD, RUN  # noqa: E402
from llmsched_env.observation import SLOT_FEATURES  # noqa: E402
from llmsched_env.veto import VETO  # noqa: E402

K, WAITING = 48, 24
COL = {n: i for i, n in enumerate(SLOT_FEATURES)}


def waiting_and_late(obs) -> tuple[np.ndarray, np.ndarray]:
    x = obs["slots"].reshape(K, len(SLOT_FEATURES))
    waiting = (x[:, COL["present"]] > 0.5) & (x[:, COL["running"]] < 0.5)
    return waiting, waiting & (x[:, COL["slo_alive"]] < 0.5)


def slot_rule(env, rule):
    """act(obs, mask): slai's proposal with ``rule(slot choices, waiting, late)`` applied."""
    def act(obs, mask):
        a = np.array(env.hint_action)
        waiting, late = waiting_and_late(obs)
        rule(a[:K], waiting, late)
        return a
    return act


def hold_late(guarded: bool):
    def rule(s, waiting, late):
        if not guarded or (waiting & ~late & (s == FILL)).any():
            s[late & (s != HOLD)] = HOLD
    return rule


def fill_late(s, waiting, late):
    s[late & (s != HOLD) & (s != FILL)] = FILL


def swap(s, waiting, late):
    admitted_late, held_on_time = late & (s != HOLD), waiting & ~late & (s == HOLD)
    if admitted_late.any() and held_on_time.any():
        s[admitted_late] = HOLD
        s[held_on_time] = FILL


def veto_late(obs, mask):
    a = np.zeros(K + 1, dtype=np.int64)
    waiting, late = waiting_and_late(obs)
    if (waiting & ~late).any():
        a[:K][late] = VETO
    return a


def random_vetoes(p: float, seed: int = 0):
    rng = np.random.default_rng(seed)

    def act(obs, mask):
        a = np.zeros(K + 1, dtype=np.int64)
        a[:K] = (rng.random(K) < p) & mask[:2 * K].reshape(K, 2)[:, VETO]
        return a
    return act


def differing_slots(seeds) -> Counter:
    """{number of slots: steps} where defer-late's action differs from slai's proposal."""
    env = ServingEnv("default", hint="slai", num_slots=K, waiting_slots=WAITING)
    out: Counter = Counter()
    for seed in seeds:
        env.reset(seed=seed)
        sched = SlaiDeferLate()
        sched.reset()
        while True:
            hint = env.hint_action
            a = env.decoder.widen_fills(env.engine, env.slots, env.encode_plan(sched.schedule(env.engine)))
            n = int(np.sum(a[:K] != hint[:K])) if hint is not None else -1
            if n:
                out[n] += 1
            *_, term, trunc, _ = env.step(a)
            if term or trunc:
                break
    return out


def vetoes_of(policy_dir: str, seeds) -> dict:
    """Waiting-slot steps of a veto policy: late / on-time, vetoed or not, and of the on-time ones
    it vetoed, how many slai would have given tokens that step."""
    from agents.loader import load_policy
    pol = load_policy(policy_dir)
    env = pol.make_env()
    if env.scenario.veto is None:
        raise SystemExit(f"{policy_dir} is not a veto policy (trained with --veto)")
    c = Counter()
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        while True:
            a = pol.act(obs, env.action_masks())
            waiting, late = waiting_and_late(obs)
            would, _ = env.decode_action(np.zeros_like(a))
            for i in np.nonzero(waiting)[0]:
                kind = "late" if late[i] else "on_time"
                c[kind] += 1
                if a[i] == VETO:
                    c[kind + "_vetoed"] += 1
                    c[kind + "_vetoed_slai_admits"] += env.slots[i].rid in would.tokens
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                break
    return dict(c)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5000, help="first reset seed (validation: 5,000..)")
    ap.add_argument("--policy", help="a veto policy directory to break down (e.g. agents/zoo/default)")
    a = ap.parse_args(argv)
    seeds = list(range(a.seed, a.seed + a.episodes))
    slot_env = ServingEnv("default", hint="slai", num_slots=K, waiting_slots=WAITING)
    veto_env = ServingEnv("default", veto="slai", num_slots=K, waiting_slots=WAITING)
    base = [policy_episode(veto_env, lambda o, m: np.zeros(K + 1, dtype=np.int64), s)["return"] for s in seeds]
    rows = [("per-slot: hold late (guarded)", slot_env, slot_rule(slot_env, hold_late(True))),
            ("per-slot: hold late", slot_env, slot_rule(slot_env, hold_late(False))),
            ("per-slot: fill late", slot_env, slot_rule(slot_env, fill_late)),
            ("per-slot: swap", slot_env, slot_rule(slot_env, swap)),
            ("veto: late while on-time wait", veto_env, veto_late),
            ("veto: random 10%", veto_env, random_vetoes(0.1)),
            ("veto: random 50%", veto_env, random_vetoes(0.5))]
    print(f"slai: return {np.mean(base):.2f} over reset seeds {seeds[0]}..{seeds[-1]}")
    for name, env, act in rows:
        ret = [policy_episode(env, act, s)["return"] for s in seeds]
        d = t_interval([x - y for x, y in zip(ret, base)])
        print(f"{name:32s} return {np.mean(ret):7.2f}  - slai {d.mean:+6.2f} [95% CI {d.mean - d.half:+.2f}, "
              f"{d.mean + d.half:+.2f}]")
    diff = differing_slots(seeds[:4])
    steps = sum(diff.values())
    top = sorted(diff, key=diff.get, reverse=True)
    print(f"slai, defer late vs slai's per-slot proposal (seeds {seeds[0]}..{seeds[min(3, len(seeds) - 1)]}): "
          f"{steps} steps differ; slots differing, most common first: "
          + ", ".join(f"{n} ({diff[n]} steps)" for n in top[:6]))
    if a.policy:
        c = vetoes_of(a.policy, seeds[:2])
        for kind in ("late", "on_time"):
            print(f"{a.policy}: {kind} waiting-slot steps {c.get(kind, 0)}, vetoed {c.get(kind + '_vetoed', 0)} "
                  f"({c.get(kind + '_vetoed', 0) / max(c.get(kind, 0), 1):.0%}), of which slai would have given "
                  f"tokens that step {c.get(kind + '_vetoed_slai_admits', 0)}")


if __name__ == "__main__":
    main()
