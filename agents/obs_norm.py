"""Observation normalisation a policy was trained with (the ``obs_normalization`` field of a
policy directory's policy.yaml), applied in numpy by the loader and folded into the ONNX export.

``null`` (what train/ppo.py writes today): none, the env's features are already scaled. Otherwise
SB3 ``VecNormalize``'s running statistics, per observation key::

    obs_normalization:
      kind: running_mean_std
      mean: {slots: [K*F floats], global: [G floats]}
      var:  {slots: [...], global: [...]}
      epsilon: 1.0e-8      # VecNormalize's default
      clip_obs: 10.0       # VecNormalize's default

    normalised[key] = clip((obs[key] - mean[key]) / sqrt(var[key] + epsilon), -clip_obs, clip_obs)

computed in float32 with ``mean`` and ``std = sqrt(var + epsilon)`` rounded to float32 once, so
numpy and the exported graph give bit-identical inputs to the network.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEYS = ("slots", "global")


@dataclass(frozen=True)
class ObsNormalization:
    mean: dict   # key -> float32 array
    std: dict    # key -> float32 array
    clip: float

    @classmethod
    def from_meta(cls, value, sizes: dict) -> "ObsNormalization | None":
        """Parse the policy.yaml field; ``sizes`` maps each key to its length. Raises ValueError
        naming what is wrong."""
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("kind") != "running_mean_std":
            raise ValueError(f"obs_normalization {value!r} is not supported: use null, or "
                             "{kind: running_mean_std, mean: {slots, global}, var: {slots, global}, "
                             "epsilon, clip_obs} (SB3 VecNormalize statistics)")
        eps = float(value.get("epsilon", 1e-8))
        clip = float(value.get("clip_obs", 10.0))
        mean, std = {}, {}
        for key in KEYS:
            try:
                m = np.asarray(value["mean"][key], dtype=np.float64)
                v = np.asarray(value["var"][key], dtype=np.float64)
            except (KeyError, TypeError):
                raise ValueError(f"obs_normalization needs mean.{key} and var.{key}") from None
            if m.shape != (sizes[key],) or v.shape != (sizes[key],):
                raise ValueError(f"obs_normalization {key}: mean has shape {m.shape} and var {v.shape}; "
                                 f"the observation's {key} has {sizes[key]} values")
            if np.any(v < 0) or not np.all(np.isfinite(m)) or not np.all(np.isfinite(v)):
                raise ValueError(f"obs_normalization {key}: var must be finite and >= 0, mean finite")
            mean[key] = m.astype(np.float32)
            std[key] = np.sqrt(v + eps).astype(np.float32)
        return cls(mean, std, clip)

    def apply(self, obs: dict) -> dict:
        out = dict(obs)  # other keys (the one-hot hint) pass unchanged
        for key in KEYS:
            x = (np.asarray(obs[key], dtype=np.float32) - self.mean[key]) / self.std[key]
            out[key] = np.clip(x, np.float32(-self.clip), np.float32(self.clip))
        return out
