"""EDF: earliest deadline first, on per-token deadlines.

This scheduler is this project's construction, not a port: no serving system's code defines it.
It applies Liu and Layland's earliest-deadline-first (JACM 1973) per token, the idea behind
SLO-aware LLM schedulers such as Andes (Liu et al. 2024) and SLOs-Serve (2025), whose own rules
differ: a request's next deadline is its TTFT target while it has no token, and its next-token
(TBT) target after that.

Rules: the rank loop of ``baselines/ranked.py`` (chunked prefill, token budget = the engine's,
lower-ranked running requests preempted when an earlier-deadline one lacks KV or a slot) with key
  * before the first token (waiting or prefilling): arrival + TTFT target, seconds;
  * after it (decoding, or re-prefilling after a preemption): last token time + TBT target.
Requests without an SLO (infinite targets) rank last, by arrival.
A waiting request is admitted only into free KV and seats (``preempt_for_waiting = False``): a
resident decode's deadline moves later with every token while a waiting request's stays put, so
evicting residents for earlier deadlines makes them trade places every few steps under recompute
(see ``baselines/ranked.py``). Under KV shortage the victims are the latest-deadline residents.
"""
from __future__ import annotations

from llmsched_env.scheduler import register

from .ranked import RankedScheduler


def next_deadline_s(req) -> float:
    """The time, seconds, by which ``req``'s next token is due under its SLO."""
    if req.token_times:
        return req.token_times[-1] + req.tbt_slo_s
    return req.arrival_s + req.ttft_slo_s


@register("edf")
class EDFScheduler(RankedScheduler):
    """Earliest next-token deadline first (see the module docstring).

    Args:
        token_budget: per-step token budget, tokens (None = the engine's).
    """

    preempt_for_waiting = False

    def key(self, req, engine):
        return next_deadline_s(req)
