"""Flow-matching (rectified flow) policy head, with robopol's one time convention: t=0 noise, t=1 data.

The path between noise ``x0 ~ N(0, I)`` and a clean chunk ``x1`` is ``x_t = (1 - t) x0 + t x1`` and the
network regresses its velocity ``x1 - x0``. Training draws ``t`` uniformly or logit-normally
(``sigmoid(N(mean, std))``, which favours the middle of the path). Sampling integrates ``dx/dt = v(x, t)``
from t=0 to t=1: Euler with k steps calls the network k times, the midpoint rule 2k times.
Conventions that put data at t=0 (e.g. MeanFlow's) are converted where they meet this code, never inside.
"""

from __future__ import annotations

from typing import Any

import torch

from robopol.policies.base import GenerativePolicy, check_choice

TIME_SAMPLINGS = ("uniform", "logit_normal")


def flow_path(noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point ``x_t = (1 - t) noise + t data`` and target velocity ``data - noise``; ``t`` is ``(B,)``."""
    tb = per_sample(t, data)
    return (1 - tb) * noise + tb * data, data - noise


class FlowPolicy(GenerativePolicy):
    """Rectified-flow head over action chunks (see the module docstring); sampler: euler or midpoint."""

    SAMPLERS = ("euler", "midpoint")
    # t in [0, 1] is stretched to [0, 100] before the sinusoidal embedding: the range of a 100-step
    # diffusion timestep, so the same embedding frequencies resolve neighbouring sampler times.
    LEVEL_SCALE = 100.0
    METRIC = "velocity_mse"

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        obs_steps: int = 1,
        horizon: int = 8,
        action_steps: int = 4,
        *,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        sampler: str = "euler",
        inference_steps: int = 10,
        name: str = "flow",
        **common: Any,
    ) -> None:
        """Head fields here; ``common`` takes the backbone and loss fields of :class:`GenerativePolicy`."""
        check_choice("policy.time_sampling", time_sampling, TIME_SAMPLINGS)
        if logit_std <= 0:
            raise ValueError(f"policy.logit_std must be positive, got {logit_std}")
        super().__init__(obs_dim, action_dim, obs_steps, horizon, action_steps, sampler=sampler,
                         inference_steps=inference_steps, **common)
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    def draw_level(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if self.time_sampling == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        z = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * z)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The instantaneous velocity ``v(x, t; obs)``: one network call."""
        return self.net(x, t, obs)

    def training_pair(self, action: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor,
                      level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_t, velocity = flow_path(noise, action, level)
        return self.velocity(x_t, level, obs), velocity

    def integrate(self, x: torch.Tensor, obs: torch.Tensor, sampler: str, steps: int,
                  generator: torch.Generator | None) -> torch.Tensor:
        dt = 1.0 / steps
        for i in range(steps):
            t = x.new_full((x.shape[0],), i * dt)
            v = self.velocity(x, t, obs)
            if sampler == "midpoint":
                v = self.velocity(x + 0.5 * dt * v, t + 0.5 * dt, obs)
            x = x + dt * v
        return x

    # The level is the time t: noise scale 1 - t, Euler steps, clean estimate x + (1 - t) v.

    def noise_scale(self, level: torch.Tensor) -> torch.Tensor:
        return 1.0 - level

    def level_at(self, scale: float) -> torch.Tensor:
        return torch.tensor(1.0 - scale)

    def noised(self, action: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return flow_path(noise, action, level)[0]

    def denoised(self, x: torch.Tensor, level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return x + per_sample(1.0 - level, x) * self.velocity(x, level, obs)

    def solver_step(self, x: torch.Tensor, level: torch.Tensor, next_level: torch.Tensor,
                    obs: torch.Tensor) -> torch.Tensor:
        return x + per_sample(next_level - level, x) * self.velocity(x, level, obs)


def per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcastable against ``like``."""
    return value.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)
