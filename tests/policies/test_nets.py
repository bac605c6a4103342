"""Backbones: embedding values, U-Net shapes and valid lengths, FiLM conditioning, transformer denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from robopol.nets.embeddings import LevelEmbedding, SinusoidalEmbedding, enable_level_cache
from robopol.nets.mlp import MLP
from robopol.nets.transformer import TransformerDenoiser
from robopol.nets.unet import ConditionalUnet1D, FiLMResidualBlock
from robopol.policies.base import MLPDenoiser
from robopol.policies.meanflow import TimePairEmbedding


def test_sinusoidal_embedding_hand_values():
    emb = SinusoidalEmbedding(4)  # frequencies 1 and 10000 ** -0.5 = 0.01
    out = emb(torch.tensor([2.0, 0.0]))
    expected = [[math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)], [0, 0, 1, 1]]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=1e-6)
    scaled = SinusoidalEmbedding(4, scale=100.0)(torch.tensor([0.02]))
    torch.testing.assert_close(scaled, out[:1], rtol=0, atol=1e-5)
    assert "freqs" not in emb.state_dict()  # derived from the arguments, never checkpointed
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(5)


def test_level_cache_reuses_embeddings_until_a_weight_changes():
    torch.manual_seed(0)
    net = MLPDenoiser(input_dim=2, horizon=3, cond_dim=4, level_dim=8, hidden_dims=(16,))
    emb = net.level_embed
    calls = []
    emb[1].register_forward_hook(lambda *_: calls.append(1))  # the embedding MLP's first layer
    level, other = torch.tensor([0.5]), torch.tensor([0.25])
    reference = emb(level).detach()
    net.eval()
    enable_level_cache(net)
    calls.clear()
    with torch.no_grad():
        first = emb(level)
        second = emb(level)
        emb(other)
        emb(level)
    assert len(calls) == 2  # one computation per distinct level
    assert second is first
    torch.testing.assert_close(first, reference, rtol=0, atol=0)

    # every way the weights change invalidates the entry
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    emb(level).sum().backward()
    optimizer.step()
    net.eval()
    with torch.no_grad():
        after_step = emb(level)
    assert not torch.equal(after_step, first)
    with torch.no_grad():
        torch.testing.assert_close(after_step, torch.nn.Sequential.forward(emb, level), rtol=0, atol=0)
    state = {k: v + 1.0 for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(emb(level), torch.nn.Sequential.forward(emb, level), rtol=0, atol=0)
        for p in net.parameters():
            p.lerp_(torch.zeros_like(p), 0.5)  # an EMA-style in-place update
        torch.testing.assert_close(emb(level), torch.nn.Sequential.forward(emb, level), rtol=0, atol=0)


def test_level_cache_is_bypassed_in_training_with_autograd_and_when_off():
    torch.manual_seed(0)
    emb = LevelEmbedding(8)
    calls = []
    emb[1].register_forward_hook(lambda *_: calls.append(1))
    level = torch.tensor([0.5])
    enable_level_cache(emb)
    emb.train()
    with torch.no_grad():
        emb(level)
        emb(level)
    emb.eval()
    out = emb(level)  # autograd on: the result must carry a graph, so nothing is cached
    assert out.requires_grad
    emb(level)
    enable_level_cache(emb, False)
    with torch.no_grad():
        emb(level)
        emb(level)
    assert len(calls) == 6


def test_mean_flow_pair_embedding_is_cached_whole_and_recomputed_after_a_weight_change():
    torch.manual_seed(0)
    emb = TimePairEmbedding(8, scale=1.0).eval()
    inner = []
    emb.time.register_forward_hook(lambda *_: inner.append(1))
    pair, other = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.25, 1.0]])
    with torch.no_grad():
        reference = emb.embed(pair)
    enable_level_cache(emb)
    inner.clear()
    with torch.no_grad():
        first = emb(pair)
        assert emb(pair) is first
        emb(other)
        emb(pair)
        assert len(inner) == 2  # one computation per distinct (t, r), none on a hit
        torch.testing.assert_close(first, reference, rtol=0, atol=0)
        emb.gap[3].bias.add_(1.0)  # only the gap embedding's weights change
        torch.testing.assert_close(emb(pair), reference + 1.0, rtol=0, atol=1e-6)


def _unet(down_dims=(8, 16), cond_dim=3) -> ConditionalUnet1D:
    torch.manual_seed(0)
    return ConditionalUnet1D(input_dim=2, cond_dim=cond_dim, level_dim=8, down_dims=down_dims, kernel_size=3,
                             n_groups=4)


@pytest.mark.parametrize(("down_dims", "lengths"), [((8,), [1, 3, 7]), ((8, 16), [2, 6, 10]),
                                                    ((8, 16, 16), [4, 12])])
def test_unet_keeps_shape_for_valid_lengths(down_dims, lengths):
    net = _unet(down_dims)
    for length in lengths:
        out = net(torch.randn(3, length, 2), torch.tensor([0.0, 5.0, 99.0]), torch.randn(3, 3))
        assert out.shape == (3, length, 2)


@pytest.mark.parametrize(("down_dims", "length"), [((8, 16), 7), ((8, 16, 16), 6)])
def test_unet_rejects_lengths_it_cannot_halve(down_dims, length):
    with pytest.raises(ValueError, match=f"sequence length {length} is not divisible by"):
        _unet(down_dims)(torch.randn(1, length, 2), torch.zeros(1), torch.zeros(1, 3))


def test_unet_validates_its_sizes():
    with pytest.raises(ValueError, match="odd"):
        ConditionalUnet1D(2, 3, down_dims=(8,), kernel_size=4, n_groups=4)
    with pytest.raises(ValueError, match="n_groups"):
        ConditionalUnet1D(2, 3, down_dims=(8, 12), n_groups=8)


def test_film_conditioning_changes_the_output_and_is_the_only_path_for_the_condition():
    net = _unet().eval()
    x, level = torch.randn(1, 4, 2), torch.tensor([10.0])
    a, b = torch.zeros(1, 3), torch.ones(1, 3)
    assert (net(x, level, a) - net(x, level, b)).abs().max() > 1e-3
    assert (net(x, level, a) - net(x, torch.tensor([60.0]), a)).abs().max() > 1e-3
    blocks = [m for m in net.modules() if isinstance(m, FiLMResidualBlock)]
    assert len(blocks) == 2 * 2 + 2 + 2 * 2  # two per encoder level, two in the middle, two per decoder level
    with torch.no_grad():
        for block in blocks:
            block.film[1].weight.zero_()
            block.film[1].bias.zero_()
    # Zero FiLM: scale 0 and bias 0, so neither the observation nor the level can reach the output.
    torch.testing.assert_close(net(x, level, a), net(x, torch.tensor([60.0]), b))


def test_film_is_scale_and_bias_per_channel():
    torch.manual_seed(0)
    block = FiLMResidualBlock(2, 4, cond_dim=3, kernel_size=3, n_groups=2)
    with torch.no_grad():
        block.film[1].weight.zero_()
        block.film[1].bias.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0, 0.5, 0.5, 0.5, 0.5]))  # scale, then bias
    x, cond = torch.randn(1, 2, 5), torch.randn(1, 3)
    h = block.block1(x) * torch.tensor([2.0, 0.0, 1.0, 3.0]).view(1, 4, 1) + 0.5
    torch.testing.assert_close(block(x, cond), block.block2(h) + block.skip(x))


def test_transformer_shapes_and_conditioning():
    torch.manual_seed(0)
    net = TransformerDenoiser(input_dim=2, horizon=6, cond_dim=3, cond_steps=2, d_model=16, n_heads=2,
                              n_layers=2, dropout=0.0).eval()
    x, level, obs = torch.randn(4, 6, 2), torch.full((4,), 30.0), torch.randn(4, 2, 3)
    out = net(x, level, obs)
    assert out.shape == (4, 6, 2)
    assert net(x[:, :5], level, obs).shape == (4, 5, 2)
    assert (net(x, level, obs.flip(1)) - out).abs().max() > 1e-4  # observation steps are told apart
    assert (net(x, level + 40, obs) - out).abs().max() > 1e-4
    # No causal mask: the first step's output depends on the last step's input.
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (net(x2, level, obs)[:, 0] - out[:, 0]).abs().max() > 1e-5
    with pytest.raises(ValueError, match="exceeds the transformer's horizon 6"):
        net(torch.randn(1, 7, 2), level[:1], obs[:1])


def test_mlp_denoiser_uses_chunk_level_and_condition():
    torch.manual_seed(0)
    net = MLPDenoiser(input_dim=2, horizon=3, cond_dim=4, level_dim=8, hidden_dims=[16])
    x, level, cond = torch.randn(5, 3, 2), torch.zeros(5), torch.randn(5, 1, 4)
    out = net(x, level, cond)
    assert out.shape == (5, 3, 2)
    assert (net(x, level + 10, cond) - out).abs().max() > 1e-4
    assert (net(x, level, cond + 1) - out).abs().max() > 1e-4


@pytest.mark.parametrize("layer_norm,residual", [(False, False), (True, True)])
def test_mlp_forward_from_the_first_linear_output_is_forward(layer_norm, residual):
    torch.manual_seed(0)
    mlp = MLP(5, 3, [8, 8], layer_norm=layer_norm, residual=residual)
    x = torch.randn(4, 5)
    first = mlp.hidden[0][0]
    # the first layer's sum split by input columns, as a caller that caches part of the input does
    h = x[:, :2] @ first.weight[:, :2].t() + (x[:, 2:] @ first.weight[:, 2:].t() + first.bias)
    torch.testing.assert_close(mlp.forward_from_first(h), mlp(x))
    square = MLP(8, 3, [8], residual=True)
    with pytest.raises(ValueError, match="skip connection around the first layer"):
        square.forward_from_first(torch.zeros(1, 8))
