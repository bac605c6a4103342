"""Diffusion policy head: DDPM training, DDPM or DDIM sampling with diffusers' schedulers.

Training noises a clean chunk ``a`` to integer level ``k ~ U{0, K-1}`` with ``DDPMScheduler.add_noise``,
``x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps``, and regresses the network on ``eps`` (``epsilon``), on ``a``
(``sample``) or on ``sqrt(abar_k) eps - sqrt(1 - abar_k) a`` (``v_prediction``). Sampling runs the
scheduler's ``set_timesteps`` + ``step`` loop from Gaussian noise; DDPM with N steps calls the network N
times, DDIM (eta = 0, deterministic given the initial noise) k times. With ``clip_sample`` the schedulers
clip each predicted clean chunk to ``[-clip_sample_range, clip_sample_range]``, the range of min-max
normalised actions.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopol.policies.base import GenerativePolicy, check_choice

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
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
