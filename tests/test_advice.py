"""The heuristic hint (``llmsched_env.advice``): a scenario with ``hint`` shows a heuristic's
proposal in the observation, the proposal is the heuristic's plan as a canonical action, and an
agent that follows it is that heuristic."""
from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from llmsched_env import Engine, EngineConfig, LinearCostModel, RequestSpec, ServingEnv, WorkloadConfig, make_scheduler, run
from llmsched_env.action import FILL, HOLD, ActionDecoder
from llmsched_env.advice import HeuristicAdvisor
from llmsched_env.plan import BatchPlan
from llmsched_env.scenarios import TIERS

pytestmark = pytest.mark.usefixtures("shared_data")

# 24 requests: every one fits in the K = 48 slots, so each plan of the heuristic is expressible
WORKLOAD = WorkloadConfig(num_requests=24, arrival="poisson", rate=12.0, lengths="trace", slo_classes=TIERS,
                          oversize="drop", max_total_len=8192, seed=3)


@pytest.mark.parametrize("heuristic", ["slai", "sarathi", "vllm-v1"])
def test_following_the_hint_is_the_heuristic(heuristic):
    """An agent that plays the hint reproduces the heuristic's own run exactly, and the hint is
    one-hot: one choice per slot, one budget level, each allowed by the mask."""
    env = ServingEnv("default", hint=heuristic, num_slots=48, waiting_slots=24, num_kv_blocks=400)
    obs, _ = env.reset(seed=0, options={"workload": WORKLOAD})
    K, A = 48, env.decoder.num_choices
    offsets = np.concatenate([[0], np.cumsum(env.action_space.nvec)[:-1]])
    while True:
        action = env.hint_action
        hs = obs["hint_slots"].reshape(K, A)
        assert np.array_equal(hs.argmax(1), action[:K]) and np.all(hs.sum(1) == 1)
        assert obs["hint_budget"].sum() == 1 and obs["hint_budget"].argmax() == action[-1]
        assert env.action_masks()[offsets + action].all()
        obs, _, term, trunc, info = env.step(action)
        if term or trunc:
            break
    direct = run(Engine(env.specs, env.engine_config, env.cost_model), make_scheduler(heuristic))
    for key in ("num_slo_met", "gpu_busy_s", "num_steps", "num_preemptions", "ttft_p99_s"):
        assert info["metrics"][key] == direct[key], key


def _engine_with_queue(budget: int) -> Engine:
    """A 1024-token prompt running, four 300-token prompts waiting; budget ``budget``."""
    cfg = EngineConfig(num_kv_blocks=400, block_size=16, max_num_batched_tokens=budget, max_num_seqs=8,
                       max_model_len=4096)
    specs = [RequestSpec(rid=i, arrival_s=0.0, prompt_len=1024 if i == 0 else 300, output_len=4) for i in range(5)]
    eng = Engine(specs, cfg, LinearCostModel())
    eng.step(BatchPlan({0: 100}))
    return eng


def test_fill_replaces_hold_only_where_it_changes_nothing():
    """A waiting request left out because no budget was left gets FILL (it would get nothing);
    one left out while budget remains keeps HOLD (FILL would admit it)."""
    dec = ActionDecoder(8, (32, 128), (None,), 512, 16, 8, 400)
    eng = _engine_with_queue(512)
    slots = [eng.requests[0]] + list(eng.iter_waiting())
    exhausted = dec.encode(eng, slots, BatchPlan({0: 512}))     # the running prefill takes the budget
    wide = dec.widen_fills(eng, slots, exhausted)
    assert wide[0] == exhausted[0] and all(wide[i] == FILL for i in range(1, 5))
    assert dec.decode(eng, slots, wide)[0] == BatchPlan({0: 512})
    room = dec.encode(eng, slots, BatchPlan({0: 128}))          # 384 tokens of budget left
    assert np.array_equal(dec.widen_fills(eng, slots, room), room) and room[1] == HOLD


def test_skipping_one_proposed_request_passes_its_budget_on():
    """Residual changes are local: holding the first request the heuristic admits lets the next
    waiting request take the budget, with no other slot changed."""
    env = ServingEnv("default", hint="slai", num_slots=48, waiting_slots=24)
    env.reset(seed=1)
    for _ in range(400):
        a = env.hint_action
        admitted = [i for i, r in enumerate(env.slots) if r.rid not in env.engine.running and a[i] != HOLD and a[i] != FILL]
        waiting_fill = [i for i, r in enumerate(env.slots) if r.rid not in env.engine.running and a[i] == FILL]
        if len(admitted) == 1 and waiting_fill:
            skip = a.copy()
            skip[admitted[0]] = HOLD
            plan, _ = env.decode_action(skip)
            nxt = env.slots[waiting_fill[0]].rid
            assert env.slots[admitted[0]].rid not in plan.tokens and plan.tokens.get(nxt, 0) > 0
            return
        env.step(a)
    pytest.fail("no step where slai admitted one request with others waiting")


def test_hinted_env_passes_the_checkers_and_pickles():
    import pickle

    env = ServingEnv("default", hint="slai")
    check_env(env, skip_render_check=True)
    env.reset(seed=2)
    for _ in range(30):
        env.step(env.hint_action)
    clone = pickle.loads(pickle.dumps(env))
    a, b = env.step(env.hint_action)[0], clone.step(clone.hint_action)[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("hint, words", [("no-such", "unknown scheduler"), ("ppo", "heuristic"),
                                         ("slai:token_budget", "hint")])
def test_bad_hint_is_refused_at_construction(hint, words):
    with pytest.raises(ValueError, match=words):
        ServingEnv("default", hint=hint)


def test_advisor_without_expressible_proposal_gives_none():
    """A plan on a request outside every slot that neither the window view nor the cut plan can
    express yields no proposal (the env then shows an all-zero hint)."""
    dec = ActionDecoder(2, (32,), (None,), 512, 16, 8, 400)

    class Odd:
        def reset(self):
            pass

        def schedule(self, engine):
            return BatchPlan({0: 7, 1: 9})  # two odd chunks: not expressible

    adv = HeuristicAdvisor("slai", dec)
    adv.scheduler = Odd()
    eng = _engine_with_queue(512)
    action = adv.propose(eng, [eng.requests[0], eng.requests[1]])
    assert action is None


def test_residual_policy_starts_as_the_hint_and_needs_one():
    """A fresh SlotSetPolicy with hint_prior acts exactly as the hinted heuristic (its learned part
    starts near zero); hint_prior without a hint in the observation is refused."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from train.ppo import Args, build_model, parse_args

    env = ServingEnv("default", hint="slai", num_slots=48, waiting_slots=24)
    a = parse_args(["--hint", "slai", "--hint-prior", "5", "--embed-dim", "16", "--head-hidden", "16",
                    "--num-heads", "2", "--num-slots", "48", "--waiting-slots", "24"])
    model = build_model(a, DummyVecEnv([lambda: env]), {})
    obs, _ = env.reset(seed=4)
    for _ in range(150):
        act, _ = model.policy.predict(obs, deterministic=True, action_masks=env.action_masks())
        assert np.array_equal(act, env.hint_action)
        obs, *_ = env.step(act)
    with pytest.raises(SystemExit, match="hint_prior"):
        parse_args(["--hint-prior", "5"])
    plain = ServingEnv("default")
    with pytest.raises(ValueError, match="hint"):
        build_model(Args(hint_prior=5.0, embed_dim=16, head_hidden=16, num_heads=2), DummyVecEnv([lambda: plain]), {})
