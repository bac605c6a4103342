"""Implicit Q-learning (IQL; Kostrikov et al., ICLR 2022; algorithms.md §1) over action chunks, with
advantage-weighted regression (AWR) into a generative policy head.

IQL never queries the policy inside the critic: every term uses dataset chunks only.

- Value: ``L_V = E[ L2_tau( min_i Q'_i(s, a) - V(s) ) ]`` with the expectile loss
  ``L2_tau(u) = |tau - 1(u < 0)| u^2`` (``algo.expectile``), so ``V`` approaches an upper expectile of the
  behaviour chunks' values: the "implicit max".
- Critic: ``L_Q = E[ (y - Q_i(s, a))^2 ]`` over the ``num_critics`` members with the chunk backup onto ``V``:
  ``y = sum_{k<n} gamma^k r_{t+k} + gamma^n * mask * V(s_{t+n})`` (:func:`robopol.critics.chunk_td_target`;
  the sampler's ``reward_sum``, ``discount = gamma**n`` and ``mask``). ``policy.horizon=1`` is IQL on single
  actions; longer horizons make ``Q`` a chunk critic over the policy's whole chunk.
- Actor (AWR): the policy's own regression loss weighted per window by
  ``w = min(exp(beta * (min_i Q'_i(s, a) - V(s))), max_weight)`` (``batch["sample_weight"]``); for a flow or
  diffusion head the weighted denoising loss stands in for ``-w log pi(a|s)``.

Update order per batch, as ``learner.py::_update_jit``: V from the target critic; the actor from the target
critic and the new V; Q from the new V; Polyak update of the target critic (``tau``). The evaluated and
deployed policy is the AWR-trained head (its EMA when ``ema_decay > 0``).

Deviations from the reference:

- the critic loss averages over ensemble members (:func:`robopol.critics.td_loss`) where the reference sums
  them: the same minimiser, half the gradient scale;
- windows that run into a time limit are left out of the Q and V losses when ``drop_truncated`` (the
  sampler has no observation after a truncated episode's last step); the actor still imitates them;
- the policy is a generative chunk head, not IQL's state-independent Gaussian;
- ``layer_norm`` and the critic widths are configurable (defaults: IQL's (256, 256), no LayerNorm).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from robopol.algos.offline import OfflineRL, build_critic, clip_action
from robopol.critics import aggregate, chunk_td_target, expectile_loss, masked_mean, polyak_update, td_loss
from robopol.critics.nets import CriticEnsemble
from robopol.policies.base import GenerativePolicy


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """``min(exp(beta * advantage), max_weight)``; the exponent is capped first, so nothing overflows to inf."""
    return torch.exp((beta * advantage).clamp(max=math.log(max_weight)))


def value_loss(value: CriticEnsemble, critic_target: CriticEnsemble, batch: dict[str, torch.Tensor],
               expectile: float, weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """Expectile regression of ``V(s)`` onto ``min_i Q'_i(s, a)`` at the dataset chunk."""
    with torch.no_grad():
        q = aggregate(critic_target(batch["obs"], clip_action(batch["action"])), "min")
    v = value(batch["obs"])[0]
    loss = masked_mean(expectile_loss(q - v, expectile), weight)
    return loss, {"value_loss": loss.item(), "v_mean": v.mean().item()}


def q_loss(critic: CriticEnsemble, value: CriticEnsemble, batch: dict[str, torch.Tensor],
           weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """Chunk TD loss of every critic member onto ``reward_sum + discount * mask * V(next_obs)``."""
    with torch.no_grad():
        target = chunk_td_target(batch["reward_sum"], batch["discount"], batch["mask"],
                                 value(batch["next_obs"])[0])
    q = critic(batch["obs"], clip_action(batch["action"]))
    loss = td_loss(q, target, weight)
    return loss, {"critic_loss": loss.item(), "q_mean": q.mean().item(), "target_mean": target.mean().item()}


def actor_loss(policy: nn.Module, critic_target: CriticEnsemble, value: CriticEnsemble,
               batch: dict[str, torch.Tensor], policy_batch: dict[str, torch.Tensor], beta: float,
               max_weight: float) -> tuple[torch.Tensor, dict]:
    """AWR: the policy's regression loss on ``policy_batch`` weighted by :func:`awr_weights` of the target
    critic's min and ``V`` at the dataset chunk of ``batch``."""
    with torch.no_grad():
        q = aggregate(critic_target(batch["obs"], clip_action(batch["action"])), "min")
        advantage = q - value(batch["obs"])[0]
        weight = awr_weights(advantage, beta, max_weight)
    loss, metrics = policy.loss({**policy_batch, "sample_weight": weight})
    return loss, {**metrics, "actor_loss": loss.item(), "advantage": advantage.mean().item(),
                  "awr_weight": weight.mean().item(), "awr_weight_max": weight.max().item()}


class IQL(OfflineRL):
    """Implicit Q-learning with AWR extraction (see the module docstring)."""

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "iql", lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005, reward: str = "store", num_critics: int = 2,
                 critic_hidden_dims: tuple[int, ...] = (256, 256), layer_norm: bool = False,
                 expectile: float = 0.7, beta: float = 3.0, max_weight: float = 100.0,
                 actor_lr_decay: bool = True, ema_decay: float = 0.0, grad_clip: float = 0.0,
                 drop_truncated: bool = True) -> None:
        if not isinstance(policy, GenerativePolicy):
            raise ValueError(f"IQL's AWR weights a generative head's per-sample loss: use a flow or diffusion "
                             f"policy, got {type(policy).__name__}")
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"algo.expectile must be in (0, 1), got {expectile}")
        if beta < 0:
            raise ValueError(f"algo.beta must be >= 0, got {beta}")
        if max_weight <= 0:
            raise ValueError(f"algo.max_weight must be > 0, got {max_weight}")
        if num_critics < 1:
            raise ValueError(f"algo.num_critics must be at least 1, got {num_critics}")
        super().__init__(policy, total_steps, name=name, lr=lr, gamma=gamma, tau=tau, reward=reward,
                         critic_horizon=policy.horizon, ema_decay=ema_decay, grad_clip=grad_clip,
                         drop_truncated=drop_truncated)
        self.expectile, self.beta, self.max_weight = expectile, beta, max_weight
        self.actor_lr_decay = actor_lr_decay
        self.critic = build_critic(policy, policy.horizon, num_critics, critic_hidden_dims, layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = build_critic(policy, 0, 1, critic_hidden_dims, layer_norm)
        self.nets = {"critic": self.critic, "critic_target": self.critic_target, "value": self.value}
        self.optimizers = {"value": self.adam(self.value), "policy": self.adam(policy),
                           "critic": self.adam(self.critic)}

    def actor_lr(self) -> float:
        """IQL's cosine decay of the actor's learning rate from ``lr`` to 0 over the run (or ``lr``)."""
        if not self.actor_lr_decay:
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(self.steps / max(self.total_steps, 1), 1.0)))

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        weight = self.critic_weight(batch)
        loss_v, metrics = value_loss(self.value, self.critic_target, batch, self.expectile, weight)
        self.step("value", loss_v)
        actor_lr = self.actor_lr()
        for group in self.optimizers["policy"].param_groups:
            group["lr"] = actor_lr
        loss_pi, actor_metrics = actor_loss(self.policy, self.critic_target, self.value, batch,
                                            self.policy_batch(batch), self.beta, self.max_weight)
        self.step("policy", loss_pi)
        loss_q, q_metrics = q_loss(self.critic, self.value, batch, weight)
        self.step("critic", loss_q)
        polyak_update(self.critic_target, self.critic, self.tau)
        self.after_update()
        return {"loss": loss_q.item(), **metrics, **actor_metrics, **q_metrics, "actor_lr": actor_lr}
