"""Evaluate schedulers against each other on identical workloads and write a report.

    python eval/evaluate.py [--suite all|NAME,...] [--policy DIR ...] [--schedulers SPEC,...]
                            [--quick] [--seeds N] [--workers N] [--out runs/eval]
    python eval/evaluate.py --trace my.csv --rate-scale 0.5,1,2      # any trace CSV
    python eval/evaluate.py --list

Entrants: trained policies by path (``--policy agents/zoo/default`` runs scheduler spec
``ppo:path=agents/zoo/default``; repeatable), heuristics by scheduler spec (``--schedulers
fcfs,vllm-v1:policy=priority,sarathi:token_budget=256``; default: every registered heuristic),
and, in a suite with an ``optimal`` section, the CP-SAT schedule of each instance.

Suites are data (``eval/suites/*.yaml``, see ``eval/suite.py``): ``default-scenario`` (the env's
training scenario, where the shipped policy is reported), ``load-sweep``, ``arxiv``,
``slo-tiers``, ``bursty`` and ``small-instance`` (gap to the optimal bound).

Writes ``<out>/evaluation.md`` (tables, best per column in bold), ``evaluation.csv`` (one row per
suite, variant, rate, scheduler and metric: mean and 95% t-interval over seeds),
``evaluation.json`` (everything, per seed) and ``<out>/img/*.png``. The same command gives the
same numbers (wall-clock times, kept under "timing" in the JSON, aside). Exit status: 0, 1 when
some run failed (listed in the report), 2 on bad arguments (nothing is run).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402

from eval.aggregate import OPTIMAL, aggregate_suite, suite_jobs  # noqa: E402
from eval.runner import run_jobs  # noqa: E402
from eval.suite import Suite, SuiteError, list_suites, load_suite, trace_suite  # noqa: E402
from llmsched_env.scheduler import (available_schedulers, heuristic_schedulers, make_scheduler,  # noqa: E402
                                    parse_spec, split_specs)

POLICY_SCHEDULER = "ppo"
DEFAULT_POLICY_SUITE = "default-scenario"  # the policy's training scenario
NOT_HEURISTICS = {OPTIMAL, POLICY_SCHEDULER}
# fcfs is vllm-v1 with its default (FCFS) policy under a second name: listed once
DEFAULT_EXTRA = ("vllm-v1:policy=priority",)
DEFAULT_SKIP = {"vllm-v1"}


class UsageError(ValueError):
    """Bad arguments: reported before anything runs."""


HEADROOM_SCENARIO = "default"  # env scenario of the headroom section (bound_gap), with the default-scenario suite


def default_heuristics() -> list[str]:
    names = [n for n in heuristic_schedulers() if n not in NOT_HEURISTICS and n not in DEFAULT_SKIP]
    return names + list(DEFAULT_EXTRA)


def policy_spec(path: str) -> str:
    """The scheduler spec of a trained policy directory (or file); checks it can be read."""
    p = Path(path)
    if "," in path:
        raise UsageError(f"--policy {path!r}: a policy path cannot contain ',' (it separates spec options)")
    if not p.exists():
        raise UsageError(f"--policy {path!r}: no such file or directory")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise UsageError(f"--policy {path!r}: not readable (check its permissions)")
    if POLICY_SCHEDULER not in available_schedulers():
        raise UsageError(f"--policy {path!r}: policy support not installed: scheduler {POLICY_SCHEDULER!r} is not "
                         "registered (it comes with PPO training, issue 6; merge it, or evaluate heuristics only)")
    return f"{POLICY_SCHEDULER}:path={path}"


def check_spec(spec: str) -> None:
    """Fail now (UsageError) for an unknown scheduler, bad options, or a policy that cannot load."""
    try:
        name, _ = parse_spec(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    known = available_schedulers()
    if name == OPTIMAL:
        raise UsageError("'optimal' is not a scheduler to list: it is solved per instance and added by suites with "
                         "an optimal section (small-instance)")
    if name not in known:
        raise UsageError(f"unknown scheduler {name!r} (in {spec!r}); registered: {', '.join(known)}")
    try:
        sched = make_scheduler(spec)
    except Exception as e:
        raise UsageError(f"scheduler {spec!r} cannot be built: {type(e).__name__}: {e}") from None
    # options of the wrong type often fail only when used: try two tiny requests first
    from llmsched_env.engine import Engine
    from llmsched_env.presets import get_preset
    from llmsched_env.request import RequestSpec
    from llmsched_env.simulate import run
    p = get_preset("h100-llama3-8b")
    specs = [RequestSpec(rid=i, arrival_s=0.01 * i, prompt_len=16, output_len=3) for i in range(2)]
    try:
        run(Engine(specs, p.engine_config(), p.cost_model), sched, max_steps=200)
    except Exception as e:
        raise UsageError(f"scheduler {spec!r} fails on a two-request smoke test (check its options): "
                         f"{type(e).__name__}: {e}") from None


def optimal_available() -> tuple[bool, str]:
    if OPTIMAL not in available_schedulers():
        return False, ("scheduler 'optimal' (the CP-SAT bound, issue 5) is not registered in this checkout; "
                       "the gap to the optimum cannot be computed")
    try:
        from baselines.optimal import solve  # noqa: F401
    except ImportError as e:
        return False, f"baselines.optimal cannot be imported: {e}"
    return True, ""


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} {text!r}: give comma-separated numbers") from None
    if not vals or any(not v > 0 for v in vals):
        raise UsageError(f"{what} {text!r}: give positive numbers")
    return vals


def resolve_suites(a) -> list[Suite]:
    names = []
    if a.suite is not None or a.trace is None:
        text = a.suite or "all"
        names = list_suites() if text == "all" else [s.strip() for s in text.split(",") if s.strip()]
        # the default suite first, the CP-SAT one last
        names.sort(key=lambda n: (n != "default-scenario", n == "small-instance"))
    suites = []
    try:
        for n in names:
            suites.append(load_suite(n, quick=a.quick))
        if a.trace is not None:
            suites.append(trace_suite(a.trace, _floats(a.rate_scale, "--rate-scale"), _floats(a.rates, "--rates"),
                                      a.num_requests, a.seeds or 4, a.quick))
    except SuiteError as e:
        raise UsageError(str(e)) from None
    if a.seeds is not None:
        if a.seeds < 1:
            raise UsageError(f"--seeds {a.seeds}: must be >= 1")
        suites = [replace(s, seeds=a.seeds) for s in suites]
    dup = sorted({s.name for s in suites if [t.name for t in suites].count(s.name) > 1})
    if dup:
        raise UsageError(f"suite(s) given twice: {', '.join(dup)}")
    return suites


def resolve_entrants(a) -> list[str]:
    specs = [policy_spec(p) for p in (a.policy or [])]
    if a.schedulers is None or a.schedulers == "all":
        specs += default_heuristics()
    elif a.schedulers != "none":
        specs += split_specs(a.schedulers)
    if not specs:
        raise UsageError("no schedulers to evaluate (give --policy and/or --schedulers)")
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise UsageError(f"scheduler(s) listed twice: {', '.join(dup)}")
    for s in specs:
        check_spec(s)
    return specs


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def evaluate(suites: list[Suite], entrants: list[str], seed: int = 0, workers: int = 1, progress: bool = True,
             console: Console | None = None, policy_suites: Optional[set] = None, ray: bool = False,
             ray_address: Optional[str] = None) -> dict:
    """Run every suite for every entrant; returns the result (see ``eval.aggregate``) with
    ``suites``, ``skipped`` and ``timing``. Policies (``ppo:`` specs) run only on the suites in
    ``policy_suites`` (None = every suite)."""
    console = console or Console(stderr=True)
    skipped, runnable = {}, []
    for s in suites:
        if s.optimal is not None:
            ok, why = optimal_available()
            if not ok:
                skipped[s.name] = why
                console.print(f"[yellow]suite {s.name} skipped:[/] {why}")
                continue
        runnable.append(s)
    per_suite = {s.name: [e for e in entrants if policy_suites is None or s.name in policy_suites
                          or parse_spec(e)[0] != POLICY_SCHEDULER] for s in runnable}
    jobs = [j for s in runnable for j in suite_jobs(s, per_suite[s.name], seed)]
    t0 = time.perf_counter()
    results = run_jobs(jobs, workers=workers, progress=progress, ray=ray, ray_address=ray_address)
    wall = time.perf_counter() - t0
    out = {s.name: aggregate_suite(s, per_suite[s.name], results) for s in runnable}
    solve_s = {name: [i.pop("solve_s", None) for i in r.get("instances", [])] for name, r in out.items()
               if "instances" in r}
    run_s = sum(r.get("wall_s", 0.0) for k, r in results.items() if isinstance(r, dict) and "wall_s" in r)
    return {"suites": out, "skipped": skipped, "threshold": 0.9,
            "timing": {"wall_s": wall, "jobs": len(jobs), "workers": workers, "simulation_s": run_s,
                       "solve_s": solve_s}}


def headroom(entrants: list[str], episodes: int, seed: int = 10_000, workers: int = 1, progress: bool = True,
             ray: bool = False, ray_address: Optional[str] = None) -> dict:
    """Every entrant's distance to the relaxation bounds (``eval/bound_gap.py``) on ``episodes``
    held-out episodes of the default env scenario (the policy's training distribution), from
    reset seed ``seed``: means and 95% t-intervals."""
    from eval.bound_gap import SLO_TIME_LIMIT_S, episode, summarize_gaps
    from llmsched_env import runner
    jobs = [(HEADROOM_SCENARIO, seed + k, list(entrants), SLO_TIME_LIMIT_S) for k in range(episodes)]
    eps = runner.run_jobs(episode, jobs, workers=workers, ray=ray, ray_address=ray_address, progress=progress,
                          label="headroom episodes")
    return {**summarize_gaps(eps, list(entrants)), "scenario": HEADROOM_SCENARIO, "seeds": [seed, seed + episodes - 1]}


def count_failures(result: dict) -> int:
    """Runs that failed, not counting schedulers' documented refusals of a workload."""
    n = 0
    for s in result["suites"].values():
        for c in s["conditions"]:
            for d in c["entrants"].values():
                n += sum(1 for r in d["per_seed"] if r and "error" in r and not r.get("refused"))
    return n


def write_outputs(result: dict, out: Path, workers: int, console: Console) -> dict:
    from eval.plots import plot_all
    from eval.report import write_all
    images = plot_all(result, out / "img", out, workers)
    paths = write_all(result, out, images)
    console.print("wrote " + ", ".join(str(p) for p in paths.values())
                  + f" and {sum(len(v) for v in images.values())} plots")
    return paths


def rerender(src: Path, out: Path, workers: int, console: Console) -> int:
    """The report, CSV, JSON and plots again from a saved evaluation.json (no simulation)."""
    import json
    try:
        result = json.loads(src.read_text())
        result.pop("images", None)
        if not {"suites", "meta", "skipped"} <= set(result):
            raise ValueError("not an evaluation.json written by eval/evaluate.py")
    except (OSError, ValueError) as e:
        print(f"error: --from-json {src}: {e}", file=sys.stderr)
        return 2
    write_outputs(result, out, workers, console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python eval/evaluate.py", description=__doc__.split("\n\n")[0],
                                 epilog="Suites: " + ", ".join(list_suites()))
    ap.add_argument("--suite", help="comma-separated suite names or YAML paths, or 'all' (default: all; "
                                    "with --trace and no --suite only the trace)")
    ap.add_argument("--policy", action="append", metavar="DIR",
                    help=f"a trained policy directory, run as scheduler '{POLICY_SCHEDULER}:path=DIR' (repeatable)")
    ap.add_argument("--policy-suites",
                    help="comma-separated suites the policies run on, or 'all' (default: default-scenario when "
                         "it is evaluated, else every suite: a policy costs milliseconds of CPU per engine step, "
                         "hundreds of times a heuristic, so every suite takes over an hour per policy on 2 cores)")
    ap.add_argument("--schedulers", help="comma-separated scheduler specs, 'all' (default: every registered "
                                         "heuristic) or 'none' (policies only)")
    ap.add_argument("--trace", help="also evaluate on this trace CSV (path or name in ../shared/data/traces)")
    ap.add_argument("--rate-scale", help="with --trace: comma-separated speed-ups of its arrival times (default 1)")
    ap.add_argument("--rates", help="with --trace: comma-separated Poisson rates, req/s, instead of its arrival times")
    ap.add_argument("--num-requests", type=int, default=300, help="with --trace: requests per run (default 300)")
    ap.add_argument("--seeds", type=int, help="seeds per point (default: each suite's)")
    ap.add_argument("--seed", type=int, default=0, help="first workload seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="smoke test: each suite's few rates, seeds and requests")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="parallel worker processes, or CPUs of a local Ray instance (default: one per CPU; "
                         "1 = in this process)")
    ap.add_argument("--ray", action="store_true", help="run the jobs on Ray (a local instance unless "
                                                      "--ray-address); needs pip install 'llmsched[ray]'")
    ap.add_argument("--ray-address", help="run the jobs on this Ray cluster ('auto' or ray://host:port)")
    ap.add_argument("--headroom-episodes", type=int,
                    help="held-out default-scenario episodes for the distance to the relaxation bounds, run when "
                         "the default-scenario suite is evaluated (default 20, 2 with --quick; 0 = none)")
    ap.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--list", action="store_true", help="list suites and schedulers, then exit")
    ap.add_argument("--from-json", metavar="JSON", help="run nothing: rewrite the report, CSV and plots under "
                                                         "--out from a previous run's evaluation.json")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    console = Console(stderr=True)
    if a.list:
        for n in list_suites():
            s = load_suite(n)
            print(f"{n:18s} {s.title}")
        print("schedulers:", ", ".join(available_schedulers()))
        return 0
    if a.from_json:
        return rerender(Path(a.from_json), Path(a.out), a.workers, console)
    try:
        if a.workers < 1:
            raise UsageError(f"--workers {a.workers}: must be >= 1")
        if a.headroom_episodes is not None and (a.headroom_episodes < 0 or a.headroom_episodes == 1):
            raise UsageError(f"--headroom-episodes {a.headroom_episodes}: 0 (none) or >= 2 (a confidence interval "
                             "needs two)")
        if a.trace is None and (a.rate_scale or a.rates):
            raise UsageError("--rate-scale / --rates apply to --trace only (suites define their own rates)")
        suites = resolve_suites(a)
        entrants = resolve_entrants(a)
        policy_suites = None
        if a.policy_suites is None and any(s.name == DEFAULT_POLICY_SUITE for s in suites):
            policy_suites = {DEFAULT_POLICY_SUITE}
        elif a.policy_suites not in (None, "all"):
            policy_suites = {x.strip() for x in a.policy_suites.split(",") if x.strip()}
            unknown = sorted(policy_suites - {s.name for s in suites})
            if unknown:
                raise UsageError(f"--policy-suites {', '.join(unknown)}: not among the suites evaluated "
                                 f"({', '.join(s.name for s in suites)})")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.ray or a.ray_address:
        try:
            from llmsched_env.runner import require_ray
            require_ray()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    result = evaluate(suites, entrants, a.seed, a.workers, not a.no_progress, console, policy_suites,
                      a.ray, a.ray_address)
    n_head = a.headroom_episodes if a.headroom_episodes is not None else (2 if a.quick else 20)
    if n_head and any(s.name == DEFAULT_POLICY_SUITE for s in suites):
        t = time.perf_counter()
        result["headroom"] = headroom(entrants, n_head, workers=a.workers, progress=not a.no_progress,
                                      ray=a.ray, ray_address=a.ray_address)
        result["timing"]["headroom_s"] = time.perf_counter() - t
    result["meta"] = {"command": "python eval/evaluate.py " + shlex.join(argv), "commit": _commit(),
                      "entrants": entrants, "quick": a.quick, "base_seed": a.seed,
                      "policy_suites": sorted(policy_suites) if policy_suites is not None else "all",
                      "suites": [s.name for s in suites]}
    t = result["timing"]
    console.print(f"{t['jobs']} runs in {t['wall_s']:.1f} s on {t['workers']} worker(s)")
    paths = write_outputs(result, Path(a.out), a.workers, console)
    n_fail = count_failures(result)
    if n_fail:
        console.print(f"[red]{n_fail} run(s) failed[/] (listed in {paths['markdown']})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
