"""The prefill packing: which prefill batch ends each prompt, and which prompts are split to fit.

A relaxation of the schedules that never preempt, tight enough on small workloads that its
optimum is often met by a schedule (``baselines.optimal.packed_prefill_plans`` searches for one):
``baselines.bound`` takes its value as a lower bound on InferMax's per-batch and prompt-split
terms.

Every such schedule has J_p batches carrying prefill tokens, b = 0, 1, ... in time order, and J
batches in all. Request i's prefill ends with a *last chunk* of L_i tokens in prefill batch b_i
(P_i' - L_i >= 0 tokens in *pieces* before it, each in its own earlier prefill batch), after which
it emits O_i - 1 more tokens, one per batch: J >= b_i + O_i (the b-th prefill batch is at least
the b-th batch). The tokens before the last chunk are its context, and each piece is a chunk:
InferMax prices them by ``prefill_kv`` per context token and ``per_prefill`` per chunk. A batch
holds at most B tokens: its last chunks, its pieces, and a decode of each request with O_i = J
(the first batch holds its last chunk, b_i = 0, and it decodes in every later batch). Every other
decode's room, and the context of pieces after a request's first, are relaxed.

For each (J_p, J) the least split tokens with at most k pieces is an integer program solved
exactly by CP-SAT (its proven bound is used if a time limit ends it; a dynamic program over
subsets gives the least with any number of pieces, where the count stops); the least
``fixed(J, J_p) + per_context x tokens + per_chunk x pieces`` is minimised over J_p, J and k.
Units: tokens; costs in the caller's units.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

from ortools.sat.python import cp_model

MAX_REQUESTS = 10  # more requests: no packing (the callers fall back to bounds without it)


def packing_bound(computed: Sequence[int], O: Sequence[int], B: int, j: int,
                  fixed: Callable[[int, int], float], per_context: float, per_chunk: float,
                  time_limit_s: float = 10.0) -> Optional[float]:
    """The least terms of the prefill packing of requests with ``computed`` prompt tokens and
    ``O`` output tokens in batches of at most ``B`` tokens (module docstring). ``j``: the fewest
    batches any schedule has (J >= j); ``fixed(J, J_p)``: the per-batch terms of J batches of
    which J_p carry prefill tokens, non-decreasing in J. None for more than ``MAX_REQUESTS``
    requests. ``time_limit_s`` bounds the CP-SAT solves; once it is spent (or a solve is cut
    short), the rest are priced by the subset program's least split tokens or the solver's
    proven bound (weaker, still bounds)."""
    n = len(computed)
    if n == 0 or n > MAX_REQUESTS:
        return None
    deadline = time.perf_counter() + time_limit_s
    longest = max(O)
    bound = math.inf
    for jp in range(max(1, -(-sum(computed) // B)), n + 1):
        # from J = longest + jp - 1 on every last chunk may go anywhere, so only fixed grows
        for J in range(max(j, longest), max(j, longest + jp - 1) + 1):
            if fixed(J, jp) >= bound:
                break
            fewest = _fewest_split_tokens(computed, O, B, jp, J)
            for k in range(n * jp + 1):
                if fixed(J, jp) + per_context * fewest + per_chunk * k >= bound:
                    break  # no packing into these batches (fewest is inf), or none cheaper with >= k pieces
                left = deadline - time.perf_counter()
                if left <= 0:  # out of time: the relaxation's least tokens, priced with k pieces
                    bound = min(bound, fixed(J, jp) + per_context * fewest + per_chunk * k)
                    break
                lb = _least_split_tokens(computed, O, B, jp, J, k, left)
                if lb is None:
                    continue  # not with k pieces
                lb = max(lb, fewest)
                bound = min(bound, fixed(J, jp) + per_context * lb + per_chunk * k)
                if lb <= fewest:
                    break  # more pieces save no tokens
    # more prefill batches than requests: at least max(j, longest) batches, and splits cost >= 0
    # (the least fixed terms over J >= J0 are at J0, as fixed grows with J for every J_p <= J)
    J0 = max(j, longest)
    bound = min([bound] + [fixed(J0, jp) for jp in range(n + 1, J0 + 1)])
    return bound


def _fewest_split_tokens(computed, O, B: int, jp: int, J: int) -> float:
    """The least split tokens of a relaxation of ``_least_split_tokens`` (any number of pieces, and
    room for pieces anywhere): a batch's excess over its room is split off, the first batch has
    none, and each last chunk keeps >= 1 token; a dynamic program over subsets of the requests
    (3^n steps per batch). inf if no packing into ``jp`` batches exists."""
    n = len(computed)
    full = (1 << n) - 1
    room = B - sum(1 for o in O if o == J)
    total = [0] * (full + 1)
    excess = [0.0] * (full + 1)
    for mask in range(1, full + 1):
        low = (mask & -mask).bit_length() - 1
        total[mask] = total[mask & (mask - 1)] + computed[low]
        ex = total[mask] - room
        if ex > 0:
            keep = sum(1 for i in range(n) if mask >> i & 1)  # each last chunk keeps a token
            excess[mask] = ex if total[mask] - keep >= ex else math.inf
    allowed = [sum(1 << i for i in range(n) if J - O[i] >= b) for b in range(jp)]
    dp = [0.0 if (m & ~allowed[0]) == 0 and total[m] <= B else math.inf for m in range(full + 1)]
    for b in range(1, jp):
        nxt = dp[:]  # batch b ends no prompt
        for mask in range(1, full + 1):
            avail = mask & allowed[b]
            sub, v = avail, nxt[mask]
            while sub:
                w = dp[mask ^ sub] + excess[sub]
                if w < v:
                    v = w
                sub = (sub - 1) & avail
            nxt[mask] = v
        dp = nxt
    return dp[full]


def _least_split_tokens(computed, O, B: int, jp: int, J: int, max_pieces: Optional[int], time_limit_s: float):
    """The least split tokens (the sum of each request's tokens before its last chunk) with at most
    ``max_pieces`` pieces (None: any): CP-SAT's proven bound (the optimum unless its time limit
    cut it short), or None if there is no such packing."""
    n = len(computed)
    m = cp_model.CpModel()
    forced = sum(1 for o in O if o == J)
    x = [[m.new_bool_var(f"x{i},{b}") if J - O[i] >= b else None for b in range(jp)] for i in range(n)]
    y = [[m.new_int_var(0, computed[i] - 1, f"y{i},{e}") for e in range(jp - 1)] for i in range(n)]
    z = [[m.new_bool_var(f"z{i},{e}") for e in range(jp - 1)] for i in range(n)]
    o = [m.new_int_var(0, computed[i] - 1, f"o{i}") for i in range(n)]
    w = [[None] * jp for _ in range(n)]
    for i in range(n):
        m.add_exactly_one(v for v in x[i] if v is not None)
        m.add(sum(y[i]) == o[i])
        for e in range(jp - 1):
            later = [v for v in x[i][e + 1:] if v is not None]
            m.add(y[i][e] <= (computed[i] - 1) * z[i][e])
            m.add(z[i][e] <= sum(later)) if later else m.add(z[i][e] == 0)
        for b in range(jp):
            if x[i][b] is not None:
                w[i][b] = m.new_int_var(0, computed[i] - 1, f"w{i},{b}")
                m.add(w[i][b] == o[i]).only_enforce_if(x[i][b])
                m.add(w[i][b] == 0).only_enforce_if(~x[i][b])
    for b in range(jp):
        load = [computed[i] * x[i][b] - w[i][b] for i in range(n) if x[i][b] is not None]
        load += [y[i][b] for i in range(n) if b < jp - 1]
        m.add(sum(load) + (forced if b > 0 else 0) <= B)
    if max_pieces is not None:
        m.add(sum(v for row in z for v in row) <= max_pieces)
    m.minimize(sum(o))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = time_limit_s
    status = solver.solve(m)
    if status == cp_model.INFEASIBLE:
        return None
    if status == cp_model.OPTIMAL:
        return int(round(solver.objective_value))
    return max(0, math.ceil(solver.best_objective_bound - 1e-6))
