"""What the generative heads share: backbone construction, the masked loss, the training/sampling skeleton.

A generative head turns a noise-conditioned network ``net(x, level, obs) -> (B, H, A)`` into a policy with
the interface of :class:`robopol.policies.mlp.MLPPolicy`:

- ``loss(batch)`` draws Gaussian noise shaped like the action chunk, then a noise level per sample (in that
  order, from ``generator`` or torch's global RNG), asks the head for ``(prediction, target)`` and returns
  their mean squared error, ignoring padded steps when ``mask_padding`` is set;
- ``sample(obs, generator, sampler, steps)`` starts from Gaussian noise and lets the head integrate it with
  the chosen sampler and number of steps (defaults: the config's ``sampler`` / ``inference_steps``);
- ``refine(obs, guess, noise_scale, steps)`` (RTI warm start) places a guessed clean chunk at an intermediate
  noise level and runs only the last ``steps`` deterministic reverse steps from there.

Heads implement ``draw_level``, ``training_pair`` and ``integrate``; every network call goes through
``self.net``. Backbones take ``x`` ``(B, H, A)``, ``level`` ``(B,)`` and ``obs`` ``(B, To, obs_dim)``.

Heads with a deterministic reverse process (diffusion, flow) also describe it level by level, which is what
RTI warm starts and consistency distillation build on: ``noise_scale(level)`` in [0, 1] (0 clean, 1 pure
noise) and its inverse ``level_at``, ``noised`` (the forward process), ``denoised`` (the clean-chunk estimate
of one network call) and ``solver_step`` (one DDIM / Euler step between two levels).

Discrete action dimensions (a gripper) can be trained scaled down (RTI-DP's scaling method: a binary
command then moves as little as the continuous ones between control steps); ``sample`` and ``refine`` undo the
scaling, so callers always see the normalised action space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from robopol.nets.embeddings import LevelEmbedding
from robopol.nets.mlp import MLP
from robopol.nets.transformer import TransformerDenoiser
from robopol.nets.unet import ConditionalUnet1D

BACKBONES = ("mlp", "unet", "transformer")


class MLPDenoiser(nn.Module):
    """Flattened chunk ⊕ flattened observations ⊕ level embedding -> ``nets.mlp.MLP`` -> chunk."""

    def __init__(self, input_dim: int, horizon: int, cond_dim: int, level_dim: int = 128,
                 level_scale: float = 1.0, hidden_dims: Sequence[int] = (512, 512, 512),
                 layer_norm: bool = False, residual: bool = False) -> None:
        super().__init__()
        self.input_dim, self.horizon = input_dim, horizon
        self.level_embed = LevelEmbedding(level_dim, scale=level_scale)
        self.mlp = MLP(horizon * input_dim + cond_dim + level_dim, horizon * input_dim, hidden_dims,
                       layer_norm, residual)

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        parts = [x.reshape(batch, -1), self.level_embed(level).expand(batch, -1)]
        if cond is not None:
            parts.insert(1, cond.reshape(batch, -1))
        return self.mlp(torch.cat(parts, dim=-1)).view(batch, self.horizon, self.input_dim)


def check_steps(key: str, steps: object) -> None:
    """Raise a ValueError naming ``key`` unless ``steps`` is a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{key} must be a positive integer, got {steps!r}")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ValueError naming the config key when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got '{value}'")


def build_backbone(
    backbone: str,
    *,
    action_dim: int,
    horizon: int,
    obs_dim: int,
    obs_steps: int,
    level_scale: float,
    embed_dim: int,
    hidden_dims: Sequence[int],
    layer_norm: bool,
    residual: bool,
    down_dims: Sequence[int],
    kernel_size: int,
    n_groups: int,
    d_model: int,
    n_heads: int,
    n_layers: int,
    dropout: float,
) -> nn.Module:
    """The denoiser named by ``policy.backbone``, sized from the policy config; errors name the config key."""
    if backbone == "mlp":
        return MLPDenoiser(action_dim, horizon, obs_steps * obs_dim, embed_dim, level_scale, hidden_dims,
                           layer_norm, residual)
    if backbone == "unet":
        if not down_dims:
            raise ValueError("policy.down_dims must list at least one channel width for the unet backbone")
        multiple = 2 ** (len(down_dims) - 1)
        if horizon % multiple:
            raise ValueError(
                f"policy.horizon={horizon} must be divisible by 2 ** (len(policy.down_dims) - 1) = "
                f"{multiple} for the unet backbone with down_dims={list(down_dims)}: use a horizon that is a "
                f"multiple of {multiple} or fewer down_dims")
        if kernel_size % 2 == 0:
            raise ValueError(f"policy.kernel_size must be odd, got {kernel_size}")
        if any(d % n_groups for d in down_dims):
            raise ValueError(f"every policy.down_dims entry must be divisible by policy.n_groups={n_groups}, "
                             f"got {list(down_dims)}")
        return ConditionalUnet1D(action_dim, obs_steps * obs_dim, embed_dim, level_scale, down_dims,
                                 kernel_size, n_groups)
    if backbone == "transformer":
        if d_model % n_heads:
            raise ValueError(f"policy.d_model={d_model} must be divisible by policy.n_heads={n_heads}")
        return TransformerDenoiser(action_dim, horizon, obs_dim, obs_steps, d_model, n_heads, n_layers,
                                   dropout, level_scale)
    raise ValueError(f"policy.backbone must be one of {', '.join(BACKBONES)}, got '{backbone}'")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error averaged over action dims, then over the chunk steps that are not padding."""
    error = (pred - target).pow(2).mean(-1)
    if is_pad is None:
        return error.mean()
    keep = (~is_pad).to(error.dtype)
    return (error * keep).sum() / keep.sum().clamp_min(1)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` squared error of each sample, averaged over action dims and its non-padding chunk steps."""
    error = (pred - target).pow(2).mean(-1)
    keep = torch.ones_like(error) if is_pad is None else (~is_pad).to(error.dtype)
    return (error * keep).sum(-1) / keep.sum(-1).clamp_min(1)


class GenerativePolicy(nn.Module, ABC):
    """Backbone + generative head over action chunks; subclasses define the noise process and samplers."""

    SAMPLERS: tuple[str, ...] = ()
    LEVEL_SCALE: float = 1.0
    """Stretch of the level before its sinusoidal embedding (heads whose level lives in [0, 1] raise it)."""
    METRIC: str = "mse"
    """Name of the loss in the metrics dict."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        obs_steps: int = 1,
        horizon: int = 8,
        action_steps: int = 4,
        *,
        sampler: str,
        inference_steps: int,
        max_steps: int | None = None,
        backbone: str = "unet",
        embed_dim: int = 128,
        hidden_dims: Sequence[int] = (512, 512, 512),
        layer_norm: bool = False,
        residual: bool = False,
        down_dims: Sequence[int] = (32, 64, 128),
        kernel_size: int = 5,
        n_groups: int = 8,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        dropout: float = 0.1,
        mask_padding: bool = True,
        discrete_dims: Sequence[int] = (),
        discrete_scale: float = 1.0,
    ) -> None:
        """Fields as in :class:`robopol.policies.configs.GenerativePolicyConfig`; ``max_steps`` caps the
        sampler steps a head can take (a diffusion head's K training levels), None for no cap."""
        super().__init__()
        if not 1 <= action_steps <= horizon:
            raise ValueError(f"policy.action_steps must be in [1, horizon={horizon}], got {action_steps}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_steps, self.horizon, self.action_steps = obs_steps, horizon, action_steps
        self.mask_padding = mask_padding
        self.max_steps = max_steps
        bad = [d for d in discrete_dims if not 0 <= d < action_dim]
        if bad:
            raise ValueError(f"policy.discrete_dims must index the {action_dim} action dims, "
                             f"got {list(discrete_dims)}")
        if not 0.0 < discrete_scale <= 1.0:
            raise ValueError(f"policy.discrete_scale must be in (0, 1], got {discrete_scale}")
        self.discrete_dims, self.discrete_scale = sorted(set(discrete_dims)), discrete_scale
        self.sampler, self.inference_steps = self.resolve_sampler(sampler, inference_steps, config=True)
        self.net = build_backbone(
            backbone, action_dim=action_dim, horizon=horizon, obs_dim=obs_dim, obs_steps=obs_steps,
            level_scale=self.LEVEL_SCALE, embed_dim=embed_dim, hidden_dims=hidden_dims,
            layer_norm=layer_norm, residual=residual, down_dims=down_dims, kernel_size=kernel_size,
            n_groups=n_groups, d_model=d_model, n_heads=n_heads, n_layers=n_layers, dropout=dropout)

    # ------------------------------------------------------------------ what a head defines

    @abstractmethod
    def draw_level(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Noise levels ``(batch,)`` for training."""

    @abstractmethod
    def training_pair(self, action: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor,
                      level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(network prediction, regression target)`` for clean chunks, their noise and noise levels."""

    @abstractmethod
    def integrate(self, x: torch.Tensor, obs: torch.Tensor, sampler: str, steps: int,
                  generator: torch.Generator | None) -> torch.Tensor:
        """Turn pure noise ``x`` into a chunk with ``sampler`` in ``steps`` steps."""

    # ------------------------------------------------------------------ the reverse process, level by level

    @abstractmethod
    def noise_scale(self, level: torch.Tensor) -> torch.Tensor:
        """How noisy ``level`` is, in [0, 1]: 0 the clean chunk, 1 pure noise."""

    @abstractmethod
    def level_at(self, scale: float) -> torch.Tensor:
        """The level whose noise scale is ``scale`` (the nearest one for discrete schedules), a 0-d CPU tensor."""

    @abstractmethod
    def noised(self, action: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Forward process: clean chunks ``(B, H, A)`` noised to ``level`` ``(B,)``."""

    @abstractmethod
    def denoised(self, x: torch.Tensor, level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Estimate of the clean chunk from ``x`` at ``level`` in one network call."""

    @abstractmethod
    def solver_step(self, x: torch.Tensor, level: torch.Tensor, next_level: torch.Tensor,
                    obs: torch.Tensor) -> torch.Tensor:
        """One deterministic reverse step from ``level`` to the less noisy ``next_level`` (one network call)."""

    # ------------------------------------------------------------------ the shared interface

    def loss(self, batch: dict[str, torch.Tensor],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error of the head's prediction on a batch of normalised windows.

        An optional ``batch["sample_weight"]`` ``(B,)`` weights each window's error (advantage-weighted
        regression: IQL's AWR, ALOE's weighted flow matching); the loss is then ``mean(weight * error)``.
        """
        action, obs = self.to_internal(batch["action"]), batch["obs"]
        self.check_obs(obs)
        noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        level = self.draw_level(action.shape[0], generator, action.device)
        pred, target = self.training_pair(action, obs, noise, level)
        is_pad = batch.get("action_is_pad") if self.mask_padding else None
        return self.regression_loss(pred, target, is_pad, batch.get("sample_weight"))

    def regression_loss(self, pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None,
                        weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss from ``(prediction, target)``: the masked mean squared error, or with per-sample
        weights the mean of ``weight * per-sample error``."""
        if weight is None:
            loss = masked_mse(pred, target, is_pad)
            return loss, {self.METRIC: loss.item()}
        error = per_sample_mse(pred, target, is_pad)
        return (weight * error).mean(), {self.METRIC: error.mean().item()}

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None) -> torch.Tensor:
        """``obs`` (B, To, obs_dim) normalised -> action chunk (B, H, A) in normalised action space."""
        self.check_obs(obs)
        sampler, steps = self.resolve_sampler(sampler, steps)
        x = torch.randn((obs.shape[0], self.horizon, self.action_dim), generator=generator, device=obs.device,
                        dtype=obs.dtype)
        return self.to_external(self.integrate(x, obs, sampler, steps, generator))

    @torch.no_grad()
    def refine(self, obs: torch.Tensor, guess: torch.Tensor, noise_scale: float, steps: int) -> torch.Tensor:
        """RTI warm start: take ``guess`` (B, H, A), a clean chunk in normalised action space, as the state
        at noise scale ``noise_scale`` and run ``steps`` deterministic reverse steps down to the clean chunk.

        As in RTI-DP no noise is added; the guess enters as the forward process's mean at that level,
        ``noised(guess, 0, level)``. For diffusion near the clean end that is the guess itself up to
        ``sqrt(abar) ~ 1`` (RTI-DP uses it unscaled); for flow it is ``t * guess``, and the scaling matters:
        on cube-single task 1 at t = 0.84 the unscaled guess succeeded in 75% of episodes, the scaled one in
        100%. Consecutive levels that round to the same discrete level are merged, so the network may be
        called fewer than ``steps`` times.
        """
        self.check_obs(obs)
        if not 0.0 < noise_scale <= 1.0:
            raise ValueError(f"the warm-start noise level must be in (0, 1], got {noise_scale}")
        check_steps("the warm-start steps", steps)
        levels = [self.level_at(noise_scale * (1 - i / steps)).to(guess.device) for i in range(steps + 1)]
        guess = self.to_internal(guess)
        batch = guess.shape[0]
        x = self.noised(guess, torch.zeros_like(guess), levels[0].expand(batch))
        for level, next_level in zip(levels[:-1], levels[1:], strict=True):
            if not torch.equal(level, next_level):
                x = self.solver_step(x, level.expand(batch), next_level.expand(batch), obs)
        return self.to_external(x)

    def to_internal(self, action: torch.Tensor) -> torch.Tensor:
        """Normalised actions -> the space the head models (discrete dims times ``discrete_scale``)."""
        return action if self.discrete_scale == 1.0 else action * self._discrete_scaling(action)

    def to_external(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_internal`."""
        return x if self.discrete_scale == 1.0 else x / self._discrete_scaling(x)

    def _discrete_scaling(self, like: torch.Tensor) -> torch.Tensor:
        scale = torch.ones(self.action_dim, dtype=like.dtype, device=like.device)
        scale[self.discrete_dims] = self.discrete_scale
        return scale

    def resolve_sampler(self, sampler: str | None, steps: int | None,
                        config: bool = False) -> tuple[str, int]:
        """Fill in the config defaults and check the sampler name and step count."""
        sampler = self.sampler if sampler is None else sampler
        steps = self.inference_steps if steps is None else steps
        where = ("policy.sampler", "policy.inference_steps") if config else ("sampler", "steps")
        if sampler not in self.SAMPLERS:
            raise ValueError(f"{where[0]} must be one of {', '.join(self.SAMPLERS)} for "
                             f"{type(self).__name__}, got '{sampler}'")
        check_steps(where[1], steps)
        if self.max_steps is not None and steps > self.max_steps:
            raise ValueError(f"{where[1]}={steps} exceeds the {self.max_steps} training noise levels "
                             f"(policy.num_train_timesteps)")
        return sampler, steps

    def check_obs(self, obs: torch.Tensor) -> None:
        if obs.dim() != 3 or obs.shape[1:] != (self.obs_steps, self.obs_dim):
            raise ValueError(f"obs must have shape (B, obs_steps={self.obs_steps}, obs_dim={self.obs_dim}), "
                             f"got {tuple(obs.shape)}")
