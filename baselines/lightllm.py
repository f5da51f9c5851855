"""LightLLM's router (continuous batching without chunked prefill): admission by the predicted
peak KV of the whole batch, prefill-only batches between runs of decode steps.

Source: ModelTC/lightllm. Code read: ``lightllm/server/router/req_queue/continues_batch/impl.py``
(``ContinuesBatchQueue._can_add_new_req``, ``generate_new_batch``), ``req_queue/base_queue.py``
(``is_busy``, ``back_to_wait_list``), ``lightllm/server/core/objs/req.py`` (``NormalReq.
get_tuple_tokens``, ``get_first_router_need_tokens``), ``router/manager.py`` (``_step``: the
``has_wait_tokens`` / ``max_wait_tokens`` loop, ``_can_decode``, pausing), ``router/
pause_strategy.py`` (``Fcfs``) and the API server's defaults (``router_token_ratio`` 0.0,
``router_max_new_token_len`` 1024, ``router_max_wait_tokens`` 10). It reads each request's
``max_tokens`` (LightLLM's ``max_new_tokens``), never its true output length.

Rules, per step:

* Each request is a pair (tokens it holds, tokens it may still add): running (prompt +
  generated, max_new - generated - 1); waiting (prompt + 1, max_new - 2); paused (prompt +
  generated + 1, max_new - generated - 2), none below 0, with max_new = ``max_tokens`` while the
  server is busy (KV use >= ``router_token_ratio``: always, at the default 0), else min(max_tokens,
  max(1.1 x generated, ``router_max_new_token_len``)). Sorted by what they may still add, most
  first, the predicted peak KV is max over k of (the k-th's remaining x k + the first k's held).
* Admission (``generate_new_batch``): unless the running and paused requests fill
  ``max_num_seqs``, waiting requests in queue order (paused first, most recent first, then
  arrivals) join while the peak with them stays below the KV capacity (tokens), the sequence cap
  allows and their whole prompts (prompt + generated for a paused one) fit the step's token
  budget; the first that fails stops admission. The admitted requests form a prefill-only batch.
* Loop (``_step``): with nothing running, a prefill batch when anything is admitted. Otherwise,
  once ``max_wait_tokens`` decode steps have run since the last admission attempt, admission is
  tried (and the count restarts); an admitted batch runs alone. Else every running request
  decodes one token if the free KV holds their next tokens; if not, the running request that
  arrived last is paused (preempted, its KV freed and recomputed later) and nothing runs.
* Block rounding (LightLLM's KV is token-granular): admission also needs the prompts' blocks to be
  free; a shortage left by rounding is what pausing resolves. Decision: with nothing running, the
  first waiting request is admitted if its prompt fits the cache even when the predicted peak
  does not (so it is not blocked forever). A prompt longer than the token budget raises
  ``PromptExceedsBudget`` (LightLLM requires ``batch_max_tokens`` >= the longest request).
"""
from __future__ import annotations

import numpy as np

from llmsched_env.plan import BatchPlan
from llmsched_env.request import RUNNING, WAITING
from llmsched_env.scheduler import register

from .plan_builder import whole_prompt


@register("lightllm")
class LightLLMScheduler:
    """LightLLM's continuous-batching router (see the module docstring).

    Args:
        max_wait_tokens: decode steps between admission attempts while requests run (10).
        router_token_ratio: KV use from which the server counts as busy (0.0: always).
        router_max_new_token_len: max_new estimate floor when not busy, tokens (1024).
        token_budget: prefill tokens per batch (LightLLM's ``batch_max_tokens``), tokens (None =
            the engine's ``max_num_batched_tokens``).
    """

    def __init__(self, max_wait_tokens: int = 10, router_token_ratio: float = 0.0,
                 router_max_new_token_len: int = 1024, token_budget: int | None = None):
        if max_wait_tokens < 0 or not 0.0 <= router_token_ratio <= 1.0 or router_max_new_token_len < 1:
            raise ValueError("lightllm needs max_wait_tokens >= 0, 0 <= router_token_ratio <= 1 and "
                             "router_max_new_token_len >= 1")
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        self.max_wait_tokens = max_wait_tokens
        self.router_token_ratio = router_token_ratio
        self.router_max_new_token_len = router_max_new_token_len
        self.token_budget = token_budget
        self.reset()

    def reset(self) -> None:
        self._has_wait = 0
        self._paused: set[int] = set()  # rids this scheduler paused and that have not resumed

    # ------------------------------------------------------------ estimates
    def _max_new(self, req, busy: bool) -> int:
        if busy:
            return req.max_tokens
        return min(req.max_tokens, max(int(1.1 * req.num_generated), self.router_max_new_token_len))

    def _pair(self, req, busy: bool) -> tuple[int, int]:
        """(tokens held, tokens it may still add) of ``req``, LightLLM's ``get_tuple_tokens``."""
        m, out = self._max_new(req, busy), req.num_generated
        if req.status == RUNNING:
            return req.prompt_len + out, max(0, m - out - 1)
        if req.rid in self._paused:
            return req.prompt_len + out + 1, max(0, m - out - 2)
        return req.prompt_len + 1, max(0, m - 2)

    @staticmethod
    def peak_tokens(pairs: list[tuple[int, int]]) -> int:
        """Predicted peak KV of requests given as (held, may still add) pairs, tokens."""
        if not pairs:
            return 0
        pairs = sorted(pairs, key=lambda p: -p[1])
        left = np.array([p[1] for p in pairs])
        held = np.cumsum([p[0] for p in pairs])
        return int((left * np.arange(1, len(pairs) + 1) + held).max())

    # -------------------------------------------------------------- planning
    def schedule(self, engine) -> BatchPlan:
        for rid in list(self._paused):
            req = engine.requests.get(rid)
            if req is None or req.status != WAITING:  # resumed or finished
                self._paused.discard(rid)
        running = list(engine.running.values())
        if not running:
            tokens = self._admit(engine)
            self._has_wait = 0
            return BatchPlan(tokens)
        if self._has_wait >= self.max_wait_tokens:
            self._has_wait = 0
            tokens = self._admit(engine)
            if tokens:
                return BatchPlan(tokens)
        bs = engine.config.block_size
        need = sum(-(-(r.num_computed + r.tokens_owed) // bs) - r.num_blocks for r in running)
        if need <= engine.free_blocks:
            self._has_wait += 1
            budget = engine.config.max_num_batched_tokens
            tokens = {}
            for r in running:  # a partial prefill only when another scheduler left one
                n = min(r.tokens_owed, budget)
                if n < 1:
                    break
                tokens[r.rid] = n
                budget -= n
            return BatchPlan(tokens)
        victim = max(running, key=lambda r: (r.arrival_s, r.rid))
        self._paused.add(victim.rid)
        self._has_wait = 0
        return BatchPlan({}, {victim.rid})

    def _admit(self, engine) -> dict[int, int]:
        cfg = engine.config
        bs = cfg.block_size
        capacity = cfg.kv_capacity_tokens
        budget = cfg.max_num_batched_tokens if self.token_budget is None else min(
            self.token_budget, cfg.max_num_batched_tokens)
        running = list(engine.running.values())
        paused_waiting = sum(1 for r in engine.iter_waiting() if r.rid in self._paused)
        if len(running) + paused_waiting >= cfg.max_num_seqs:
            return {}
        busy = engine.used_blocks * bs >= self.router_token_ratio * capacity
        pairs = [self._pair(r, busy) for r in running]
        tokens: dict[int, int] = {}
        prefill = 0
        free = engine.free_blocks
        for req in engine.iter_waiting():
            n = whole_prompt(req, budget, self.name)
            pairs.append(self._pair(req, busy))
            blocks = -(-n // bs)
            ok_tokens = self.peak_tokens(pairs) < capacity
            ok_seqs = len(pairs) + paused_waiting - (req.rid in self._paused) <= cfg.max_num_seqs
            if not ok_tokens and not running and not tokens:
                ok_tokens = True  # progress guard (see the module docstring)
            if not (ok_tokens and ok_seqs and prefill + n <= budget and blocks <= free):
                break
            tokens[req.rid] = n
            prefill += n
            free -= blocks
            paused_waiting -= req.rid in self._paused
        return tokens
