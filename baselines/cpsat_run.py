"""CP-SAT under a hard wall-clock deadline: the solve runs in a child process that is killed at
the deadline.

CP-SAT's ``max_time_in_seconds`` is not checked during presolve: a batch-indexed schedule model of
six real-length requests spent 58 s expanding its element constraints (12.7M constraints) with a
2 s limit. So the model is exported (binary proto), solved by ``python baselines/cpsat_run.py``
(which imports only OR-Tools), and the parent waits at most until the deadline plus ``grace_s``;
on a kill the outcome is UNKNOWN with the best objective and bound the child reported so far
(each improving solution and bound is streamed on the child's stderr).

Optionally the child's address space is capped (``memory_limit_mb``): CP-SAT then fails instead of
exhausting the machine, and the outcome says so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Outcome:
    """What a bounded solve returned.

    Attributes:
        status: OPTIMAL, FEASIBLE, INFEASIBLE, MODEL_INVALID or UNKNOWN.
        response: the CpSolverResponse (None when the child was killed or failed), for
            ``value``/``boolean_value``.
        objective, bound: raw (model units) best objective and proven bound, None if none.
        wall_s: seconds from start to result.
        killed: the child was stopped at the deadline (CP-SAT overran its own limit).
        note: why there is no response, if there is none.
        rows: (wall s, raw objective, raw bound) of every improving solution.
    """

    status: str
    response: object = None
    objective: Optional[float] = None
    bound: Optional[float] = None
    wall_s: float = 0.0
    killed: bool = False
    note: str = ""
    rows: list = field(default_factory=list)

    def value(self, expr) -> int:
        from ortools.sat.python import cp_model_helper as cmh
        return cmh.ResponseHelper.value(self.response, expr)

    def boolean_value(self, lit) -> bool:
        from ortools.sat.python import cp_model_helper as cmh
        return cmh.ResponseHelper.boolean_value(self.response, lit)

    @property
    def has_solution(self) -> bool:
        return self.response is not None and self.status in ("OPTIMAL", "FEASIBLE")


def solve_bounded(model, deadline: float, num_workers: int = 1, seed: int = 0, grace_s: float = 1.0,
                  memory_limit_mb: Optional[int] = None, on_solution: Optional[Callable] = None,
                  extra_params: Optional[dict] = None) -> Outcome:
    """Solve ``model`` (a CpModel) in a child process; return by ``deadline + grace_s``.

    Args:
        deadline: a ``time.perf_counter()`` value; CP-SAT is given the time left once the child
            has loaded the model (less 0.2 s to write the result), the child is killed
            ``grace_s`` after the deadline.
        on_solution: called as ``on_solution(wall_s, raw_objective, raw_bound)`` for each
            improving solution (from a reader thread).
        extra_params: more SatParameters fields by name.
    """
    t0 = time.perf_counter()
    left = deadline - t0
    if left <= 0.05:
        return Outcome("UNKNOWN", note="no time left for the solver")
    with tempfile.TemporaryDirectory(prefix="llmsched-cpsat-") as tmp:
        path = Path(tmp) / "model.pb"
        model.export_to_file(str(path))
        params = {"num_workers": num_workers, "random_seed": seed} | dict(extra_params or {})
        # the child sets max_time_in_seconds from this wall-clock deadline once it has loaded
        params["deadline_epoch_s"] = time.time() + (deadline - time.perf_counter())
        (Path(tmp) / "params.json").write_text(json.dumps(params))
        out = Path(tmp) / "response.pbtxt"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(path), str(Path(tmp) / "params.json"), str(out)]
        if memory_limit_mb:
            cmd.append(str(int(memory_limit_mb)))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rows: list = []
        errors: list[str] = []

        def read():
            for line in proc.stderr:
                if line.startswith("SOL "):
                    _, t, obj, bnd = line.split()
                    row = (float(t), float(obj), float(bnd))
                    rows.append(row)
                    if on_solution is not None:
                        on_solution(*row)
                elif line.strip():
                    errors.append(line.rstrip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed = False
        try:
            proc.wait(timeout=max(0.1, deadline - time.perf_counter() + grace_s))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed = True
        reader.join(timeout=2)
        wall = time.perf_counter() - t0
        best_obj = rows[-1][1] if rows else None
        best_bnd = rows[-1][2] if rows else None
        if killed:
            return Outcome("UNKNOWN", None, best_obj, best_bnd, wall, True,
                           "CP-SAT overran the time limit (in presolve) and was stopped", rows)
        if proc.returncode != 0 or not out.exists():
            why = "; ".join(errors[-3:]) or f"exit status {proc.returncode}"
            if memory_limit_mb and ("bad_alloc" in why or "MemoryError" in why or proc.returncode < 0):
                why = f"CP-SAT ran out of its {memory_limit_mb} MB memory limit ({why})"
            return Outcome("UNKNOWN", None, best_obj, best_bnd, wall, False, f"CP-SAT failed: {why}", rows)
        from ortools.sat.python import cp_model_helper as cmh
        resp = cmh.CpSolverResponse()
        resp.parse_text_format(out.read_text())
        status = resp.status.name
        has = status in ("OPTIMAL", "FEASIBLE")
        return Outcome(status, resp, resp.objective_value if has else best_obj,
                       resp.best_objective_bound if status != "INFEASIBLE" else None, wall, False, "", rows)


def _child(model_path: str, params_path: str, out_path: str, memory_mb: Optional[str] = None) -> int:
    if memory_mb:
        import resource
        lim = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    from google.protobuf import text_format
    from ortools.sat import cp_model_pb2
    from ortools.sat.python import cp_model, cp_model_helper as cmh

    pb = cp_model_pb2.CpModelProto.FromString(Path(model_path).read_bytes())
    proto = cmh.CpModelProto()
    proto.parse_text_format(text_format.MessageToString(pb))
    del pb
    m = cp_model.CpModel()
    m.proto.copy_from(proto)
    del proto
    solver = cp_model.CpSolver()
    params = json.loads(Path(params_path).read_text())
    solver.parameters.max_time_in_seconds = max(0.01, params.pop("deadline_epoch_s") - time.time() - 0.2)
    for k, v in params.items():
        setattr(solver.parameters, k, v)

    class CB(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self):
            print(f"SOL {self.wall_time:.4f} {self.objective_value!r} {self.best_objective_bound!r}",
                  file=sys.stderr, flush=True)

    solver.solve(m, CB())
    tmp = out_path + ".tmp"
    Path(tmp).write_text(str(solver.response_proto))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:]))
