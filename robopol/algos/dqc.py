"""Decoupled Q-chunking (DQC; Li, Park, Levine, ICLR 2026; algorithms.md §5b).

The critic looks ``h`` steps ahead, the policy plans only ``h_a < h`` (``policy.horizon``), and a distilled
partial critic bridges the two. Four jointly trained terms on one batch of ``h``-step windows:

1. chunk critic ``Q(s, a_{t:t+h})``: TD onto the value net,
   ``y = R + gamma^n * mask * V(s_{t+n})`` with ``n`` the chunk's valid steps (a terminal ends it early);
2. partial critic ``Q^P(s, a_{t:t+h_a})``: an upper expectile (``kappa_d``) of the chunk critic at the
   dataset chunk, member by member, so ``Q^P`` approximates the best completion of the prefix;
3. value ``V(s)``: an upper quantile (``kappa_b``) of the target partial critic (aggregated over members),
   the implicit maximum over behaviour prefixes that best-of-N extraction realises;
4. the flow BC policy over ``h_a``-step chunks.

With ``logits=True`` (the reference's setting) every value net outputs logits of values in [0, 1]; the
critic loss is binary cross-entropy against the clipped target, the distillation is the expectile in BCE
form and the backup a quantile of logits. That needs [0, 1] rewards, i.e. ``reward=success``. With
``logits=False`` the same terms use squared errors and raw values (any reward).

The partial critic and value losses are masked by ``valid[:, h_a - 1]`` (the prefix ends inside the
episode). The reference code indexes the per-step ``valids`` with ``h_a * |A| - 1``, which JAX clamps to the
last step; robopol uses the intended ``h_a - 1`` (see docs/offline-rl.md).

Acting: best-of-N over ``h_a``-step policy chunks scored by ``Q^P`` (closed loop at ``h_a`` granularity; set
``policy.action_steps = policy.horizon``).

Goal-conditioned training (``relabel=true``, DQC's ``CGCDataset``): each window's goal is replaced by the
anchor's own state, a uniformly drawn later state of its episode or a random state of the data (probabilities
``p_current``, ``p_future``, ``p_random``), taken from the observation key shaped like the task's goal. The
policy and every critic see the relabelled goal. The reward is reaching it (:func:`goal_rewards`): a goal
``d`` steps ahead with ``0 <= d < n`` (the chunk's valid steps) gives ``R = gamma^d`` and no bootstrap;
otherwise ``R = 0`` and the chunk bootstraps from ``V(s_{t+n}, g)``. A chunk that meets its episode's end
without reaching the goal has no next state for that goal and counts as truncated. The stored rewards are
not used.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robopol.algos.offline import BestOfN, OfflineRL, build_critic, clip_action, load_best_of_n
from robopol.critics import (
    aggregate,
    bce_expectile_loss,
    chunk_td_target,
    expectile_loss,
    masked_mean,
    polyak_update,
    quantile_loss,
)
from robopol.critics.nets import CriticEnsemble
from robopol.policies.base import check_choice

PROB_EPS = 1e-5


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(PROB_EPS, 1.0 - PROB_EPS)
    return torch.log(p) - torch.log1p(-p)


def chunk_critic_loss(chunk_critic: CriticEnsemble, value: CriticEnsemble, batch: dict[str, torch.Tensor],
                      weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """Term 1: TD over the whole chunk, bootstrapping from ``V(s_{t+n})``."""
    with torch.no_grad():
        next_v = value.values(batch["next_obs"])[0]
        target = chunk_td_target(batch["reward_sum"], batch["discount"], batch["mask"], next_v)
    out = chunk_critic(batch["obs"], clip_action(batch["action"]))
    if chunk_critic.logits:
        target = target.clamp(0.0, 1.0)
        errors = F.binary_cross_entropy_with_logits(out, target.expand_as(out), reduction="none")
    else:
        errors = (out - target).pow(2)
    loss = masked_mean(errors, weight)
    q = torch.sigmoid(out) if chunk_critic.logits else out
    return loss, {"chunk_critic_loss": loss.item(), "chunk_q_mean": q.mean().item(),
                  "chunk_target_mean": target.mean().item()}


def distill_loss(partial: CriticEnsemble, chunk_critic: CriticEnsemble, batch: dict[str, torch.Tensor],
                 kappa_d: float, prefix_valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Term 2: each partial-critic member regresses an upper expectile of its chunk-critic member at the
    dataset chunk."""
    chunk = clip_action(batch["action"])
    with torch.no_grad():
        target = chunk_critic.values(batch["obs"], chunk)
    out = partial(batch["obs"], chunk)
    if partial.logits:
        errors = bce_expectile_loss(out, target, kappa_d)
    else:
        errors = expectile_loss(target - out, kappa_d)
    loss = masked_mean(errors, prefix_valid)
    return loss, {"distill_loss": loss.item(), "partial_q_mean": partial.values(batch["obs"], chunk).mean().item()}


def backup_loss(value: CriticEnsemble, partial_target: CriticEnsemble, batch: dict[str, torch.Tensor],
                kappa_b: float, q_agg: str, prefix_valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Term 3: ``V(s)`` regresses an upper quantile of the target partial critic at the dataset prefix
    (in logit space for logit critics)."""
    with torch.no_grad():
        q = aggregate(partial_target.values(batch["obs"], clip_action(batch["action"])), q_agg)
    out = value(batch["obs"])[0]
    if value.logits:
        # The asymmetric weight compares values, and the logit is monotone: comparing logits is the same.
        errors = quantile_loss(logit(q) - out, kappa_b)
        v = torch.sigmoid(out)
    else:
        errors = quantile_loss(q - out, kappa_b)
        v = out
    loss = masked_mean(errors, prefix_valid)
    return loss, {"value_loss": loss.item(), "v_mean": v.mean().item(), "advantage": (q - v).mean().item()}


def goal_rewards(batch: dict[str, torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """The batch with ``reward_sum``, ``mask`` and ``truncated`` for reaching the relabelled goal, which lies
    ``goal_offset`` steps after the anchor (see the module docstring)."""
    offset, n = batch["goal_offset"], batch["valid"].sum(dim=1)
    reached = (offset >= 0) & (offset < n)
    reward = torch.where(reached, gamma ** offset.clamp_min(0).to(batch["discount"].dtype),
                         torch.zeros_like(batch["discount"]))
    ended = (batch["terminal"] | batch["truncated"]) & ~reached
    return {**batch, "reward_sum": reward, "mask": ~reached, "terminal": reached, "truncated": ended}


class DQC(OfflineRL):
    """Decoupled Q-chunking (see the module docstring)."""

    online_finetune = True
    """Can continue online after its offline steps (``online.steps``, :mod:`robopol.train.finetune`)."""

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "dqc", lr: float = 3e-4,
                 gamma: float = 0.999, tau: float = 0.005, reward: str = "success", chunk_horizon: int = 25,
                 num_critics: int = 2, critic_hidden_dims: tuple[int, ...] = (1024, 1024, 1024, 1024),
                 layer_norm: bool = True, logits: bool = True, kappa_d: float = 0.8, kappa_b: float = 0.9,
                 q_agg: str = "mean", best_of_n: int = 32, relabel: bool = False, goal_from: str = "",
                 p_current: float = 0.2, p_future: float = 0.5, p_random: float = 0.3, ema_decay: float = 0.0,
                 grad_clip: float = 0.0, drop_truncated: bool = True) -> None:
        super().__init__(policy, total_steps, name=name, lr=lr, gamma=gamma, tau=tau, reward=reward,
                         critic_horizon=chunk_horizon, ema_decay=ema_decay, grad_clip=grad_clip,
                         drop_truncated=drop_truncated)
        check_choice("algo.q_agg", q_agg, ("min", "mean"))
        if best_of_n < 1:
            raise ValueError(f"algo.best_of_n must be at least 1, got {best_of_n}")
        for key, kappa in (("kappa_d", kappa_d), ("kappa_b", kappa_b)):
            if not 0.0 < kappa < 1.0:
                raise ValueError(f"algo.{key} must be in (0, 1), got {kappa}")
        if policy.action_steps != policy.horizon:
            raise ValueError(f"DQC executes each h_a-step policy chunk whole: set policy.action_steps="
                             f"policy.horizon (got {policy.action_steps} and {policy.horizon})")
        if not hasattr(policy, "integrate"):
            raise ValueError("DQC needs a generative (flow or diffusion) policy to propose chunks")
        goal_probs = (p_current, p_future, p_random)
        if relabel and (min(goal_probs) < 0 or abs(sum(goal_probs) - 1.0) > 1e-6):
            raise ValueError(f"algo.p_current, algo.p_future and algo.p_random must be >= 0 and sum to 1, got "
                             f"{goal_probs}")
        self.relabel, self.goal_from, self.goal_probs = relabel, goal_from, goal_probs
        self.logits, self.kappa_d, self.kappa_b = logits, kappa_d, kappa_b
        self.q_agg, self.best_of_n = q_agg, best_of_n
        self.chunk_critic = build_critic(policy, chunk_horizon, num_critics, critic_hidden_dims, layer_norm, logits)
        self.partial = build_critic(policy, policy.horizon, num_critics, critic_hidden_dims, layer_norm, logits)
        self.partial_target = copy.deepcopy(self.partial).requires_grad_(False)
        self.value = build_critic(policy, 0, 1, critic_hidden_dims, layer_norm, logits)
        self.nets = {"chunk_critic": self.chunk_critic, "partial_critic": self.partial,
                     "partial_critic_target": self.partial_target, "value": self.value}
        self.optimizers = {"critics": self.adam(self.chunk_critic, self.partial, self.value),
                           "policy": self.adam(policy)}

    def window_options(self) -> dict[str, Any]:
        options = super().window_options()
        if self.relabel:
            p_current, p_future, p_random = self.goal_probs
            options.update(relabel_goals=True, goal_from=self.goal_from, p_current=p_current, p_future=p_future,
                           p_random=p_random)
        return options

    def prepare_rewards(self, reward: np.ndarray, terminal: np.ndarray | None) -> np.ndarray:
        if self.relabel:  # rewards come from reaching the relabelled goals
            return np.zeros(len(reward), dtype=np.float32)
        reward = super().prepare_rewards(reward, terminal)
        if self.logits and (reward.min() < 0 or reward.max() > 1):
            raise ValueError(f"algo.logits=true needs rewards in [0, 1], the data's (algo.reward={self.reward}) "
                             f"span [{reward.min():g}, {reward.max():g}]: use algo.reward=success or "
                             f"algo.logits=false")
        return reward

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        if self.relabel:
            batch = goal_rewards(batch, self.gamma)
        prefix_valid = batch["valid"][:, self.policy.horizon - 1].float()
        chunk, metrics = chunk_critic_loss(self.chunk_critic, self.value, batch, self.critic_weight(batch))
        distill, distill_metrics = distill_loss(self.partial, self.chunk_critic, batch, self.kappa_d, prefix_valid)
        backup, backup_metrics = backup_loss(self.value, self.partial_target, batch, self.kappa_b, self.q_agg,
                                             prefix_valid)
        self.step("critics", chunk + distill + backup)
        bc_loss, bc_metrics = self.policy.loss(self.policy_batch(batch))
        self.step("policy", bc_loss)
        polyak_update(self.partial_target, self.partial, self.tau)
        self.after_update()
        loss = chunk + distill + backup
        return {"loss": loss.item(), **metrics, **distill_metrics, **backup_metrics, **bc_metrics}

    def eval_policy(self) -> nn.Module:
        return BestOfN(self.behaviour_policy(), self.partial, self.best_of_n, self.q_agg)

    @classmethod
    def load_eval_policy(cls, ckpt: Any, policy: nn.Module) -> nn.Module:
        cfg = ckpt.config.algo
        policy = super().load_eval_policy(ckpt, policy)
        return load_best_of_n(ckpt, policy, "partial_critic", cfg.logits)
