"""RL-100's iterative offline improvement (Lei et al. 2025; algorithms.md §7a-c): PPO over the denoising steps
of a diffusion policy with IQL advantages from a fixed buffer, where an off-policy estimate decides which
iterate becomes the reference.

Every update takes one batch of chunk-critic windows from the dataset:

1. **Critics** (all run long): IQL's expectile value ``V(s)``, chunk critics ``Q(s, a_{t:t+H})`` backed up
   onto ``V`` and their Polyak targets (:mod:`robopol.algos.iql`'s losses).
2. **Imitation** for the first ``bc_steps`` updates (RL-100's stage 1: the policy and the critics learn from
   the same data). At the switch the policy (its EMA when kept) is copied into the trained network, the
   frozen network of the early denoising steps and the *reference* (``bc_steps=0``: at once).
3. **PPO over denoising steps** after the switch (DPPO's per-step machinery, :mod:`robopol.algos.dppo`): the
   reference runs the DDIM chain on the batch's observations with ``N(0, sampling_std^2)`` noise on the last
   ``ft_steps`` steps. Each sample's advantage is ``A = min_i Q'_i(s, a_0) - V(s)`` at the reference's clean
   chunk ``a_0``, normalised over the batch. The surrogate is DPPO's clipped per-step term with ratios of the
   trained network against the reference, so the policy can move only a trust region away from the last
   accepted iterate.
4. **OPE gate** every ``gate_every`` PPO updates (:class:`robopol.algos.ope.OPEGate` with
   :func:`robopol.algos.ope.critic_estimate`): the trained policy's noise-free chain and the reference's are
   scored on the batch's states, with the same noise, by the current target critics. A candidate that beats
   the reference by more than ``gate_margin`` becomes the new reference; otherwise optimisation goes on from
   where it is, against the old reference.

Evaluation and deployment run the reference: the last accepted iterate (the imitation policy until the
first acceptance), its early steps by the frozen network.

Deviations from RL-100's code: one optimiser step per batch on the sum over denoising steps (DPPO's form)
where RL-100 steps once per denoising step; the chain's means are eta = 0 DDIM with a fixed exploration std,
as in ``algo=dppo``; the gate's estimator is the chunk critic (AM-Q through a learned model is
:func:`robopol.algos.ope.amq_estimate`, not wired in here); and both policies are scored afresh at every gate,
because the critics keep learning and a score from an older critic is not comparable.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from robopol.algos.dppo import DenoisingSteps, FinetunedDiffusion, run_chain, step_log_probs
from robopol.algos.iql import q_loss, value_loss
from robopol.algos.offline import OfflineRL, build_critic, clip_action
from robopol.algos.ope import OPEGate, critic_estimate
from robopol.algos.ppo import clipped_surrogate_loss
from robopol.critics import aggregate, polyak_update
from robopol.critics.nets import CriticEnsemble
from robopol.policies.diffusion import DiffusionPolicy


def normalized(values: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the batch (std floored at 1e-8)."""
    return (values - values.mean()) / values.std(correction=0).clamp_min(1e-8)


@torch.no_grad()
def reference_rollout(frozen: DiffusionPolicy, reference: DiffusionPolicy, critic_target: CriticEnsemble,
                      value: CriticEnsemble, obs: torch.Tensor, levels: torch.Tensor, ft_steps: int,
                      sampling_std: float, logprob_std: float,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The reference's noisy chain on ``obs`` (B, To, D), its per-step log-densities over the whole chunk and
    the normalised advantages ``min_i Q'_i(s, a_0) - V(s)`` of its clean chunk."""
    noise = torch.randn((obs.shape[0], reference.horizon, reference.action_dim), generator=generator,
                        device=obs.device, dtype=obs.dtype)
    chain = run_chain(frozen, reference, obs, noise, levels, ft_steps, sampling_std, generator)
    logp = step_log_probs(reference, obs, chain, levels[-ft_steps - 1:], logprob_std, reference.horizon)
    chunk = clip_action(reference.to_external(chain[:, -1]))
    advantage = aggregate(critic_target(obs, chunk), "min") - value(obs)[0]
    return {"chain": chain, "logp": logp, "advantage": normalized(advantage), "raw_advantage": advantage}


def ppo_loss(policy: DiffusionPolicy, obs: torch.Tensor, rollout: dict[str, torch.Tensor], ft_levels: torch.Tensor,
             logprob_std: float, advantage_weights: torch.Tensor,
             clips: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """DPPO's clipped surrogate per (sample, denoising step), ratios against the reference's log-densities."""
    logp = step_log_probs(policy, obs, rollout["chain"], ft_levels, logprob_std, policy.horizon)
    advantages = rollout["advantage"][:, None] * advantage_weights.to(logp.device)
    loss, metrics = clipped_surrogate_loss(logp, rollout["logp"], advantages, clips.to(logp.device))
    return loss, {**metrics, "ppo_loss": loss.item(), "advantage": rollout["raw_advantage"].mean().item()}


class RL100(OfflineRL):
    """RL-100's OPE-gated offline PPO over denoising steps (see the module docstring)."""

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "rl100", lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005, reward: str = "store", num_critics: int = 2,
                 critic_hidden_dims: tuple[int, ...] = (256, 256), layer_norm: bool = True,
                 expectile: float = 0.7, ema_decay: float = 0.0, grad_clip: float = 0.0,
                 drop_truncated: bool = True, bc_steps: int = 5000, ppo_lr: float = 1e-5, ft_steps: int = 5,
                 sampling_std: float = 0.1, logprob_std: float = 0.1, clip: float = 0.01, clip_base: float = 0.001,
                 clip_rate: float = 3.0, gamma_denoise: float = 0.99, gate_every: int = 100,
                 gate_margin: float = 0.0) -> None:
        if not isinstance(policy, DiffusionPolicy) or policy.sampler != "ddim":
            raise ValueError(f"algo=rl100 fine-tunes the DDIM chain of a diffusion policy: use "
                             f"policy=diffusion_mlp (policy.sampler=ddim), got {type(policy).__name__}"
                             f"{f' with sampler {policy.sampler}' if isinstance(policy, DiffusionPolicy) else ''}")
        if not 0 <= bc_steps < total_steps:
            raise ValueError(f"algo.bc_steps must be in [0, trainer.steps={total_steps}) so that PPO runs, got "
                             f"{bc_steps}")
        if ppo_lr <= 0 or not 0.0 < expectile < 1.0:
            raise ValueError(f"algo.ppo_lr must be positive and algo.expectile in (0, 1), got {ppo_lr} and "
                             f"{expectile}")
        if gate_every < 1:
            raise ValueError(f"algo.gate_every must be at least 1, got {gate_every}")
        super().__init__(policy, total_steps, name=name, lr=lr, gamma=gamma, tau=tau, reward=reward,
                         critic_horizon=policy.horizon, ema_decay=ema_decay, grad_clip=grad_clip,
                         drop_truncated=drop_truncated)
        self.expectile, self.bc_steps, self.ppo_lr = expectile, bc_steps, ppo_lr
        self.denoising = DenoisingSteps.build(policy, ft_steps, sampling_std, logprob_std, clip, clip_base,
                                              clip_rate, gamma_denoise)
        self.gate_every, self.gate_margin = gate_every, gate_margin
        self.critic = build_critic(policy, policy.horizon, num_critics, critic_hidden_dims, layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = build_critic(policy, 0, 1, critic_hidden_dims, layer_norm)
        self.frozen = copy.deepcopy(policy).requires_grad_(False)
        self.reference = copy.deepcopy(policy).requires_grad_(False)
        self.nets = {"critic": self.critic, "critic_target": self.critic_target, "value": self.value,
                     "frozen": self.frozen, "reference": self.reference}
        self.optimizers = {"value": self.adam(self.value), "critic": self.adam(self.critic),
                           "policy": self.adam(policy)}
        self.gate_stats = {"gate_accepted": 0.0}
        if bc_steps == 0:
            self.start_improvement()

    @property
    def improving(self) -> bool:
        """Past the imitation phase: PPO against the reference."""
        return self.steps >= self.bc_steps

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        weight = self.critic_weight(batch)
        loss_v, metrics = value_loss(self.value, self.critic_target, batch, self.expectile, weight)
        self.step("value", loss_v)
        loss_q, q_metrics = q_loss(self.critic, self.value, batch, weight)
        self.step("critic", loss_q)
        polyak_update(self.critic_target, self.critic, self.tau)
        if self.improving:
            obs = batch["obs"]
            steps = self.denoising
            rollout = reference_rollout(self.frozen, self.reference, self.critic_target, self.value, obs,
                                        steps.levels, steps.ft_steps, steps.sampling_std, steps.logprob_std)
            policy_loss, actor_metrics = ppo_loss(self.policy, obs, rollout, steps.ft_levels, steps.logprob_std,
                                                  steps.advantage_weights, steps.clips)
            self.step("policy", policy_loss)
            if (self.steps - self.bc_steps + 1) % self.gate_every == 0:
                self.gate(obs)
            actor_metrics.update(self.gate_stats)
        else:
            policy_loss, actor_metrics = self.policy.loss(self.policy_batch(batch))
            self.step("policy", policy_loss)
        self.after_update()
        return {"loss": loss_q.item(), "policy_loss": policy_loss.item(), **metrics, **q_metrics,
                **actor_metrics}

    def start_improvement(self) -> None:
        """The end of imitation: the (EMA) policy becomes the trained network, the frozen early steps and the
        reference; the policy's learning rate drops to ``ppo_lr``."""
        imitation = (self.ema if self.ema is not None else self.policy).state_dict()
        for net in (self.policy, self.frozen, self.reference):
            net.load_state_dict(imitation)
        for group in self.optimizers["policy"].param_groups:
            group["lr"] = self.ppo_lr

    def gate(self, obs: torch.Tensor) -> bool:
        """Score the reference and the trained policy on ``obs`` with the same noise; the policy becomes the
        reference when its score is higher by more than ``gate_margin``."""
        estimate = functools.partial(critic_estimate, critic=self.critic_target, start_obs=obs,
                                     aggregation="min", seed=self.steps)
        gate = OPEGate(lambda policy: estimate(FinetunedDiffusion(self.frozen, policy, self.denoising.ft_steps)),
                       margin=self.gate_margin)
        reference_score = gate.reset(self.reference)
        accepted = gate.consider(self.policy)
        if accepted:
            self.reference.load_state_dict(self.policy.state_dict())
        self.gate_stats = {"gate_reference": reference_score, "gate_candidate": gate.history[-1][0],
                           "gate_accepted": self.gate_stats["gate_accepted"] + accepted}
        return accepted

    def after_update(self) -> None:
        if self.improving:  # the EMA serves imitation only; the deployed policy is the reference
            self.steps += 1
            return
        super().after_update()
        if self.improving:
            self.start_improvement()

    # ------------------------------------------------------------------ trainer interface

    def behaviour_policy(self) -> nn.Module:
        """The imitation policy (its EMA), then the reference: what the validation loss scores."""
        return self.reference if self.improving else super().behaviour_policy()

    def eval_policy(self) -> nn.Module:
        if not self.improving:
            return self.behaviour_policy()
        return FinetunedDiffusion(self.frozen, self.reference, self.denoising.ft_steps)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gate_stats": dict(self.gate_stats)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gate_stats = dict(state["gate_stats"])

    @classmethod
    def load_eval_policy(cls, ckpt, policy: nn.Module) -> nn.Module:
        """The reference's chain once PPO has started, the imitation policy before."""
        cfg = ckpt.config.algo
        if ckpt.step < cfg.bc_steps:
            return super().load_eval_policy(ckpt, policy)
        frozen = copy.deepcopy(policy)
        ckpt.load_modules({"reference": policy, "frozen": frozen})
        return FinetunedDiffusion(frozen, policy, cfg.ft_steps)
