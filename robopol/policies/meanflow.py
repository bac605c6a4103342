"""Mean-flow head (MeanFlow, the generator of One-Step Flow Q-Learning): one network call per chunk.

robopol's flow convention holds here too: ``x_t = (1 - t) noise + t data``, t=0 noise, t=1 data, velocity
``v = data - noise``. The network learns the *average* velocity over an interval,
``u(x_t, t, r) = 1 / (r - t) * integral_t^r v(x_tau, tau) dtau`` for ``t <= r``, so that one jump
``x_r = x_t + (r - t) u(x_t, t, r)`` moves along the flow; with ``r = t`` it is the ordinary velocity.
Differentiating ``(r - t) u = integral_t^r v`` in ``t`` gives the MeanFlow identity
``u = v - (t - r) du/dt`` with ``du/dt = v . d_x u + d_t u``: one forward-mode JVP of ``u`` along the
tangent ``(v, 1, 0)`` for ``(x_t, t, r)``. The regression target ``v - (t - r) du/dt`` is a stop-gradient
constant, so the JVP runs without a graph and the prediction comes from a plain forward pass (the same value,
at about two thirds of the cost of differentiating through the JVP).

OFQL writes the same objects with noise at t=1 (``a = eps - u(eps, 0, 1)``); with ``t_ofql = 1 - t`` its
one-step sample is this head's ``a = eps + u(eps, 0, 1)``, and its logit-normal time mean -0.4 is +0.4 here.
(t, r) are two logit-normal draws ordered so that ``t <= r``; with probability ``flow_ratio`` r is set to t
(plain flow matching, which steadies the bootstrapped target). OFQL finds 0.5 best for offline RL; robopol
defaults to MeanFlow's 0.75: on cube-single task 1 behaviour cloning (200 demos, 15k steps) one-step samples
succeeded in 95 of 100 episodes with 0.75 and 86 with 0.5.

The loss is MeanFlow's adaptively weighted squared error, ``sum_i e_i / sg(e_i + c) ** p`` per sample, with
``p = adaptive_power`` (1 by default; 0 gives OFQL's plain mean squared error). On a bimodal toy problem the
plain error left one-step modes two to three times too wide after 6k steps (std 0.14 and 0.09 against the
target's 0.05) where the weighted one matched them (0.044 and 0.052):
the JVP target is noisy and a few large errors dominate an unweighted mean. The time embedding stretches t
only by 1 (not the flow head's 100): the target differentiates the network in t, which must stay smooth.

Samplers: ``one_step`` makes ``inference_steps`` average-velocity jumps over equal intervals (1 by default:
one network call per chunk); ``euler`` and ``midpoint`` integrate the instantaneous velocity ``u(x, t, t)``
like the flow head, and the level-by-level process (RTI warm starts, distillation) uses it the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robopol.nets.embeddings import InferenceCache, LevelEmbedding
from robopol.policies.base import per_sample_mse
from robopol.policies.flow import FlowPolicy, flow_path, per_sample


class TimePairEmbedding(InferenceCache, nn.Module):
    """Embeds ``(B, 2)`` pairs ``(t, r)`` as ``embed_t(t) + embed_gap(r - t)``: r gets its own embedding, fed
    the interval length (MeanFlow's best-performing way to present r). Cached whole at inference: one lookup
    instead of two plus the indexing and sum, about 50 us of a one-step call at batch 1."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.dim = dim
        self.time = LevelEmbedding(dim, scale=scale)
        self.gap = LevelEmbedding(dim, scale=scale)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.cached(pair, self.embed)

    def embed(self, pair: torch.Tensor) -> torch.Tensor:
        return self.time(pair[..., 0]) + self.gap(pair[..., 1] - pair[..., 0])


class MeanFlowPolicy(FlowPolicy):
    """Mean-flow head over action chunks (see the module docstring)."""

    SAMPLERS = ("one_step", "euler", "midpoint")
    METRIC = "meanflow_mse"
    LEVEL_SCALE = 1.0

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        obs_steps: int = 1,
        horizon: int = 8,
        action_steps: int = 4,
        *,
        flow_ratio: float = 0.75,
        adaptive_power: float = 1.0,
        adaptive_eps: float = 1e-3,
        logit_mean: float = 0.4,
        logit_std: float = 1.0,
        sampler: str = "one_step",
        inference_steps: int = 1,
        name: str = "meanflow",
        **common: Any,
    ) -> None:
        """Head fields here; ``common`` takes the backbone and loss fields of :class:`GenerativePolicy`."""
        if not 0.0 <= flow_ratio <= 1.0:
            raise ValueError(f"policy.flow_ratio must be in [0, 1], got {flow_ratio}")
        if adaptive_power < 0 or adaptive_eps <= 0:
            raise ValueError(f"policy.adaptive_power must be >= 0 and policy.adaptive_eps > 0, got "
                             f"{adaptive_power} and {adaptive_eps}")
        super().__init__(obs_dim, action_dim, obs_steps, horizon, action_steps, time_sampling="logit_normal",
                         logit_mean=logit_mean, logit_std=logit_std, sampler=sampler,
                         inference_steps=inference_steps, **common)
        self.flow_ratio, self.adaptive_power, self.adaptive_eps = flow_ratio, adaptive_power, adaptive_eps
        # Every backbone embeds its level through `level_embed`; the pair embedding lets it take (t, r).
        self.net.level_embed = TimePairEmbedding(self.net.level_embed.dim, self.LEVEL_SCALE)

    def average_velocity(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                         obs: torch.Tensor) -> torch.Tensor:
        """``u(x, t, r; obs)``: the mean velocity from time t to time r (one network call)."""
        return self.net(x, torch.stack([t, r], dim=-1), obs)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self.average_velocity(x, t, t, obs)

    def draw_level(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """``(batch, 2)`` pairs ``(t, r)`` with ``t <= r``; ``r = t`` with probability ``flow_ratio``."""
        z = torch.randn(batch, 2, generator=generator, device=device)
        times = torch.sigmoid(self.logit_mean + self.logit_std * z).sort(dim=-1).values
        same = torch.rand(batch, generator=generator, device=device) < self.flow_ratio
        times[:, 1] = torch.where(same, times[:, 0], times[:, 1])
        return times

    def training_pair(self, action: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor,
                      level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, r = level[:, 0], level[:, 1]
        x_t, v = flow_path(noise, action, t)
        return self.average_velocity(x_t, t, r, obs), self.meanflow_target(x_t, v, t, r, obs)

    @torch.no_grad()
    def meanflow_target(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                        obs: torch.Tensor) -> torch.Tensor:
        """Stop-gradient target ``v - (t - r) du/dt``, ``du/dt`` by one JVP along ``(v, 1, 0)``; samples with
        ``r = t`` need no JVP (their target is ``v``), so it runs on the others only."""
        interval = (r != t).nonzero().squeeze(-1)
        target = v.clone()
        if len(interval) == 0:
            return target
        x_i, v_i, t_i, r_i, obs_i = x_t[interval], v[interval], t[interval], r[interval], obs[interval]

        def u(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return self.average_velocity(x, t, r, obs_i)

        _, du_dt = torch.func.jvp(u, (x_i, t_i, r_i), (v_i, torch.ones_like(t_i), torch.zeros_like(r_i)))
        target[interval] = v_i - per_sample(t_i - r_i, v_i) * du_dt
        return target

    def regression_loss(self, pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None,
                        weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        error = per_sample_mse(pred, target, is_pad)
        adaptive = (error.detach() + self.adaptive_eps).pow(-self.adaptive_power)
        if weight is not None:
            adaptive = adaptive * weight
        return (adaptive * error).mean(), {self.METRIC: error.mean().item()}

    def integrate(self, x: torch.Tensor, obs: torch.Tensor, sampler: str, steps: int,
                  generator: torch.Generator | None) -> torch.Tensor:
        if sampler != "one_step":
            return super().integrate(x, obs, sampler, steps, generator)
        for i in range(steps):
            t = x.new_full((x.shape[0],), i / steps)
            x = x + self.average_velocity(x, t, t + 1.0 / steps, obs) / steps
        return x
