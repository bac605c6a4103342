"""Diffusion head: the loss against hand-computed values, sampler step counts, recovery with an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robopol.policies.diffusion import DiffusionPolicy

from .helpers import CountingNet, FakeNet

K = 10  # training noise levels in these tests


def cosine_alphas_cumprod(k: int) -> np.ndarray:
    """The squaredcos_cap_v2 schedule (Nichol & Dhariwal) written out: betas from abar(t) = cos^2."""
    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - abar((i + 1) / k) / abar(i / k), 0.999) for i in range(k)])
    return np.cumprod(1 - betas)


def _policy(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    kw = {"backbone": "mlp", "hidden_dims": [16], "embed_dim": 8, "num_train_timesteps": K, **kw}
    return DiffusionPolicy(obs_dim=2, action_dim=2, obs_steps=1, horizon=3, action_steps=1, **kw)


def _batch() -> dict[str, torch.Tensor]:
    action = torch.tensor([[[0.5, -1.0], [0.0, 0.2], [1.0, 1.0]]]).repeat(4, 1, 1) * torch.tensor(
        [1.0, -0.5, 0.25, 0.0]).view(4, 1, 1)
    is_pad = torch.tensor([[False, False, True], [False, False, False], [False, True, True], [False] * 3])
    return {"obs": torch.arange(8.0).view(4, 1, 2) / 8, "action": action, "action_is_pad": is_pad}


def _drawn(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The noise and levels the head draws from a generator seeded with ``seed``: noise first, then levels."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(shape, generator=gen)
    k = torch.randint(0, K, (shape[0],), generator=gen)
    return eps.double().numpy(), k.numpy()


def _masked_mean(err: np.ndarray, is_pad: np.ndarray | None) -> float:
    err = err.mean(-1)
    return float(err.mean() if is_pad is None else err[~is_pad].mean())


def test_scheduler_is_the_cosine_schedule():
    torch.testing.assert_close(_policy().noise_scheduler.alphas_cumprod.double(),
                               torch.from_numpy(cosine_alphas_cumprod(K)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("mask_padding", [True, False])
def test_loss_matches_hand_computation(prediction_type, mask_padding):
    policy = _policy(prediction_type=prediction_type, mask_padding=mask_padding)
    policy.net = FakeNet(lambda x, level, obs: 0.5 * x + 0.01 * level.view(-1, 1, 1)
                         + obs.sum((1, 2)).view(-1, 1, 1))
    batch = _batch()
    loss, metrics = policy.loss(batch, generator=torch.Generator().manual_seed(7))

    eps, k = _drawn(7, batch["action"].shape)
    a, obs = batch["action"].double().numpy(), batch["obs"].double().numpy()
    ab = cosine_alphas_cumprod(K)[k].reshape(-1, 1, 1)
    x_k = np.sqrt(ab) * a + np.sqrt(1 - ab) * eps
    pred = 0.5 * x_k + 0.01 * k.reshape(-1, 1, 1) + obs.sum((1, 2)).reshape(-1, 1, 1)
    velocity = np.sqrt(ab) * eps - np.sqrt(1 - ab) * a
    target = {"epsilon": eps, "sample": a, "v_prediction": velocity}[prediction_type]
    expected = _masked_mean((pred - target) ** 2, batch["action_is_pad"].numpy() if mask_padding else None)

    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics == {"denoise_mse": loss.item()}
    (x_in, level_in, obs_in), = policy.net.calls
    np.testing.assert_array_equal(level_in.numpy(), k)
    np.testing.assert_allclose(x_in.double().numpy(), x_k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(obs_in, batch["obs"])


def test_loss_uses_torch_rng_so_training_replays_exactly():
    policy, batch = _policy(), _batch()
    torch.manual_seed(3)
    first = policy.loss(batch)[0]
    torch.manual_seed(3)
    assert torch.equal(policy.loss(batch)[0], first)
    assert not torch.equal(policy.loss(batch)[0], first)


@pytest.mark.parametrize(("sampler", "steps", "levels"), [
    ("ddpm", 10, list(range(9, -1, -1))), ("ddpm", 3, [6, 3, 0]), ("ddim", 1, [0]),
    ("ddim", 5, [8, 6, 4, 2, 0])])
def test_sampler_calls_the_network_once_per_step_at_the_scheduler_levels(sampler, steps, levels):
    policy = _policy()
    policy.net = CountingNet(policy.net)
    out = policy.sample(torch.zeros(2, 1, 2), sampler=sampler, steps=steps)
    assert out.shape == (2, 3, 2)
    assert [int(lv[0]) for lv in policy.net.levels] == levels
    assert all(lv.shape == (2,) for lv in policy.net.levels)


def test_sample_defaults_to_the_config_sampler():
    policy = _policy(sampler="ddpm", inference_steps=4)
    policy.net = CountingNet(policy.net)
    policy.sample(torch.zeros(1, 1, 2))
    assert len(policy.net.levels) == 4


def _oracle(prediction_type: str, target: torch.Tensor) -> FakeNet:
    """Exact denoiser for a point mass at ``target``: predicts it, or the noise that separates x_k from it."""
    ab = torch.from_numpy(cosine_alphas_cumprod(K))

    def fn(x, level, obs):
        if prediction_type == "sample":
            return target.expand_as(x)
        a = ab[level.long()].view(-1, 1, 1)
        return ((x.double() - a.sqrt() * target) / (1 - a).sqrt()).float()

    return FakeNet(fn)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 10), ("ddpm", 4), ("ddim", 3), ("ddim", 10)])
def test_oracle_denoiser_lands_on_the_data(prediction_type, sampler, steps):
    target = torch.tensor([[0.3, -0.7], [0.9, 0.0], [-0.2, 0.5]])
    policy = _policy(prediction_type=prediction_type)
    policy.net = _oracle(prediction_type, target)
    out = policy.sample(torch.zeros(5, 1, 2), generator=torch.Generator().manual_seed(0), sampler=sampler,
                        steps=steps)
    torch.testing.assert_close(out, target.expand(5, -1, -1), rtol=0, atol=1e-4)


def test_ddim_with_an_oracle_stays_on_one_noise_path():
    """Deterministic DDIM keeps the implied noise (x_k - sqrt(abar_k) a) / sqrt(1 - abar_k) at every step."""
    target = torch.tensor([[0.3, -0.7], [0.9, 0.0], [-0.2, 0.5]])
    policy = _policy()
    policy.net = _oracle("epsilon", target)
    policy.sample(torch.zeros(2, 1, 2), sampler="ddim", steps=5)
    ab = torch.from_numpy(cosine_alphas_cumprod(K))
    implied = [(x.double() - ab[int(lv[0])].sqrt() * target) / (1 - ab[int(lv[0])]).sqrt()
               for x, lv, _ in policy.net.calls]
    assert len(implied) == 5
    for eps in implied[1:]:
        torch.testing.assert_close(eps, implied[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize(("clip_sample", "expected"), [(True, 1.0), (False, 3.0)])
def test_clip_sample_bounds_the_predicted_chunk(clip_sample, expected):
    policy = _policy(prediction_type="sample", clip_sample=clip_sample)
    policy.net = FakeNet(lambda x, level, obs: torch.full_like(x, 3.0))
    out = policy.sample(torch.zeros(2, 1, 2), sampler="ddim", steps=2)
    torch.testing.assert_close(out, torch.full_like(out, expected))


def test_sampling_randomness_comes_from_the_generator():
    policy = _policy().eval()
    obs = torch.zeros(3, 1, 2)
    first = policy.sample(obs, generator=torch.Generator().manual_seed(5), sampler="ddpm", steps=K)
    torch.rand(10)  # the global RNG moves on; a seeded generator must not care
    again = policy.sample(obs, generator=torch.Generator().manual_seed(5), sampler="ddpm", steps=K)
    other = policy.sample(obs, generator=torch.Generator().manual_seed(6), sampler="ddpm", steps=K)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_invalid_samplers_and_schedules_are_named():
    policy = _policy()
    obs = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="sampler must be one of ddpm, ddim.*'euler'"):
        policy.sample(obs, sampler="euler")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        policy.sample(obs, steps=0)
    with pytest.raises(ValueError, match=r"steps=11 exceeds the 10 training noise levels"):
        policy.sample(obs, sampler="ddpm", steps=11)
    with pytest.raises(ValueError, match="policy.sampler"):
        _policy(sampler="euler")
    with pytest.raises(ValueError, match="policy.inference_steps=20 exceeds"):
        _policy(inference_steps=20)
    with pytest.raises(ValueError, match="policy.prediction_type"):
        _policy(prediction_type="velocity")
    with pytest.raises(ValueError, match="policy.beta_schedule"):
        _policy(beta_schedule="cosine")
