"""What the agent can say: the per-slot action, its mask, its decoding into a BatchPlan (with
repairs of joint limits), and the inverse encoding of any plan into an action.

Action = ``MultiDiscrete([A] * K + [B])``: one choice per request slot, then one global choice.

Per-slot choices (A = 4 + number of chunk sizes):
  * 0 ``HOLD``    waiting: do not admit; running: pause (keep KV, process nothing this step).
  * 1 ``PREEMPT`` running only: free its KV now; it is recomputed later (engine semantics).
  * 2 ``RUN``     everything it is owed: a decode's one token, or the whole remaining prefill
    (admitting a waiting request with its full prefill).
  * 3 ``FILL``    prefilling or waiting only: as much of the remaining prefill as fits, i.e.
    min(remaining prefill, budget left, tokens whose KV fits), given after every fixed-size
    choice, in slot order. This is the "rest of the budget" chunk heuristics produce.
  * 4 + j ``CHUNK_j`` prefilling or waiting only: exactly ``chunk_sizes[j]`` tokens (allowed only
    when smaller than the remaining prefill; the whole remainder is ``RUN``).
Global choice: index into ``budget_levels``, the step's token budget in tokens (None = the
engine's ``max_num_batched_tokens``). FILL fills up to it; fixed choices beyond it are repaired.

Decoding order (``ActionDecoder.decode``), and the repair each joint limit gets, counted by name:
  1. Shape and range are checked; a malformed action raises ValueError naming the slot.
  2. A choice infeasible for its slot (masked out; e.g. PREEMPT on a waiting request, anything
     but HOLD on an empty slot) becomes HOLD: ``invalid_choice``.
  3. PREEMPT slots: their KV is freed (all of them, in slot order).
  4. RUN / CHUNK slots in slot order, each against what is left: a waiting request when the
     running set is full is dropped (``seq_limit``); tokens beyond the budget shrink a prefill to
     the budget left (``budget_shrink``) or drop it when none is left, and drop a decode
     (``budget_drop``); blocks beyond the free KV shrink a prefill to what fits (``kv_shrink``)
     or drop it / a decode (``kv_drop``).
  5. FILL slots in slot order get min(remaining prefill, budget left, KV that fits); a waiting
     one is dropped when the running set is full (``seq_limit``), one that gets nothing is
     dropped (``fill_empty``, not an error: nothing fitted).
  6. If the plan would be empty while no future arrival can change anything (the engine would
     stall), the first slot in order that can run gets FILL semantics, or, if none can (KV
     deadlock), the newest running request is preempted: ``forced_progress``.
An empty plan otherwise means "wait": the engine's clock jumps to the next arrival.

Masks (``action_mask``) exclude every choice that is infeasible on its own, whatever the other
slots choose: the KV test allows for the blocks the agent could free by preempting every other
running request, and the budget test uses the engine's largest budget.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Optional, Sequence

import numpy as np

from .plan import BatchPlan
from .request import RUNNING

HOLD, PREEMPT, RUN, FILL, CHUNK0 = 0, 1, 2, 3, 4
CHOICE_NAMES = ("hold", "preempt", "run", "fill")
REPAIRS = ("invalid_choice", "seq_limit", "budget_shrink", "budget_drop", "kv_shrink", "kv_drop",
           "fill_empty", "forced_progress")


class NotExpressible(ValueError):
    """A BatchPlan that no action can encode exactly (the message says why)."""


class ActionDecoder:
    """Action <-> BatchPlan for one engine configuration.

    Args:
        num_slots: K.
        chunk_sizes: fixed chunk choices, tokens (sorted ascending internally).
        budget_levels: token budgets (None = ``max_num_batched_tokens``), tokens.
        max_num_batched_tokens, block_size, max_num_seqs, num_kv_blocks: the engine's limits.
    """

    def __init__(self, num_slots: int, chunk_sizes: Sequence[int], budget_levels: Sequence[Optional[int]],
                 max_num_batched_tokens: int, block_size: int, max_num_seqs: int, num_kv_blocks: int):
        self.K = num_slots
        self.chunk_sizes = tuple(sorted(chunk_sizes))
        self.num_choices = CHUNK0 + len(self.chunk_sizes)
        levels = sorted({max_num_batched_tokens if b is None else min(b, max_num_batched_tokens)
                         for b in budget_levels})
        self.budget_levels = tuple(levels)
        self.max_budget = max_num_batched_tokens
        self.bs = block_size
        self.max_num_seqs = max_num_seqs
        self.num_kv_blocks = num_kv_blocks
        self.nvec = np.array([self.num_choices] * num_slots + [len(levels)], dtype=np.int64)
        self._chunk_index = {c: CHUNK0 + j for j, c in enumerate(self.chunk_sizes)}
        A = self.num_choices
        self._rows = {}
        for running in (False, True):
            for run_ok in (False, True):
                for fill_ok in (False, True):
                    for j in range(len(self.chunk_sizes) + 1):
                        row = [True, running, run_ok, fill_ok] + [c < j for c in range(A - CHUNK0)]
                        self._rows[running, run_ok, fill_ok, j] = bytes(row)
        self._empty = bytes([True] + [False] * (A - 1))
        self._glob = bytes([True] * len(levels))

    # ------------------------------------------------------------------ masks
    def action_mask(self, engine, slots: list) -> np.ndarray:
        """Flat bool mask, per-slot masks concatenated then the budget levels (sb3-contrib's
        MultiDiscrete convention)."""
        bs = self.bs
        freeable = engine.free_blocks
        for r in slots:
            if r.status == RUNNING:
                freeable += r.num_blocks  # if every other running request were preempted
        rows = self._rows
        max_budget = self.max_budget
        chunks = self.chunk_sizes
        parts = []
        for r in slots:
            k = r.num_computed
            running = r.status == RUNNING
            owed = r.prefill_target - k
            fit = freeable * bs - k  # most tokens its KV could hold (its own blocks included)
            if owed > 0:
                limit = min(owed - 1, max_budget, fit)
                j = bisect_right(chunks, limit)
                parts.append(rows[running, owed <= max_budget and owed <= fit, fit >= 1, j])
            else:
                parts.append(rows[running, fit >= 1, False, 0])
        parts.append(self._empty * (self.K - len(slots)))
        parts.append(self._glob)
        return np.frombuffer(b"".join(parts), dtype=bool).copy()

    # ----------------------------------------------------------------- decode
    def check_action(self, action) -> list:
        """Validate shape and range; return the action as a list of ints. Raises ValueError
        naming the first bad slot."""
        a = np.asarray(action)
        if a.shape != self.nvec.shape:
            raise ValueError(f"action has shape {a.shape}; expected ({self.K + 1},): one choice per "
                             f"slot (K={self.K}) plus the budget level")
        if a.dtype.kind not in "iu":
            if a.dtype.kind != "f" or not np.all(a == np.round(a)):
                raise ValueError(f"action must hold integers, got dtype {a.dtype} with values {a.tolist()}")
            a = a.astype(np.int64)
        bad = np.nonzero((a < 0) | (a >= self.nvec))[0]
        if bad.size:
            i = int(bad[0])
            where = f"slot {i}" if i < self.K else "the budget-level entry (last)"
            raise ValueError(f"action value {int(a[i])} at {where} is out of range 0..{int(self.nvec[i]) - 1}")
        return a.tolist()

    def reset(self) -> None:
        """A new workload. Nothing to forget: this decoder keeps no state (the veto decoder,
        ``llmsched_env.veto``, shares this interface and does)."""

    def decode(self, engine, slots: list, action, peek: bool = False) -> tuple[BatchPlan, dict]:
        """The BatchPlan an action means in the engine's current state, and the repairs made
        (``{repair name: count}``, only non-zero counts). See the module docstring for the order.
        ``peek`` (decode without committing to the step) changes nothing here: no state."""
        acts = self.check_action(action)
        budget = self.budget_levels[acts[-1]]
        bs = self.bs
        repairs: dict[str, int] = {}
        n = len(slots)
        for i in range(n, self.K):
            if acts[i] != HOLD:
                repairs["invalid_choice"] = repairs.get("invalid_choice", 0) + 1
        preempt = set()
        free = engine.free_blocks
        fixed = []
        fills = []
        for i in range(n):
            a = acts[i]
            if a == HOLD:
                continue
            req = slots[i]
            running = req.status == RUNNING
            owed = req.prefill_target - req.num_computed
            if a == PREEMPT:
                if running:
                    preempt.add(req.rid)
                    free += req.num_blocks
                    continue
            elif a == RUN:
                fixed.append((req, owed if owed > 0 else 1, running))
                continue
            elif owed > 0:
                if a == FILL:
                    fills.append((req, running))
                    continue
                c = self.chunk_sizes[a - CHUNK0]
                if c < owed:
                    fixed.append((req, c, running))
                    continue
            repairs["invalid_choice"] = repairs.get("invalid_choice", 0) + 1

        tokens: dict[int, int] = {}
        seqs = len(engine.running) - len(preempt)
        left = budget
        max_seqs = self.max_num_seqs
        for req, want, running in fixed:
            if not running and seqs >= max_seqs:
                repairs["seq_limit"] = repairs.get("seq_limit", 0) + 1
                continue
            k = req.num_computed
            nb = req.num_blocks
            prefilling = k < req.prefill_target
            nt = want
            if nt > left:
                if prefilling and left > 0:
                    nt = left
                    repairs["budget_shrink"] = repairs.get("budget_shrink", 0) + 1
                else:
                    repairs["budget_drop"] = repairs.get("budget_drop", 0) + 1
                    continue
            need = -(-(k + nt) // bs) - nb
            if need > free:
                fit = (nb + free) * bs - k
                if prefilling and fit >= 1:
                    nt = fit
                    need = -(-(k + nt) // bs) - nb
                    repairs["kv_shrink"] = repairs.get("kv_shrink", 0) + 1
                else:
                    repairs["kv_drop"] = repairs.get("kv_drop", 0) + 1
                    continue
            tokens[req.rid] = nt
            left -= nt
            free -= need
            if not running:
                seqs += 1
        for req, running in fills:
            if not running and seqs >= max_seqs:
                repairs["seq_limit"] = repairs.get("seq_limit", 0) + 1
                continue
            nt = self._fill(req, running, left, free, seqs)
            if nt < 1:
                repairs["fill_empty"] = repairs.get("fill_empty", 0) + 1
                continue
            tokens[req.rid] = nt
            left -= nt
            free -= -(-(req.num_computed + nt) // bs) - req.num_blocks
            if not running:
                seqs += 1
        if not tokens and engine.next_arrival_s is None and not engine.done:
            self._force_progress(engine, slots, tokens, preempt, left, free, seqs)
            repairs["forced_progress"] = repairs.get("forced_progress", 0) + 1
        return BatchPlan(tokens, preempt), repairs

    def _fill(self, req, running: bool, left: int, free: int, seqs: int) -> int:
        if not running and seqs >= self.max_num_seqs:
            return 0
        k = req.num_computed
        fit = (req.num_blocks + free) * self.bs - k
        return min(req.prefill_target - k, left, fit)

    def _force_progress(self, engine, slots, tokens, preempt, left, free, seqs) -> None:
        for req in slots:
            if req.rid in preempt:
                continue
            running = req.status == RUNNING
            if req.num_computed < req.prefill_target:
                nt = self._fill(req, running, left, free, seqs)
            else:
                nt = 1 if -(-(req.num_computed + 1) // self.bs) - req.num_blocks <= free else 0
            if nt >= 1:
                tokens[req.rid] = nt
                return
        if engine.running and not preempt:
            preempt.add(next(reversed(engine.running)))

    # ----------------------------------------------------------------- encode
    def encode(self, engine, slots: list, plan: BatchPlan) -> np.ndarray:
        """The action whose decoding is exactly ``plan`` (the inverse of ``decode``), for
        expressiveness checks and imitation. Raises NotExpressible with the reason."""
        index = {r.rid: i for i, r in enumerate(slots)}
        acts = np.zeros(self.K + 1, dtype=np.int64)
        missing = [rid for rid in list(plan.tokens) + list(plan.preempt) if rid not in index]
        if missing:
            raise NotExpressible(f"requests {sorted(missing)} of the plan are not in any of the K="
                                 f"{self.K} slots")
        bs = self.bs
        free = engine.free_blocks
        for rid in plan.preempt:
            acts[index[rid]] = PREEMPT
            free += slots[index[rid]].num_blocks
        odd = []
        fixed_total = 0
        for rid, nt in plan.tokens.items():
            req = slots[index[rid]]
            owed = req.prefill_target - req.num_computed
            if nt == (owed if owed > 0 else 1):
                acts[index[rid]] = RUN
            elif nt in self._chunk_index and nt < owed:
                acts[index[rid]] = self._chunk_index[nt]
            else:
                odd.append((index[rid], req, nt))
                continue
            fixed_total += nt
            free -= -(-(req.num_computed + nt) // bs) - req.num_blocks
        if len(odd) > 1:
            raise NotExpressible(
                f"{len(odd)} chunks are neither a whole remainder nor in chunk_sizes {self.chunk_sizes} "
                f"(slot, rid, tokens: {[(i, r.rid, t) for i, r, t in odd]}); only one FILL chunk per "
                "step is exactly expressible")
        if not odd:
            acts[-1] = len(self.budget_levels) - 1
            return acts
        i, req, nt = odd[0]
        acts[i] = FILL
        k = req.num_computed
        fit = (req.num_blocks + free) * bs - k
        for j, level in enumerate(self.budget_levels):
            if level >= fixed_total and min(req.prefill_target - k, level - fixed_total, fit) == nt:
                acts[-1] = j
                return acts
        raise NotExpressible(
            f"request {req.rid} (slot {i}) gets a chunk of {nt} tokens, which is neither its whole "
            f"remainder ({req.prefill_target - k}), a chunk size {self.chunk_sizes}, what fits in KV "
            f"({fit}), nor the rest of a budget level {self.budget_levels} after {fixed_total} other "
            "tokens")

    def widen_fills(self, engine, slots: list, action) -> np.ndarray:
        """``action`` with FILL instead of HOLD on every waiting slot when that decodes to the same
        plan (each would get nothing: no budget, free KV or seat is left after the others), else
        ``action`` unchanged. Waiting FILLs all see the same budget and free KV, so either every
        one of them gets nothing or the first does: all or none is the whole choice."""
        acts = np.array(action, dtype=np.int64)
        waiting = [i for i, r in enumerate(slots) if acts[i] == HOLD and r.status != RUNNING]
        if not waiting:
            return acts
        wide = acts.copy()
        wide[waiting] = FILL
        before, _ = self.decode(engine, slots, acts)
        after, _ = self.decode(engine, slots, wide)
        if after.tokens == before.tokens and after.preempt == before.preempt:
            return wide
        return acts

    def describe(self) -> list[str]:
        return list(CHOICE_NAMES) + [f"chunk{c}" for c in self.chunk_sizes]
