"""Chunk-critic losses and targets (robopol.critics.losses) against numbers worked out by hand."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
import torch

from robopol.critics import (
    aggregate,
    bce_expectile_loss,
    chunk_td_target,
    expectile_loss,
    masked_mean,
    q_loss_scale,
    quantile_loss,
    td_loss,
)
from robopol.critics.losses import asymmetric_weight
from robopol.data.normalize import Normalizer
from robopol.data.sampler import WindowConfig, WindowSampler
from robopol.data.store import EpisodeStore
from robopol.train.trainer import to_batch


def close(actual: torch.Tensor, expected: list[float] | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ asymmetric losses


def test_expectile_and_quantile_weight_positive_diffs_by_tau_and_negative_ones_by_one_minus_tau():
    # diff = target - prediction: +2 (prediction too low), -1 (too high), 0 (counts as "not below")
    diff = torch.tensor([2.0, -1.0, 0.0, -0.5])
    close(asymmetric_weight(diff, 0.7), [0.7, 0.3, 0.7, 0.3])
    close(expectile_loss(diff, 0.7), [0.7 * 4.0, 0.3 * 1.0, 0.0, 0.3 * 0.25])
    close(quantile_loss(diff, 0.7), [0.7 * 2.0, 0.3 * 1.0, 0.0, 0.3 * 0.5])
    # tau = 0.5 is half the symmetric loss
    close(expectile_loss(diff, 0.5), [2.0, 0.5, 0.0, 0.125])
    close(quantile_loss(diff, 0.5), [1.0, 0.5, 0.0, 0.25])


def test_expectile_keeps_the_dtype_and_gradient_of_its_input():
    diff = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    loss = expectile_loss(diff, 0.9)
    assert loss.dtype == torch.float64
    loss.sum().backward()
    # d/d diff of w diff^2 = 2 w diff
    close(diff.grad, [2 * 0.9 * 3.0, 2 * 0.1 * -2.0])


def test_bce_expectile_loss_against_a_hand_binary_cross_entropy():
    # sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75
    logits = torch.tensor([0.0, math.log(3.0), 0.0])
    target = torch.tensor([0.8, 0.25, 0.5])
    kappa = 0.9

    def bce(p: float, y: float) -> float:
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = [
        0.9 * bce(0.5, 0.8),  # target above the prediction: weight kappa
        0.1 * bce(0.75, 0.25),  # target below: 1 - kappa
        0.9 * bce(0.5, 0.5),  # equal (sigmoid(0) is exactly 0.5): ">=", so kappa
    ]
    close(bce_expectile_loss(logits, target, kappa), expected)
    assert expected[0] == pytest.approx(0.9 * math.log(2.0))


# ------------------------------------------------------------------ chunk TD target from the real sampler

GAMMA = 0.9


def tiny_store() -> EpisodeStore:
    """Episode 0: 6 steps, rewards 1, 2, 4, ..., 32, a true terminal at its last step; episode 1: 3 steps of
    reward 1 ending at a time limit. obs[i] holds the global step index."""
    store = EpisodeStore.create(f"memory://robopol-critic-test-{uuid.uuid4().hex}/s.zarr")
    store.add_episode({
        "obs": np.arange(6, dtype=np.float32)[:, None],
        "action": (0.1 * np.arange(6, dtype=np.float32))[:, None],
        "reward": np.array([1, 2, 4, 8, 16, 32], dtype=np.float32),
        "terminal": np.array([0, 0, 0, 0, 0, 1], dtype=bool),
    })
    store.add_episode({
        "obs": np.arange(6, 9, dtype=np.float32)[:, None],
        "action": np.zeros((3, 1), dtype=np.float32),
        "reward": np.ones(3, dtype=np.float32),
        "terminal": np.zeros(3, dtype=bool),
    })
    return store


def critic_batch(anchors: list[int]) -> dict[str, torch.Tensor]:
    store = tiny_store()
    arrays = store.load()
    sampler = WindowSampler(arrays, store.episode_ends, WindowConfig(
        obs_keys=("obs",), obs_steps=1, horizon=4, critic=True, gamma=GAMMA))
    np.testing.assert_array_equal(sampler.anchors, np.arange(9))  # every step anchors a window
    normalizer = Normalizer.fit(arrays, modes={"obs": "identity", "action": "identity"})
    return to_batch(sampler.windows(np.array(anchors)), ["obs"], normalizer, torch.device("cpu"))


def test_chunk_td_target_from_sampler_windows_with_a_terminal_inside_the_chunk():
    # anchors: 1 (full chunk 1..4), 3 (chunk 3..6, terminal at step 5 = chunk step 2), 5 (terminal at chunk
    # step 0), 6 (episode 1: steps 6..8 then the time limit)
    b = critic_batch([1, 3, 5, 6])
    g = GAMMA
    close(b["reward_sum"], [2 + g * 4 + g**2 * 8 + g**3 * 16,  # 23.744
                            8 + g * 16 + g**2 * 32,  # 48.32: step 6 lies past the terminal
                            32.0,
                            1 + g + g**2])
    assert b["reward_sum"][0].item() == pytest.approx(23.744, rel=1e-6)
    assert b["reward_sum"][1].item() == pytest.approx(48.32, rel=1e-6)
    close(b["discount"], [g**4, g**3, g**1, g**3])
    assert b["valid"].tolist() == [[True] * 4, [True, True, True, False], [True, False, False, False],
                                   [True, True, True, False]]
    assert b["terminal"].tolist() == [False, True, True, False]
    assert b["mask"].tolist() == [True, False, False, True]
    assert b["truncated"].tolist() == [False, False, False, True]
    # next state: s_{t+n}, clamped to the episode's last stored step
    close(b["next_obs"][:, 0, 0], [5.0, 5.0, 5.0, 8.0])
    assert b["reward_sum"].dtype == torch.float32 and b["mask"].dtype == torch.bool

    next_value = torch.tensor([100.0, 100.0, 100.0, 100.0])
    target = chunk_td_target(b["reward_sum"], b["discount"], b["mask"], next_value)
    close(target, [23.744 + 0.6561 * 100,  # 89.354
                   48.32,  # terminal: no bootstrap
                   32.0,
                   2.71 + 0.729 * 100])  # a time limit still bootstraps (the algorithm may drop it)


def test_chunk_td_target_broadcasts_and_keeps_gradients_of_the_next_value_only_through_the_mask():
    next_value = torch.tensor([2.0, 3.0], requires_grad=True)
    target = chunk_td_target(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5]), torch.tensor([True, False]),
                             next_value)
    close(target, [1.0 + 0.5 * 2.0, 1.0])
    target.sum().backward()
    close(next_value.grad, [0.5, 0.0])


# ------------------------------------------------------------------ aggregation, scales, means


def test_aggregate_min_and_mean_over_members_and_a_bad_name():
    values = torch.tensor([[1.0, 5.0, -2.0], [3.0, 2.0, -4.0]])  # (E=2, B=3)
    close(aggregate(values, "min"), [1.0, 2.0, -4.0])
    close(aggregate(values, "mean"), [2.0, 3.5, -3.0])
    with pytest.raises(ValueError, match="ensemble aggregation must be one of min, mean, got 'max'"):
        aggregate(values, "max")


def test_q_loss_scale_is_eta_over_mean_abs_q_and_passes_no_gradient():
    q = torch.tensor([2.0, -4.0, 6.0], requires_grad=True)
    alpha = q_loss_scale(q, eta=0.3)
    # mean |Q| = (2 + 4 + 6) / 3 = 4
    assert alpha.item() == pytest.approx(0.3 / 4.0)
    assert not alpha.requires_grad
    (alpha * q).sum().backward()
    # a constant factor: d/dq_i (alpha * sum q) = alpha; a scale with gradient would add sum(q) * dalpha/dq_i
    close(q.grad, [0.075, 0.075, 0.075])
    # all-zero Q: the floor eps keeps the scale finite
    assert q_loss_scale(torch.zeros(3), eta=0.3, eps=1e-6).item() == pytest.approx(0.3 / 1e-6)


def test_masked_mean_weights_samples_and_survives_zero_weights():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (E, B)
    assert masked_mean(values, None).item() == pytest.approx(21 / 6)
    # weight (B,) broadcasts over members: (1 + 3 + 4 + 6) / 4
    assert masked_mean(values, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(3.5)
    assert masked_mean(values, torch.tensor([True, False, True])).item() == pytest.approx(3.5)  # bool masks
    zero = masked_mean(values, torch.zeros(3))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    # integer weights >= 1 count samples several times: (2 * (1 + 4) + (3 + 6)) / 6
    assert masked_mean(values, torch.tensor([2.0, 0.0, 1.0])).item() == pytest.approx(19 / 6)


def test_masked_mean_normalises_fractional_weights():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # one sample with weight 0.25: the weighted mean is that sample's mean over members, (1 + 4) / 2
    assert masked_mean(values, torch.tensor([0.25, 0.0, 0.0])).item() == pytest.approx(2.5)


def test_td_loss_averages_members_and_weighted_samples_and_detaches_the_target():
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)  # (E=2, B=2)
    target = torch.tensor([2.0, 2.0], requires_grad=True)
    # squared errors [[1, 0], [1, 4]]
    assert td_loss(q, target).item() == pytest.approx((1 + 0 + 1 + 4) / 4)
    loss = td_loss(q, target, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((1 + 1) / 2)
    loss.backward()
    # d/dq of (q - y)^2 / 2 (weight sum over members): (q - y) for kept samples, 0 for the dropped one
    close(q.grad, [[-1.0, 0.0], [1.0, 0.0]])
    assert target.grad is None
