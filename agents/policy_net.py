"""A policy network for a set of requests: the ``SlotSetPolicy`` for sb3-contrib's MaskablePPO.

The observation is K request slots of F features each plus G global features
(``llmsched_env.observation``). The network treats the slots as a set:

    slot i ──[features, ranks]──MLP (shared by every slot)──> e_i   (K x D)
    global ──MLP──> g                                                (D)
    e_i <- LayerNorm(e_i + Attention(query e_i, keys {g, e_1..e_K}))  (one layer; empty slots masked)
    context c = [g, masked mean of e_i, masked max of e_i]          (3D)

    logits of slot i  = MLP([e_i, c])   (the same MLP for every slot: A choices)
    budget logits     = MLP(c)          (B levels)
    value             = MLP(c)

The ranks give each request its place among the others of its kind (running or waiting) by
age, TTFT slack, TBT slack, remaining prefill and priority: for each of these features, the
fraction of the K slots holding a present request of the same kind with a smaller value. They
are what an ordering heuristic (FCFS, least slack first) decides by, computed from the features
rather than from slot positions, so they too are permutation-equivariant.

With a scenario ``hint`` (``llmsched_env.advice``) the observation also holds a heuristic's
proposal, one-hot: slot i's proposed choice joins slot i's input and the proposed budget level
joins the global input, so the policy can start as the heuristic and learn where to depart.

So permuting the requests among the slots permutes their logits and leaves the budget choice and
the value unchanged, and the same weights serve any K. ``SlotSetExtractor`` is the SB3 features
extractor (its output is the flat concatenation [e_1..e_K, c]); ``SlotSetPolicy`` subclasses
``MaskableActorCriticPolicy`` and replaces its action head (``SlotActionHead``) and value head so
slot i's logits come from slot i's embedding. The global key in the attention means a state with
every slot empty still has something to attend to.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy, MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from .distributions import SlotCategoricalDistribution


def _mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# Feature columns (llmsched_env.observation.SLOT_FEATURES) the ranks are taken over.
RANKED = ("age", "ttft_slack", "tbt_slack", "remaining_prefill", "priority")


def slot_ranks(x: th.Tensor, present: th.Tensor, running: th.Tensor, cols: list[int]) -> th.Tensor:
    """(N, K, F) features -> (N, K, len(cols)): for slot i and column c, the fraction of the K
    slots j with a present request of i's kind (running or waiting) and x[j, c] < x[i, c]."""
    K = x.shape[1]
    same = (running.unsqueeze(2) == running.unsqueeze(1)) & present.unsqueeze(1)      # (N, K_i, K_j)
    v = x[..., cols]                                                                   # (N, K, C)
    less = v.unsqueeze(1) < v.unsqueeze(2)                                             # (N, K_i, K_j, C)
    r = (less & same.unsqueeze(-1)).sum(2).to(x.dtype) / K
    return r * present.unsqueeze(-1).to(x.dtype)


class SlotSetExtractor(BaseFeaturesExtractor):
    """Dict(slots=(K*F,), global=(G,)) -> [e_1 .. e_K (K*D), context (3D)].

    Args:
        observation_space: the env's Dict space.
        num_features: F, features per slot (the slots vector is K*F long).
        embed_dim: D.
        num_heads: attention heads (D must be a multiple).
        attention: False = pooling only (Deep Sets).
    """

    def __init__(self, observation_space: gym.spaces.Dict, num_features: int, embed_dim: int = 64,
                 num_heads: int = 4, attention: bool = True):
        flat = observation_space["slots"].shape[0]
        if flat % num_features:
            raise ValueError(f"slots vector of {flat} is not a multiple of num_features={num_features}")
        self.K, self.F = flat // num_features, num_features
        self.G = observation_space["global"].shape[0]
        self.hinted = "hint_slots" in observation_space.spaces
        self.A = observation_space["hint_slots"].shape[0] // self.K if self.hinted else 0
        self.B = observation_space["hint_budget"].shape[0] if self.hinted else 0
        self.D = embed_dim
        hint_dim = (observation_space["hint_slots"].shape[0] + observation_space["hint_budget"].shape[0]
                    if "hint_slots" in observation_space.spaces else 0)
        super().__init__(observation_space, features_dim=self.K * embed_dim + 3 * embed_dim + hint_dim)
        from llmsched_env.observation import SLOT_FEATURES
        if num_features != len(SLOT_FEATURES):
            raise ValueError(f"num_features={num_features} but the env has {len(SLOT_FEATURES)} slot features")
        self.rank_cols = [SLOT_FEATURES.index(c) for c in RANKED]
        self.running_col = SLOT_FEATURES.index("running")
        self.slot_mlp = _mlp([self.F + len(self.rank_cols) + self.A, embed_dim, embed_dim])
        self.global_mlp = _mlp([self.G + self.B, embed_dim, embed_dim])
        self.attention = attention
        if attention:
            self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
            self.norm = nn.LayerNorm(embed_dim)

    def forward(self, obs: dict) -> th.Tensor:
        x = obs["slots"].reshape(-1, self.K, self.F)
        present = x[..., 0] > 0.5                                   # (N, K) feature 0 = "present"
        ranks = slot_ranks(x, present, x[..., self.running_col] > 0.5, self.rank_cols)
        if self.hinted:
            e = self.slot_mlp(th.cat([x, ranks, obs["hint_slots"].reshape(-1, self.K, self.A)], dim=-1))
            g = self.global_mlp(th.cat([obs["global"], obs["hint_budget"]], dim=-1))
        else:
            e = self.slot_mlp(th.cat([x, ranks], dim=-1))           # (N, K, D)
            g = self.global_mlp(obs["global"])                      # (N, D)
        if self.attention:
            keys = th.cat([g.unsqueeze(1), e], dim=1)                # (N, 1+K, D)
            pad = th.cat([th.zeros_like(present[:, :1]), ~present], dim=1)
            a, _ = self.attn(e, keys, keys, key_padding_mask=pad, need_weights=False)
            e = self.norm(e + a)
        m = present.unsqueeze(-1).to(e.dtype)
        e = e * m                                                   # empty slots embed to 0
        n = m.sum(1).clamp(min=1.0)
        mean = e.sum(1) / n
        mx = e.masked_fill(~present.unsqueeze(-1), -1e4).amax(1)
        mx = th.where(present.any(1, keepdim=True), mx, th.zeros_like(mx))
        if self.hinted:  # passed through for the action head's prior
            return th.cat([e.flatten(1), g, mean, mx, obs["hint_slots"], obs["hint_budget"]], dim=1)
        return th.cat([e.flatten(1), g, mean, mx], dim=1)


class SlotActionHead(nn.Module):
    """[e_1..e_K, c(, hint)] -> [logits of slot 1 (A) .. slot K (A), budget logits (B)].

    With ``hint_prior`` = beta > 0 (a hinted observation), the logits are beta x the hint's
    one-hot plus the network's output: a residual policy whose mode is the heuristic's proposal
    until the learned correction outweighs beta somewhere, and whose sampled deviations (the
    exploration) have probability about exp(-beta) per alternative at the start."""

    def __init__(self, K: int, D: int, num_choices: int, num_budgets: int, hidden: int, hint_prior: float = 0.0):
        super().__init__()
        self.K, self.D, self.A = K, D, num_choices
        self.hint_prior = float(hint_prior)
        self.slot = nn.Sequential(_mlp([4 * D, hidden]), nn.Linear(hidden, num_choices))
        self.budget = nn.Sequential(_mlp([3 * D, hidden]), nn.Linear(hidden, num_budgets))

    def forward(self, latent: th.Tensor) -> th.Tensor:
        K, D = self.K, self.D
        e = latent[:, :K * D].reshape(-1, K, D)
        c = latent[:, K * D:K * D + 3 * D]
        per_slot = self.slot(th.cat([e, c.unsqueeze(1).expand(-1, K, -1)], dim=-1))   # (N, K, A)
        logits = th.cat([per_slot.flatten(1), self.budget(c)], dim=1)
        if self.hint_prior:
            logits = logits + self.hint_prior * latent[:, K * D + 3 * D:]
        return logits


class ContextValueHead(nn.Module):
    """[e_1..e_K, c(, hint)] -> V(s) from the context c only (invariant to slot order)."""

    def __init__(self, K: int, D: int, hidden: int):
        super().__init__()
        self.start, self.stop = K * D, K * D + 3 * D
        self.net = nn.Sequential(_mlp([3 * D, hidden, hidden]), nn.Linear(hidden, 1))

    def forward(self, latent: th.Tensor) -> th.Tensor:
        return self.net(latent[:, self.start:self.stop])


class SlotSetPolicy(MaskableActorCriticPolicy):
    """MaskableActorCriticPolicy with ``SlotSetExtractor`` and per-slot action logits.

    Extra keyword arguments (``policy_kwargs``): ``embed_dim`` (D, 64), ``num_heads`` (4),
    ``attention`` (True), ``head_hidden`` (hidden units of the heads, 64), ``num_features`` (F,
    required: ``len(llmsched_env.observation.SLOT_FEATURES)``), ``hint_prior`` (beta of
    ``SlotActionHead``, 0 = none; needs a hinted observation). The action space must be
    ``MultiDiscrete([A] * K + [B])``.
    """

    def __init__(self, observation_space, action_space, lr_schedule, *, num_features: int,
                 embed_dim: int = 64, num_heads: int = 4, attention: bool = True, head_hidden: int = 64,
                 hint_prior: float = 0.0, **kwargs):
        nvec = np.asarray(action_space.nvec)
        if len(nvec) < 2 or len(set(nvec[:-1].tolist())) != 1:
            raise ValueError(f"SlotSetPolicy needs MultiDiscrete([A]*K + [B]); got nvec={nvec.tolist()}")
        self._A, self._B = int(nvec[0]), int(nvec[-1])
        self._head_hidden = head_hidden
        if hint_prior and "hint_slots" not in observation_space.spaces:
            raise ValueError(f"hint_prior={hint_prior} needs an observation with a heuristic hint "
                             "(a scenario with hint=..., e.g. train/ppo.py --hint slai)")
        self._hint_prior = float(hint_prior)
        kwargs.setdefault("net_arch", dict(pi=[], vf=[]))
        kwargs["features_extractor_class"] = SlotSetExtractor
        kwargs["features_extractor_kwargs"] = dict(num_features=num_features, embed_dim=embed_dim,
                                                   num_heads=num_heads, attention=attention)
        self._set_kwargs = dict(num_features=num_features, embed_dim=embed_dim, num_heads=num_heads,
                                attention=attention, head_hidden=head_hidden, hint_prior=float(hint_prior))
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        self.action_dist = SlotCategoricalDistribution(self.action_space.nvec)
        super()._build(lr_schedule)
        fe = self.features_extractor
        self.action_net = SlotActionHead(fe.K, fe.D, self._A, self._B, self._head_hidden, self._hint_prior)
        self.value_net = ContextValueHead(fe.K, fe.D, self._head_hidden)
        if self.ortho_init:
            self.action_net.apply(lambda m: self.init_weights(m, gain=np.sqrt(2)))
            self.value_net.apply(lambda m: self.init_weights(m, gain=np.sqrt(2)))
            for last, gain in ((self.action_net.slot[-1], 0.01), (self.action_net.budget[-1], 0.01),
                               (self.value_net.net[-1], 1.0)):
                self.init_weights(last, gain=gain)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict:
        data = super()._get_constructor_parameters()
        for k in ("features_extractor_class", "features_extractor_kwargs"):
            data.pop(k, None)
        data.update(self._set_kwargs)
        return data


class FastMaskableMultiInputPolicy(MaskableMultiInputActorCriticPolicy):
    """The plain MLP baseline (sb3-contrib's MultiInputPolicy: the observation dict flattened and
    concatenated, then ``net_arch``) with the vectorised ``SlotCategoricalDistribution``, so it
    is compared with ``SlotSetPolicy`` at the same per-step cost of the distribution."""

    def _build(self, lr_schedule) -> None:
        self.action_dist = SlotCategoricalDistribution(self.action_space.nvec)
        super()._build(lr_schedule)
