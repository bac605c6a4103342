"""Q-chunking (QC; Li, Zhou, Levine, NeurIPS 2025; algorithms.md §5a): a critic over whole action chunks.

The critic ``Q(s_t, a_{t:t+h})`` scores the chunk the policy executes open loop, so its h-step backup

    y = sum_{k<h} gamma^k r_{t+k} + gamma^h * mask * agg_i Q'_i(s_{t+h}, a'),   a' ~ pi(s_{t+h})

is unbiased: it conditions on every executed action, nothing is corrected off-policy. The sampler supplies
the in-chunk return, the terminal ``mask`` and ``gamma**n`` (``n < h`` when a terminal ends the chunk early,
which then bootstraps nothing); windows that run into a time limit are dropped from the TD loss by default,
as QC does. Two ways to act (``algo.extraction``):

- ``best_of_n`` (QC): a flow BC policy over chunks (its loss masked by ``valid``) proposes ``best_of_n``
  chunks, the critic picks the best. The target's a' is chosen the same way (``backup=best_of_n``, QC's
  code: the online critic scores ``best_of_n`` samples at ``s_{t+h}``) or is one plain policy sample
  (``backup=sample``: an expected-SARSA backup of the behaviour policy, ``best_of_n`` times cheaper; the
  setting of robopol's measured benchmark, see docs/offline-rl.md).
- ``distill`` (QC-FQL): FQL's one-step actor ``mu(s, z)`` regresses the BC flow's ODE output from the same
  noise (weight ``alpha``) while maximising the mean Q of its clipped chunk; it also provides the target's a'.

Either way the chunk is executed whole before re-planning (``policy.action_steps`` must equal
``policy.horizon``: re-planning every step is a different algorithm).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from robopol.algos.offline import (
    BestOfN,
    OfflineRL,
    OneStepActor,
    build_critic,
    clip_action,
    load_best_of_n,
    policy_device,
)
from robopol.critics import aggregate, chunk_td_target, polyak_update, q_loss_scale, td_loss
from robopol.critics.nets import CriticEnsemble
from robopol.policies.base import check_choice

EXTRACTIONS = ("best_of_n", "distill")
BACKUPS = ("best_of_n", "sample")


def critic_loss(critic: CriticEnsemble, target_critic: CriticEnsemble, batch: dict[str, torch.Tensor],
                next_chunk: torch.Tensor, q_agg: str, weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """Chunked TD loss with the h-step backup onto the target critic at ``(next_obs, next_chunk)``."""
    with torch.no_grad():
        next_q = aggregate(target_critic(batch["next_obs"], next_chunk), q_agg)
        target = chunk_td_target(batch["reward_sum"], batch["discount"], batch["mask"], next_q)
    q = critic(batch["obs"], clip_action(batch["action"]))
    loss = td_loss(q, target, weight)
    return loss, {"critic_loss": loss.item(), "q_mean": q.mean().item(), "target_mean": target.mean().item()}


def distill_actor_loss(actor: OneStepActor, flow: nn.Module, critic: CriticEnsemble, obs: torch.Tensor,
                       alpha: float, normalize_q: bool,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """FQL's one-step actor loss ``alpha * ||mu(s, z) - ODE(s, z)||^2 - mean_i Q_i(s, clip(mu(s, z)))``; with
    ``normalize_q`` the Q term is divided by ``stopgrad(mean |Q|)``."""
    noise = torch.randn((obs.shape[0], actor.horizon, actor.action_dim), generator=generator,
                        device=obs.device, dtype=obs.dtype)
    with torch.no_grad():
        goal = flow.to_external(flow.integrate(noise, obs, flow.sampler, flow.inference_steps, generator))
    chunk = actor(obs, noise)
    distill = (chunk - goal).pow(2).mean()
    q = critic(obs, clip_action(chunk)).mean(dim=0)
    q_term = -q.mean() * (q_loss_scale(q, 1.0) if normalize_q else 1.0)
    loss = alpha * distill + q_term
    return loss, {"distill_mse": distill.item(), "actor_q": q.mean().item()}


class QC(OfflineRL):
    """Q-chunking with best-of-N or distilled one-step extraction (see the module docstring)."""

    online_finetune = True
    """Can continue online after its offline steps (``online.steps``, :mod:`robopol.train.finetune`)."""

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "qc", lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005, reward: str = "store", num_critics: int = 2,
                 critic_hidden_dims: tuple[int, ...] = (512, 512, 512, 512), layer_norm: bool = True,
                 q_agg: str = "mean", extraction: str = "best_of_n", best_of_n: int = 32, backup: str = "best_of_n",
                 alpha: float = 100.0, normalize_q_loss: bool = False,
                 actor_hidden_dims: tuple[int, ...] = (512, 512, 512, 512), ema_decay: float = 0.0,
                 grad_clip: float = 0.0, drop_truncated: bool = True) -> None:
        super().__init__(policy, total_steps, name=name, lr=lr, gamma=gamma, tau=tau, reward=reward,
                         critic_horizon=policy.horizon, ema_decay=ema_decay, grad_clip=grad_clip,
                         drop_truncated=drop_truncated)
        check_choice("algo.extraction", extraction, EXTRACTIONS)
        check_choice("algo.backup", backup, BACKUPS)
        if best_of_n < 1:
            raise ValueError(f"algo.best_of_n must be at least 1, got {best_of_n}")
        check_choice("algo.q_agg", q_agg, ("min", "mean"))
        if policy.action_steps != policy.horizon:
            raise ValueError(f"QC executes whole chunks open loop: set policy.action_steps=policy.horizon "
                             f"(got action_steps={policy.action_steps}, horizon={policy.horizon})")
        if not hasattr(policy, "integrate"):
            raise ValueError("QC needs a generative (flow or diffusion) policy to propose chunks")
        self.extraction, self.best_of_n, self.q_agg, self.backup = extraction, best_of_n, q_agg, backup
        self.alpha, self.normalize_q_loss = alpha, normalize_q_loss
        self.critic = build_critic(policy, policy.horizon, num_critics, critic_hidden_dims, layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.nets = {"critic": self.critic, "critic_target": self.critic_target}
        self.optimizers = {"critic": self.adam(self.critic), "policy": self.adam(policy)}
        if extraction == "distill":
            self.actor = one_step_actor(policy, actor_hidden_dims).to(policy_device(policy))
            self.nets["actor"] = self.actor
            self.optimizers["actor"] = self.adam(self.actor)

    @torch.no_grad()
    def next_chunks(self, next_obs: torch.Tensor) -> torch.Tensor:
        """a' at s_{t+h}: the one-step actor's chunk (distill), the best of ``best_of_n`` policy chunks by the
        online critic (backup=best_of_n) or one policy sample (backup=sample); clipped."""
        if self.extraction == "distill":
            return self.actor.sample(next_obs)
        if self.backup == "best_of_n":
            return BestOfN(self.policy, self.critic, self.best_of_n, self.q_agg).sample(next_obs)
        return clip_action(self.policy.sample(next_obs))

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        loss, metrics = critic_loss(self.critic, self.critic_target, batch, self.next_chunks(batch["next_obs"]),
                                    self.q_agg, self.critic_weight(batch))
        self.step("critic", loss)
        bc_loss, bc_metrics = self.policy.loss(self.policy_batch(batch))
        self.step("policy", bc_loss)
        metrics.update(bc_metrics)
        if self.extraction == "distill":
            self.critic.requires_grad_(False)  # the actor's Q term trains the actor only
            actor_loss, actor_metrics = distill_actor_loss(self.actor, self.policy, self.critic, batch["obs"],
                                                           self.alpha, self.normalize_q_loss)
            self.step("actor", actor_loss)
            self.critic.requires_grad_(True)
            metrics.update(actor_metrics)
        polyak_update(self.critic_target, self.critic, self.tau)
        self.after_update()
        return {"loss": loss.item(), **metrics}

    def eval_policy(self) -> nn.Module:
        if self.extraction == "distill":
            return self.actor
        return BestOfN(self.behaviour_policy(), self.critic, self.best_of_n, self.q_agg)

    @classmethod
    def load_eval_policy(cls, ckpt: Any, policy: nn.Module) -> nn.Module:
        cfg = ckpt.config.algo
        policy = super().load_eval_policy(ckpt, policy)
        if cfg.extraction == "distill":
            actor = one_step_actor(policy, cfg.actor_hidden_dims)
            ckpt.load_modules({"actor": actor})
            return actor
        return load_best_of_n(ckpt, policy, "critic")


def one_step_actor(policy: nn.Module, hidden_dims: Any) -> OneStepActor:
    """QC-FQL's one-step actor over the policy's observations, chunk and discrete action dims."""
    return OneStepActor(policy.obs_dim, policy.obs_steps, policy.action_dim, policy.horizon, policy.action_steps,
                        tuple(hidden_dims), discrete_dims=tuple(getattr(policy, "discrete_dims", ())))
