"""Soak test of the vLLM hook: a stream of requests through vLLM 0.33's real scheduler with the
llmsched hook in-process (no model: ``agents.vllm_offline``), memory sampled as it goes.

    python eval/soak_vllm_hook.py --requests 100000 [--policy ppo] [--active 64] [--every 10000]

Requests are added so that about ``--active`` are unfinished at any time (a steady server), each
with a short prompt and output. Every ``--every`` finished requests it prints the Python heap in
use (``tracemalloc``, MiB) and the sizes of the hook's per-request structures (records, the
finished log, the policy's SLO bookkeeping); flat numbers mean memory does not grow with uptime.
Needs the vllm extra (``make test-vllm`` installs it).
"""
from __future__ import annotations

import argparse
import tempfile
import tracemalloc


def sizes(sched) -> dict:
    """The hook's per-request structures, by name: their lengths."""
    out = {"records": len(sched._records), "by_rid": len(sched._by_rid), "finished_kept": len(sched._finished._kept)}
    agent = getattr(sched.llmsched_policy, "agent", None)
    if agent is not None:
        out["slo_tracker"] = len(agent.tracker._seen)
    return out


def soak(model_config, requests: int, policy: str, active: int, every: int, report=print) -> list[dict]:
    from agents.vllm_hook import LLMSchedScheduler
    from agents.vllm_offline import BatchQueue, build_scheduler, make_request
    sched = build_scheduler(model_config, LLMSchedScheduler, block_size=16, num_blocks=2049, budget=2048,
                            max_seqs=64, policy=policy)
    loop = BatchQueue(sched)
    added = finished = 0
    samples = []
    tracemalloc.start()
    next_report = every
    while finished < requests:
        while added < requests and added - finished < active:
            sched.add_request(make_request(added, 16 + added % 48, 4 + added % 12, arrival_time=1000.0))
            added += 1
        loop.step()
        finished = added - sched.get_num_unfinished_requests()
        if finished >= next_report:
            cur, _ = tracemalloc.get_traced_memory()
            s = {"finished": finished, "heap_mib": cur / 2 ** 20, **sizes(sched)}
            samples.append(s)
            report(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
            next_report += every
    tracemalloc.stop()
    return samples


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--policy", default="ppo", help="llmsched policy spec (default: the shipped policy)")
    ap.add_argument("--active", type=int, default=64, help="unfinished requests kept in the server")
    ap.add_argument("--every", type=int, default=10_000, help="finished requests between samples")
    a = ap.parse_args(argv)
    from agents.vllm_offline import tiny_model_config
    with tempfile.TemporaryDirectory() as d:
        soak(tiny_model_config(d, max_model_len=2048), a.requests, a.policy, a.active, a.every)


if __name__ == "__main__":
    main()
