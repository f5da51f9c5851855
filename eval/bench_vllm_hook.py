"""Scheduling time per step: vLLM 0.33.0's own scheduler vs the llmsched hook running a policy.

Both serve the same synthetic workload in-process (no model: ``agents.vllm_offline``) to
completion; the time in ``schedule()`` + ``update_from_output()`` is measured per step with
``time.perf_counter``. The hook's extra time is what a policy costs the real server per step,
on top of the GPU step. Needs the vllm extra (``make test-vllm`` installs it).

    python eval/bench_vllm_hook.py --policy fcfs --requests 512 --max-seqs 128
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def drive(sched, lengths, make_request, fake_step) -> list[float]:
    """Serve every request to completion; seconds spent scheduling each step."""
    for i, (p, o) in enumerate(lengths):
        sched.add_request(make_request(i, p, o))
    times = []
    while sched.get_num_unfinished_requests():
        t = time.perf_counter()
        fake_step(sched)
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="fcfs", help="llmsched policy spec (LLMSCHED_POLICY)")
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--max-seqs", type=int, default=128)
    ap.add_argument("--budget", type=int, default=2048, help="max_num_batched_tokens")
    ap.add_argument("--blocks", type=int, default=4096, help="KV blocks of 16 tokens")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from vllm.v1.core.sched.scheduler import Scheduler

    from agents.vllm_hook import LLMSchedScheduler
    from agents.vllm_offline import build_scheduler, fake_step, make_request, tiny_model_config

    rng = np.random.default_rng(args.seed)
    lengths = list(zip(rng.integers(32, 1024, args.requests).tolist(),
                       rng.integers(16, 256, args.requests).tolist()))
    with tempfile.TemporaryDirectory() as d:
        mc = tiny_model_config(d, max_model_len=2048)
        limits = dict(num_blocks=args.blocks + 1, budget=args.budget, max_seqs=args.max_seqs)
        results = {}
        for label, cls, kw in (("vLLM Scheduler", Scheduler, {}),
                               (f"hook + {args.policy}", LLMSchedScheduler,
                                {"policy": args.policy})):
            sched = build_scheduler(mc, cls, **limits, **kw)
            times = drive(sched, lengths, make_request, fake_step)
            results[label] = times
            stats = getattr(sched, "hook_stats", None)
            print(f"{label:>24}: {len(times)} steps, mean {1e3 * statistics.fmean(times):.3f} ms, "
                  f"median {1e3 * statistics.median(times):.3f} ms, "
                  f"p99 {1e3 * float(np.percentile(times, 99)):.3f} ms per step"
                  + (f"; fallbacks {dict(stats.fallback_steps)}, "
                     f"fallback preemptions {stats.fallback_preemptions}" if stats else ""))
    base, hook = results.values()
    print(f"hook overhead: {1e3 * (statistics.fmean(hook) - statistics.fmean(base)):.3f} ms per "
          f"step (mean), {args.requests} requests, max_num_seqs {args.max_seqs}")


if __name__ == "__main__":
    main()
