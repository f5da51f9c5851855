"""Batch latency inside the CP-SAT schedule model: the engine's cost models as integer constraints.

Every cost model the engine ships is encoded **exactly on the integer lattice** of batch shapes,
up to one approximation, the rounding of each coefficient to an integer number of time units
(``unit_s``, see :func:`choose_unit_s`):

* ``LinearCostModel``: linear in the shape's sums -> a linear expression.
* ``InferMaxCostModel``: linear terms plus the x``multi_factor`` for batches with more than one
  prefill (or decode) -> the same terms copied under a "more than one" literal, so still linear.
* ``CalibratedCostModel``: ``tokens(N)`` (a piecewise-linear table with log-log all-reduce) and
  ``lm_head(num_emit)`` are tabulated at every integer argument the model can reach and looked up
  with ``AddElement`` (exact at integers, which is all a batch can have); attention is a max of
  two linear terms -> ``AddMaxEquality``; decode attention and overheads are linear.

So the only model error is coefficient rounding; ``baselines.optimal`` measures the realised error
by re-timing the solved batches with the real cost model (the replay always uses the real model).
Units: seconds for the cost models, integer ``unit_s`` for CP-SAT.
"""
from __future__ import annotations

import math
from typing import Callable

from llmsched_env.cost_model import (BatchShape, CalibratedCostModel, CostModel, InferMaxCostModel,
                                     LinearCostModel)

SUPPORTED = (LinearCostModel, InferMaxCostModel, CalibratedCostModel)


class UnsupportedCostModel(TypeError):
    """The CP-SAT model has no encoding for this cost model."""


def check_supported(cost: CostModel) -> None:
    if not isinstance(cost, SUPPORTED):
        raise UnsupportedCostModel(
            f"the optimal schedule model cannot encode {type(cost).__name__}; supported cost models: "
            f"{', '.join(c.__name__ for c in SUPPORTED)} (add an encoder in baselines/optimal_cost.py)")


def coefficients_s(cost: CostModel) -> list[float]:
    """Every per-feature coefficient of the encoding, seconds (to choose the time unit)."""
    check_supported(cost)
    if isinstance(cost, LinearCostModel):
        return [cost.base_s, cost.per_token_s, cost.per_prefill_pair_s / 2, cost.per_kv_s, cost.per_seq_s]
    if isinstance(cost, InferMaxCostModel):
        s = cost.num_layers * 1e-3
        base = [cost.a_other_ms, cost.b_other_ms, cost.a_prefill_ms, cost.b_prefill_ms, cost.a_decode_ms,
                cost.b_decode_ms, cost.per_prefill_ms, cost.per_decode_ms, cost.prefill_kv_ms]
        f = cost.multi_factor - 1.0
        extra = [cost.a_prefill_ms * f, cost.b_prefill_ms * f, cost.a_decode_ms * f, cost.b_decode_ms * f]
        return [s * v for v in base + extra]
    att = cost.attention
    L = cost.num_layers
    return [cost.overhead_s, L * att._pf / 2, L * att._pb, L * max(att._df, att._db), L * att.per_seq_s,
            cost.lm_head_s(1)]


def choose_unit_s(cost: CostModel, digits: int = 2) -> float:
    """The largest power-of-ten time unit at which every nonzero coefficient is at least
    ``10**digits`` units (relative rounding error <= 0.5%), kept within [0.1 ns, 1 us].

    The floor matters: at 1 ps units, sums of batch latencies reach ~1e13 and CP-SAT's presolve
    was seen to declare a feasible model infeasible (OR-Tools 9.15). Coefficients smaller than
    10 units at 0.1 ns (e.g. the calibrated model's per-KV-token decode attention) are then
    rounded coarsely, but their terms are tiny next to a batch's latency; the realised error is
    measured on every replay."""
    coefs = [abs(c) for c in coefficients_s(cost) if c]
    smallest = min(coefs) if coefs else 1e-6
    exp = math.floor(math.log10(smallest)) - digits
    return 10.0 ** max(-10, min(-6, exp))


class Features:
    """Per-batch sums of a batch's shape, as CP-SAT expressions, built on demand.

    ``cells`` holds, for each request, the per-batch variables the cost needs: c (tokens), cp
    (prefill chunk), is_p / is_d (prefilling / decoding literal), e (emits), kb (KV before the batch).
    """

    def __init__(self, model, cells: list[dict], max_tokens: int):
        self.m = model
        self.cells = cells
        self.max_tokens = max_tokens
        self._cache: dict[str, object] = {}

    def _get(self, name: str, build: Callable):
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def n(self):
        return self._get("n", lambda: sum(c["c"] for c in self.cells))

    @property
    def n_var(self):
        def build():
            v = self.m.new_int_var(0, self.max_tokens, "N")
            self.m.add(v == self.n)
            return v
        return self._get("n_var", build)

    @property
    def num_prefills(self):
        return self._get("np", lambda: sum(c["is_p"] for c in self.cells))

    @property
    def num_decodes(self):
        return self._get("nd", lambda: sum(c["is_d"] for c in self.cells))

    @property
    def num_emit(self):
        return self._get("ne", lambda: sum(c["e"] for c in self.cells))

    @property
    def num_emit_var(self):
        def build():
            v = self.m.new_int_var(0, len(self.cells), "NE")
            self.m.add(v == self.num_emit)
            return v
        return self._get("ne_var", build)

    @property
    def prefill_tokens(self):
        return self._get("pt", lambda: sum(c["cp"] for c in self.cells))

    def _cell_product(self, cell: dict, key: str) -> object:
        """cp*cp ('c2') or cp*kb ('ck') of one request, an auxiliary variable."""
        if key not in cell:
            ub_c, ub_k = cell["cp_ub"], cell["k_ub"]
            if key == "c2":
                v = self.m.new_int_var(0, ub_c * ub_c, "c2")
                self.m.add_multiplication_equality(v, [cell["cp"], cell["cp"]])
            else:
                v = self.m.new_int_var(0, ub_c * ub_k, "ck")
                self.m.add_multiplication_equality(v, [cell["cp"], cell["kb"]])
            cell[key] = v
        return cell[key]

    def _cell_gated(self, cell: dict, lit_key: str, key: str) -> object:
        """kb if the literal holds else 0 (context of a prefill / decode)."""
        if key not in cell:
            v = self.m.new_int_var(0, cell["k_ub"], key)
            self.m.add(v == cell["kb"]).only_enforce_if(cell[lit_key])
            self.m.add(v == 0).only_enforce_if(~cell[lit_key])
            cell[key] = v
        return cell[key]

    @property
    def prefill_c2(self):
        return self._get("c2", lambda: sum(self._cell_product(c, "c2") for c in self.cells))

    @property
    def prefill_ck(self):
        return self._get("ck", lambda: sum(self._cell_product(c, "ck") for c in self.cells))

    @property
    def prefill_ctx(self):
        return self._get("ctx", lambda: sum(self._cell_gated(c, "is_p", "kbp") for c in self.cells))

    @property
    def decode_kv(self):
        return self._get("kv", lambda: sum(self._cell_gated(c, "is_d", "kbd") for c in self.cells)
                         + self.num_decodes)

    def at_least(self, expr_name: str, k: int):
        """A literal equal to (count >= k) for 'np' or 'nd'."""
        def build():
            expr = self.num_prefills if expr_name == "np" else self.num_decodes
            b = self.m.new_bool_var(f"{expr_name}>={k}")
            self.m.add(expr >= k).only_enforce_if(b)
            self.m.add(expr <= k - 1).only_enforce_if(~b)
            return b
        return self._get(f"{expr_name}>={k}", build)

    def gated(self, name: str, expr, lit, ub: int):
        """``expr`` if ``lit`` else 0, as a variable."""
        def build():
            v = self.m.new_int_var(0, ub, name)
            self.m.add(v == expr).only_enforce_if(lit)
            self.m.add(v == 0).only_enforce_if(~lit)
            return v
        return self._get("gated:" + name, build)


def latency_expr(cost: CostModel, f: Features, unit_s: float, bounds: dict):
    """Latency of a **nonempty** batch in integer units of ``unit_s``, as a CP-SAT linear expression.

    ``bounds`` gives upper bounds of the sums (tokens: ``c2``, ``ck``, ``ctx``, ``kv``).
    """
    check_supported(cost)
    q = lambda s: int(round(s / unit_s))  # noqa: E731
    m = f.m
    if isinstance(cost, LinearCostModel):
        expr = q(cost.base_s) + q(cost.per_token_s) * f.n
        if cost.per_prefill_pair_s:
            expr += q(cost.per_prefill_pair_s / 2) * (2 * f.prefill_ck + f.prefill_c2 + f.prefill_tokens)
        if cost.per_kv_s:
            expr += q(cost.per_kv_s) * f.decode_kv
        if cost.per_seq_s:
            expr += q(cost.per_seq_s) * (f.num_prefills + f.num_decodes)
        return expr
    if isinstance(cost, InferMaxCostModel):
        s = cost.num_layers * 1e-3
        fm = cost.multi_factor - 1.0
        expr = q(s * cost.a_other_ms) * f.n + q(s * cost.b_other_ms)
        any_p, any_d = f.at_least("np", 1), f.at_least("nd", 1)
        p_sum = f.prefill_c2 + 2 * f.prefill_ck
        expr += q(s * cost.a_prefill_ms) * p_sum + q(s * cost.b_prefill_ms) * any_p
        expr += q(s * cost.per_prefill_ms) * f.num_prefills + q(s * cost.prefill_kv_ms) * f.prefill_ctx
        expr += q(s * cost.a_decode_ms) * f.decode_kv + q(s * cost.b_decode_ms) * any_d
        expr += q(s * cost.per_decode_ms) * f.num_decodes
        if fm:
            multi_p, multi_d = f.at_least("np", 2), f.at_least("nd", 2)
            p_m = f.gated("p_multi", p_sum, multi_p, bounds["c2"] + 2 * bounds["ck"])
            d_m = f.gated("kv_multi", f.decode_kv, multi_d, bounds["kv"])
            expr += q(s * cost.a_prefill_ms * fm) * p_m + q(s * cost.b_prefill_ms * fm) * multi_p
            expr += q(s * cost.a_decode_ms * fm) * d_m + q(s * cost.b_decode_ms * fm) * multi_d
        return expr
    # CalibratedCostModel
    att = cost.attention
    L = cost.num_layers
    n_max = f.max_tokens
    tok_table = [q(cost.token_level_s(n)) for n in range(n_max + 1)]
    tok = m.new_int_var(min(tok_table), max(tok_table), "tokens_s")
    m.add_element(f.n_var, tok_table, tok)
    ne_max = len(f.cells)
    lm_table = [q(cost.lm_head_s(k)) for k in range(ne_max + 1)]
    lm = m.new_int_var(min(lm_table), max(lm_table), "lm_head_s")
    m.add_element(f.num_emit_var, lm_table, lm)
    pairs2 = 2 * f.prefill_ck + f.prefill_c2 + f.prefill_tokens
    kv_tok = f.prefill_ctx + f.prefill_tokens
    a_f, a_b = q(L * att._pf / 2), q(L * att._pb)
    ub = max(a_f * (2 * bounds["ck"] + bounds["c2"] + n_max), a_b * (bounds["ctx"] + n_max))
    att_p = m.new_int_var(0, ub, "attn_prefill")
    m.add_max_equality(att_p, [a_f * pairs2, a_b * kv_tok])
    expr = (q(cost.overhead_s) + tok + lm + att_p + q(L * att.per_seq_s) * (f.num_prefills + f.num_decodes)
            + q(L * max(att._df, att._db)) * f.decode_kv)
    return expr


def min_batch_latency_s(cost: CostModel, min_prompt: int) -> float:
    """A lower bound on the latency of any nonempty batch, seconds: one token, the smallest
    context (every supported cost model is non-decreasing in each shape sum)."""
    shapes = [BatchShape.from_requests(prefills=[(1, 0)]),
              BatchShape.from_requests(prefills=[(1, 0)], completed_prefills=1),
              BatchShape.from_requests(decode_contexts=[max(0, min_prompt - 1)])]
    return min(cost.batch_time(s) for s in shapes)
