"""Gaussian PPO (Schulman et al. 2017): the on-policy reference every generative online method is compared with.

The details follow cleanrl's ``ppo_continuous_action`` and rsl_rl's PPO (anchors.md):

- **Rollouts** (:mod:`robopol.train.online` collects them): ``num_envs x rollout_steps`` transitions with
  the normalised observation, the sampled action (before it is clipped to the action box), its log-density,
  the value, the old Gaussian's mean and std, the scaled reward, the next value and the episode-end flag.
- **Next values.** ``V(s_{t+1})`` inside an episode, ``V(final observation)`` where the time limit cut the
  episode (a truncation is not a terminal: the return continues past it), and 0 where it terminated.
- **Advantages.** GAE(gamma, lambda) from those next values (:func:`gae`), normalised per minibatch.
- **Losses.** The clipped surrogate, the clipped value loss, an entropy bonus, and gradient-norm clipping.
- **Learning rate.** ``fixed``, ``linear`` (annealed to 0 over ``trainer.steps`` iterations, cleanrl) or
  ``adaptive``: after each minibatch the analytic KL between the old and the new Gaussian moves the rate
  (divided by 1.5 above twice ``desired_kl``, multiplied by 1.5 below half of it; rsl_rl). The critic shares
  the policy's rate unless ``critic_lr`` gives it its own (then only ``linear`` moves it). For the first
  ``critic_warmup`` iterations only the critic learns (DPPO, for a fine-tuned policy).
- **Observation normalisation.** A running mean and variance over every observation the rollouts see.
  Observations are not clipped, so a checkpoint's normaliser (``meanstd``) reproduces the map exactly at
  evaluation and deployment.
- **Reward scaling.** Rewards are divided by the running standard deviation of the discounted return
  (gymnasium's ``NormalizeReward``). Evaluation reports raw returns.

An iteration runs ``epochs`` passes over ``minibatches`` shuffled minibatches of the rollout.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from robopol import distributed
from robopol.distributed import sync_gradients
from robopol.errors import DivergedError
from robopol.policies.base import check_choice
from robopol.policies.gaussian import GaussianPolicy, tanh_mlp

LR_SCHEDULES = ("fixed", "linear", "adaptive")


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, episode_end: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over ``(T, N)`` rollouts.

    ``next_values[t]`` is the value after step ``t`` (0 after a terminal); ``episode_end[t]`` stops the
    recursion from reaching across an episode boundary:
    ``A_t = delta_t + gamma lam (1 - end_t) A_{t+1}``, ``delta_t = r_t + gamma next_value_t - V_t``.
    """
    advantages = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        carry = delta + gamma * lam * (~episode_end[t]).to(rewards.dtype) * carry
        advantages[t] = carry
    return advantages, advantages + values


def clipped_surrogate_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                           clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``-mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))`` with ``rho = exp(logp - old_logp)``."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    loss = -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean().item()  # the k3 estimator, >= 0
        clip_fraction = ((ratio - 1).abs() > clip).float().mean().item()
    return loss, {"approx_kl": approx_kl, "clip_fraction": clip_fraction}


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """``0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``; ``clip <= 0``: plain 0.5 MSE."""
    error = (values - returns).pow(2)
    if clip > 0:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        error = torch.max(error, (clipped - returns).pow(2))
    return 0.5 * error.mean()


def adapt_lr(lr: float, kl: float, desired_kl: float, low: float = 1e-5, high: float = 1e-2) -> float:
    """rsl_rl's rule: shrink the rate by 1.5 when the KL exceeds twice the target, grow it below half."""
    if kl > 2.0 * desired_kl:
        lr /= 1.5
    elif kl < desired_kl / 2.0:
        lr *= 1.5
    return min(max(lr, low), high)


class RunningMeanStd(nn.Module):
    """Running mean and (population) variance of a stream of ``(B, *shape)`` batches (Chan et al.'s
    parallel update); buffers, so that checkpoints carry them."""

    def __init__(self, shape: tuple[int, ...] | int = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        """Fold in a batch; under torchrun, the batches of every rank (so all ranks keep equal statistics)."""
        batch = batch.to(torch.float64)
        n, mean, var = batch.shape[0], batch.mean(0), batch.var(0, unbiased=False)
        if distributed.current().enabled:
            sums = distributed.all_reduce_sum(torch.stack([torch.full_like(mean, n), batch.sum(0),
                                                           batch.pow(2).sum(0)]))
            n = sums[0].flatten()[0]
            mean = sums[1] / n
            var = (sums[2] / n - mean.pow(2)).clamp_min(0.0)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta.pow(2) * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def std(self, eps: float = 1e-8) -> torch.Tensor:
        return (self.var + eps).sqrt()


class PPO:
    """Gaussian PPO (see the module docstring). ``update(rollout)`` is one iteration."""

    online = True
    POLICY: type[nn.Module] = GaussianPolicy
    POLICY_OPTION = "gaussian"

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "ppo", num_envs: int = 8,
                 rollout_steps: int = 256, epochs: int = 10, minibatches: int = 32, lr: float = 3e-4,
                 lr_schedule: str = "fixed", desired_kl: float = 0.01, gamma: float = 0.99, lam: float = 0.95,
                 clip: float = 0.2, value_clip: float = 0.2, entropy_coef: float = 0.0, value_coef: float = 0.5,
                 max_grad_norm: float = 0.5, norm_advantages: bool = True,
                 critic_hidden_dims: tuple[int, ...] = (64, 64), critic_lr: float = 0.0, critic_warmup: int = 0,
                 obs_norm: bool = True, reward_norm: bool = True) -> None:
        if not isinstance(policy, self.POLICY):
            raise ValueError(f"algo={name} trains the {self.POLICY.__name__}: use policy={self.POLICY_OPTION}, got "
                             f"{type(policy).__name__}")
        check_choice("algo.lr_schedule", lr_schedule, LR_SCHEDULES)
        for key, value in (("num_envs", num_envs), ("rollout_steps", rollout_steps), ("epochs", epochs),
                           ("minibatches", minibatches)):
            if value < 1:
                raise ValueError(f"algo.{key} must be at least 1, got {value}")
        if num_envs * rollout_steps < minibatches:
            raise ValueError(f"algo.minibatches={minibatches} exceeds the {num_envs * rollout_steps} transitions "
                             f"of a rollout (algo.num_envs x algo.rollout_steps)")
        if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
            raise ValueError(f"algo.gamma and algo.lam must be in [0, 1], got {gamma} and {lam}")
        self.name, self.policy, self.total_steps = name, policy, total_steps
        self.num_envs, self.rollout_steps, self.epochs, self.minibatches = num_envs, rollout_steps, epochs, minibatches
        self.lr, self.initial_lr, self.lr_schedule, self.desired_kl = lr, lr, lr_schedule, desired_kl
        self.critic_lr = critic_lr  # 0: the critic shares the policy's rate, schedules included
        if critic_warmup < 0:
            raise ValueError(f"algo.critic_warmup must be >= 0, got {critic_warmup}")
        self.critic_warmup = critic_warmup
        self.gamma, self.lam, self.clip, self.value_clip = gamma, lam, clip, value_clip
        self.entropy_coef, self.value_coef, self.max_grad_norm = entropy_coef, value_coef, max_grad_norm
        self.norm_advantages, self.obs_norm, self.reward_norm = norm_advantages, obs_norm, reward_norm
        self.critic = tanh_mlp(policy.obs_dim, 1, critic_hidden_dims, out_gain=1.0)
        self.obs_rms = RunningMeanStd(policy.obs_dim)
        self.fixed_obs_map: tuple[torch.Tensor, torch.Tensor] | None = None
        self.return_rms = RunningMeanStd()
        # the discounted return of each env's current episode, which reward scaling tracks
        self.running_return = torch.zeros(num_envs, dtype=torch.float64)
        self.optimizer = torch.optim.Adam([{"params": list(policy.parameters())},
                                           {"params": list(self.critic.parameters())}], lr=lr, eps=1e-5)
        self.iterations = 0

    # ------------------------------------------------------------------ acting

    def fix_obs_normalization(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        """Normalise observations by the fixed map ``(x - center) * scale`` (a fine-tuned policy's own) instead
        of running statistics."""
        self.fixed_obs_map = (center.to(torch.float64), scale.to(torch.float64))

    def normalize_obs(self, raw: torch.Tensor, update: bool = False) -> torch.Tensor:
        """Flat raw observations (B, obs_dim) -> normalised; ``update`` first adds them to the statistics."""
        if self.fixed_obs_map is not None:
            center, scale = self.fixed_obs_map
            return ((raw - center) * scale).float()
        if not self.obs_norm:
            return raw.float()
        if update:
            self.obs_rms.update(raw)
        return ((raw - self.obs_rms.mean) / self.obs_rms.std()).float()

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sample actions for normalised ``obs`` (B, obs_dim); returns the rollout fields of this step."""
        dist = self.policy.distribution(obs)
        action = dist.sample()
        return {"action": action, "logp": dist.log_prob(action).sum(-1), "value": self.value(obs),
                "mean": dist.mean, "std": dist.stddev}

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def scale_rewards(self, rewards: torch.Tensor, episode_end: torch.Tensor) -> torch.Tensor:
        """Rewards divided by the running std of the discounted return (which this call updates)."""
        if not self.reward_norm:
            return rewards.float()
        self.running_return = self.running_return * self.gamma + rewards.to(torch.float64)
        self.return_rms.update(self.running_return)
        self.running_return = torch.where(episode_end, torch.zeros_like(self.running_return), self.running_return)
        return (rewards / self.return_rms.std()).float()

    # ------------------------------------------------------------------ learning

    def update(self, rollout: dict[str, torch.Tensor]) -> dict[str, float]:
        """One iteration on a ``(T, N, ...)`` rollout (keys as :func:`robopol.train.online.collect_rollout`)."""
        self.iterations += 1
        if self.lr_schedule == "linear":
            self.lr = self.initial_lr * max(0.0, 1.0 - (self.iterations - 1) / self.total_steps)
        advantages, returns = gae(rollout["reward"], rollout["value"], rollout["next_value"],
                                  rollout["episode_end"], self.gamma, self.lam)
        flat = {k: v.flatten(0, 1) for k, v in rollout.items()}
        flat["advantage"], flat["return"] = advantages.flatten(), returns.flatten()
        size = flat["advantage"].shape[0]
        self.begin_update()
        sums: dict[str, float] = {}
        count = 0
        for _ in range(self.epochs):
            for idx in torch.randperm(size).chunk(self.minibatches):
                metrics = self._minibatch_step({k: v[idx] for k, v in flat.items()})
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        explained = 1.0 - (flat["return"] - flat["value"]).var() / flat["return"].var().clamp_min(1e-8)
        return {**{k: v / count for k, v in sums.items()}, "lr": self.lr, "explained_variance": explained.item(),
                "action_std": self.exploration_std()}

    def exploration_std(self) -> float:
        """The mean standard deviation of the exploration noise (logged)."""
        return self.policy.log_std.exp().mean().item()

    def begin_update(self) -> None:
        """Called before the epochs of an iteration (the rollout's policy is still the current one)."""

    def policy_terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The minibatch's new log-densities of the stored actions (B,), the policy entropy and any extra
        policy loss (none for the Gaussian)."""
        dist = self.policy.distribution(batch["obs"])
        return dist.log_prob(batch["action"]).sum(-1), dist.entropy().sum(-1).mean(), torch.zeros(())

    def surrogate(self, logp: torch.Tensor, old_logp: torch.Tensor,
                  advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped surrogate loss of the minibatch from :meth:`policy_terms`' log-densities."""
        return clipped_surrogate_loss(logp, old_logp, advantages, self.clip)

    @torch.no_grad()
    def policy_kl(self, batch: dict[str, torch.Tensor], approx_kl: float) -> float:
        """KL(old || new) on the minibatch after the step, which the adaptive schedule follows: analytic for
        the Gaussian."""
        kl = kl_divergence(Normal(batch["mean"], batch["std"]), self.policy.distribution(batch["obs"]))
        return kl.sum(-1).mean().item()

    def _minibatch_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        policy_group, critic_group = self.optimizer.param_groups
        policy_group["lr"] = self.lr
        critic_group["lr"] = self.lr if self.critic_lr <= 0 else self.critic_lr * (
            self.lr / self.initial_lr if self.lr_schedule == "linear" else 1.0)  # its own rate: only annealed
        logp, entropy, extra_loss = self.policy_terms(batch)
        advantages = batch["advantage"]
        if self.norm_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss, stats = self.surrogate(logp, batch["logp"], advantages)
        values = self.critic(batch["obs"]).squeeze(-1)
        value_loss = clipped_value_loss(values, batch["value"], batch["return"], self.value_clip)
        policy_terms = policy_loss - self.entropy_coef * entropy + extra_loss
        if self.iterations <= self.critic_warmup:  # a fine-tuned policy waits for a critic that knows it
            policy_terms = policy_terms.detach()
        loss = policy_terms + self.value_coef * value_loss
        if not torch.isfinite(loss):
            raise DivergedError(
                f"algo={self.name}: the loss became non-finite in iteration {self.iterations} (policy "
                f"{policy_loss.item()}, value {value_loss.item()}, extra {extra_loss.item()}); lower algo.lr or the "
                f"regulariser weights, or clip gradients (algo.max_grad_norm)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients([*self.policy.parameters(), *self.critic.parameters()])
        if self.max_grad_norm > 0:
            nn.utils.clip_grad_norm_([*self.policy.parameters(), *self.critic.parameters()], self.max_grad_norm)
        self.optimizer.step()
        kl = distributed.mean_metrics({"kl": self.policy_kl(batch, stats["approx_kl"])})["kl"]  # one lr on all ranks
        if self.lr_schedule == "adaptive" and math.isfinite(kl):
            self.lr = adapt_lr(self.lr, kl, self.desired_kl)
        return {"loss": loss.item(), "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                "entropy": entropy.item(), "extra_loss": extra_loss.item(), "kl": kl, **stats}

    # ------------------------------------------------------------------ trainer interface

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "obs_rms": self.obs_rms,
                "return_rms": self.return_rms}

    def eval_policy(self) -> nn.Module:
        return self.policy

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "lr": self.lr, "iterations": self.iterations,
                "running_return": self.running_return}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr, self.iterations = float(state["lr"]), int(state["iterations"])
        self.running_return = state["running_return"].to(torch.float64)
