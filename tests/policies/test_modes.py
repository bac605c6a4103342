"""The issue's behavioural test: generative heads keep both modes of bimodal demos; MSE averages them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopol.policies.diffusion import DiffusionPolicy
from robopol.policies.flow import FlowPolicy
from robopol.policies.mlp import MLPPolicy

OBS_DIM, HORIZON = 2, 4
SHAPE = {"obs_dim": OBS_DIM, "action_dim": 1, "obs_steps": 1, "horizon": HORIZON, "action_steps": 2}


def _bimodal_batch(n: int = 256) -> dict[str, torch.Tensor]:
    """The same observation every time; the demonstrator goes all the way to +1 or to -1 with equal odds."""
    sign = torch.randint(0, 2, (n, 1, 1)).float() * 2 - 1
    return {"obs": torch.zeros(n, 1, OBS_DIM), "action": sign.expand(n, HORIZON, 1).clone()}


def _train(policy: nn.Module, steps: int = 1000) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(steps):
        loss, _ = policy.loss(_bimodal_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


def _mode_shares(chunks: torch.Tensor) -> tuple[float, float]:
    """Share of chunks whose mean action lies within 0.25 of +1, and of -1."""
    mean = chunks.mean(dim=(1, 2))
    return (mean - 1).abs().lt(0.25).float().mean().item(), (mean + 1).abs().lt(0.25).float().mean().item()


@pytest.mark.parametrize(("head", "samplers"), [
    (DiffusionPolicy, [("ddim", 10), ("ddpm", 100)]),
    (FlowPolicy, [("euler", 10), ("midpoint", 5)]),
])
def test_generative_heads_cover_both_modes(head, samplers):
    torch.manual_seed(0)
    policy = _train(head(**SHAPE, backbone="mlp", hidden_dims=[64, 64], embed_dim=32))
    for sampler, steps in samplers:
        chunks = policy.sample(torch.zeros(500, 1, OBS_DIM), generator=torch.Generator().manual_seed(1),
                               sampler=sampler, steps=steps)
        plus, minus = _mode_shares(chunks)
        assert plus > 0.3 and minus > 0.3, f"{sampler}-{steps}: {plus:.2f} near +1, {minus:.2f} near -1"
        assert plus + minus > 0.75, f"{sampler}-{steps}: only {plus + minus:.2f} of the chunks near a mode"


def test_mse_regressor_collapses_to_the_mean():
    torch.manual_seed(0)
    policy = _train(MLPPolicy(**SHAPE, hidden_dims=[64, 64]))
    chunks = policy.sample(torch.zeros(500, 1, OBS_DIM))
    assert chunks.abs().max().item() < 0.15
    assert _mode_shares(chunks) == (0.0, 0.0)
