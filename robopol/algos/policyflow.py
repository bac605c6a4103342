"""PolicyFlow (Yang, Liu, Chen; ICLR 2026; algorithms.md §8c): PPO with a flow policy plus learned Gaussian
noise, trained without likelihoods of the flow.

The policy (:class:`robopol.policies.noisy_flow.NoisyFlowPolicy`) acts by ``a = phi_1(z; s) + n``. Given z,
a Gaussian likelihood ratio depends only on how far the endpoint moved, and PolicyFlow approximates that
shift by the change of the velocity field along the rollout's own interpolation path:

- **Rollout** (:meth:`PolicyFlow.act`, the only place the ODE runs): ``z ~ N(0, prior_std^2 I)``, the endpoint
  ``phi_hat_1(z)`` of the current network, the pre-clip noise ``n ~ N(0, sigma^2)``, ``a = endpoint + n``,
  and ``log N(n; 0, sigma_old)``.
- **Ratio** (:func:`policy_log_density`): one ``t`` per sample from the grid of the ``2K + 1`` step ends and
  midpoints of the K-step integrator; ``x_t = (1 - t) z + t phi_hat_1(z)``;
  ``dv = v_theta(x_t, t) - v_old(x_t, t)`` with ``v_old`` the network that collected the rollout (frozen at
  the start of the iteration); ``log rho = log N(n; dv, sigma) - log N(n; 0, sigma_old)``. With unchanged
  weights ``dv = 0`` and the ratio is exactly 1.
- **Brownian regulariser** (:func:`brownian_residual`): the heat-equation velocity is minus the score,
  ``grad log p_t(x_t) = (t v_old(x_t) - x_t) / (1 - t)`` on this path, so
  ``eta_t = (1 - t) v_theta(x_t, t) - (x_t - t v_old(x_t, t))``; ``brownian_coef * mean(eta^2)`` (the mean over
  dimensions, as the official code) joins the loss.
- **Entropy**: the Gaussian noise's entropy, weighted by ``entropy_coef``.
- **KL for the adaptive learning rate**: the k3 estimate from the ratios (the mixture has no closed form).

The rest (GAE, the clipped surrogate and value losses, normalisation, schedules) is :class:`PPO`'s.
Deviation from the port: one Adam learning rate for the flow and the critic (the port uses 1e-4 and 1e-3).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributions import Normal

from robopol.algos.ppo import PPO
from robopol.policies.noisy_flow import NoisyFlowPolicy


def interpolation_times(batch: int, flow_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``batch`` times drawn uniformly from the ``2 K + 1`` points ``{0, 1/(2K), ..., 1}`` (K = flow_steps)."""
    return torch.randint(0, 2 * flow_steps + 1, (batch,), generator=generator).float() / (2 * flow_steps)


def policy_log_density(policy: NoisyFlowPolicy, old_policy: NoisyFlowPolicy, batch: dict[str, torch.Tensor],
                       t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PolicyFlow's ``log N(n; dv_t, sigma)`` (B,), the new and old velocities at ``x_t`` and ``x_t`` (B, A)."""
    x_t = (1 - t[:, None]) * batch["z"] + t[:, None] * batch["endpoint"]
    v_new = policy.velocity(x_t, t, batch["obs"])
    with torch.no_grad():
        v_old = old_policy.velocity(x_t, t, batch["obs"])
    std = policy.log_std.exp().expand_as(v_new)
    # unvalidated: a diverged network's NaNs reach PPO's loss check, which names the cause
    density = Normal(v_new - v_old, std, validate_args=False)
    return density.log_prob(batch["noise"]).sum(-1), v_new, v_old, x_t


def brownian_residual(v_new: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``eta_t = (1 - t) v_theta(x_t, t) - (x_t - t v_old(x_t, t))``: zero when v_theta is minus the score."""
    return (1 - t[:, None]) * v_new - (x_t - t[:, None] * v_old)


class PolicyFlow(PPO):
    """PPO over :class:`NoisyFlowPolicy` with PolicyFlow's ratio and Brownian regulariser (module docstring)."""

    POLICY = NoisyFlowPolicy
    POLICY_OPTION = "noisy_flow"

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "policyflow",
                 brownian_coef: float = 0.002, **ppo: object) -> None:
        super().__init__(policy, total_steps, name=name, **ppo)  # type: ignore[arg-type]
        if brownian_coef < 0:
            raise ValueError(f"algo.brownian_coef must be >= 0, got {brownian_coef}")
        self.brownian_coef = brownian_coef
        self.old_policy = copy.deepcopy(policy).requires_grad_(False)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.policy.draw_z(obs)
        endpoint = self.policy.flow(z, obs)
        std = self.policy.log_std.exp().expand_as(endpoint)
        noise = torch.randn_like(endpoint) * std
        return {"action": endpoint + noise, "logp": Normal(0.0, std).log_prob(noise).sum(-1),
                "value": self.value(obs), "z": z, "endpoint": endpoint, "noise": noise, "std": std}

    def begin_update(self) -> None:
        self.old_policy.load_state_dict(self.policy.state_dict())  # the network that collected the rollout

    def policy_terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = interpolation_times(batch["obs"].shape[0], self.policy.flow_steps)
        logp, v_new, v_old, x_t = policy_log_density(self.policy, self.old_policy, batch, t)
        eta = brownian_residual(v_new, v_old, x_t, t)
        entropy = Normal(0.0, self.policy.log_std.exp()).entropy().sum()
        return logp, entropy, self.brownian_coef * eta.pow(2).mean()

    def policy_kl(self, batch: dict[str, torch.Tensor], approx_kl: float) -> float:
        return approx_kl
