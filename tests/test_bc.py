"""The behaviour-cloning algorithm: EMA arithmetic, schedule, and learning on a tiny problem."""

from __future__ import annotations

import pytest
import torch

from robopol.algos.bc import BC, update_ema
from robopol.policies.mlp import MLPPolicy


def test_update_ema_hand_computed():
    model, ema = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0), model.bias.fill_(-1.0)
        ema.weight.fill_(0.0), ema.bias.fill_(1.0)
    update_ema(ema, model, decay=0.75)
    assert ema.weight.item() == pytest.approx(0.5)  # 0.75 * 0 + 0.25 * 2
    assert ema.bias.item() == pytest.approx(0.5)  # 0.75 * 1 + 0.25 * -1
    update_ema(ema, model, decay=0.75)
    assert ema.weight.item() == pytest.approx(0.875)


def test_bc_learns_a_linear_map_and_its_ema_follows():
    torch.manual_seed(0)
    policy = MLPPolicy(obs_dim=2, action_dim=1, horizon=2, action_steps=1, hidden_dims=[32])
    algo = BC(policy, total_steps=400, lr=1e-2, warmup_steps=10, ema_decay=0.9)
    obs = torch.rand(256, 1, 2) * 2 - 1
    action = (obs[:, :, :1] - obs[:, :, 1:]).expand(-1, 2, -1) / 2  # (B, H=2, A=1)
    batch = {"obs": obs, "action": action}
    first = algo.update(batch)["loss"]
    for _ in range(399):
        metrics = algo.update(batch)
    assert metrics["loss"] < 0.02 * first and metrics["lr"] == pytest.approx(0.0, abs=1e-6)
    assert algo.eval_policy() is algo.ema and set(algo.modules()) == {"policy", "ema"}
    assert algo.validation_loss(batch) < 0.05 * first


def test_bc_rejects_a_bad_ema_decay():
    with pytest.raises(ValueError, match=r"algo.ema_decay must be in \[0, 1\), got 1.0"):
        BC(MLPPolicy(obs_dim=1, action_dim=1), total_steps=1, ema_decay=1.0)
