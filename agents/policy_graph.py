"""The deterministic action of an SB3 maskable policy as one torch module (what gets exported).

``DeterministicAction(policy, obs_norm)`` computes, with the policy's own modules and SB3's generic
API (so it serves ``SlotSetPolicy`` and any ``MaskableActorCriticPolicy`` with a Dict
observation alike):

    obs      = normalise(slots, global) [+ hint_slots, hint_budget when trained with a hint]
    features = policy.pi_features_extractor(preprocess_obs(obs))
    latent   = policy.mlp_extractor.forward_actor(features)
    logits   = policy.action_net(latent)                       K*A slot logits, then B budget
    action   = per dimension: argmax(log_softmax(where(mask, logits, -1e8)))

which is the mode of ``SlotCategoricalDistribution`` (and of sb3-contrib's masked multi-
categorical: the same masked logits, argmax of the normalised distribution; first index on ties).
"""
from __future__ import annotations

import numpy as np
import torch as th
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import nn

from .obs_norm import ObsNormalization

_NEG = -1e8  # the masked-logit value of SlotCategoricalDistribution and sb3-contrib


class DeterministicAction(nn.Module):
    """(slots (N, K*F), global (N, G), [hint_slots (N, K*A), hint_budget (N, B),] action_mask
    (N, K*A+B) bool) -> action (N, K+1) int64."""

    def __init__(self, policy, obs_norm: ObsNormalization | None = None):
        super().__init__()
        nvec = [int(n) for n in np.asarray(policy.action_space.nvec)]
        if len(nvec) < 2 or len(set(nvec[:-1])) != 1:
            raise ValueError(f"export needs a MultiDiscrete([A] * K + [B]) action; the policy has nvec {nvec}")
        keys = set(policy.observation_space.spaces)
        self.hinted = keys == {"slots", "global", "hint_slots", "hint_budget"}
        if keys != {"slots", "global"} and not self.hinted:
            raise ValueError(f"export needs the env's Dict observation (slots, global[, hint_slots, "
                             f"hint_budget]); the policy has {sorted(keys)}")
        self.policy = policy
        self.K, self.A, self.B = len(nvec) - 1, nvec[0], nvec[-1]
        self.normalise = obs_norm is not None
        if obs_norm is not None:
            for key, name in (("slots", "slots"), ("global", "glob")):
                self.register_buffer(f"{name}_mean", th.from_numpy(obs_norm.mean[key]))
                self.register_buffer(f"{name}_std", th.from_numpy(obs_norm.std[key]))
            self.clip = float(obs_norm.clip)

    def forward(self, slots: th.Tensor, glob: th.Tensor, *rest: th.Tensor) -> th.Tensor:
        action_mask = rest[-1]
        if self.normalise:
            slots = th.clamp((slots - self.slots_mean) / self.slots_std, -self.clip, self.clip)
            glob = th.clamp((glob - self.glob_mean) / self.glob_std, -self.clip, self.clip)
        p = self.policy
        obs = {"slots": slots, "global": glob}
        if self.hinted:
            obs["hint_slots"], obs["hint_budget"] = rest[0], rest[1]
        obs = preprocess_obs(obs, p.observation_space, p.normalize_images)
        latent = p.mlp_extractor.forward_actor(p.pi_features_extractor(obs))
        logits = p.action_net(latent)
        K, A = self.K, self.A
        neg = th.full((), _NEG, dtype=logits.dtype)
        slot_logits = th.where(action_mask[:, :K * A].reshape(-1, K, A), logits[:, :K * A].reshape(-1, K, A), neg)
        budget_logits = th.where(action_mask[:, K * A:], logits[:, K * A:], neg)
        return th.cat([th.log_softmax(slot_logits, -1).argmax(-1),
                       th.log_softmax(budget_logits, -1).argmax(-1, keepdim=True)], dim=1)
