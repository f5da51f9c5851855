"""BatchPlan: the one answer every scheduler gives each engine step (see DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BatchPlan:
    """What runs in the next batch.

    Attributes:
        tokens: ``{request_id: tokens_to_process}`` this step. A waiting request listed here is
            admitted; a prefilling request may get any chunk ``1..remaining``; a decoding request
            gets exactly 1. Running requests left out keep their KV and simply do not run.
        preempt: running request ids whose KV is freed before the step (recompute later).

    Only the contents matter, never the iteration order: the engine re-queues victims at the head
    of the waiting queue in their admission order, and admitted requests join the running list in
    waiting-queue order. Two equal plans (``==``) always have the same effect.
    """

    tokens: dict[int, int] = field(default_factory=dict)
    preempt: set[int] = field(default_factory=set)

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens.values())

    def __bool__(self) -> bool:
        return bool(self.tokens) or bool(self.preempt)


class PlanError(ValueError):
    """An infeasible BatchPlan. ``violations`` lists every violated limit; engine state is unchanged."""

    def __init__(self, violations: list[str], step: int, now_s: float):
        self.violations = violations
        head = f"infeasible BatchPlan at step {step} (t={now_s:.6f} s): {len(violations)} violation(s)"
        super().__init__(head + "\n  - " + "\n  - ".join(violations))
