"""The level-by-level reverse process of the diffusion and flow heads, RTI's refine, and discrete-dim scaling."""

from __future__ import annotations

import pytest
import torch

from robopol.policies.diffusion import DiffusionPolicy
from robopol.policies.flow import FlowPolicy
from robopol.policies.meanflow import MeanFlowPolicy

from .helpers import FakeNet

SMALL = dict(backbone="mlp", hidden_dims=[16])


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddim_solver_steps_along_the_sampler_grid_reproduce_diffusers_ddim(prediction_type):
    torch.manual_seed(0)
    policy = DiffusionPolicy(4, 3, 1, 8, 4, prediction_type=prediction_type, **SMALL).eval()
    obs, noise = torch.randn(2, 1, 4), torch.randn(2, 8, 3)
    with torch.no_grad():
        expected = policy.integrate(noise.clone(), obs, "ddim", 10, None)
        _, timesteps = policy.sampling_scheduler("ddim", 10)
        x = noise
        for level, next_level in zip(timesteps, [*timesteps[1:], -1], strict=True):
            x = policy.solver_step(x, torch.full((2,), level), torch.full((2,), next_level), obs)
    torch.testing.assert_close(x, expected)


def test_diffusion_levels_noise_scales_and_forward_process():
    policy = DiffusionPolicy(1, 1, num_train_timesteps=100, beta_schedule="linear", **SMALL)
    assert policy.level_at(1.0).item() == 99 and policy.level_at(0.0).item() == -1 and policy.level_at(0.04).item() == 3
    torch.testing.assert_close(policy.noise_scale(torch.tensor([-1, 3, 99])), torch.tensor([0.0, 0.04, 1.0]))
    action, noise = torch.ones(2, 8, 1), torch.full((2, 8, 1), 2.0)
    torch.testing.assert_close(policy.noised(action, noise, torch.tensor([-1, -1])), action)  # clean level
    abar = policy.noise_scheduler.alphas_cumprod[10]
    expected = abar.sqrt() * 1 + (1 - abar).sqrt() * 2
    torch.testing.assert_close(policy.noised(action, noise, torch.tensor([10, 10])), torch.full((2, 8, 1), expected.item()))


def test_diffusion_scale_one_is_the_top_level_whose_clean_estimate_is_well_defined():
    policy = DiffusionPolicy(1, 1, num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", **SMALL)
    abar = policy.noise_scheduler.alphas_cumprod
    assert abar[99] < 1e-6  # the cosine schedule ends at pure noise: x0 = (x - eps) / 0 there
    top = policy.level_at(1.0).item()
    assert abar[top].sqrt() >= 0.05 > abar[top + 1].sqrt() and top == 95
    assert policy.noise_scale(torch.tensor(top)).item() == 1.0


def test_flow_levels_are_times_and_euler_steps():
    policy = FlowPolicy(1, 1, 1, 2, 1, **SMALL)
    policy.net = FakeNet(lambda x, t, obs: torch.ones_like(x) * 2.0)
    assert policy.level_at(0.25).item() == 0.75
    x = torch.zeros(1, 2, 1)
    t = torch.tensor([0.5])
    torch.testing.assert_close(policy.solver_step(x, t, torch.tensor([0.8]), torch.zeros(1, 1, 1)), x + 0.6)
    torch.testing.assert_close(policy.denoised(x, t, torch.zeros(1, 1, 1)), x + 1.0)  # x + (1 - t) v
    torch.testing.assert_close(policy.noised(torch.ones(1, 2, 1), torch.zeros(1, 2, 1), t), torch.full((1, 2, 1), 0.5))


def test_refine_runs_the_last_steps_from_the_guess_at_its_noise_free_forward_mean():
    policy = FlowPolicy(1, 1, 1, 2, 1, **SMALL)
    policy.net = FakeNet(lambda x, t, obs: -x)  # velocity pulls towards 0
    guess = torch.full((1, 2, 1), 0.9)
    out = policy.refine(torch.zeros(1, 1, 1), guess, noise_scale=0.3, steps=3)
    assert [round(c[1].item(), 6) for c in policy.net.calls] == [0.7, 0.8, 0.9]
    torch.testing.assert_close(policy.net.calls[0][0], 0.7 * guess)  # x_t = t * guess + (1 - t) * 0
    torch.testing.assert_close(out, 0.7 * guess * 0.9**3)


def test_refine_merges_steps_that_round_to_the_same_diffusion_level():
    policy = DiffusionPolicy(1, 1, 1, 8, 4, num_train_timesteps=100, **SMALL)
    calls = []
    policy.net.register_forward_pre_hook(lambda module, args: calls.append(int(args[1][0])))
    policy.refine(torch.zeros(1, 1, 1), torch.zeros(1, 8, 1), noise_scale=0.03, steps=6)
    assert calls == [2, 1, 0]  # scales .03 .025 .02 .015 .01 .005 -> levels 2 1 1 1 0 0, then clean


def test_refine_rejects_bad_levels_and_steps():
    policy = FlowPolicy(1, 1, **SMALL)
    with pytest.raises(ValueError, match="warm-start noise level must be in \\(0, 1\\], got 0.0"):
        policy.refine(torch.zeros(1, 1, 1), torch.zeros(1, 8, 1), 0.0, 3)
    with pytest.raises(ValueError, match="warm-start steps must be a positive integer, got 0"):
        policy.refine(torch.zeros(1, 1, 1), torch.zeros(1, 8, 1), 0.1, 0)


def test_discrete_dims_are_trained_scaled_and_sampled_back_unscaled():
    policy = MeanFlowPolicy(1, 3, 1, 2, 1, discrete_dims=[2], discrete_scale=0.1, **SMALL)
    chunk = torch.tensor([[[0.5, -0.5, 1.0], [0.2, 0.1, -1.0]]])
    torch.testing.assert_close(policy.to_internal(chunk), chunk * torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(policy.to_external(policy.to_internal(chunk)), chunk)
    seen = []
    policy.training_pair = lambda action, obs, noise, level: (seen.append(action) or action, action)
    policy.loss({"obs": torch.zeros(1, 1, 1), "action": chunk})
    torch.testing.assert_close(seen[0], policy.to_internal(chunk))
    policy.net = FakeNet(lambda x, level, obs: torch.full_like(x, 0.1) - x)  # one step lands on 0.1 everywhere
    out = policy.sample(torch.zeros(1, 1, 1))
    torch.testing.assert_close(out, torch.tensor([0.1, 0.1, 1.0]).expand(1, 2, 3))


@pytest.mark.parametrize("bad, message", [
    (dict(discrete_dims=[3]), "policy.discrete_dims must index the 3 action dims, got \\[3\\]"),
    (dict(discrete_scale=0.0), "policy.discrete_scale must be in \\(0, 1\\], got 0.0"),
])
def test_bad_discrete_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        FlowPolicy(1, 3, **SMALL, **bad)
