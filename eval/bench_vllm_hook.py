"""Scheduling time per step: vLLM 0.33.0's own scheduler vs the llmsched hook running a policy.

Both serve the same synthetic workload in-process (no model: ``agents.vllm_offline``) to
completion, with vLLM's async engine loop by default (``--sync`` for the synchronous one); the
time in ``schedule()`` (the policy's decision included) and in ``update_from_output()`` is
measured per step with ``time.perf_counter``. The two schedulers run alternately ``--repeats``
times in one process and the medians over repeats are reported, with the hook/vLLM ratio of the
mean ``schedule()`` time per step. Needs the vllm extra (``make test-vllm`` installs it).

    python eval/bench_vllm_hook.py --policy fcfs --requests 512 --max-seqs 128
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def drive(sched, lengths, make_request, loop) -> tuple[list[float], list[float], list[int]]:
    """Serve every request to completion; per step: seconds in ``schedule()``, seconds in
    ``update_from_output()``, requests running when it was scheduled."""
    for i, (p, o) in enumerate(lengths):
        sched.add_request(make_request(i, p, o))
    sched_s, update_s, running = [], [], []
    schedule, update = sched.schedule, sched.update_from_output

    def timed_schedule(*args, **kw):
        running.append(len(sched.running))
        t = time.perf_counter()
        out = schedule(*args, **kw)
        sched_s.append(time.perf_counter() - t)
        return out

    def timed_update(*args, **kw):
        t = time.perf_counter()
        out = update(*args, **kw)
        update_s.append(time.perf_counter() - t)
        return out

    sched.schedule, sched.update_from_output = timed_schedule, timed_update
    while loop():
        pass
    return sched_s, update_s, running


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="fcfs", help="llmsched policy spec (LLMSCHED_POLICY)")
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--max-seqs", type=int, default=128)
    ap.add_argument("--budget", type=int, default=2048, help="max_num_batched_tokens")
    ap.add_argument("--blocks", type=int, default=8192,
                    help="KV blocks of 16 tokens (the default holds 128 of these requests)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each scheduler (medians)")
    ap.add_argument("--sync", action="store_true", help="synchronous engine loop (no async)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from agents.vllm_hook import LLMSchedScheduler
    from agents.vllm_offline import (BatchQueue, build_scheduler, fake_step, make_request,
                                     tiny_model_config)

    rng = np.random.default_rng(args.seed)
    lengths = list(zip(rng.integers(32, 1024, args.requests).tolist(),
                       rng.integers(16, 256, args.requests).tolist()))
    labels = ("vLLM " + ("Scheduler" if args.sync else "AsyncScheduler"), f"hook + {args.policy}")
    runs = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as d:
        mc = tiny_model_config(d, max_model_len=2048)
        limits = dict(num_blocks=args.blocks + 1, budget=args.budget, max_seqs=args.max_seqs,
                      async_scheduling=not args.sync)
        for _ in range(args.repeats):
            for label, cls, kw in ((labels[0], Scheduler if args.sync else AsyncScheduler, {}),
                                   (labels[1], LLMSchedScheduler, {"policy": args.policy})):
                sched = build_scheduler(mc, cls, **limits, **kw)
                if args.sync:
                    def loop(s=sched):
                        return bool(s.has_requests() and fake_step(s) is not None)
                else:
                    loop = BatchQueue(sched)
                    loop = (lambda q: lambda: (q.step(), q.busy())[1])(loop)
                sched_s, update_s, running = drive(sched, lengths, make_request, loop)
                stats = getattr(sched, "hook_stats", None)
                if stats is not None and (stats.fallback_steps or stats.policy_errors):
                    raise SystemExit(f"the hook did not drive every step: {stats}")
                busy = [s for s, n in zip(sched_s, running) if n >= args.max_seqs]
                runs[label].append((statistics.fmean(sched_s), statistics.fmean(update_s),
                                    statistics.fmean(busy) if busy else float("nan"),
                                    len(sched_s), statistics.fmean(running)))
    for label, rs in runs.items():
        med = [statistics.median(r[k] for r in rs) for k in range(5)]
        print(f"{label:>26}: {med[3]:.0f} steps, {med[4]:.1f} running on average; per step "
              f"schedule() {1e3 * med[0]:.3f} ms ({1e3 * med[2]:.3f} ms with >= "
              f"{args.max_seqs} running), update_from_output() {1e3 * med[1]:.3f} ms "
              f"(medians of {args.repeats} runs: "
              + ", ".join(f"{1e3 * r[0]:.3f}" for r in rs) + " ms)")
    base, hook = (runs[label] for label in labels)
    ratio = [h[0] / b[0] for b, h in zip(base, hook)]
    busy_ratio = [h[2] / b[2] for b, h in zip(base, hook)]
    print(f"hook / vLLM schedule() time per step: {statistics.median(ratio):.2f}x "
          f"({statistics.median(busy_ratio):.2f}x in steps with {args.max_seqs} running), "
          f"median of {args.repeats}: " + ", ".join(f"{r:.2f}" for r in ratio)
          + f"; {args.requests} requests, max_num_seqs {args.max_seqs}, "
          f"{'sync' if args.sync else 'async'} engine loop")


if __name__ == "__main__":
    main()
