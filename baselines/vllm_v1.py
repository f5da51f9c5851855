"""vLLM v1's scheduler (``vllm/v1/core/sched/scheduler.py``), FCFS and priority policies.

Source: vLLM v1 ``Scheduler.schedule()``, read in vLLM 0.33.0 (the version ``agents/vllm_hook.py``
is pinned to) and, for the self-preemption rule, in vllm-project/vllm at commit 00024d3. Rules, per
step, with a token budget of ``max_num_batched_tokens``:

1. Running requests first, in running order; each gets what it is owed (the rest of its prefill,
   i.e. chunked prefill, or 1 decode token), capped by the remaining budget. When its KV blocks do
   not fit, preempt a victim (recompute) and retry: FCFS -> the newest running request (the last
   of ``running``); priority -> the largest (priority, arrival). A victim already scheduled this
   step gives its tokens back. A request that is itself the victim stops there; with the priority
   policy vLLM 0.33.0 then goes on with the next running request (they rank above it and may fit
   in the blocks it freed), while earlier v1 releases (e.g. commit 00024d3) stop scheduling
   running requests for the step: ``stop_on_self_preempt=True``. With FCFS the victim is the last
   running request, so both end the loop.
2. If nothing was preempted this step, waiting requests in queue order (preempted first, then
   FCFS; priority policy: by (priority, arrival)) are admitted with chunk = min(owed, budget) while
   the budget, ``max_num_seqs`` and KV allow; the first that does not fit stops admission.

Defaults: token budget = the engine's ``max_num_batched_tokens``; policy ``fcfs``. No KV
watermark (v1's KV cache manager has none). Tests in tests/test_baseline_engine_practice.py and,
against vLLM 0.33.0's own scheduler, tests/test_baseline_vllm_parity.py.

``fcfs`` is the same scheduler under another name (the engine's reference scheduler).
"""
from __future__ import annotations

from llmsched_env.plan import BatchPlan
from llmsched_env.scheduler import register


@register("vllm-v1")
class VLLMV1Scheduler:
    """vLLM v1 (chunked prefill always on).

    Args:
        policy: "fcfs" or "priority".
        token_budget: per-step token budget (None = the engine's max_num_batched_tokens).
        stop_on_self_preempt: stop scheduling running requests once one preempts itself (vLLM v1
            before 0.33.0); default False, vLLM 0.33.0's rule (see the module docstring).
    """

    def __init__(self, policy: str = "fcfs", token_budget: int | None = None,
                 stop_on_self_preempt: bool = False):
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"policy must be 'fcfs' or 'priority', not {policy!r}")
        self.policy = policy
        self.token_budget = token_budget
        self.stop_on_self_preempt = stop_on_self_preempt

    def reset(self) -> None:
        pass

    def _victim(self, running: list):
        if self.policy == "fcfs":
            return running[-1]
        return max(running, key=lambda r: (r.priority, r.arrival_s))

    def schedule(self, engine) -> BatchPlan:
        cfg = engine.config
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens if self.token_budget is None else min(self.token_budget,
                                                                                 cfg.max_num_batched_tokens)
        free = engine.free_blocks
        tokens: dict[int, int] = {}
        preempt: set[int] = set()
        running = list(engine.running.values())
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            owed = req.prefill_target - req.num_computed
            n = owed if owed > 0 else 1
            if n > budget:
                n = budget
            need = -(-(req.num_computed + n) // bs) - req.num_blocks
            while need > free:
                victim = self._victim(running)
                running.remove(victim)
                preempt.add(victim.rid)
                free += victim.num_blocks
                given = tokens.pop(victim.rid, None)
                if given is not None:
                    budget += given
                    free += -(-(victim.num_computed + given) // bs) - victim.num_blocks
                    i -= 1
                if victim is req:
                    break
            else:
                tokens[req.rid] = n
                budget -= n
                free -= need
                i += 1
                continue
            if self.stop_on_self_preempt:
                break
            # req preempted itself; running[i] is now the next request
        if preempt:
            return BatchPlan(tokens, preempt)

        num_resident = len(engine.running)
        waiting = engine.iter_waiting()
        if self.policy == "priority":
            waiting = sorted(waiting, key=lambda r: (r.priority, r.arrival_s))
        for req in waiting:
            if budget <= 0 or num_resident >= cfg.max_num_seqs:
                break
            n = min(req.tokens_owed, budget)  # a swapped-out request returns with its KV
            need = -(-(req.num_computed + n) // bs) - req.num_blocks
            if need > free:
                break
            tokens[req.rid] = n
            budget -= n
            free -= need
            num_resident += 1
        return BatchPlan(tokens, preempt)


@register("fcfs")
class FCFSScheduler(VLLMV1Scheduler):
    """FCFS with chunked prefill: vLLM v1's default policy (see the module docstring)."""

    def __init__(self, token_budget: int | None = None):
        super().__init__("fcfs", token_budget)
