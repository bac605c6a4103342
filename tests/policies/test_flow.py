"""Flow head: the t=0 noise / t=1 data convention, the loss by hand, time sampling, Euler and midpoint."""

from __future__ import annotations

import pytest
import torch

from robopol.policies.flow import FlowPolicy, flow_path

from .helpers import CountingNet, FakeNet


def _policy(**kw) -> FlowPolicy:
    torch.manual_seed(0)
    kw = {"backbone": "mlp", "hidden_dims": [16], "embed_dim": 8, **kw}
    return FlowPolicy(obs_dim=2, action_dim=2, obs_steps=1, horizon=3, action_steps=1, **kw)


def test_flow_path_runs_from_noise_at_t0_to_data_at_t1():
    noise, data = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    x_t, velocity = flow_path(noise, data, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(x_t[0], noise[0])
    torch.testing.assert_close(x_t[1], data[1])
    torch.testing.assert_close(x_t[2], 0.75 * noise[2] + 0.25 * data[2])
    torch.testing.assert_close(velocity, data - noise)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_loss_matches_hand_computation(mask_padding):
    policy = _policy(mask_padding=mask_padding)
    policy.net = FakeNet(lambda x, t, obs: 2.0 * x - t.view(-1, 1, 1))
    action = torch.tensor([[[1.0, -1.0], [0.5, 0.5], [0.0, 0.2]], [[-0.3, 0.4], [0.9, -0.9], [1.0, 1.0]]])
    is_pad = torch.tensor([[False, False, True], [False, False, False]])
    batch = {"obs": torch.zeros(2, 1, 2), "action": action, "action_is_pad": is_pad}
    loss, metrics = policy.loss(batch, generator=torch.Generator().manual_seed(11))

    gen = torch.Generator().manual_seed(11)  # the head draws the noise first, then the times
    noise = torch.randn(action.shape, generator=gen).double()
    t = torch.rand(2, generator=gen).double()
    a = action.double()
    x_t = (1 - t.view(-1, 1, 1)) * noise + t.view(-1, 1, 1) * a
    err = ((2 * x_t - t.view(-1, 1, 1)) - (a - noise)).pow(2).mean(-1)
    expected = err[~is_pad].mean() if mask_padding else err.mean()

    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics == {"velocity_mse": loss.item()}
    (x_in, t_in, _), = policy.net.calls
    torch.testing.assert_close(t_in.double(), t)
    torch.testing.assert_close(x_in.double(), x_t, rtol=1e-5, atol=1e-6)


def test_logit_normal_times_are_a_squashed_normal():
    policy = _policy(time_sampling="logit_normal", logit_mean=0.5, logit_std=2.0)
    t = policy.draw_level(1000, torch.Generator().manual_seed(1), torch.device("cpu"))
    z = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(t, torch.sigmoid(0.5 + 2.0 * z))
    uniform = _policy().draw_level(1000, torch.Generator().manual_seed(1), torch.device("cpu"))
    torch.testing.assert_close(uniform, torch.rand(1000, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(("sampler", "steps", "times"), [
    ("euler", 1, [0.0]), ("euler", 4, [0.0, 0.25, 0.5, 0.75]),
    ("midpoint", 1, [0.0, 0.5]), ("midpoint", 3, [0.0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6])])
def test_sampler_network_calls(sampler, steps, times):
    policy = _policy()
    policy.net = CountingNet(policy.net)
    out = policy.sample(torch.zeros(2, 1, 2), sampler=sampler, steps=steps)
    assert out.shape == (2, 3, 2)
    assert len(policy.net.levels) == (2 * steps if sampler == "midpoint" else steps)
    torch.testing.assert_close(torch.stack([lv[0] for lv in policy.net.levels]), torch.tensor(times))


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 1), ("euler", 7), ("midpoint", 1), ("midpoint", 4)])
def test_exact_velocity_of_a_point_mass_lands_on_it(sampler, steps):
    """On the straight path to ``c`` the velocity is (c - x) / (1 - t); integrating from t=0 must hit c."""
    c = torch.tensor([[0.3, -0.7], [0.9, 0.0], [-0.2, 0.5]])
    policy = _policy()
    policy.net = FakeNet(lambda x, t, obs: (c - x) / (1 - t.view(-1, 1, 1)))
    out = policy.sample(torch.zeros(4, 1, 2), generator=torch.Generator().manual_seed(0), sampler=sampler,
                        steps=steps)
    torch.testing.assert_close(out, c.expand(4, -1, -1), rtol=0, atol=1e-5)


def test_euler_and_midpoint_steps_by_hand():
    """dx/dt = t from x(0) = x0: Euler-2 gives x0 + 0.5 * (0 + 0.5), midpoint-2 the exact x0 + 0.5."""
    policy = _policy()
    policy.net = FakeNet(lambda x, t, obs: t.view(-1, 1, 1).expand_as(x))
    x0 = torch.randn((1, 3, 2), generator=torch.Generator().manual_seed(2))
    euler = policy.sample(torch.zeros(1, 1, 2), generator=torch.Generator().manual_seed(2), sampler="euler",
                          steps=2)
    mid = policy.sample(torch.zeros(1, 1, 2), generator=torch.Generator().manual_seed(2), sampler="midpoint",
                        steps=2)
    torch.testing.assert_close(euler, x0 + 0.25)
    torch.testing.assert_close(mid, x0 + 0.5)


def test_invalid_options_are_named():
    policy = _policy()
    with pytest.raises(ValueError, match="sampler must be one of euler, midpoint.*'ddim'"):
        policy.sample(torch.zeros(1, 1, 2), sampler="ddim")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        policy.sample(torch.zeros(1, 1, 2), steps=2.5)
    assert policy.sample(torch.zeros(1, 1, 2), steps=1000).shape == (1, 3, 2)  # no step ceiling for flows
    with pytest.raises(ValueError, match="policy.time_sampling"):
        _policy(time_sampling="beta")
    with pytest.raises(ValueError, match="policy.logit_std"):
        _policy(logit_std=0.0)
    with pytest.raises(ValueError, match="policy.sampler"):
        _policy(sampler="ddpm")
