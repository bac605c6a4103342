"""Mean-flow head: the JVP target, (t, r) sampling, one-step sampling, and learning a bimodal distribution."""

from __future__ import annotations

import pytest
import torch

from robopol.policies.meanflow import MeanFlowPolicy, TimePairEmbedding

from .helpers import FakeNet

SMALL = dict(backbone="mlp", hidden_dims=[32, 32], embed_dim=16)


def test_jvp_target_equals_a_finite_difference_of_the_network_along_the_flow():
    torch.manual_seed(0)
    policy = MeanFlowPolicy(3, 2, 1, 4, 2, **SMALL).double()
    x, v = torch.randn(5, 4, 2, dtype=torch.float64), torch.randn(5, 4, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.5
    r = t + torch.rand(5, dtype=torch.float64) * 0.5
    obs = torch.randn(5, 1, 3, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        du_dt = (policy.average_velocity(x + h * v, t + h, r, obs)
                 - policy.average_velocity(x - h * v, t - h, r, obs)) / (2 * h)
    expected = v - (t - r).view(-1, 1, 1) * du_dt
    torch.testing.assert_close(policy.meanflow_target(x, v, t, r, obs), expected, atol=1e-7, rtol=1e-6)


def test_target_is_the_plain_velocity_when_r_equals_t_and_carries_no_gradient():
    policy = MeanFlowPolicy(3, 2, 1, 4, 2, **SMALL)
    x, v, t = torch.randn(4, 4, 2), torch.randn(4, 4, 2), torch.rand(4)
    target = policy.meanflow_target(x, v, t, t, torch.randn(4, 1, 3))
    torch.testing.assert_close(target, v)
    assert not target.requires_grad


def test_time_pairs_are_ordered_and_equal_with_the_flow_ratio():
    policy = MeanFlowPolicy(3, 2, **SMALL, flow_ratio=0.3)
    pairs = policy.draw_level(20_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    t, r = pairs[:, 0], pairs[:, 1]
    assert pairs.shape == (20_000, 2) and bool((t <= r).all()) and bool(((t > 0) & (r < 1)).all())
    assert abs((t == r).float().mean().item() - 0.3) < 0.02
    # logit-normal(0.4, 1) pairs: the smaller of two draws has its median below sigmoid(0.4)
    assert t.median() < torch.sigmoid(torch.tensor(0.4)) < pairs.max(dim=1).values.median()


def test_pair_embedding_sees_r_through_its_own_embedding():
    embed = TimePairEmbedding(8, scale=1.0)
    t = torch.full((2,), 0.3)
    same, other = embed(torch.stack([t, t], -1)), embed(torch.stack([t, t + 0.4], -1))
    assert same.shape == (2, 8) and not torch.allclose(same, other)
    torch.testing.assert_close(same, embed.time(t) + embed.gap(torch.zeros(2)))


def test_one_step_sample_is_noise_plus_the_average_velocity_from_0_to_1():
    policy = MeanFlowPolicy(1, 2, 1, 3, 1, **SMALL)
    policy.net = FakeNet(lambda x, level, obs: x * 0 + level[:, 1:2, None] - level[:, 0:1, None] + 0.5)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((2, 3, 2), generator=torch.Generator().manual_seed(3))
    out = policy.sample(torch.zeros(2, 1, 1), generator=g)
    torch.testing.assert_close(out, noise + 1.5)  # u(x, 0, 1) = (1 - 0) + 0.5
    assert len(policy.net.calls) == 1
    pair = policy.net.calls[0][1]
    torch.testing.assert_close(pair, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    policy.net.calls.clear()
    policy.sample(torch.zeros(2, 1, 1), steps=4)  # four jumps over quarters
    assert [c[1][0].tolist() for c in policy.net.calls] == [[0.0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]]


def test_adaptive_weight_divides_each_sample_error_by_its_detached_value():
    policy = MeanFlowPolicy(1, 1, 1, 2, 1, **SMALL, adaptive_power=1.0, adaptive_eps=0.5)
    pred = torch.tensor([[[1.0], [1.0]], [[0.0], [2.0]]], requires_grad=True)
    target = torch.zeros(2, 2, 1)
    loss, metrics = policy.regression_loss(pred, target, None)
    # per-sample errors 1 and 2; weights 1/1.5 and 1/2.5
    assert loss.item() == pytest.approx((1 / 1.5 + 2 / 2.5) / 2)
    assert metrics["meanflow_mse"] == pytest.approx(1.5)
    plain, _ = MeanFlowPolicy(1, 1, 1, 2, 1, **SMALL, adaptive_power=0.0).regression_loss(pred, target, None)
    assert plain.item() == pytest.approx(1.5)


@pytest.mark.parametrize("bad, message", [
    (dict(flow_ratio=1.5), "policy.flow_ratio must be in \\[0, 1\\], got 1.5"),
    (dict(adaptive_power=-1.0), "policy.adaptive_power must be >= 0"),
    (dict(sampler="ddim"), "policy.sampler must be one of one_step, euler, midpoint"),
])
def test_bad_config_values_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        MeanFlowPolicy(1, 1, **{**SMALL, **bad})


def bimodal(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator) < 0.5, -0.6, 0.6) + 0.05 * torch.randn(n, generator=generator)


@pytest.mark.slow
def test_one_step_samples_match_a_bimodal_target_distribution():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    policy = MeanFlowPolicy(1, 1, 1, 1, 1, backbone="mlp", hidden_dims=[64, 64], embed_dim=32, layer_norm=True,
                            flow_ratio=0.5)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(2500):
        loss, _ = policy.loss({"obs": torch.zeros(256, 1, 1), "action": bimodal(256, g).view(-1, 1, 1)}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = policy.sample(torch.zeros(4000, 1, 1), generator=g).flatten()
    wasserstein = (samples.sort().values - bimodal(4000, g).sort().values).abs().mean().item()
    # collapsing onto one mode or onto the mean gives about 0.6
    assert wasserstein < 0.2, wasserstein
    left = (samples < 0).float().mean().item()
    assert 0.3 < left < 0.7, left
    assert (samples < 0).any() and abs(samples[samples < 0].median().item() + 0.6) < 0.15
    assert abs(samples[samples > 0].median().item() - 0.6) < 0.15
