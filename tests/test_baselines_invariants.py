"""Every registered scheduler, over the same seeded random workloads: everything finishes, KV is
never over capacity, block accounting matches, and the scheduler never writes engine state."""
from __future__ import annotations

import numpy as np
import pytest

from llmsched_env import available_schedulers, make_scheduler, run
from llmsched_env.scheduler import NeedsOptions
from tests.conftest import make_engine, spec

BUDGET = 64



def random_workload(seed: int, n: int = 24):
    """Bursty arrivals, prompt + output <= BUDGET so whole-prompt schedulers apply; mixed SLOs,
    priorities and predictions."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.02, n)) * (rng.random(n) < 0.6)
    t = np.maximum.accumulate(t)
    out = []
    for i in range(n):
        p = int(rng.integers(1, 48))
        o = int(rng.integers(1, BUDGET - p + 1))
        out.append(spec(i, arrival=float(t[i]), prompt=p, output=o, ttft=float(rng.choice([0.05, 0.5])),
                        tbt=float(rng.choice([0.02, 0.2])), priority=int(rng.integers(0, 2)),
                        predicted_output_len=max(1, int(o * rng.lognormal(0, 0.5)))))
    return out


def snapshot(engine):
    return (engine.now_s, engine.used_blocks, engine.num_steps, tuple(engine.running), engine.num_waiting,
            tuple((r.rid, r.status, r.num_computed, r.prefill_target, r.num_generated, r.num_blocks,
                   r.host_blocks)
                  for r in engine.requests.values()))


class Guarded:
    """Wraps a scheduler: checks it leaves the engine untouched while planning."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def reset(self):
        self.inner.reset()

    def schedule(self, engine):
        before = snapshot(engine)
        plan = self.inner.schedule(engine)
        assert snapshot(engine) == before, f"{self.name} changed engine state while planning"
        return plan


def buildable(name):
    """The scheduler, or a skip for one that needs options beyond its name (``optimal`` replays a
    solved schedule: covered by tests/test_optimal*.py; ``ppo``/``onnx`` need a policy file)."""
    try:
        return make_scheduler(name)
    except NeedsOptions as e:
        pytest.skip(f"{name} needs options: {e}")


SWAP = dict(preemption_mode="swap", swap_space_blocks=12, swap_s_per_block=1e-4)
PREFIX = dict(prefix_caching=True)


@pytest.mark.parametrize("name", available_schedulers())
@pytest.mark.parametrize("seed,kv_blocks,mode", [(0, 18, {}), (1, 30, {}), (2, 200, {}), (3, 18, SWAP),
                                                 (4, 30, SWAP), (5, 18, PREFIX), (6, 30, {**SWAP, **PREFIX})],
                         ids=["0", "1", "2", "swap3", "swap4", "prefix5", "swap-prefix6"])
def test_scheduler_keeps_engine_invariants(name, seed, kv_blocks, mode):
    specs = random_workload(seed)
    eng = make_engine(specs, num_kv_blocks=kv_blocks, block_size=4, budget=BUDGET, max_seqs=6,
                      max_model_len=BUDGET, **mode)
    cap = eng.config.num_kv_blocks

    def check(engine, plan, result):
        assert 0 <= engine.used_blocks <= cap
        assert engine.used_blocks == sum(r.num_blocks for r in engine.running.values())
        assert len(engine.running) <= engine.config.max_num_seqs
        assert engine.host_blocks == sum(r.host_blocks for r in engine.requests.values())
        assert engine.host_blocks <= engine.config.swap_space_blocks

    s = run(eng, Guarded(buildable(name)), max_steps=20_000, on_step=check)
    assert eng.done, f"{name} left {s['num_requests'] - s['num_finished']} requests unfinished"
    assert all(r.num_generated == r.output_len and len(r.token_times) == r.output_len for r in eng.finished)
    assert eng.used_blocks == 0 and not eng.running
    base = sum(x.prompt_len + x.output_len - 1 for x in specs)
    assert eng.processed_tokens == base + eng.recomputed_tokens - eng.prefix_hit_tokens


@pytest.mark.parametrize("name", available_schedulers())
def test_scheduler_serves_request_needing_the_whole_cache(name):
    # Request 1 needs all 100 blocks for its prompt: admission watermarks/reserves must not
    # block it for good once the cache is empty.
    specs = [spec(0, prompt=20, output=30), spec(1, arrival=0.001, prompt=399, output=2),
             spec(2, arrival=0.002, prompt=8, output=4)]
    eng = make_engine(specs, num_kv_blocks=100, block_size=4, budget=512, max_seqs=4, max_model_len=401)
    run(eng, buildable(name), max_steps=5_000)
    assert eng.done


class NoOracle:
    """A request as a live server sees it: reading the true output length fails."""

    def __init__(self, req):
        self._req = req

    def __getattr__(self, name):
        if name in ("output_len", "remaining_output"):
            raise AssertionError(f"a practical scheduler read request {self._req.rid}'s true {name}")
        return getattr(self._req, name)


class NoOracleView:
    """The engine with every request wrapped in ``NoOracle`` (the same wrapper each time)."""

    def __init__(self, engine):
        self._engine = engine
        self._wrapped = {}

    def _w(self, req):
        w = self._wrapped.get(req.rid)
        if w is None:
            w = self._wrapped[req.rid] = NoOracle(req)
        return w

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @property
    def running(self):
        return {rid: self._w(r) for rid, r in self._engine.running.items()}

    @property
    def requests(self):
        return {rid: self._w(r) for rid, r in self._engine.requests.items()}

    def iter_waiting(self):
        return (self._w(r) for r in self._engine.iter_waiting())


@pytest.mark.parametrize("name", ["sglang", "sglang:policy=lof", "lightllm", "trtllm-no-evict",
                                  "trtllm-max-util", "trtllm-max-util:chunked_prefill=true"])
def test_practical_schedulers_never_read_the_true_output_length(name):
    specs = random_workload(3)
    eng = make_engine(specs, num_kv_blocks=30, block_size=4, budget=BUDGET, max_seqs=6, max_model_len=BUDGET)
    sched = make_scheduler(name)
    steps = 0
    while not eng.done and steps < 20_000:
        eng.step(sched.schedule(NoOracleView(eng)))
        steps += 1
    assert eng.done
