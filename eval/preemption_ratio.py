"""InferMax's preemption finding, measured with heuristics: the GPU cost of serving a batch of
requests with preemption (Sarathi-Serve, recompute on KV shortage) against the same batching rule
that never preempts (InferMax's "avoid preemption" baseline: reserve each request's whole length
at admission, ``no-preempt``) and against TensorRT-LLM's GUARANTEED_NO_EVICT (reserve
``max_tokens``, ``trtllm-no-evict``), over KV cache sizes and two length mixes, with the engine's
prefix cache on (vLLM v1's default: a preempted request that returns finds those of its freed
blocks not yet evicted and recomputes only the rest) and off (every preemption recomputes the
whole context, as in vLLM v0 and InferMax's model).

    python eval/preemption_ratio.py [--requests 200] [--seeds 3] [--workers 2] [--out docs]

InferMax (Kim et al. 2024) reports that preemption cuts GPU cost by about 30% against avoiding it.
Setting: h100-llama3-8b cost model, every request arrives at t = 0 (an offline batch: the cost is
the GPU time to serve all of it), lengths from splitwise_conv (conversation: short outputs) and
the arXiv summarisation trace (long prompts), prompt + output <= 4,096 tokens so every request
fits the smallest cache; KV caches of 256 to 8,192 blocks of 16 tokens. ``lower bound`` is
``baselines.bound``'s proven GPU-second lower bound (any schedule, preempting or not). A ratio is GPU-seconds of
``sarathi`` / GPU-seconds of the scheduler that never preempts (below 1: preemption saves), mean
and 95% t-interval over seeds. Writes ``preemption.md`` (table and findings) and
``img/preemption_ratio.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from eval.stats import t_interval  # noqa: E402

MIXES = {"conversation": "splitwise_conv", "summarisation": "arxiv_summarization_stats_llama2_tokenizer_filtered_v2"}
KV_BLOCKS = (256, 512, 1024, 2048, 4096, 8192)
BOUND = "bound"  # baselines.bound's GPU-second lower bound: no schedule, preempting or not, is cheaper
# (column, scheduler, prefix caching)
RUNS = (("sarathi", "sarathi", True), ("sarathi, no prefix cache", "sarathi", False),
        ("no-preempt", "no-preempt", True), ("trtllm-no-evict", "trtllm-no-evict", True),
        ("lower bound", BOUND, True))


def gpu_seconds(job: tuple) -> float:
    """GPU busy seconds of one (trace, KV blocks, scheduler, prefix caching, requests, seed) run."""
    trace, kv_blocks, scheduler, prefix_caching, requests, seed = job
    from llmsched_env import Engine, WorkloadConfig, build_workload, get_preset, make_scheduler
    from llmsched_env.simulate import run
    preset = get_preset("h100-llama3-8b", num_kv_blocks=kv_blocks)
    specs = build_workload(WorkloadConfig(num_requests=requests, arrival="poisson", rate=1e6, lengths="trace",
                                          trace=trace, oversize="drop", max_total_len=4096, seed=seed))
    config = preset.engine_config(prefix_caching=prefix_caching)
    if scheduler == BOUND:
        from baselines.bound import gpu_time_lower_bound
        return gpu_time_lower_bound(specs, config, preset.cost_model, preemption=True).value
    return run(Engine(specs, config, preset.cost_model), make_scheduler(scheduler))["gpu_busy_s"]


def measure(requests: int, seeds: int, workers: int) -> list[dict]:
    """One row per (mix, KV size): mean GPU-seconds per column and the ratios over seeds."""
    keys = [(mix, kv, col, seed) for mix in MIXES for kv in KV_BLOCKS for col, _, _ in RUNS for seed in range(seeds)]
    spec = {col: (sched, pc) for col, sched, pc in RUNS}
    jobs = [(MIXES[mix], kv, *spec[col], requests, seed) for mix, kv, col, seed in keys]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            values = list(pool.map(gpu_seconds, jobs))
    else:
        values = [gpu_seconds(j) for j in jobs]
    got = dict(zip(keys, values))
    rows = []
    for mix in MIXES:
        for kv in KV_BLOCKS:
            g = {col: [got[(mix, kv, col, s)] for s in range(seeds)] for col, _, _ in RUNS}
            ratio = lambda a, b: t_interval([x / y for x, y in zip(g[a], g[b])])  # noqa: E731
            rows.append({"mix": mix, "kv": kv, "mean": {c: float(np.mean(v)) for c, v in g.items()},
                         "on": ratio("sarathi", "no-preempt"), "off": ratio("sarathi, no prefix cache", "no-preempt"),
                         "trt": ratio("sarathi", "trtllm-no-evict"),
                         "room": ratio("lower bound", "no-preempt")})
    return rows


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0%}" if round(lo * 100) == round(hi * 100) else f"{lo:.0%}-{hi:.0%}"


def findings(rows: list[dict]) -> list[str]:
    """What the table shows, computed from it (savings = 1 - ratio)."""
    out = ["## What it shows", ""]
    for mix in MIXES:
        mine = [r for r in rows if r["mix"] == mix]
        tight = [r for r in mine if r["on"].mean < 0.995]
        best = min(mine, key=lambda r: r["on"].mean)
        fits = [r["kv"] for r in mine if abs(r["on"].mean - 1) < 1e-9 and abs(r["off"].mean - 1) < 1e-9]
        text = (f"**{mix.capitalize()}.** Against reserving each request's true length, preemption "
                f"saves {_span([1 - r['on'].mean for r in tight] or [0.0])} of GPU time with the prefix cache on "
                f"and {_span([1 - r['off'].mean for r in tight] or [0.0])} with it off, where the cache cannot "
                f"hold the whole batch; the most, {1 - best['on'].mean:.0%} "
                f"[{1 - best['on'].high:.0%}, {1 - best['on'].low:.0%}], at {best['kv']} blocks.")
        if fits:
            text += f" With {', '.join(map(str, fits))} blocks nothing is preempted (ratio 1)."
        text += (f" Against reserving `max_tokens` (TensorRT-LLM's no-evict rule, which also batches by its "
                 f"own rule) it saves {_span([1 - r['trt'].mean for r in mine])}.")
        out += [text, ""]
    best = min(rows, key=lambda r: r["on"].mean)
    room = [1 - r["room"].mean for r in rows if r["on"].mean < 0.995] or [1 - r["room"].mean for r in rows]
    reached = 1 - best["on"].high >= 0.30
    out += [("**InferMax's ~30%.** " + (
        f"Reproduced: {best['mix']} lengths at {best['kv']} blocks save {1 - best['on'].mean:.0%}."
        if reached else
        f"Not reproduced by this heuristic: the largest saving is {1 - best['on'].mean:.0%} "
        f"({best['mix']}, {best['kv']} blocks). InferMax's 30% came from its optimal CSP schedules, which "
        "preempt by plan, not on shortage; a shortage-driven heuristic preempts the newest request "
        "after the cache is full, and each preemption costs a recompute.")
        + f" The lower bound leaves room for {_span(room)} where the cache is tight (`bound / no-preempt`: "
        "no schedule, preempting by plan or not, saves more than 1 minus it), so the bound "
        + ("does not rule 30% out" if max(room) >= 0.30 else "rules 30% out on these batches")
        + "; it is a relaxation, loosest where the whole batch fits (it ignores how decodes of different "
        "lengths pack), so the optimum's saving lies between the heuristic's and that room. The prefix cache "
        f"changes the ratio by at most {max(abs(r['on'].mean - r['off'].mean) for r in rows):.3f}: preemption "
        "happens when the cache is full, so a preempted request's freed blocks are mostly reused by others "
        "before it returns. Against the practical no-evict rule the cost of not preempting is mostly the cost "
        "of not knowing lengths."), ""]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="processes (spawn); results do not depend on it")
    p.add_argument("--out", default="docs")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = measure(a.requests, a.seeds, a.workers)
    iv = lambda r: f"{r.mean:.3f} [{r.low:.3f}, {r.high:.3f}]"  # noqa: E731
    cols = [c for c, _, _ in RUNS]
    lines = ["# Preemption vs avoiding it (InferMax's finding, measured with heuristics)", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"Generated by `python eval/preemption_ratio.py --requests {a.requests} --seeds {a.seeds}`.", "",
             "| lengths | KV blocks | " + " | ".join(f"{c} GPU-s" for c in cols)
             + " | sarathi / no-preempt [95% CI] | same, no prefix cache | sarathi / trtllm-no-evict "
             "| bound / no-preempt |",
             "|---|---|" + "---|" * (len(cols) + 4)]
    for r in rows:
        lines.append(f"| {r['mix']} | {r['kv']} | " + " | ".join(f"{r['mean'][c]:.2f}" for c in cols)
                     + f" | {iv(r['on'])} | {iv(r['off'])} | {r['trt'].mean:.3f} | {r['room'].mean:.3f} |")
    lines += [""] + findings(rows)
    (out / "preemption.md").write_text("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for mix in MIXES:
        mine = [r for r in rows if r["mix"] == mix]
        kvs = [r["kv"] for r in mine]
        ax.plot(kvs, [r["on"].mean for r in mine], marker="o", label=f"{mix}: sarathi / no-preempt")
        ax.plot(kvs, [r["off"].mean for r in mine], marker=".", ls="-.", label=f"{mix}: same, no prefix cache")
        ax.plot(kvs, [r["trt"].mean for r in mine], marker="x", ls="--", label=f"{mix}: sarathi / trtllm-no-evict")
        ax.plot(kvs, [r["room"].mean for r in mine], marker="v", ls=":", label=f"{mix}: lower bound / no-preempt")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.7, color="red", lw=0.8, ls=":", label="InferMax's ~30% saving")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV cache, blocks of 16 tokens")
    ax.set_ylabel("GPU-s ratio (with / without preemption)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    (out / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "img" / "preemption_ratio.png", dpi=120)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
