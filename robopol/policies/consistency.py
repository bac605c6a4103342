"""Consistency student: a one-step (or few-step chained) policy distilled from a diffusion or flow teacher.

The student is a copy of the teacher's head (same class, backbone and noise process; ``head``), trained by
``robopol train algo=distill teacher=<ckpt>`` from the teacher's weights. It reads its network as a
consistency function of the noise level,

    f(x, level) = c_skip(s) x + c_out(s) denoised(x, level),  s = noise_scale(level) in [0, 1],

with LCM's boundary scalings ``c_skip = sd^2 / ((k s)^2 + sd^2)``, ``c_out = k s / sqrt((k s)^2 + sd^2)``
(``sd = 0.5``): ``c_skip(0) = 1`` and ``c_out(0) = 0`` make f the identity on clean chunks. ``k = 1000``
stretches the scale so that one level of a 100-level schedule gets LCM's 10x-scaled one level of its
1000-level schedule, where ``c_skip`` has already fallen to about 0.0025.

Sampling (``sampler=consistency``): ``f(noise, level at scale 1)``, one network call. With ``steps = k > 1``
the result is re-noised with fresh noise to the scales ``(k-1)/k, ..., 1/k`` in turn and mapped back by f
each time (Consistency Policy's chaining), k calls in all.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from robopol.policies.base import GenerativePolicy, check_steps

SIGMA_DATA = 0.5
SCALE_STRETCH = 1000.0


def boundary_scalings(scale: torch.Tensor | float) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """``(c_skip, c_out)`` for noise scales ``scale`` (a tensor of any shape, or one number)."""
    stretched = SCALE_STRETCH * scale
    denominator = stretched**2 + SIGMA_DATA**2
    return SIGMA_DATA**2 / denominator, stretched / denominator**0.5


class ConsistencyPolicy(nn.Module):
    """One-step consistency student around a copy of a diffusion or flow head (see the module docstring)."""

    SAMPLERS = ("consistency",)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        head: Any,
        sampler: str = "consistency",
        inference_steps: int = 1,
        name: str = "consistency",
    ) -> None:
        """``head`` is the teacher's policy config (``_target_`` and fields), and the student gets the same head;
        or a head module, which the student copies with its weights (a warm start, as RL-100's CD head)."""
        super().__init__()
        self.head = (copy.deepcopy(head) if isinstance(head, nn.Module)
                     else instantiate(head, obs_dim=obs_dim, action_dim=action_dim))
        if not isinstance(self.head, GenerativePolicy):
            raise ValueError(f"a consistency student needs a diffusion or flow head, got {type(self.head).__name__}")
        self.sampler, self.inference_steps = sampler, inference_steps
        self.resolve_sampler(None, None)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_steps, self.horizon, self.action_steps = self.head.obs_steps, self.head.horizon, self.head.action_steps
        self.discrete_dims = self.head.discrete_dims

    @property
    def net(self) -> nn.Module:
        """The network whose calls count as function evaluations."""
        return self.head.net

    def consistency(self, x: torch.Tensor, level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``f(x, level)`` in the head's internal action space; exactly ``x`` at the clean level."""
        scale = self.head.noise_scale(level).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        c_skip, c_out = boundary_scalings(scale)
        return torch.where(scale == 0, x, c_skip * x + c_out * self.head.denoised(x, level, obs))

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None) -> torch.Tensor:
        """``obs`` (B, To, obs_dim) normalised -> action chunk (B, H, A) normalised, in ``steps`` calls."""
        self.head.check_obs(obs)
        _, steps = self.resolve_sampler(sampler, steps)
        batch = obs.shape[0]
        shape = (batch, self.horizon, self.action_dim)
        x = torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)
        for i in range(steps):
            level = self.head.level_at(1.0 - i / steps)
            # one level for the whole batch: ``consistency`` with its scalings as two numbers (at batch 1 the
            # per-sample tensor arithmetic is a visible share of a one-step call); at a clean level c_out = 0
            c_skip, c_out = boundary_scalings(float(self.head.noise_scale(level)))
            level = level.to(obs.device).expand(batch)
            if i > 0:
                noise = torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)
                x = self.head.noised(x, noise, level)
            x = c_skip * x + c_out * self.head.denoised(x, level, obs)
        return self.head.to_external(x)

    def resolve_sampler(self, sampler: str | None, steps: int | None) -> tuple[str, int]:
        sampler = self.sampler if sampler is None else sampler
        steps = self.inference_steps if steps is None else steps
        if sampler not in self.SAMPLERS:
            raise ValueError(f"a distilled consistency student samples only with sampler=consistency, got "
                             f"'{sampler}' (evaluate the teacher checkpoint for its own samplers)")
        check_steps("inference_steps", steps)
        return sampler, steps
