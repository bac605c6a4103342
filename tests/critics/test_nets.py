"""Critic ensembles (robopol.critics.nets): shapes, which inputs they read, errors, gradients, Polyak updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopol.critics import CriticEnsemble, EnsembleMLP, polyak_update

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def critic(**kw) -> CriticEnsemble:
    torch.manual_seed(0)
    args = dict(obs_dim=3, obs_steps=2, action_dim=2, horizon=3, num_critics=4, hidden_dims=(16, 16))
    args.update(kw)
    return CriticEnsemble(**args)


def test_output_is_one_value_per_member_and_sample_and_members_differ():
    q = critic()
    obs, chunk = torch.randn(5, 2, 3), torch.randn(5, 3, 2)
    out = q(obs, chunk)
    assert out.shape == (4, 5) and q.num == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j]), (i, j)
    # each member is its own MLP: member i's weights alone decide row i
    first = q.net.layers[0].weight
    assert first.shape == (4, 2 * 3 + 3 * 2, 16)
    with torch.no_grad():  # (a constant shift of a layer's outputs would vanish in the LayerNorm)
        first[2].add_(torch.randn_like(first[2]))
    changed = q(obs, chunk)
    torch.testing.assert_close(changed[[0, 1, 3]], out[[0, 1, 3]])
    assert not torch.allclose(changed[2], out[2])


def test_the_chunk_is_read_only_for_its_first_horizon_steps():
    q = critic(horizon=2)
    obs, chunk = torch.randn(5, 2, 3), torch.randn(5, 4, 2)
    out = q(obs, chunk)
    later = chunk.clone()
    later[:, 2:] = 7.0
    torch.testing.assert_close(q(obs, later), out)
    torch.testing.assert_close(q(obs, chunk[:, :2]), out)  # a chunk of exactly horizon steps
    inside = chunk.clone()
    inside[:, 1] += 1.0
    assert not torch.allclose(q(obs, inside), out)
    # the whole observation history is read
    older = obs.clone()
    older[:, 0] += 1.0
    assert not torch.allclose(q(older, chunk), out)


def test_horizon_zero_is_a_value_net_of_the_observation_alone():
    v = critic(horizon=0, num_critics=1)
    assert v.net.layers[0].weight.shape == (1, 2 * 3, 16)
    obs = torch.randn(5, 2, 3)
    out = v(obs)
    assert out.shape == (1, 5)
    torch.testing.assert_close(v(obs, torch.randn(5, 3, 2)), out)  # a chunk, if passed, is ignored


def test_values_are_the_sigmoid_of_logits_for_a_logit_critic_and_raw_outputs_otherwise():
    obs, chunk = torch.randn(5, 2, 3), torch.randn(5, 3, 2)
    logit_critic = critic(logits=True)
    raw = logit_critic(obs, chunk)
    torch.testing.assert_close(logit_critic.values(obs, chunk), 1 / (1 + torch.exp(-raw)))
    plain = critic(logits=False)
    torch.testing.assert_close(plain.values(obs, chunk), plain(obs, chunk))
    torch.testing.assert_close(plain(obs, chunk), raw)  # same seed, same weights: only the read-out differs


@pytest.mark.parametrize(("obs_shape", "chunk_shape", "message"), [
    ((5, 3), (5, 3, 2), r"critic obs must have shape \(B, 2, 3\), got \(5, 3\)"),
    ((5, 1, 3), (5, 3, 2), r"critic obs must have shape \(B, 2, 3\), got \(5, 1, 3\)"),
    ((5, 2, 4), (5, 3, 2), r"critic obs must have shape \(B, 2, 3\), got \(5, 2, 4\)"),
    ((5, 2, 3), None, r"critic over 3-step chunks of 2-d actions needs a chunk of shape \(5, >=3, 2\), got None"),
    ((5, 2, 3), (5, 2, 2), r"shape \(5, >=3, 2\), got \(5, 2, 2\)"),
    ((5, 2, 3), (5, 3, 1), r"shape \(5, >=3, 2\), got \(5, 3, 1\)"),
])
def test_bad_obs_and_chunk_shapes_raise_a_value_error_naming_the_expected_shape(obs_shape, chunk_shape, message):
    q = critic()
    chunk = None if chunk_shape is None else torch.zeros(chunk_shape)
    with pytest.raises(ValueError, match=message):
        q(torch.zeros(obs_shape), chunk)


@pytest.mark.parametrize("chunk_shape", [(5, 6), (4, 3, 2)], ids=["flat-chunk", "batch-mismatch"])
def test_malformed_chunks_raise_a_value_error(chunk_shape):
    with pytest.raises(ValueError, match="critic over 3-step chunks"):
        critic()(torch.zeros(5, 2, 3), torch.zeros(chunk_shape))


def test_an_ensemble_needs_a_member():
    with pytest.raises(ValueError, match="at least one member, got num_critics=0"):
        EnsembleMLP(4, num=0)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_ensemble_mlp_gradients_match_finite_differences(layer_norm):
    torch.manual_seed(0)
    net = EnsembleMLP(3, num=2, hidden_dims=(4, 5), layer_norm=layer_norm).double()
    with torch.no_grad():  # LayerNorm affine parameters away from their 1 / 0 initialisation
        for p in [*net.norm_weight, *net.norm_bias]:
            p.add_(0.1 * torch.randn_like(p))
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, *params):
        return torch.func.functional_call(net, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)
    # per-member inputs (E, B, in) are differentiated the same way
    xe = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (xe, *params), eps=1e-6, atol=1e-5)


def test_shared_input_equals_the_same_input_given_to_every_member():
    torch.manual_seed(0)
    net = EnsembleMLP(3, num=3, hidden_dims=(8,))
    x = torch.randn(4, 3)
    torch.testing.assert_close(net(x), net(x.expand(3, 4, 3)))


def test_polyak_update_moves_every_target_parameter_tau_of_the_way():
    source, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        source.weight.copy_(torch.tensor([[3.0, 6.0]]))
        source.bias.fill_(-4.0)
        target.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.bias.fill_(0.0)
    polyak_update(target, source, tau=0.25)
    # (1 - tau) * target + tau * source
    torch.testing.assert_close(target.weight, torch.tensor([[0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6]]))
    torch.testing.assert_close(target.bias, torch.tensor([0.25 * -4.0]))
    torch.testing.assert_close(source.weight, torch.tensor([[3.0, 6.0]]))  # the source is untouched
    polyak_update(target, source, tau=1.0)
    torch.testing.assert_close(target.weight, source.weight)
    assert target.weight.grad is None


def test_polyak_update_of_critic_ensembles_and_mismatched_modules():
    a, b = critic(), critic(hidden_dims=(16, 16))
    with torch.no_grad():
        for p in b.parameters():
            p.zero_()
    before = [p.clone() for p in a.parameters()]
    polyak_update(b, a, tau=0.1)
    for p_b, p_a in zip(b.parameters(), before, strict=True):
        torch.testing.assert_close(p_b, 0.1 * p_a)
    with pytest.raises((ValueError, RuntimeError)):  # a target with other parameters is refused
        polyak_update(critic(hidden_dims=(16,)), a, tau=0.1)
