"""Relaxation bounds at any scale: a proven lower bound on GPU-seconds and a proven upper bound on
the requests that can meet their SLO (hence on the env's return), for workloads far too large for
the CP-SAT schedule (``baselines.optimal``), e.g. the default scenario's 100-request episodes.

Both bounds hold for **every** schedule the engine accepts (with or without preemption, any
chunking, prefix caching on or off: with it on, a request of a ``prefix_group`` may find up to
its shared prefix in whole blocks, at most P - 1 tokens, cached, and the bounds count only the
prompt tokens after that, ``computed_prompt``), so no scheduler (heuristic, learned, or the CP-SAT optimum)
can beat them; ``tests/test_bound.py`` checks that on every registered heuristic and against the
exact optimum of small instances.

GPU time (seconds x GPUs)
-------------------------
Facts every schedule obeys (P prompt, O output length of request i, B the token budget, K the KV
capacity in blocks of ``bs`` tokens):

1. Every KV token is computed at least once: positions 0..P+O-2 of each request (the prompt and
   every generated token but the last), so the batches process at least T = sum(P + O - 1)
   tokens. A batch processes at most B.
2. A batch emits at most one token per request, and emitting token g (1-based) leaves the request
   holding P + g - 1 tokens of KV after the batch, when the engine checks capacity. So a batch's
   emitters satisfy sum ceil((P + g - 1) / bs) <= K and their count <= max_num_seqs; with at
   least max O batches (one request's tokens) this gives a least number of emitting batches
   J_lo = max(max O, ceil(sum_i sum_g ceil((P+g-1)/bs) / K), ceil(sum O / max_num_seqs)).
3. Batch latency splits into a part that depends only on the batch's token count N, f(N), and
   parts that add up over tokens or emissions (every supported cost model is a sum of
   non-negative terms, each non-decreasing in its shape sum):
   * f(N): the calibrated model's overhead + token-level layers(N); InferMax's a_o N + b_o plus
     its prefill/decode fixed terms, bounded by batch kind (a nonempty batch has a prefill or a
     decode, and at least ceil(sum P / B) batches carry prefill tokens), and on at most 10
     requests by the order of the prefill batches and the prompts split to fill them
     (``baselines.prefill_packing``); Linear's base + per_token N.
   * attention, per computed token at position p: a prefill computes it with p + 1 attention
     pairs (InferMax's c^2 + 2ck counts 2p + 1), a decode with p + 1 KV tokens; prompt tokens
     are always prefilled, generated tokens are decoded (or, with preemption, possibly emitted by
     a recompute, which prefills those p + 1 tokens again: beyond T, so each costs at least the
     first slope of f's convex envelope plus its attention; the cheaper of the two is used);
   * per emission: the per-sequence term (a participation), and an LM-head pass per emitting
     batch (at least J_lo of them).
   With f_hat the lower convex envelope of f on [1, B] (non-decreasing, since f is), Jensen gives
   sum_j f(N_j) >= J f_hat(T / J) for J batches, so
       GPU_lb = g x [ min_{J_lo <= J <= T} J f_hat(T/J) + attention + per emission ]
   with g = GPUs per replica.
4. Tokens cannot always be spread that evenly: with J batches, request i's first token comes by
   batch J - O_i (its other O_i - 1 come in distinct later batches), after all of its prompt, so
   the batches' cumulative tokens have lower bounds; the least sum of f_hat(N_j) under them (a
   taut string, :func:`deadline_tokens_s`) replaces Jensen's where it is higher. It matters where
   long outputs meet long prompts (6 arXiv requests: +6% over Jensen) and hardly at all on
   episodes, where J_lo (the KV cache) is far above max O.

SLO attainment (requests)
-------------------------
A request meets its SLO only if its first token comes within its TTFT target: all of its P prompt
tokens are processed by batches that start after its arrival a and end by a + TTFT. A batch of N
tokens lasts at least f(N) >= beta N seconds, beta = min_N f(N) / N, and batches run one at a time.
So for any window [s, e], the requests whose whole interval [a, a + TTFT] lies inside it need
beta x (sum of their P) <= e - s if they all meet their TTFT. Requests that cannot meet their SLO
even alone (TTFT below the time to prefill P tokens, or a TBT target below the fastest possible
decode step while they have more than 1% of gaps) are excluded outright. The most requests that
can meet their SLO is then at most the optimum of the 0/1 program
    max sum x_i  s.t.  for each window [a_k, a_l + TTFT_l]: sum_{i inside} beta P_i x_i <= length,
solved with HiGHS (its proven dual bound is used if the time limit stops it; the LP relaxation is
a fallback). The return (SLO met - lambda x GPU-s) is then at most that minus lambda x GPU_lb.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from llmsched_env.cost_model import BatchShape, CalibratedCostModel, CostModel, InferMaxCostModel, LinearCostModel
from llmsched_env.engine import EngineConfig
from llmsched_env.request import RequestSpec

from .prefill_packing import packing_bound


class UnsupportedBound(TypeError):
    """No relaxation is written for this cost model."""


def _coefs(cost: CostModel) -> dict:
    """Per-part coefficients (seconds): f(N) is ``f0 + token_s(N)``; attention per (p + 1) of a
    prompt token (``att_prompt``), of a generated token decoded (``att_decode``) or recomputed by a
    prefill (``att_recompute``); ``per_emit`` per participation; ``lm`` per emitting batch."""
    if isinstance(cost, CalibratedCostModel):
        att, L = cost.attention, cost.num_layers
        return dict(token_s=lambda n: cost.overhead_s + cost.token_level_s(n), att_prompt=L * att._pf,
                    att_decode=L * max(att._df, att._db), att_recompute=L * att._pf, per_emit=L * att.per_seq_s,
                    lm=cost.lm_head_s(1))
    if isinstance(cost, InferMaxCostModel):
        s = cost.num_layers * 1e-3
        fixed = min(cost.b_prefill_ms, cost.b_decode_ms)
        return dict(token_s=lambda n: s * (cost.a_other_ms * n + cost.b_other_ms + fixed), att_prompt=s * cost.a_prefill_ms,
                    att_decode=s * cost.a_decode_ms, att_recompute=s * cost.a_prefill_ms,
                    per_emit=s * min(cost.per_prefill_ms, cost.per_decode_ms), lm=0.0, prompt_weight="2p+1")
    if isinstance(cost, LinearCostModel):
        return dict(token_s=lambda n: cost.base_s + cost.per_token_s * n, att_prompt=cost.per_prefill_pair_s,
                    att_decode=cost.per_kv_s, att_recompute=cost.per_prefill_pair_s, per_emit=cost.per_seq_s, lm=0.0)
    raise UnsupportedBound(f"no relaxation bound for {type(cost).__name__}; supported: CalibratedCostModel, "
                           "InferMaxCostModel, LinearCostModel (add one in baselines/bound.py)")


def lower_convex_envelope(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, y) of the lower convex envelope of points (1, y[0]), (2, y[1]), ... ."""
    hull: list[tuple[float, float]] = []
    for x, v in enumerate(y, start=1):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (x - x1) >= (v - y1) * (x2 - x1):  # middle point on or above the chord
                hull.pop()
            else:
                break
        hull.append((float(x), float(v)))
    xs, ys = zip(*hull)
    return np.array(xs), np.array(ys)


def token_cost_envelope(cost: CostModel, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots (tokens, seconds) of the lower convex envelope of f(N), the part of a batch's
    latency that depends only on its token count, for N = 1..B."""
    token_s = _coefs(cost)["token_s"]
    return lower_convex_envelope(np.array([token_s(n) for n in range(1, B + 1)]))


def least_concave_majorant(points: Sequence[tuple]) -> list[tuple]:
    """The vertices of the least concave majorant of ``points`` (x ascending, distinct): the
    taut string over lower bounds at those x."""
    hull: list[tuple] = []
    for x, y in points:
        while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (x - hull[-2][0])
                                  <= (y - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
            hull.pop()
        hull.append((x, y))
    return hull


@dataclass
class GpuBound:
    """A proven lower bound on GPU busy seconds x GPUs (see the module docstring).

    Attributes:
        value: the bound, GPU-seconds.
        batches_lb: J_lo, least number of emitting batches; ``batches`` the J of the minimum.
        tokens_lb: T, least tokens processed.
        parts: the bound's terms, GPU-seconds.
    """

    value: float
    batches_lb: int
    batches: int
    tokens_lb: int
    parts: dict = field(default_factory=dict)


def computed_prompt(spec: RequestSpec, config: EngineConfig) -> int:
    """The fewest prompt tokens a schedule computes for ``spec``: its prompt, less the most the
    prefix cache can hold for it (with prefix caching on, its shared prefix in whole blocks, at
    most P - 1 tokens, as the engine's cache hit)."""
    if not config.prefix_caching or spec.prefix_group is None:
        return spec.prompt_len
    bs = config.block_size
    return spec.prompt_len - (min(spec.prefix_len, spec.prompt_len - 1) // bs) * bs


def gpu_time_lower_bound(specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel,
                         preemption: bool = True, time_limit_s: float = 10.0) -> GpuBound:
    """The relaxation's lower bound on the GPU-seconds of serving ``specs`` (every request).
    ``time_limit_s`` bounds InferMax's prefill packing (a weaker bound once it is spent)."""
    c = _coefs(cost)
    P = np.array([s.prompt_len for s in specs], dtype=np.int64)
    O = np.array([s.output_len for s in specs], dtype=np.int64)
    H = P - np.array([computed_prompt(s, config) for s in specs], dtype=np.int64)  # cache hits
    T = int(np.sum(P + O - 1 - H))
    bs, K = config.block_size, config.num_kv_blocks
    area = 0
    for p, o in zip(P.tolist(), O.tolist()):
        g = np.arange(1, o + 1)
        area += int(np.sum(-(-(p + g - 1) // bs)))
    j_lo = max(int(O.max()), -(-area // K), -(-int(O.sum()) // config.max_num_seqs))
    B = max(1, min(config.max_num_batched_tokens, T))
    hx, hy = token_cost_envelope(cost, B)
    J = np.arange(j_lo, max(j_lo, T) + 1, dtype=np.float64)
    J = J[T / J <= B] if np.any(T / J <= B) else J[-1:]
    tok = J * np.interp(T / J, hx, hy)
    k = int(np.argmin(tok))
    tokens, batches = float(tok[k]), int(J[k])
    dl, dl_batches = deadline_tokens_s(P - H, O, j_lo, hx, hy)
    if dl > tokens:
        tokens, batches = dl, dl_batches
    # attention: prompt positions H..P-1, generated positions P..P+O-2 (weights p + 1; InferMax's
    # prefill counts 2p + 1 per prompt token, i.e. P^2 - H^2 per prompt)
    if c.get("prompt_weight") == "2p+1":
        prompt = float(np.sum(P.astype(float) ** 2 - H.astype(float) ** 2))
    else:
        prompt = float(np.sum(P * (P + 1) / 2 - H * (H + 1) / 2))
    gen = float(np.sum((O - 1) * P + (O - 1) * O / 2))  # sum over p = P..P+O-2 of (p + 1)
    slope = float((hy[1] - hy[0]) / (hx[1] - hx[0])) if len(hx) > 1 else 0.0
    # a generated token at position p is decoded, or emitted by a recompute that prefills p + 1
    # tokens more than T, each at least the envelope's first slope (convexity) plus its attention
    gen_coef = min(c["att_decode"], c["att_recompute"] + slope) if preemption else c["att_decode"]
    parts = {"tokens": tokens, "attention_prompt": c["att_prompt"] * prompt,
             "attention_generated": gen_coef * gen, "per_emission": c["per_emit"] * float(O.sum()),
             "lm_head": c["lm"] * j_lo}
    if isinstance(cost, InferMaxCostModel):  # linear in N: its fixed terms bounded by batch kind instead
        tokens, per_emission, batches = _infermax_fixed_terms(cost, P, P - H, O, T, j_lo, B, preemption,
                                                               config.prefix_caching, time_limit_s)
        parts.update(tokens=tokens, per_emission=per_emission)
    g = config.num_gpus
    parts = {key: v * g for key, v in parts.items()}
    return GpuBound(sum(parts.values()), j_lo, batches, T, parts)


DEADLINE_MAX_BATCH_COUNTS = 2000  # batch counts J tried one by one; beyond, the Jensen bound


def deadline_tokens_s(computed: np.ndarray, O: np.ndarray, j_lo: int, hx: np.ndarray, hy: np.ndarray
                      ) -> tuple[float, int]:
    """The least sum over batches of f_hat(N_j) (``hx``, ``hy``: the knots of f's lower convex
    envelope) of any schedule, seconds, with its batch count, from each request's deadlines.

    With J nonempty batches, request i emits its O_i tokens in O_i distinct batches (at most
    one per batch), the first in a batch b_i <= J - O_i, and only once it has computed its P'
    prompt tokens (a pass cut short by a preemption only adds tokens); each later emission
    processes at least one of its tokens (a decode, or a recompute's last chunk). So by batch
    t >= J - O_i it has had at least P' + t - (J - O_i) tokens: the batches' cumulative tokens
    S_t >= D_t, the sum of those, and S_{J-1} >= T. For every convex g the least sum of g(N_j)
    under such lower bounds is reached by the taut string, here the least concave majorant of
    the points (t, D_t) from (-1, 0) (it ends at (J - 1, T)); g is f_hat extended convexly (flat
    below 1 token, its last slope beyond the budget), which is <= f at every batch's N >= 1.
    Minimised over J >= J_lo while J f_hat(T / J) (Jensen's bound for J batches, convex in J)
    can still be lower, and at most ``DEADLINE_MAX_BATCH_COUNTS`` values of J (beyond, Jensen's
    bound stands in)."""
    last = (hy[-1] - hy[-2]) / (hx[-1] - hx[-2]) if len(hx) > 1 else 0.0

    def g(x: np.ndarray) -> np.ndarray:
        x = np.maximum(x, hx[0])
        return np.interp(x, hx, hy) + np.maximum(x - hx[-1], 0.0) * last

    T = int(np.sum(computed + O - 1))
    jensen = lambda J: J * float(g(np.array([T / J]))[0])  # noqa: E731
    order = np.argsort(O)[::-1]
    P_, O_ = computed[order].astype(np.float64), O[order].astype(np.int64)
    best, best_J = math.inf, j_lo
    for J in range(j_lo, j_lo + DEADLINE_MAX_BATCH_COUNTS):
        if J > T:
            break
        jv = jensen(J)
        if jv >= best and jv >= jensen(J - 1):
            return best, best_J  # Jensen's bound only grows from here
        start = J - O_  # ascending: the first batch each request can emit in
        # D at each start and just before the next (linear in between): the majorant's candidates
        xs = np.concatenate([[-1.0], start, start[1:] - 1, [J - 1.0]])
        D = lambda t: float(np.sum(np.where(t >= start, P_ + (t - start), 0.0)))  # noqa: E731
        hull = least_concave_majorant(sorted({(float(x), D(x)) for x in xs if x >= -1}))
        hxs, hys = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
        width = np.diff(hxs)
        v = float(np.sum(width * g(np.diff(hys) / width)))
        if v < best:
            best, best_J = v, J
    tail = [jensen(J) for J in range(j_lo + DEADLINE_MAX_BATCH_COUNTS, T + 1)][:1]
    if tail and tail[0] < best:  # J beyond the search: Jensen's bound (convex in J, so its least there)
        best = min(best, min(jensen(J) for J in range(j_lo + DEADLINE_MAX_BATCH_COUNTS, T + 1)))
    return best, best_J


def _infermax_fixed_terms(cost: InferMaxCostModel, prompt: np.ndarray, computed: np.ndarray, O: np.ndarray,
                          T: int, j_lo: int, B: int, preemption: bool, prefix_caching: bool,
                          time_limit_s: float) -> tuple[float, float, int]:
    """InferMax's per-batch and per-participation terms, bounded batch by batch kind, seconds:
    (token, fixed and prompt-split terms, per-participation terms, batches J).

    Every nonempty batch pays ``b_other`` and has a prefill (paying ``b_prefill``) or a decode
    (``b_decode``), or both: with J_p batches carrying prefill tokens and J_d carrying decodes,
    J_p + J_d >= J, J_p >= ceil(sum P' / B) (P' the prompt tokens a request must compute), and
    J_d >= max O - 1, the longest request's decodes, each in its own batch. With preemption a
    recompute could emit one of those tokens instead; that bound is kept only when no recompute
    can pay for itself: prefilling its tokens again (all P' without prefix caching, at least 1
    with it) costs more than the most it can save, one decode's attention at the longest context,
    its per-decode term and a decode batch's ``b_decode``. The cheapest (J_p, J_d) is a vertex of
    that 2-variable LP; the total grows with J, so J = J_lo. A schedule that never preempts also
    pays the least terms of its prefill packing (``baselines.prefill_packing``: the order of its
    prefill batches and the prompts they split) and the multi-decode surcharge
    (:func:`_multi_decode_ms`, and :func:`_multi_prefill_ms` where the packing is priced); one that preempts after a request's first token re-prefills at
    least as many tokens beyond T as above, so the bound is the lesser of the two. Participations: each request has at least one prefill chunk, and
    every other emission is a decode or a recompute's prefill chunk. ``multi_factor >= 1`` only
    multiplies non-negative terms, so it is left at 1."""
    s = cost.num_layers * 1e-3
    j = max(j_lo, -(-T // B))
    j_p = max(1, -(-int(computed.sum()) // B))
    again = np.ones_like(computed) if prefix_caching else computed  # fewest tokens a recompute prefills
    recompute = (cost.a_other_ms + cost.a_prefill_ms) * again + cost.per_prefill_ms
    saving = cost.a_decode_ms * (computed + O) + cost.per_decode_ms + cost.b_decode_ms
    d_lo = int(O.max()) - 1 if not preemption or bool(np.all(recompute >= saving)) else 0

    def fixed(J: int, jp: int) -> float:
        return cost.b_other_ms * J + cost.b_prefill_ms * jp + cost.b_decode_ms * max(d_lo, J - jp)

    loose = min(fixed(j, jp) for jp in (j_p, max(j_p, j - d_lo)))
    surcharge = _multi_decode_ms(cost, prompt, O, j)
    prefills = _multi_prefill_ms(cost, prompt, computed, B)

    def fixed_np(J: int, jp: int) -> float:  # a schedule that never preempts after a first token
        return fixed(J, jp) + surcharge(J)

    packing = packing_bound(computed.tolist(), O.tolist(), B, j, lambda J, jp: fixed_np(J, jp) + prefills(jp),
                            cost.prefill_kv_ms, cost.per_prefill_ms, time_limit_s)
    packed = min(fixed_np(j, jp) for jp in (j_p, max(j_p, j - d_lo))) if packing is None else packing
    if preemption:
        packed = min(packed, loose + cost.a_other_ms * float(again.min()))
    tokens = float(s * (cost.a_other_ms * T + max(loose, packed)))
    per = s * (cost.per_prefill_ms * len(O) + min(cost.per_prefill_ms, cost.per_decode_ms) * float((O - 1).sum()))
    return tokens, per, j


def _multi_prefill_ms(cost: InferMaxCostModel, prompt: np.ndarray, computed: np.ndarray, B: int):
    """J_p -> the least ``(multi_factor - 1) x (a_prefill x (c^2 + 2ck) + b_prefill)`` that
    batches with more than one prefill chunk pay when J_p batches carry prefill tokens, ms per
    layer (for ``packing_bound``, which tries each J_p).

    Each request's prefill pass has chunks whose c^2 + 2ck add up to P^2 - H^2 (H cached tokens;
    passes cut short by a preemption only add chunks). Of the J_p batches, s hold one chunk each
    and J_p - s hold several: the lone chunks belong to at most s requests, so at most the s
    largest attentions escape the factor; they hold at most the s largest B-token cuts of the
    prompts, the others at most B each; s = J_p needs n <= J_p requests. Minimised over the s
    that fit."""
    f = cost.multi_factor - 1.0
    n = len(prompt)
    if f <= 0 or n < 2:
        return lambda jp: 0.0
    att = np.sort((prompt.astype(np.float64) ** 2 - (prompt - computed).astype(np.float64) ** 2))[::-1]
    top_att = np.concatenate([[0.0], np.cumsum(att)])
    total_att, total_tok = float(att.sum()), int(computed.sum())
    # the most tokens k lone chunks can hold: the k largest of each prompt cut into B-token chunks
    cuts = sorted((min(B, int(c) - q * B) for c in computed.tolist() for q in range(-(-int(c) // B))), reverse=True)
    top_tok = np.concatenate([[0], np.cumsum(cuts[:n])])

    def least(jp: int) -> float:
        if jp >= n:
            return 0.0
        vals = [f * (cost.b_prefill_ms * (jp - k) + cost.a_prefill_ms * (total_att - top_att[k]))
                for k in range(0, jp) if total_tok - top_tok[min(k, len(top_tok) - 1)] <= (jp - k) * B]
        return float(min(vals)) if vals else 0.0

    return least


MULTI_DECODE_MAX_BATCH_COUNTS = 2000  # batch counts priced one by one; beyond, no surcharge


def _multi_decode_ms(cost: InferMaxCostModel, prompt: np.ndarray, O: np.ndarray, j: int):
    """J -> the least ``(multi_factor - 1) x (a_decode x KV + b_decode)`` that batches with more
    than one decode pay in a schedule of J batches whose decodes are all its emissions after
    the first (no preemption after a first token), ms per layer.

    The first batch has no decode, so at most J - 1 batches decode; with D = sum(O - 1) decodes
    among n >= 2 decoding requests, at most J - 1 - M of them are alone in a batch when M
    batches have several, so M >= (D - (J - 1)) / (n - 1), and M >= O_2 - 1 - (J - O_1) (the
    longest request decodes in all but J - O_1 of those batches, the second longest in O_2 - 1);
    at least D - (J - 1 - M) decodes, the ones with the least KV at best (P + g for a request's
    g-th decode), pay the surcharge, and at least all KV but what the lone decodes hold (the
    longest request's largest, and at most J - O_1 others').
    Made to fall by at most ``b_other`` per batch more (so that the per-batch terms plus it grow
    with J, as ``packing_bound`` needs): a smaller value, so still a bound."""
    f = cost.multi_factor - 1.0
    dec = O - 1
    n, D = int(np.sum(dec > 0)), int(dec.sum())
    if f <= 0 or n < 2 or D <= j - 1:
        return lambda J: 0.0
    kv = np.sort(np.concatenate([p + np.arange(1, d + 1) for p, d in zip(prompt.tolist(), dec.tolist()) if d > 0]))
    least = np.concatenate([[0.0], np.cumsum(kv, dtype=np.float64)])
    top = min(D + 1, j + MULTI_DECODE_MAX_BATCH_COUNTS)
    Js = np.arange(j, top + 1)
    o1, o2 = np.sort(O)[::-1][:2].tolist()
    # the longest request skips at most J - O_1 of the J - 1 batches after the first, and the
    # second longest decodes in O_2 - 1 of them
    M = np.maximum(np.maximum(0, -(-(D - (Js - 1)) // (n - 1))), o2 - 1 - (Js - o1))
    multi = np.clip(D - (Js - 1 - M), 0, D)
    # the KV of those decodes: at least the least KVs, and at least all KV but what the lone
    # decodes can hold: the longest request's, and at most J - O_1 others' (where it skips)
    L = int(np.argmax(O))
    kv_of = lambda i: prompt[i] + np.arange(1, dec[i] + 1, dtype=np.float64)  # noqa: E731
    own = np.concatenate([[0.0], np.cumsum(kv_of(L)[::-1])])
    rest = np.sort(np.concatenate([kv_of(i) for i in range(len(O)) if i != L and dec[i] > 0] or [np.zeros(0)]))[::-1]
    other = np.concatenate([[0.0], np.cumsum(rest)])
    total = least[-1]
    alone_kv = np.empty(len(Js))
    for k, (J, m) in enumerate(zip(Js.tolist(), M.tolist())):
        alone = max(0, min(J - 1 - m, D))
        a = np.arange(0, min(alone, J - o1, len(rest)) + 1)
        alone_kv[k] = np.max(other[a] + own[np.minimum(alone - a, len(own) - 1)])
    multi_kv = np.maximum(least[multi], total - alone_kv)
    value = np.where(M > 0, f * (cost.b_decode_ms * M + cost.a_decode_ms * multi_kv), 0.0)
    value[-1] = 0.0
    for k in range(len(value) - 2, -1, -1):
        value[k] = min(value[k], value[k + 1] + cost.b_other_ms)
    return lambda J: float(value[J - j]) if J <= top else 0.0


def per_token_rate_s(cost: CostModel, config: EngineConfig) -> float:
    """beta: the least seconds per token of any batch, min over N of f(N) / N (token budget B)."""
    c = _coefs(cost)
    n = np.arange(1, config.max_num_batched_tokens + 1)
    return float(min(c["token_s"](int(k)) / k for k in n))


def min_step_s(cost: CostModel, prompt_len: int) -> float:
    """Fastest possible step that emits a request's second or later token, seconds: a decode at
    context >= P, or (after a preemption) a one-token prefill chunk at context >= P that completes."""
    return min(cost.batch_time(BatchShape.from_requests(decode_contexts=[prompt_len])),
               cost.batch_time(BatchShape.from_requests(prefills=[(1, prompt_len)], completed_prefills=1)))


@dataclass
class SloBound:
    """A proven upper bound on the number of requests meeting their SLO.

    Attributes:
        value: the bound (requests).
        excluded: requests that cannot meet their SLO even alone.
        status: HiGHS's model status; ``exact`` True when the 0/1 program was solved to
            optimality (else its dual bound, rounded down, is used).
        windows: constraints of the program.
    """

    value: int
    excluded: int
    status: str
    exact: bool
    windows: int
    solve_s: float


def slo_upper_bound(specs: Sequence[RequestSpec], config: EngineConfig, cost: CostModel,
                    time_limit_s: float = 20.0) -> SloBound:
    """The relaxation's upper bound on how many of ``specs`` can meet their SLO."""
    import highspy

    t0 = time.perf_counter()
    beta = per_token_rate_s(cost, config)
    c = _coefs(cost)
    B = config.max_num_batched_tokens
    cand, excluded = [], 0
    for s in specs:
        # fastest possible first token: ceil(P' / B) batches, each at least f(its tokens), with P'
        # the prompt tokens it must compute
        todo = computed_prompt(s, config)
        chunks = -(-todo // B)
        first = (chunks - 1) * c["token_s"](B) + c["token_s"](todo - (chunks - 1) * B)
        gaps = s.output_len - 1
        slow_tbt = gaps >= 1 and math.isfinite(s.tbt_slo_s) and min_step_s(cost, s.prompt_len) > s.tbt_slo_s
        # numpy's P99 of the gaps exceeds the target when more than 1% of them do; with every gap
        # over it (each step is slower than the target) it always does
        if (math.isfinite(s.ttft_slo_s) and first > s.ttft_slo_s + 1e-12) or slow_tbt:
            excluded += 1
            continue
        cand.append(s)
    if not cand:
        return SloBound(0, excluded, "trivial", True, 0, time.perf_counter() - t0)
    finite = [s for s in cand if math.isfinite(s.ttft_slo_s)]
    starts = sorted({s.arrival_s for s in finite})
    ends = sorted({s.arrival_s + s.ttft_slo_s for s in finite})
    rows = []
    arr = np.array([s.arrival_s for s in finite])
    dl = np.array([s.arrival_s + s.ttft_slo_s for s in finite])
    work = np.array([beta * computed_prompt(s, config) for s in finite])
    for a in starts:
        for e in ends:
            if e <= a:
                continue
            inside = np.nonzero((arr >= a) & (dl <= e))[0]
            if len(inside) and work[inside].sum() > e - a + 1e-12:
                rows.append((inside, e - a))
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(max(1.0, time_limit_s)))
    h.setOptionValue("mip_rel_gap", 0.0)
    n = len(finite)
    inf = highspy.kHighsInf
    h.addVars(n, np.zeros(n), np.ones(n))
    h.changeColsCost(n, np.arange(n, dtype=np.int32), -np.ones(n))
    h.changeColsIntegrality(n, np.arange(n, dtype=np.int32), np.array([highspy.HighsVarType.kInteger] * n))
    for idx, length in rows:
        h.addRow(-inf, length, len(idx), idx.astype(np.int32), work[idx])
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    exact = h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    dual = -info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else float(n)
    value = int(math.floor(dual + 1e-6))
    return SloBound(min(n, value) + (len(cand) - n), excluded, status, exact, len(rows), time.perf_counter() - t0)
