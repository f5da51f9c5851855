"""One runner for independent jobs (evaluation sweeps, multi-seed comparisons): in this process,
on a local process pool, or on Ray.

    results = run_jobs(fn, jobs, workers=4)                      # local spawn pool (default)
    results = run_jobs(fn, jobs, workers=4, ray=True)            # a local Ray instance, 4 CPUs
    results = run_jobs(fn, jobs, ray=True, ray_address="auto")   # an existing Ray cluster

``fn`` is a module-level function and each job a picklable value; ``results[i] = fn(jobs[i])``,
whatever the backend, the worker count or the order in which jobs complete, so the same jobs
give the same results everywhere (each job must build what it needs, e.g. its scheduler, from
its own description). The local pool uses the ``spawn`` start method: a parent that has
imported torch (a learned policy's spec was validated) cannot deadlock its workers, as a
forked pool can. Workers run one thread each (``OMP_NUM_THREADS=1``...): the pool already uses
every core it is given.

Ray is optional (``pip install 'llmsched[ray]'``) and imported only when asked for. Without an
address a local Ray instance is started with ``workers`` CPUs (and shut down after); with one
(``"auto"`` or ``"ray://host:10001"``) the jobs run on that cluster, whose workers receive this
checkout's packages (Ray ``runtime_env`` ``py_modules``).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llmsched_env", "baselines", "agents", "eval")


class RayUnavailable(RuntimeError):
    """Ray was asked for but is not installed."""


def _init_worker() -> None:
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")


def _raise(exc: BaseException):
    raise exc


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence, workers: int = 1, ray: bool = False,
             ray_address: Optional[str] = None, progress: bool = True, label: str = "runs",
             on_error: Callable[[BaseException], Any] = _raise) -> list:
    """``[fn(job) for job in jobs]``, fanned out (see the module docstring).

    Args:
        workers: processes (local pool; 1 = in this process) or CPUs of a local Ray instance.
        ray: run on Ray; ``ray_address`` implies it.
        on_error: maps an exception raised by ``fn`` (or a worker that died) to that job's
            result; the default re-raises it at once.
    """
    jobs = list(jobs)
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    use_ray = ray or ray_address is not None
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress)
    results: list = [None] * len(jobs)
    with bar:
        task = bar.add_task(label, total=len(jobs))
        if use_ray:
            _run_ray(fn, jobs, workers, ray_address, results, on_error, lambda: bar.advance(task))
        elif workers == 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                try:
                    results[i] = fn(job)
                except Exception as e:  # noqa: BLE001 (the caller decides, through on_error)
                    results[i] = on_error(e)
                bar.advance(task)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                     initializer=_init_worker) as pool:
                futs = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
                for f in as_completed(futs):
                    try:
                        results[futs[f]] = f.result()
                    except Exception as e:  # noqa: BLE001 (includes a worker that died)
                        results[futs[f]] = on_error(e)
                    bar.advance(task)
    return results


def require_ray():
    """The ray module; RayUnavailable (with the install command) when it is not installed."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("Ray is not installed: pip install 'llmsched[ray]' (or pip install ray), "
                             "or run without --ray / --ray-address") from None
    return ray


def _run_ray(fn, jobs, workers, address, results, on_error, advance) -> None:
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        env = {var: "1" for var in THREAD_VARS}
        if address is None:
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
                os.pathsep) if p])
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env})
        else:
            ray.init(address=address, log_to_driver=False, runtime_env={
                "env_vars": env, "py_modules": [str(ROOT / p) for p in PACKAGES if (ROOT / p).is_dir()]})
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        refs = {remote.remote(job): i for i, job in enumerate(jobs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[refs[ref]] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 (a RayTaskError wraps the job's exception)
                    cause = getattr(e, "cause", None)
                    results[refs[ref]] = on_error(cause if isinstance(cause, BaseException) else e)
                advance()
    finally:
        if started:
            ray.shutdown()


def add_runner_args(p) -> None:
    """``--workers``, ``--ray`` and ``--ray-address`` on an argparse parser."""
    p.add_argument("--workers", type=int, help="parallel processes, or CPUs of a local Ray instance "
                                               "(default: one per CPU, at most one per run; 1 = in this process)")
    p.add_argument("--ray", action="store_true", help="run the jobs on Ray (a local instance unless "
                                                      "--ray-address); needs pip install 'llmsched[ray]'")
    p.add_argument("--ray-address", help="run the jobs on this Ray cluster ('auto' or ray://host:port); implies --ray")
