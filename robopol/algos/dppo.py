"""Denoising-step PPO (DPPO, Ren et al. ICLR 2025; the PPO of RL-100; algorithms.md §7b, §8a): PPO where every
denoising step of a diffusion policy is a Gaussian action of a two-layer MDP.

The policy is :class:`robopol.policies.diffusion.DiffusionPolicy` on its DDIM grid of ``inference_steps``
levels. Step ``k`` of the chain is ``x_{k+1} ~ N(mu_theta(x_k), sigma^2)``: ``mu_theta`` is the deterministic
(eta = 0) DDIM update of :meth:`DiffusionPolicy.solver_step`, the one ``robopol eval`` and deployment run, so
the noise-free chain *is* the deployed policy, and ``sigma = sampling_std`` (DPPO's
``min_sampling_denoising_std``, 0.1) is the exploration added at each fine-tuned step, the last included.

- **Fine-tuned steps.** Only the last ``ft_steps`` denoising steps are trained. The earlier ones run a frozen
  copy of the initial network, noise-free, at rollout and at evaluation alike.
- **Rollout** (:meth:`DPPO.act`): the fine-tuned part of the chain ``x_{K-K'}, ..., x_K`` is stored with each
  step's log-density under the rollout network (:func:`step_log_probs`). The executed actions are the first
  ``action_steps`` of the final chunk.
- **Log-densities** (:func:`step_log_probs`): ``log N(x_{k+1}; mu_theta(x_k), sigma_lp)`` per element with
  ``sigma_lp = max(sigma, logprob_std)`` (the floor keeps the ratios finite), clamped to [-5, 2] and averaged
  over the executed chunk steps and action dims, as DPPO does; one ``(B, K')`` tensor, one network call.
- **Surrogate.** One clipped PPO term per (sample, step), with the env-level GAE advantage (normalised)
  times ``gamma_denoise ** (K' - 1 - k)``, so the noisiest step counts least, and a clip that grows from
  ``clip_base`` at the noisiest step to ``clip`` at the last one, ``(exp(rate u) - 1) / (exp(rate) - 1)`` of
  the way at ``u = k / (K' - 1)`` (:func:`step_clips`): noisy steps are clipped tighter.
- **Critic** ``V(s)``, its loss, GAE and normalisation are :class:`PPO`'s; the exploration std is fixed, so
  there is no entropy bonus.
- **Consistency head** (``student=true``, RL-100's CD head): a one-step
  :class:`robopol.policies.consistency.ConsistencyPolicy`, warm-started as a copy of the diffusion head, is
  distilled after every iteration from the *current* noise-free chain by same-noise action matching
  (:func:`student_loss`) over the rollout's observations, so the one-step policy follows the RL
  improvements. ``deploy=student`` makes it the evaluated and deployed policy.

Chunks: with ``policy.action_steps = Ta > 1`` a decision executes the chunk's first Ta actions open loop
(its reward is their sum, ``algo.gamma`` discounts per decision) and the log-densities cover those Ta steps.

Deviation: RL-100 samples with DDIM eta = 1 (its noise scale sets sigma); here the means are eta = 0 and the
std is the floor, so that evaluation needs no second sampler.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Normal

from robopol.algos.ppo import PPO, clipped_surrogate_loss
from robopol.distributed import sync_gradients
from robopol.errors import ConfigError
from robopol.policies.base import check_choice
from robopol.policies.consistency import ConsistencyPolicy
from robopol.policies.diffusion import DiffusionPolicy

LOGPROB_CLAMP = (-5.0, 2.0)
"""DPPO's clamp of every element's log-density before the mean."""
DEPLOY = ("chain", "student")


def chain_levels(policy: DiffusionPolicy) -> torch.Tensor:
    """The ``K + 1`` levels of the DDIM chain: the sampler's timesteps, then -1 (the clean chunk)."""
    _, timesteps = policy.sampling_scheduler("ddim", policy.inference_steps)
    return torch.tensor([*timesteps, -1])


def step_clips(ft_steps: int, clip_base: float, clip: float, rate: float) -> torch.Tensor:
    """Clip epsilon of each fine-tuned step, noisiest first: ``clip_base`` growing exponentially to ``clip``."""
    if ft_steps == 1:
        return torch.tensor([clip])
    u = torch.arange(ft_steps, dtype=torch.float64) / (ft_steps - 1)
    growth = (torch.exp(rate * u) - 1) / math.expm1(rate) if rate > 0 else u
    return (clip_base + (clip - clip_base) * growth).float()


@dataclass(frozen=True)
class DenoisingSteps:
    """The fine-tuned end of a DDIM chain, as DPPO and RL-100's offline PPO train it: the ``ft_steps`` last
    steps, their exploration std, the log-density std floor, the chain's levels (all and fine-tuned), the clip
    of each fine-tuned step and its advantage weight ``gamma_denoise ** (K' - 1 - k)``."""

    ft_steps: int
    sampling_std: float
    logprob_std: float
    levels: torch.Tensor
    ft_levels: torch.Tensor
    clips: torch.Tensor
    advantage_weights: torch.Tensor

    @classmethod
    def build(cls, policy: DiffusionPolicy, ft_steps: int, sampling_std: float, logprob_std: float, clip: float,
              clip_base: float, clip_rate: float, gamma_denoise: float) -> DenoisingSteps:
        """Check the ``algo.*`` fields against ``policy``'s DDIM chain and derive the per-step tensors."""
        steps = policy.inference_steps
        if not 1 <= ft_steps <= steps:
            raise ValueError(f"algo.ft_steps must be in [1, policy.inference_steps={steps}], got {ft_steps}")
        if sampling_std <= 0 or logprob_std <= 0:
            raise ValueError(f"algo.sampling_std and algo.logprob_std must be positive (the step Gaussians need a "
                             f"std), got {sampling_std} and {logprob_std}")
        if not 0 < clip_base <= clip:
            raise ValueError(f"algo.clip_base must be in (0, algo.clip={clip}], got {clip_base}")
        if not 0 < gamma_denoise <= 1:
            raise ValueError(f"algo.gamma_denoise must be in (0, 1], got {gamma_denoise}")
        levels = chain_levels(policy)
        return cls(ft_steps, sampling_std, max(sampling_std, logprob_std), levels, levels[-ft_steps - 1:],
                   step_clips(ft_steps, clip_base, clip, clip_rate),
                   gamma_denoise ** torch.arange(ft_steps - 1, -1, -1, dtype=torch.float32))


def step_log_probs(policy: DiffusionPolicy, obs: torch.Tensor, chain: torch.Tensor, levels: torch.Tensor,
                   std: float, action_steps: int) -> torch.Tensor:
    """``(B, K')`` log-densities of the chain's steps ``chain[:, k] -> chain[:, k + 1]`` under ``policy``.

    ``obs`` (B, To, obs_dim); ``chain`` (B, K' + 1, H, A) in the head's internal space; ``levels`` the K' + 1
    levels the chain passes. Each element's ``log N(x_{k+1}; mu(x_k), std)`` is clamped to [-5, 2], then
    averaged over the first ``action_steps`` chunk steps and the action dims.
    """
    batch, ft_steps = chain.shape[0], chain.shape[1] - 1
    x = chain[:, :-1].flatten(0, 1)
    level = levels[:-1].repeat(batch)
    next_level = levels[1:].repeat(batch)
    mean = policy.solver_step(x, level, next_level, obs.repeat_interleave(ft_steps, dim=0))
    logp = Normal(mean, std).log_prob(chain[:, 1:].flatten(0, 1)).clamp(*LOGPROB_CLAMP)
    return logp[:, :action_steps].mean(dim=(-2, -1)).view(batch, ft_steps)


def run_chain(frozen: DiffusionPolicy, policy: DiffusionPolicy, obs: torch.Tensor, x: torch.Tensor,
              levels: torch.Tensor, ft_steps: int, std: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The DDIM chain from noise ``x`` (B, H, A): the frozen network for the first steps, ``policy`` plus
    ``N(0, std^2)`` noise for the last ``ft_steps``. Returns the fine-tuned part (B, ft_steps + 1, H, A)."""
    first = len(levels) - 1 - ft_steps
    batch = x.shape[0]
    states = [x] if first == 0 else []
    for i in range(len(levels) - 1):
        level, next_level = levels[i].expand(batch), levels[i + 1].expand(batch)
        x = (frozen if i < first else policy).solver_step(x, level, next_level, obs)
        if i >= first and std > 0:
            x = x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if i >= first - 1:
            states.append(x)
    return torch.stack(states, dim=1)


def student_loss(student: ConsistencyPolicy, frozen: DiffusionPolicy, policy: DiffusionPolicy, obs: torch.Tensor,
                 levels: torch.Tensor, ft_steps: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Same-noise action matching: the student's one call from noise against the current noise-free chain."""
    noise = torch.randn((obs.shape[0], policy.horizon, policy.action_dim), generator=generator, device=obs.device,
                        dtype=obs.dtype)
    with torch.no_grad():
        goal = run_chain(frozen, policy, obs, noise, levels, ft_steps, 0.0)[:, -1]
    level = student.head.level_at(1.0).to(obs.device).expand(obs.shape[0])
    loss = (student.consistency(noise, level, obs) - goal).pow(2).mean()
    return loss, {"student_mse": loss.item()}


class FinetunedDiffusion(nn.Module):
    """The deployed DPPO policy: the noise-free chain, its early steps by the frozen network."""

    def __init__(self, frozen: DiffusionPolicy, policy: DiffusionPolicy, ft_steps: int) -> None:
        super().__init__()
        self.frozen, self.policy, self.ft_steps = frozen, policy, ft_steps
        for key in ("obs_dim", "action_dim", "obs_steps", "horizon", "action_steps", "discrete_dims"):
            setattr(self, key, getattr(policy, key))

    @property
    def nets(self) -> tuple[nn.Module, nn.Module]:
        """The networks whose calls count as function evaluations."""
        return self.frozen.net, self.policy.net

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None) -> torch.Tensor:
        """``obs`` (B, To, obs_dim) normalised -> the chain's clean chunk (B, H, A), normalised actions."""
        if sampler is not None or steps is not None:
            raise ConfigError("a DPPO checkpoint deploys the DDIM chain it fine-tuned; drop sampler= and steps=")
        self.policy.check_obs(obs)
        x = torch.randn((obs.shape[0], self.horizon, self.action_dim), generator=generator, device=obs.device,
                        dtype=obs.dtype)
        chain = run_chain(self.frozen, self.policy, obs, x, chain_levels(self.policy), self.ft_steps, 0.0)
        return self.policy.to_external(chain[:, -1])


class DPPO(PPO):
    """PPO over the denoising steps of a diffusion policy (see the module docstring)."""

    POLICY = DiffusionPolicy
    POLICY_OPTION = "diffusion_mlp"

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "dppo", ft_steps: int = 5,
                 sampling_std: float = 0.1, logprob_std: float = 0.1, clip_base: float = 0.001,
                 clip_rate: float = 3.0, gamma_denoise: float = 0.99, student: bool = False,
                 student_lr: float = 1e-4, student_epochs: int = 1, deploy: str = "chain", **ppo: Any) -> None:
        super().__init__(policy, total_steps, name=name, **ppo)
        if policy.obs_steps != 1:
            raise ValueError(f"algo=dppo rolls out the current observation only: set policy.obs_steps=1, got "
                             f"{policy.obs_steps}")
        if policy.sampler != "ddim":
            raise ValueError(f"algo=dppo fine-tunes the DDIM chain: set policy.sampler=ddim, got {policy.sampler}")
        self.denoising = DenoisingSteps.build(policy, ft_steps, sampling_std, logprob_std, self.clip, clip_base,
                                              clip_rate, gamma_denoise)
        check_choice("algo.deploy", deploy, DEPLOY)
        if deploy == "student" and not student:
            raise ValueError("algo.deploy=student needs the consistency head: set algo.student=true")
        if student_epochs < 1:
            raise ValueError(f"algo.student_epochs must be at least 1, got {student_epochs}")
        self.frozen = copy.deepcopy(policy).requires_grad_(False)
        self.deploy, self.student_epochs = deploy, student_epochs
        self.student = ConsistencyPolicy(policy.obs_dim, policy.action_dim, policy) if student else None
        self.student_optimizer = (torch.optim.Adam(self.student.parameters(), lr=student_lr)
                                  if self.student is not None else None)

    def update(self, rollout: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = super().update(rollout)
        if self.student is not None:
            metrics.update(self.distill_student(rollout["obs"].flatten(0, 1)))
        return metrics

    def distill_student(self, obs: torch.Tensor) -> dict[str, float]:
        """``student_epochs`` passes of action matching over ``obs`` (N, obs_dim) in ``minibatches`` batches."""
        assert self.student is not None and self.student_optimizer is not None
        total, count = 0.0, 0
        for _ in range(self.student_epochs):
            for idx in torch.randperm(obs.shape[0]).chunk(self.minibatches):
                loss, _ = student_loss(self.student, self.frozen, self.policy, obs[idx][:, None],
                                       self.denoising.levels, self.denoising.ft_steps)
                self.student_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                sync_gradients(self.student.parameters())
                self.student_optimizer.step()
                total, count = total + loss.item(), count + 1
        return {"student_mse": total / count}

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        policy_obs = obs[:, None]
        x = torch.randn(obs.shape[0], self.policy.horizon, self.policy.action_dim)
        steps = self.denoising
        chain = run_chain(self.frozen, self.policy, policy_obs, x, steps.levels, steps.ft_steps, steps.sampling_std)
        logp = step_log_probs(self.policy, policy_obs, chain, steps.ft_levels, steps.logprob_std,
                              self.policy.action_steps)
        executed = self.policy.to_external(chain[:, -1])[:, :self.policy.action_steps]
        action = executed if self.policy.action_steps > 1 else executed[:, 0]  # a chunk, or one action
        return {"action": action, "logp": logp, "value": self.value(obs), "chain": chain}

    def policy_terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logp = step_log_probs(self.policy, batch["obs"][:, None], batch["chain"], self.denoising.ft_levels,
                              self.denoising.logprob_std, self.policy.action_steps)
        return logp, torch.zeros(()), torch.zeros(())  # fixed exploration noise: no entropy to reward

    def surrogate(self, logp: torch.Tensor, old_logp: torch.Tensor,
                  advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        steps = self.denoising
        return clipped_surrogate_loss(logp, old_logp, advantages[:, None] * steps.advantage_weights, steps.clips)

    def policy_kl(self, batch: dict[str, torch.Tensor], approx_kl: float) -> float:
        return approx_kl

    def exploration_std(self) -> float:
        return self.denoising.sampling_std

    # ------------------------------------------------------------------ trainer interface

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "frozen": self.frozen,
                **({"student": self.student} if self.student is not None else {})}

    def eval_policy(self) -> nn.Module:
        if self.deploy == "student":
            return self.student
        return FinetunedDiffusion(self.frozen, self.policy, self.denoising.ft_steps)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.student_optimizer is not None:
            state["student_optimizer"] = self.student_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.student_optimizer is not None:
            self.student_optimizer.load_state_dict(state["student_optimizer"])

    @classmethod
    def load_eval_policy(cls, ckpt: Any, policy: nn.Module) -> nn.Module:
        """Rebuild :meth:`eval_policy` from a checkpoint around a freshly built ``policy``."""
        cfg = ckpt.config.algo
        if cfg.deploy == "student":
            student = ConsistencyPolicy(policy.obs_dim, policy.action_dim, policy)
            ckpt.load_modules({"student": student})
            return student
        frozen = copy.deepcopy(policy)
        ckpt.load_modules({"policy": policy, "frozen": frozen})
        return FinetunedDiffusion(frozen, policy, cfg.ft_steps)
