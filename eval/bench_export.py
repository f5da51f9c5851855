"""Latency of one scheduling decision of an exported policy on CPU, K = 32 slots all occupied.

    python eval/bench_export.py                               # a fresh SlotSetPolicy, shipped sizes
    python eval/bench_export.py --policy agents/zoo/default   # a trained policy directory
    python eval/bench_export.py --export exports/default      # an existing export

Measured on one engine state with every slot occupied (running requests and a waiting queue,
reached by running ``sarathi`` on the heavy scenario's workload at 15 requests/s):
  * ``onnx infer``: ``OnnxPolicy.act`` (onnxruntime, one thread), the policy's decision alone;
  * ``encode``: slot assignment + ``ObservationEncoder`` + ``ActionDecoder.action_mask``;
  * ``decode``: ``ActionDecoder.decode`` of the action into a BatchPlan;
  * ``full decision``: ``OnnxScheduler.schedule(engine)``, all of the above;
  * ``torch (SB3) infer``: the same policy's ``predict`` in torch, for comparison.
Median and 99th percentile over ``--repeats`` calls, microseconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fresh_policy(out: Path) -> Path:
    """A randomly initialised SlotSetPolicy with train/configs/default.yaml's sizes, saved."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.rollout import scenario_overrides
    from llmsched_env import ServingEnv
    from train.ppo import build_model, overrides_desc, parse_args, save_policy
    a = parse_args(["--config", str(Path(__file__).resolve().parent.parent / "train/configs/default.yaml")])
    kw = scenario_overrides(a.lam, a.slo_ttft_s, a.slo_tbt_s, a.scenario, hint=a.hint, veto=a.veto,
                            num_slots=a.num_slots, waiting_slots=a.waiting_slots)
    model = build_model(a, DummyVecEnv([lambda: ServingEnv(a.scenario, **kw)]), {})
    return save_policy(a, model, out, overrides_desc(a), {})


def busy_engine(seed: int = 0, num_slots: int = 48):
    """An engine mid-run with at least ``num_slots`` + 8 requests resident or waiting (the
    ``heavy`` scenario's workload at 15 requests/s, 8192 KV blocks, as tests/benchmarks/test_env_speed.py)."""
    from llmsched_env import Engine, ServingEnv, get_scenario, make_scheduler
    sc = get_scenario("heavy")
    env = ServingEnv(sc, num_kv_blocks=8192, workload=sc.workload.with_(num_requests=300), rate_range=(15.0, 15.0))
    env.reset(seed=seed)
    eng = Engine(env.specs, env.engine_config, env.cost_model)
    sched = make_scheduler("sarathi")
    while len(eng.running) + eng.num_waiting < num_slots + 8:
        if eng.done:
            raise RuntimeError("workload finished before the slots filled; use a heavier scenario")
        eng.step(sched.schedule(eng))
    return eng


def timeit(fn, repeats: int) -> dict:
    for _ in range(min(200, repeats)):
        fn()
    ts = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter_ns()
        fn()
        ts[i] = time.perf_counter_ns() - t
    return {"median_us": float(np.median(ts)) / 1e3, "p99_us": float(np.percentile(ts, 99)) / 1e3,
            "min_us": float(ts.min()) / 1e3}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--policy", help="policy directory to export (default: a fresh SlotSetPolicy)")
    src.add_argument("--export", help="an existing export directory (no torch comparison)")
    ap.add_argument("--repeats", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from agents.onnx_runtime import OnnxScheduler
    from llmsched_env.observation import assign_slots

    tmp = tempfile.TemporaryDirectory()
    policy_dir = None
    if a.export:
        export_dir = Path(a.export)
    else:
        from agents.export import export_policy
        policy_dir = Path(a.policy) if a.policy else fresh_policy(Path(tmp.name) / "policy")
        export_dir = Path(tmp.name) / "export"
        export_policy(policy_dir, export_dir, verify_steps=0)

    eng = busy_engine()
    sched = OnnxScheduler(str(export_dir), threads=a.threads)
    slots, obs, mask = sched.observe(eng)
    K = sched.layout.num_slots
    assert len(slots) == K, f"only {len(slots)} of {K} slots occupied"
    action = sched.act(obs, mask)
    dec = sched.decoder

    def encode():
        s = assign_slots(eng, K)
        sched.observer.encode(eng, s, sched.reward.alive, 0, sched.layout.max_steps, eng.num_requests, False)
        dec.action_mask(eng, s)

    rows = {"onnx infer": timeit(lambda: sched.act(obs, mask), a.repeats),
            "encode": timeit(encode, a.repeats),
            "decode": timeit(lambda: dec.decode(eng, slots, action), a.repeats),
            "full decision": timeit(lambda: sched.schedule(eng), a.repeats)}
    if policy_dir is not None:
        import torch as th

        from agents.loader import load_policy
        th.set_num_threads(1)
        pol = load_policy(policy_dir)
        assert np.array_equal(pol.act(obs, mask), action)
        rows["torch (SB3) infer"] = timeit(lambda: pol.act(obs, mask), max(200, a.repeats // 10))

    t = Table(title=f"one decision, K={K}, {len(eng.running)} running + {len(slots) - len(eng.running)} "
                    f"waiting in slots, onnxruntime threads={a.threads}")
    for c in ("part", "median µs", "p99 µs", "min µs"):
        t.add_column(c, justify="right" if c != "part" else "left")
    for name, r in rows.items():
        t.add_row(name, f"{r['median_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['min_us']:.1f}")
    Console().print(t)
    out = {"num_slots": K, "threads": a.threads, "policy": str(a.policy or a.export or "fresh SlotSetPolicy"),
           "results": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
