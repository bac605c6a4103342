"""Diffusion policy head: DDPM training, DDPM or DDIM sampling with diffusers' schedulers.

Training noises a clean chunk ``a`` to integer level ``k ~ U{0, K-1}`` with ``DDPMScheduler.add_noise``,
``x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps``, and regresses the network on ``eps`` (``epsilon``), on ``a``
(``sample``) or on ``sqrt(abar_k) eps - sqrt(1 - abar_k) a`` (``v_prediction``). Sampling runs the
scheduler's ``set_timesteps`` + ``step`` loop from Gaussian noise; DDPM with N steps calls the network N
times, DDIM (eta = 0, deterministic given the initial noise) k times. With ``clip_sample`` the schedulers
clip each predicted clean chunk to ``[-clip_sample_range, clip_sample_range]``, the range of min-max
normalised actions.

Level by level (RTI warm starts, consistency distillation) the level is the integer timestep ``k`` with
``-1`` for the clean chunk (``abar = 1``), and a solver step is the DDIM (eta = 0) update between any two
timesteps, written out here because diffusers' ``step`` only moves between the timesteps of its own
``set_timesteps`` grid. Noise scale 1 is the top timestep with ``sqrt(abar) >= MIN_SIGNAL``, not K - 1: the
squared-cosine schedule ends at ``abar = 0``, where the clean estimate ``(x - sqrt(1 - abar) eps) / sqrt(abar)``
of an epsilon network divides by zero (diffusers' DDIM grid stops at 90 of 100 for the same reason), so a
one-step student started there only ever saw clipped garbage. Scale ``s`` is level ``round(s (top + 1)) - 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopol.policies.base import GenerativePolicy, check_choice

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
MIN_SIGNAL = 0.05
"""Smallest ``sqrt(abar)`` of a level the level-by-level process uses (Stable Diffusion's top level: 0.068)."""
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


class DiffusionPolicy(GenerativePolicy):
    """Diffusion head over action chunks (see the module docstring); sampler: ddpm or ddim."""

    SAMPLERS = ("ddpm", "ddim")
    METRIC = "denoise_mse"

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        obs_steps: int = 1,
        horizon: int = 8,
        action_steps: int = 4,
        *,
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        sampler: str = "ddim",
        inference_steps: int = 10,
        name: str = "diffusion",
        **common: Any,
    ) -> None:
        """Head fields here; ``common`` takes the backbone and loss fields of :class:`GenerativePolicy`."""
        check_choice("policy.prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("policy.beta_schedule", beta_schedule, BETA_SCHEDULES)
        if num_train_timesteps < 1:
            raise ValueError(f"policy.num_train_timesteps must be positive, got {num_train_timesteps}")
        super().__init__(obs_dim, action_dim, obs_steps, horizon, action_steps, sampler=sampler,
                         inference_steps=inference_steps, max_steps=num_train_timesteps, **common)
        self.num_train_timesteps, self.prediction_type = num_train_timesteps, prediction_type
        self._schedule = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                              prediction_type=prediction_type, clip_sample=clip_sample,
                              clip_sample_range=clip_sample_range)
        self.noise_scheduler = DDPMScheduler(**self._schedule)
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        # abar per level k + 1: index 0 is the clean chunk (k = -1, abar = 1). Derived, so not persistent.
        alpha_bar = torch.cat([torch.ones(1), self.noise_scheduler.alphas_cumprod.float()])
        self.register_buffer("_alpha_bar", alpha_bar, persistent=False)
        self.top_level = int((alpha_bar[1:] >= MIN_SIGNAL**2).nonzero().max())
        # (sampler, steps) -> scheduler with its timesteps set: set_timesteps mutates a scheduler, so each
        # step count keeps its own instance and repeated calls pay nothing for it.
        self._sampling: dict[tuple[str, int], tuple[DDPMScheduler | DDIMScheduler, list[int]]] = {}

    def draw_level(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=device)

    def training_pair(self, action: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor,
                      level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = self.noise_scheduler.add_noise(action, noise, level)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "sample":
            target = action
        else:
            target = self.noise_scheduler.get_velocity(action, noise, level)
        return self.net(noisy, level, obs), target

    def integrate(self, x: torch.Tensor, obs: torch.Tensor, sampler: str, steps: int,
                  generator: torch.Generator | None) -> torch.Tensor:
        scheduler, timesteps = self.sampling_scheduler(sampler, steps)
        for t in timesteps:
            out = self.net(x, x.new_full((x.shape[0],), t), obs)
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        return x

    def sampling_scheduler(self, sampler: str, steps: int) -> tuple[DDPMScheduler | DDIMScheduler, list[int]]:
        """The scheduler for ``sampler`` with ``steps`` timesteps set, and those timesteps as ints."""
        key = (sampler, steps)
        if key not in self._sampling:
            scheduler = (DDPMScheduler if sampler == "ddpm" else DDIMScheduler)(**self._schedule)
            scheduler.set_timesteps(steps)
            self._sampling[key] = (scheduler, [int(t) for t in scheduler.timesteps])
        return self._sampling[key]

    # ------------------------------------------------------------------ the reverse process, level by level

    def noise_scale(self, level: torch.Tensor) -> torch.Tensor:
        return (level + 1).float() / (self.top_level + 1)

    def level_at(self, scale: float) -> torch.Tensor:
        return torch.tensor(min(max(round(scale * (self.top_level + 1)) - 1, -1), self.top_level))

    def noised(self, action: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        alpha_bar = self._abar(level, action)
        return alpha_bar.sqrt() * action + (1 - alpha_bar).sqrt() * noise

    def denoised(self, x: torch.Tensor, level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self._clean_and_noise(x, level, obs)[0]

    def solver_step(self, x: torch.Tensor, level: torch.Tensor, next_level: torch.Tensor,
                    obs: torch.Tensor) -> torch.Tensor:
        clean, noise = self._clean_and_noise(x, level, obs)
        alpha_bar = self._abar(next_level, x)
        return alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise

    def _abar(self, level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._alpha_bar[level.long() + 1].reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def _clean_and_noise(self, x: torch.Tensor, level: torch.Tensor,
                         obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's clean-chunk and noise estimates at ``level`` (k >= 0), clean clipped like diffusers'
        DDIM step does (which keeps the unclipped noise estimate)."""
        out = self.net(x, level, obs)
        alpha_bar = self._abar(level, x)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction_type == "epsilon":
            clean, noise = (x - s * out) / a, out
        elif self.prediction_type == "sample":
            clean, noise = out, (x - a * out) / s
        else:
            clean, noise = a * x - s * out, a * out + s * x
        if self.clip_sample:
            clean = clean.clamp(-self.clip_sample_range, self.clip_sample_range)
        return clean, noise
