"""Flow policy with learned Gaussian action noise: PolicyFlow's policy (algorithms.md §8c).

``a = phi_1(z; s) + n`` with ``z ~ N(0, prior_std^2 I)`` and ``n ~ N(0, diag(sigma^2))``: ``phi_1`` integrates the
velocity field ``v_theta(x, t; s)`` from ``t = 0`` (the noise z) to ``t = 1`` with ``flow_steps`` midpoint
steps, and ``log sigma`` is one learned vector independent of the observation. The action distribution is a
Gaussian mixture over z, so it can hold several modes, which a single Gaussian cannot.

``sample`` (evaluation and deployment) returns the flow's endpoint for a drawn z without the Gaussian noise,
as a one-step chunk; ``horizon = action_steps = 1``. The velocity network is an MLP over the action, a
sinusoidal time embedding and the observation, with a zero-initialised output layer, so the initial flow is
the identity and the initial policy is ``N(0, prior_std^2 I + sigma^2)``.

``prior_std`` (PolicyFlow: 1) sets the base noise's scale against the action box. With ``prior_std = c`` the
policy is PolicyFlow's N(0, I) policy over actions measured in units of ``c``: the ratio does not depend on
the units, and the Brownian residual is linear in them (``brownian_coef`` here weighs as ``brownian_coef *
c^2`` there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robopol.nets.embeddings import SinusoidalEmbedding
from robopol.nets.mlp import MLP
from robopol.policies.base import check_steps


class NoisyFlowPolicy(nn.Module):
    TIME_SCALE = 100.0
    """Stretches t in [0, 1] over the sinusoid frequencies (as the flow heads' level embedding)."""

    def __init__(self, obs_dim: int, action_dim: int, obs_steps: int = 1, horizon: int = 1,
                 action_steps: int = 1, hidden_dims: Sequence[int] = (256, 256, 256), time_dim: int = 64,
                 flow_steps: int = 10, init_log_std: float = 0.0, prior_std: float = 1.0,
                 name: str = "noisy_flow") -> None:
        super().__init__()
        if obs_steps != 1 or horizon != 1 or action_steps != 1:
            raise ValueError(f"the noisy flow policy acts on one observation and one action: policy.obs_steps, "
                             f"policy.horizon and policy.action_steps must be 1, got {obs_steps}, {horizon}, "
                             f"{action_steps}")
        check_steps("policy.flow_steps", flow_steps)
        if not prior_std > 0:
            raise ValueError(f"policy.prior_std must be positive (the std of the flow's input noise), got {prior_std}")
        if not hidden_dims:
            raise ValueError("policy.hidden_dims must list at least one width for the velocity MLP, got []")
        self.obs_dim, self.action_dim, self.flow_steps, self.prior_std = obs_dim, action_dim, flow_steps, prior_std
        self.obs_steps, self.horizon, self.action_steps = 1, 1, 1
        self.time_embed = SinusoidalEmbedding(time_dim, scale=self.TIME_SCALE)
        self.net = MLP(action_dim + time_dim + obs_dim, action_dim, hidden_dims)
        nn.init.zeros_(self.net.out.weight)
        nn.init.zeros_(self.net.out.bias)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``v_theta(x, t; s)`` for actions ``x`` (B, A), times ``t`` (B,) and flat observations (B, obs_dim)."""
        return self.net(torch.cat([x, self.time_embed(t), obs], dim=-1))

    def flow(self, z: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``phi_1(z; s)``: ``flow_steps`` midpoint steps of the velocity field from t = 0 to t = 1.

        The first layer's shares of the observation and of the 2K times are computed once per call rather
        than at each of the 2K velocity calls (``velocity``'s sums in another order): at rollout batch
        sizes the network is small and its calls' fixed costs dominate."""
        dt = 1.0 / self.flow_steps
        first = self.net.hidden[0][0]
        w_action, w_time, w_obs = first.weight.split([self.action_dim, self.time_embed.dim, self.obs_dim], dim=1)
        times = torch.arange(2 * self.flow_steps, dtype=z.dtype, device=z.device) * (0.5 * dt)
        # (2K, B, hidden): bias + W_obs s + W_time emb(t_k), for the step starts and midpoints in turn
        fixed = (torch.addmm(first.bias, obs, w_obs.t()).unsqueeze(0)
                 + (self.time_embed(times) @ w_time.t()).unsqueeze(1))
        w_action = w_action.t()
        x = z
        for i in range(self.flow_steps):
            half = x + 0.5 * dt * self.net.forward_from_first(torch.addmm(fixed[2 * i], x, w_action))
            x = x + dt * self.net.forward_from_first(torch.addmm(fixed[2 * i + 1], half, w_action))
        return x

    def draw_z(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of the flow's input noise ``z ~ N(0, prior_std^2 I)`` per observation: (B, action_dim)."""
        shape = (obs.shape[0], self.action_dim)
        return self.prior_std * torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``obs`` (B, 1, obs_dim) normalised -> the flow endpoint of a drawn z, as (B, 1, action_dim)."""
        return self.flow(self.draw_z(obs, generator), obs.flatten(1)).unsqueeze(1)
