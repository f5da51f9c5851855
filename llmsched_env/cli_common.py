"""Command-line arguments shared by every ``llmsched`` subcommand that builds workloads and engines."""
from __future__ import annotations

import argparse
import json
import os
import math
from pathlib import Path

from .presets import DEFAULT_PRESET
from .workload import DEFAULT_SLO, SLOClass, WorkloadConfig


def add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--trace", help="trace CSV path or name in ../shared/data/traces (default splitwise_conv)")
    src.add_argument("--synthetic", action="store_true", help="synthetic lengths (see --lengths)")
    g.add_argument("--arrival", choices=["trace", "poisson", "gamma"],
                   help="arrival process (default: the trace's timestamps when it has them and no "
                        "--rate is given, else poisson)")
    g.add_argument("--rate", type=float, help="arrival rate for poisson/gamma, requests/s")
    g.add_argument("--rate-scale", type=float, default=1.0, help="trace arrivals sped up by this factor")
    g.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of gamma inter-arrivals")
    g.add_argument("--num-requests", type=int, help="requests (default: whole trace for trace arrivals, "
                                                    "else 1000)")
    g.add_argument("--window-start", type=int, help="first trace row of the window (default: random by seed; "
                                                    "0 when the whole trace is used)")
    g.add_argument("--lengths", choices=["fixed", "uniform", "lognormal"], default="lognormal",
                   help="synthetic length distribution")
    g.add_argument("--prompt-len", type=int, default=512, help="synthetic prompt length (mean), tokens")
    g.add_argument("--output-len", type=int, default=128, help="synthetic output length (mean), tokens")
    g.add_argument("--slo-ttft", type=float, default=DEFAULT_SLO.ttft_s, help="TTFT target, s")
    g.add_argument("--slo-tbt", type=float, default=DEFAULT_SLO.tbt_s, help="TBT (P99 per request) target, s")
    g.add_argument("--slo-tiers", help="several tiers: name:ttft_s:tbt_s:weight[:priority],... "
                                       "(overrides --slo-ttft/--slo-tbt)")
    g.add_argument("--oversize", choices=["error", "drop", "clip"], default="error",
                   help="requests longer than the model's context: reject (default), drop, or clip the prompt")
    g.add_argument("--predictor-error", type=float, help="relative std of a noisy output-length predictor")
    g.add_argument("--max-tokens", type=int, help="every request's output cap (what practical schedulers know; "
                                                  "longer outputs are cut to it); default: the trace's max_tokens "
                                                  "column if any, else the model's context left after the prompt")
    g.add_argument("--conversation-turns", type=float, help="multi-turn conversations: mean turns per conversation "
                                                            "(each turn's prefix is its history; see docs/cluster.md)")
    g.add_argument("--think-time", type=float, default=30.0, help="mean time between a conversation's turns, s")
    g.add_argument("--seed", type=int, default=0)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--preset", default=DEFAULT_PRESET, help=f"cost-model preset (default {DEFAULT_PRESET}; "
                                                            "`llmsched presets` lists them)")
    g.add_argument("--token-budget", type=int, help="max tokens per step (default 8192)")
    g.add_argument("--max-num-seqs", type=int, help="max resident requests (default 256)")
    g.add_argument("--num-kv-blocks", type=int, help="override KV capacity, blocks")
    g.add_argument("--gpu-mem-util", type=float, help="GPU memory share for weights + KV (default 0.9)")
    g.add_argument("--block-size", type=int, help="KV block size, tokens (default 16)")
    g.add_argument("--preemption-mode", choices=["recompute", "swap"],
                   help="what a preemption does with the victim's KV (default recompute, vLLM's; swap: "
                        "to host memory and back over the GPU's host link, as vLLM v0 can)")
    g.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="cache freed full KV blocks by content (LRU), as vLLM v1's automatic prefix "
                        "caching: a preempted request or a conversation's next turn reuses them "
                        "(default on, as in vLLM v1; --no-prefix-caching turns it off)")
    g.add_argument("--swap-space", type=float, help="host memory for swapped-out KV, GiB per GPU "
                   "(default 4, vLLM v0's --swap-space)")


def parse_tiers(text: str) -> tuple[SLOClass, ...]:
    tiers = []
    for part in text.split(","):
        f = part.split(":")
        if len(f) not in (4, 5):
            raise SystemExit(f"error: --slo-tiers entry {part!r} must be name:ttft_s:tbt_s:weight[:priority]")
        try:
            tiers.append(SLOClass(f[0], float(f[1]), float(f[2]), float(f[3]), int(f[4]) if len(f) == 5 else 0))
        except ValueError:
            raise SystemExit(f"error: --slo-tiers entry {part!r} has a non-numeric field") from None
    return tuple(tiers)


def workload_from_args(a, max_total_len: int | None = None) -> WorkloadConfig:
    from .workload import load_trace
    trace = None if a.synthetic else (a.trace or "splitwise_conv")
    arrival = a.arrival
    if arrival is None:
        has_t = trace is not None and load_trace(trace).arrival_s is not None
        arrival = "trace" if has_t and a.rate is None else "poisson"
    if arrival == "trace" and trace is None:
        raise SystemExit("error: --arrival trace needs --trace")
    n = a.num_requests
    if n is None and not (arrival == "trace"):
        n = 1000
    if n is not None and n < 1:
        raise SystemExit(f"error: --num-requests must be >= 1 (got {n})")
    window = a.window_start if a.window_start is not None else (0 if n is None else None)
    if a.rate is not None and not 0 < a.rate < math.inf:
        raise SystemExit(f"error: --rate must be a number of requests/s > 0 (got {a.rate})")
    try:
        tiers = parse_tiers(a.slo_tiers) if a.slo_tiers else (SLOClass("default", a.slo_ttft, a.slo_tbt),)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        return WorkloadConfig(num_requests=n, arrival=arrival, rate=2.0 if a.rate is None else a.rate, cv=a.cv,
                              rate_scale=a.rate_scale, lengths="trace" if trace else a.lengths, trace=trace,
                              window_start=window, prompt_len=a.prompt_len, output_len=a.output_len,
                              slo_classes=tiers, oversize=a.oversize,
                              max_total_len=max_total_len if a.oversize != "error" else None,
                              predictor_error=a.predictor_error, max_tokens=a.max_tokens,
                              conversation_turns=a.conversation_turns, think_time_s=a.think_time, seed=a.seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def engine_overrides(a) -> dict:
    """The engine flags as ``Preset.engine_config`` overrides; an impossible value exits with a
    message naming the flag."""
    if a.block_size is not None and a.block_size < 1:  # the others are named by EngineConfig
        raise SystemExit(f"error: --block-size must be an integer >= 1 (got {a.block_size})")
    if a.swap_space is not None and not 0 <= a.swap_space < float("inf"):
        raise SystemExit(f"error: --swap-space must be a number of GiB >= 0 (got {a.swap_space})")
    return {"max_num_batched_tokens": a.token_budget, "max_num_seqs": a.max_num_seqs,
            "num_kv_blocks": a.num_kv_blocks, "block_size": a.block_size,
            "preemption_mode": a.preemption_mode, "swap_space_gib": a.swap_space,
            "prefix_caching": a.prefix_caching}


def write_json(obj, path: str | None) -> None:
    if not path:
        return
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(obj), indent=2) + "\n")


def check_writable(path: str | None, flag: str) -> None:
    """Exit before any work when ``path`` (a file or directory to write) cannot be created: its
    nearest existing ancestor must be a writable directory, and it must not be a directory
    where a file is expected (results would otherwise be lost after the whole run)."""
    if not isinstance(path, str) or not path:  # absent, or a flag of that name (calibrate --json)
        return
    p = Path(path).resolve()
    anc = p
    while not anc.exists():
        anc = anc.parent
    if anc == p and p.is_file() and not os.access(p, os.W_OK):
        raise SystemExit(f"error: {flag} {path}: the file is not writable")
    if anc != p and (not anc.is_dir() or not os.access(anc, os.W_OK)):
        raise SystemExit(f"error: {flag} {path}: cannot create it ({anc} is not a writable directory); "
                         "choose another path")
