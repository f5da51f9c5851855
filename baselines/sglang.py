"""SGLang's default scheduler: prefill-first batches admitted against a decaying estimate of the
running requests' future tokens, decode retraction when the KV cache runs out.

Source: sgl-project/sglang (SRT runtime). Code read: ``python/sglang/srt/managers/
schedule_policy.py`` (``PrefillAdder``: ``rem_total_tokens``, ``add_chunked_req``,
``add_one_req``, ``budget_state``; ``SchedulePolicy.calc_priority``, ``_sort_by_longest_output``;
``CLIP_MAX_NEW_TOKENS`` = 4096), ``scheduler.py`` (``get_next_batch_to_run``,
``get_new_batch_prefill``, ``update_running_batch``), ``schedule_batch.py`` (``check_decode_mem``,
``retract_decode``) and ``scheduler_components/new_token_ratio_tracker.py`` with ``environ.py``
(init ratio 0.7 x schedule_conservativeness, floor = init x 0.14, linear decay over 600 decode
steps, 20 retract decode steps). It reads each request's ``max_tokens`` (SGLang's
``max_new_tokens``), never its true output length.

Rules, per step (KV counted in tokens: free blocks x block size; a page = a block):

1. Prefill batch (SGLang runs prefill and decode batches separately, prefill first): tried when
   there is a partial prefill, or waiting requests and the batch is not marked full.
   * Budgets: rem_total = free tokens - sum over running decodes of min(max_tokens - generated,
     4096) x new_token_ratio; rem_input = ``max_prefill_tokens`` (16384); rem_chunk = the chunked
     prefill size (``token_budget``, default the engine's step budget).
   * The partial prefill (SGLang keeps at most one) goes first with min(rest, rem_chunk,
     rem_total) tokens; it reserves min(max_tokens, 4096) more when this chunk ends its prefill.
   * Waiting requests in policy order (``fcfs``: queue order, where arrivals join at the back and
     retracted requests too; ``lof``: longest ``max_tokens`` first, ties in queue order), while
     the sequence cap allows (else the batch is marked full): with total = prompt +
     min(max_tokens - generated, 4096), total >= rem_total stops admission and marks the batch
     full; a prompt >= rem_input stops it unless the batch is empty; a prompt (rounded up to
     pages) that fits rem_chunk is admitted whole, reserving its pages + min(max_tokens, 4096);
     otherwise its first rem_chunk tokens (rounded down to pages) are, and admission ends.
   * A non-empty prefill batch runs alone (no decodes). Decision: when nothing is resident, the
     first waiting request is admitted if its prompt fits the cache even when total >= rem_total,
     so a request longer than the estimate allows is not blocked forever.
2. Otherwise a decode batch of every running request. If the cache lacks the blocks their next
   tokens need, decodes are retracted (recompute): sorted by (tokens generated, -prompt length),
   the last goes first, at least one, until the rest fit (at least one stays); the ratio becomes
   min(1, (tokens generated + 20 x requests) / (sum of max_tokens + 1)) over those left, and the
   retracted requests join the back of the waiting queue (SGLang aborts a last request that still
   does not fit; this engine cannot abort, so it is retracted too). If no retraction was needed,
   the ratio decays by (init - floor) / 600, down to the floor.
* The full mark is cleared when a running request leaves (finishes or is retracted); the ratio is
  reset to its initial value when the engine was idle (nothing running or waiting).
"""
from __future__ import annotations

from llmsched_env.plan import BatchPlan
from llmsched_env.scheduler import register

POLICIES = ("fcfs", "lof")


@register("sglang")
class SGLangScheduler:
    """SGLang's default scheduler (see the module docstring).

    Args:
        policy: waiting-queue policy, "fcfs" (SGLang's default without a prefix cache) or "lof".
        token_budget: chunked prefill size, tokens (None = the engine's ``max_num_batched_tokens``).
        max_prefill_tokens: prefill tokens per batch, tokens (16384).
        schedule_conservativeness: scales the initial new-token ratio (1.0).
        init_new_token_ratio, min_new_token_ratio_factor, new_token_ratio_decay_steps: the
            ratio's start (0.7), floor as a share of the start (0.14) and decay steps (600).
        retract_decode_steps: decode steps of headroom in the ratio after a retraction (20).
        clip_max_new_tokens: cap on a request's remaining max tokens in the estimate (4096).
    """

    def __init__(self, policy: str = "fcfs", token_budget: int | None = None, max_prefill_tokens: int = 16384,
                 schedule_conservativeness: float = 1.0, init_new_token_ratio: float = 0.7,
                 min_new_token_ratio_factor: float = 0.14, new_token_ratio_decay_steps: int = 600,
                 retract_decode_steps: int = 20, clip_max_new_tokens: int = 4096):
        if policy not in POLICIES:
            raise ValueError(f"sglang policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, not {token_budget!r}")
        if (max_prefill_tokens < 1 or not schedule_conservativeness > 0 or not 0 < init_new_token_ratio
                or not 0 <= min_new_token_ratio_factor <= 1 or new_token_ratio_decay_steps < 1
                or retract_decode_steps < 0 or clip_max_new_tokens < 1):
            raise ValueError("sglang needs max_prefill_tokens >= 1, schedule_conservativeness > 0, "
                             "init_new_token_ratio > 0, 0 <= min_new_token_ratio_factor <= 1, "
                             "new_token_ratio_decay_steps >= 1, retract_decode_steps >= 0 and "
                             "clip_max_new_tokens >= 1")
        self.policy = policy
        self.token_budget = token_budget
        self.max_prefill_tokens = max_prefill_tokens
        self.init_ratio = min(init_new_token_ratio * schedule_conservativeness, 1.0)
        self.min_ratio = min(self.init_ratio * min_new_token_ratio_factor, 1.0)
        self.decay = (self.init_ratio - self.min_ratio) / new_token_ratio_decay_steps
        self.retract_decode_steps = retract_decode_steps
        self.clip = clip_max_new_tokens
        self.reset()

    def reset(self) -> None:
        self.new_token_ratio = self.init_ratio
        self._full = False
        self._members: set[int] = set()            # running batch (and admissions) at the last call
        self._entry: dict[int, tuple] = {}         # rid -> waiting-queue position key
        self._retracted = 0
        self._prev_now = self._prev_busy = 0.0

    # ----------------------------------------------------------------- state
    def _observe(self, engine) -> None:
        running = engine.running
        step_end = self._prev_now + (engine.busy_s - self._prev_busy)
        if not running and all(r.arrival_s > step_end for r in engine.iter_waiting()):
            self.new_token_ratio = self.init_ratio  # the engine was idle in between
        if any(rid not in running for rid in self._members):
            self._full = False                      # a request left the running batch
        self._prev_now, self._prev_busy = engine.now_s, engine.busy_s

    def _queue(self, engine) -> list:
        entry = self._entry
        for r in engine.iter_waiting():
            if r.rid not in entry:
                entry[r.rid] = (r.arrival_s, 0, r.rid)
        queue = sorted(engine.iter_waiting(), key=lambda r: entry[r.rid])
        if self.policy == "lof":
            queue.sort(key=lambda r: -r.max_tokens)
        return queue

    def _future(self, req) -> int:
        """min(max_tokens - generated, clip): a request's remaining output tokens in the estimate."""
        return min(max(req.max_tokens - req.num_generated, 0), self.clip)

    # -------------------------------------------------------------- planning
    def schedule(self, engine) -> BatchPlan:
        self._observe(engine)
        running = list(engine.running.values())
        partial = [r for r in running if r.is_prefilling]
        decodes = [r for r in running if not r.is_prefilling]
        plan = None
        if partial or (engine.num_waiting and not self._full):
            plan = self._prefill_batch(engine, decodes, partial)
        if plan is None:
            plan = self._decode_batch(engine, decodes) if decodes else BatchPlan()
        self._members = set(engine.running) | set(plan.tokens)
        return plan

    def _prefill_batch(self, engine, decodes: list, partial: list):
        cfg = engine.config
        bs = cfg.block_size
        chunk = cfg.max_num_batched_tokens if self.token_budget is None else min(
            self.token_budget, cfg.max_num_batched_tokens)
        free = engine.free_blocks
        avail = free * bs
        offset = sum(self._future(r) * self.new_token_ratio for r in decodes)
        cur = 0
        rem_input, rem_chunk = self.max_prefill_tokens, chunk
        tokens: dict[int, int] = {}

        def take(req, n: int, reserve: int) -> None:
            nonlocal offset, cur, rem_input, rem_chunk, free
            paged = -(-n // bs) * bs
            tokens[req.rid] = n
            offset += paged + reserve
            cur += paged
            rem_input -= paged
            rem_chunk -= paged
            free -= -(-(req.num_computed + n) // bs) - req.num_blocks

        for req in partial:  # add_chunked_req
            n = min(req.remaining_prefill, rem_chunk, int(avail - offset))
            if n < 1 or -(-(req.num_computed + n) // bs) - req.num_blocks > free:
                continue
            take(req, n, min(req.max_tokens, self.clip) if n == req.remaining_prefill else 0)
        resident = len(engine.running)
        for req in self._queue(engine):  # add_one_req
            if rem_chunk <= 0 or rem_input <= 0:
                break
            if avail - offset <= 0 or avail - cur <= 0:
                self._full = True
                break
            if resident >= cfg.max_num_seqs:
                self._full = True
                break
            extend = req.remaining_prefill  # SGLang's extend_input_len: the prompt past its cached prefix
            paged = -(-extend // bs) * bs
            total = extend + self._future(req)
            if total >= avail - offset:
                guard = not engine.running and not tokens and -(-min(extend, chunk) // bs) <= free
                if not guard:
                    self._full = True
                    break
            elif paged >= rem_input and tokens:
                break
            if paged <= rem_chunk:
                take(req, extend, min(req.max_tokens, self.clip))
                resident += 1
                continue
            trunc = rem_chunk // bs * bs
            if trunc <= 0:
                break
            take(req, trunc, 0)
            resident += 1
            break  # rem_chunk is spent: the new chunked request ends the batch
        return BatchPlan(tokens) if tokens else None

    def _decode_batch(self, engine, decodes: list) -> BatchPlan:
        bs = engine.config.block_size
        free = engine.free_blocks
        need = {r.rid: -(-(r.num_computed + 1) // bs) - r.num_blocks for r in decodes}
        if sum(need.values()) <= free:
            self.new_token_ratio = max(self.new_token_ratio - self.decay, self.min_ratio)
            keep, retracted = decodes, []
        else:
            keep = sorted(decodes, key=lambda r: (r.num_generated, -r.prompt_len), reverse=True)
            retracted = []
            while len(keep) > 1 and (not retracted or sum(need[r.rid] for r in keep) > free):
                victim = keep.pop()
                retracted.append(victim)
                free += victim.num_blocks
            if sum(need[r.rid] for r in keep) > free:  # SGLang aborts the last one; it is retracted here
                victim = keep.pop()
                retracted.append(victim)
                free += victim.num_blocks
            n_gen = sum(r.num_generated for r in keep)
            n_max = sum(r.max_tokens for r in keep)
            self.new_token_ratio = min(1.0, (n_gen + self.retract_decode_steps * len(keep)) / (n_max + 1))
            for r in retracted:
                self._retracted += 1
                self._entry[r.rid] = (engine.now_s, 1, self._retracted)
        keep = keep[:engine.config.max_num_batched_tokens]
        return BatchPlan({r.rid: 1 for r in keep}, {r.rid for r in retracted})
