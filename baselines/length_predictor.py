"""Output-length estimates for the length-aware schedulers (srpt, sjf, ltr).

Modes:
  * ``oracle``: the true output length (an ORACLE; only explicit oracle baselines use it).
  * ``workload``: the workload's ``predicted_output_len`` (built with ``predictor_error``,
    CLI ``--predictor-error``); an error if the workload carries none.
  * ``noisy``: a simulated predictor: true length x lognormal(0, ``error``) noise, drawn per request
    from a generator seeded by (``seed``, request id), so it is deterministic and independent of
    scheduling order.
  * ``auto``: ``workload`` when the request carries a prediction, else ``noisy``.
Estimates are tokens, at least 1.
"""
from __future__ import annotations

import numpy as np

MODES = ("oracle", "workload", "noisy", "auto")


class LengthPredictor:
    """Callable ``predictor(req) -> estimated output tokens`` (cached per request id)."""

    def __init__(self, mode: str = "oracle", error: float = 0.5, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"predictor must be one of {', '.join(MODES)}, not {mode!r}")
        if not error >= 0:
            raise ValueError(f"predictor error (relative lognormal std) must be >= 0, not {error!r}")
        self.mode, self.error, self.seed = mode, float(error), int(seed)
        self._cache: dict[int, int] = {}

    def reset(self) -> None:
        self._cache.clear()

    def __call__(self, req) -> int:
        v = self._cache.get(req.rid)
        if v is None:
            v = self._cache[req.rid] = self._predict(req)
        return v

    def _predict(self, req) -> int:
        mode = self.mode
        if mode == "oracle":
            return req.output_len
        if mode == "workload" or (mode == "auto" and req.predicted_output_len is not None):
            if req.predicted_output_len is None:
                raise ValueError(f"predictor='workload' but request {req.rid} has no predicted_output_len; "
                                 "build the workload with predictor_error (CLI --predictor-error) or use "
                                 "predictor='noisy'")
            return max(1, int(req.predicted_output_len))
        noise = np.random.default_rng([self.seed, req.rid]).lognormal(0.0, self.error) if self.error else 1.0
        return max(1, int(round(req.output_len * noise)))
