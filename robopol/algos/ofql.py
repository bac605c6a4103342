"""One-step flow Q-learning (OFQL, arXiv 2508.13904; algorithms.md §4): DQL's behaviour-regularised
actor-critic with the mean-flow head, so a chunk (or a single action) costs one network call in training and
at inference, with no backpropagation through a sampling chain and no distillation.

- Policy: :class:`robopol.policies.meanflow.MeanFlowPolicy`. Its one-step sample
  ``a_theta(s, eps) = eps + u_theta(eps, 0, 1; s)`` (robopol's t=0-noise form of OFQL's
  ``eps - u(eps, 0, 1)``) is differentiable, so the critic's gradient reaches the policy directly.
- Actor loss: the mean-flow BC loss (its JVP target) ``- alpha * mean_i Q_i(s, clip(a_theta(s, eps)))`` with
  ``alpha = eta / stopgrad(E|Q|)`` (:func:`robopol.critics.q_loss_scale`), so ``eta`` is scale-free.
- Critic: double Q over the chunk, TD target with the min over the target critics (DQL; ``q_agg=mean``
  averages them, as QC does) at ``clip(a_target(s', eps'))`` from the EMA ("target") actor; Polyak targets.

The chunk TD target uses the sampler's fields, so ``policy.horizon=1`` is OFQL on single actions and longer
horizons are chunked critics as in QC. The clipped chunk the actor's Q term sees is exactly the kind of
chunk the target uses (algorithms.md §0). Deviation: DQL updates its EMA actor every 5 steps after a 1000-step
delay; here the EMA moves every step (``ema_decay``), which needs no extra schedule.

Options beyond OFQL, for data where its actor exploits the critic (docs/offline-rl.md, cube-single play):
``q_scale > 0`` fixes ``alpha = eta / q_scale``; ``actor_q_agg=min`` maximises the most pessimistic critic;
``backup=expectile`` replaces the actor-based TD target by IQL's in-sample one (expectile V over the dataset
chunks, Q backed up onto V), so that no target evaluates an actor chunk.

Inference-time selection (DQL's, which OFQL inherits "as DQL"): with ``best_of_n > 1`` the evaluated and
deployed policy draws ``best_of_n`` one-step chunks in one batched actor call and executes the one the critic
values most (:class:`robopol.algos.offline.BestOfN`; DQL samples from a softmax over the Q values, the argmax
here is IDQL's and QC's form). It costs one batched critic call per chunk on top of the actor's; the
default ``best_of_n=1`` is OFQL's plain single sample.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from robopol.algos.iql import q_loss, value_loss
from robopol.algos.offline import BestOfN, OfflineRL, build_critic, clip_action, load_best_of_n
from robopol.critics import aggregate, chunk_td_target, polyak_update, q_loss_scale, td_loss
from robopol.critics.losses import AGGREGATIONS
from robopol.critics.nets import CriticEnsemble
from robopol.policies.base import check_choice
from robopol.policies.meanflow import MeanFlowPolicy

BACKUPS = ("actor", "expectile")


def one_step_chunk(policy: MeanFlowPolicy, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``a = eps + u(eps, 0, 1; s)`` in normalised action space, with gradient."""
    start = noise.new_zeros(noise.shape[0])
    return policy.to_external(noise + policy.average_velocity(noise, start, start + 1.0, obs))


def draw_noise(policy: MeanFlowPolicy, batch: int, like: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn((batch, policy.horizon, policy.action_dim), generator=generator, device=like.device,
                       dtype=like.dtype)


def critic_loss(critic: CriticEnsemble, target_critic: CriticEnsemble, target_actor: MeanFlowPolicy,
                batch: dict[str, torch.Tensor], weight: torch.Tensor | None,
                generator: torch.Generator | None = None, q_agg: str = "min") -> tuple[torch.Tensor, dict]:
    """Double-Q chunk TD loss; the target aggregates the target critics (``q_agg``: min or mean) at the target
    actor's chunk."""
    next_obs = batch["next_obs"]
    with torch.no_grad():
        next_chunk = clip_action(one_step_chunk(target_actor, next_obs,
                                                draw_noise(target_actor, next_obs.shape[0], next_obs, generator)))
        next_q = aggregate(target_critic(next_obs, next_chunk), q_agg)
        target = chunk_td_target(batch["reward_sum"], batch["discount"], batch["mask"], next_q)
    q = critic(batch["obs"], clip_action(batch["action"]))
    loss = td_loss(q, target, weight)
    return loss, {"critic_loss": loss.item(), "q_mean": q.mean().item(), "target_mean": target.mean().item()}


def actor_loss(policy: MeanFlowPolicy, critic: CriticEnsemble, bc_batch: dict[str, torch.Tensor], eta: float,
               generator: torch.Generator | None = None, q_scale: float = 0.0,
               actor_q_agg: str = "mean") -> tuple[torch.Tensor, dict]:
    """``L_FBC - alpha * mean agg Q(s, clip(a_theta(s, eps)))`` (``agg`` over the critics: ``actor_q_agg``),
    ``alpha = eta / stopgrad(mean |Q|)``, or ``eta / q_scale`` with a fixed ``q_scale > 0``."""
    bc, metrics = policy.loss(bc_batch, generator)
    obs = bc_batch["obs"]
    chunk = clip_action(one_step_chunk(policy, obs, draw_noise(policy, obs.shape[0], obs, generator)))
    q = aggregate(critic(obs, chunk), actor_q_agg)
    alpha = q.new_tensor(eta / q_scale) if q_scale > 0 else q_loss_scale(q, eta)
    loss = bc - alpha * q.mean()
    return loss, {**metrics, "actor_q": q.mean().item(), "alpha": alpha.item()}


class OFQL(OfflineRL):
    """One-step flow Q-learning (see the module docstring)."""

    online_finetune = True
    """Can continue online after its offline steps (``online.steps``, :mod:`robopol.train.finetune`)."""

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "ofql", lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005, reward: str = "store", eta: float = 0.1,
                 num_critics: int = 2, critic_hidden_dims: tuple[int, ...] = (512, 512, 512, 512),
                 layer_norm: bool = True, ema_decay: float = 0.995, grad_clip: float = 0.0,
                 drop_truncated: bool = True, q_agg: str = "min", q_scale: float = 0.0,
                 actor_q_agg: str = "mean", backup: str = "actor", expectile: float = 0.9,
                 best_of_n: int = 1) -> None:
        if not isinstance(policy, MeanFlowPolicy):
            raise ValueError(f"OFQL trains the mean-flow head: use policy=meanflow, got {type(policy).__name__}")
        if ema_decay <= 0:
            raise ValueError("OFQL's TD target uses the EMA (target) actor: algo.ema_decay must be in (0, 1)")
        if eta < 0 or q_scale < 0:
            raise ValueError(f"algo.eta and algo.q_scale must be >= 0, got {eta} and {q_scale}")
        check_choice("algo.q_agg", q_agg, AGGREGATIONS)
        check_choice("algo.actor_q_agg", actor_q_agg, AGGREGATIONS)
        check_choice("algo.backup", backup, BACKUPS)
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"algo.expectile must be in (0, 1), got {expectile}")
        if best_of_n < 1:
            raise ValueError(f"algo.best_of_n must be at least 1 (1: OFQL's single sample), got {best_of_n}")
        super().__init__(policy, total_steps, name=name, lr=lr, gamma=gamma, tau=tau, reward=reward,
                         critic_horizon=policy.horizon, ema_decay=ema_decay, grad_clip=grad_clip,
                         drop_truncated=drop_truncated)
        self.eta, self.q_agg, self.q_scale, self.actor_q_agg = eta, q_agg, q_scale, actor_q_agg
        self.critic = build_critic(policy, policy.horizon, num_critics, critic_hidden_dims, layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.nets = {"critic": self.critic, "critic_target": self.critic_target}
        self.optimizers = {"critic": self.adam(self.critic), "policy": self.adam(policy)}
        self.backup, self.expectile, self.best_of_n = backup, expectile, best_of_n
        if backup == "expectile":
            self.value = build_critic(policy, 0, 1, critic_hidden_dims, layer_norm)
            self.nets["value"] = self.value
            self.optimizers["value"] = self.adam(self.value)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        weight = self.critic_weight(batch)
        if self.backup == "expectile":  # IQL's in-sample backup: no policy chunk in any target
            loss_v, metrics = value_loss(self.value, self.critic_target, batch, self.expectile, weight)
            self.step("value", loss_v)
            loss, q_metrics = q_loss(self.critic, self.value, batch, weight)
            metrics.update(q_metrics)
        else:
            loss, metrics = critic_loss(self.critic, self.critic_target, self.ema, batch, weight, q_agg=self.q_agg)
        self.step("critic", loss)
        self.critic.requires_grad_(False)  # the actor's Q term trains the policy only
        policy_loss, actor_metrics = actor_loss(self.policy, self.critic, self.policy_batch(batch), self.eta,
                                                 q_scale=self.q_scale, actor_q_agg=self.actor_q_agg)
        self.step("policy", policy_loss)
        self.critic.requires_grad_(True)
        polyak_update(self.critic_target, self.critic, self.tau)
        self.after_update()
        return {"loss": loss.item(), "policy_loss": policy_loss.item(), **metrics, **actor_metrics}

    def eval_policy(self) -> nn.Module:
        if self.best_of_n == 1:
            return self.behaviour_policy()
        return BestOfN(self.behaviour_policy(), self.critic, self.best_of_n, self.q_agg)

    @classmethod
    def load_eval_policy(cls, ckpt: Any, policy: nn.Module) -> nn.Module:
        cfg = ckpt.config.algo
        policy = super().load_eval_policy(ckpt, policy)
        if cfg.get("best_of_n", 1) == 1:  # checkpoints from before the option hold no best_of_n
            return policy
        return load_best_of_n(ckpt, policy, "critic")
