"""OPE gate: accept/reject logic, the critic estimator on a Q known in closed form, AM-Q rollouts by hand in an
exact model, and a learned dynamics ensemble on a linear system that ranks policies like the true one."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from robopol.algos.ope import DynamicsEnsemble, OPEGate, amq_estimate, critic_estimate, fit, model_rollout


class Gain(nn.Module):
    """Stand-in deterministic policy ``a = k * s`` (last observation step), repeated over its chunk."""

    def __init__(self, k: float, horizon: int = 1) -> None:
        super().__init__()
        self.k, self.horizon, self.action_steps = k, horizon, horizon
        self.seen: list[torch.Tensor] = []

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.seen.append(obs.clone())
        return (self.k * obs[:, -1:, :]).expand(-1, self.horizon, -1).clone()


class MatchQ(nn.Module):
    """``Q_1(s, a) = -(a - s)^2`` and ``Q_2 = Q_1 - 1``: the best action copies the state."""

    horizon = 1

    def values(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        q = -(chunk[:, 0, 0] - obs[:, -1, 0]).pow(2)
        return torch.stack([q, q - 1.0])


class NextStateQ(nn.Module):
    """``Q(s, a) = -(s + a)^2``: minus the squared next state of the system ``s' = s + a``."""

    horizon = 1

    def values(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        return -(obs[:, -1, 0] + chunk[:, 0, 0]).pow(2)[None]


class ExactModel:
    """The true system ``s' = s + a`` with reward ``-s^2``."""

    def step(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return obs + action, -obs[:, 0].pow(2)


START = torch.tensor([0.5, -0.25, 1.0]).view(3, 1, 1)  # mean s^2 = 1.3125 / 3 = 0.4375


class Scored(nn.Module):
    def __init__(self, score: float) -> None:
        super().__init__()
        self.score = score


def test_gate_accepts_only_improvements_and_moves_its_reference():
    gate = OPEGate(lambda policy: policy.score)
    assert gate.consider(Scored(-5.0))  # no reference yet: the first candidate passes
    assert gate.reset(Scored(1.0)) == 1.0
    assert not gate.consider(Scored(0.5)) and gate.reference == 1.0
    assert not gate.consider(Scored(1.0))  # a tie is not an improvement
    assert gate.consider(Scored(1.5)) and gate.reference == 1.5
    assert [accepted for _, accepted in gate.history] == [True, False, False, True]
    strict = OPEGate(lambda policy: policy.score, margin=0.2, reference=1.0)
    assert not strict.consider(Scored(1.1)) and strict.consider(Scored(1.3)) and strict.reference == 1.3


def test_critic_estimate_on_a_known_q_by_hand():
    estimate = partial(critic_estimate, critic=MatchQ(), start_obs=START)
    # Q_mean(s, k s) = -(k - 1)^2 s^2 - 0.5
    assert estimate(Gain(1.0)) == pytest.approx(-0.5)
    assert estimate(Gain(0.5)) == pytest.approx(-0.25 * 0.4375 - 0.5)
    assert estimate(Gain(0.0)) == pytest.approx(-0.4375 - 0.5)
    # k = 2 asks for actions (1, -0.5, 2); the last is clipped to 1, which matches s = 1 exactly
    assert estimate(Gain(2.0)) == pytest.approx(-(0.25 + 0.0625 + 0.0) / 3 - 0.5)
    assert critic_estimate(Gain(0.0), MatchQ(), START, aggregation="min") == pytest.approx(-0.4375 - 1.0)


def test_gate_with_the_critic_estimate_keeps_the_best_policy():
    gate = OPEGate(partial(critic_estimate, critic=MatchQ(), start_obs=START))
    assert gate.reset(Gain(0.5)) == pytest.approx(-0.609375)
    assert not gate.consider(Gain(0.0))  # -0.9375: worse
    assert gate.consider(Gain(2.0))  # -0.6042 (thanks to the clip): better
    assert gate.consider(Gain(1.0)) and gate.reference == pytest.approx(-0.5)
    assert not gate.consider(Gain(0.5))


def test_amq_rollout_by_hand_in_the_exact_model():
    start = torch.tensor([0.4, -0.4]).view(2, 1, 1)
    # good a = -s/2: states 0.4, 0.2, 0.1 -> Q = -(next state)^2 = -0.04, -0.01, -0.0025; rewards -s^2
    q, reward = model_rollout(Gain(-0.5), ExactModel(), NextStateQ(), start, steps=3)
    assert q == pytest.approx(-(0.04 + 0.01 + 0.0025) / 3)
    assert reward == pytest.approx(-(0.16 + 0.04 + 0.01) / 3)
    # bad a = +s/2: states 0.4, 0.6, 0.9 -> Q = -0.36, -0.81, -1.8225
    q, _ = model_rollout(Gain(0.5), ExactModel(), NextStateQ(), start, steps=3)
    assert q == pytest.approx(-(0.36 + 0.81 + 1.8225) / 3)


def test_amq_executes_chunks_open_loop_and_shifts_the_observation_history():
    policy = Gain(-0.5, horizon=2)  # plans (-s/2, -s/2) every two steps
    start = torch.tensor([[0.4, 0.4]]).view(1, 2, 1)  # To = 2
    q, reward = model_rollout(policy, ExactModel(), NextStateQ(), start, steps=3)
    # plan at 0.4: Q = -(0.4 - 0.2)^2; states 0.2, 0.0; plan at 0.0 (history 0.2, 0.0): Q = 0; one more step
    assert [p.flatten().tolist() for p in policy.seen] == [pytest.approx([0.4, 0.4]), pytest.approx([0.2, 0.0])]
    assert q == pytest.approx(-0.04 / 2)
    assert reward == pytest.approx(-(0.16 + 0.04 + 0.0) / 3)


def test_a_learned_dynamics_ensemble_ranks_policies_like_the_true_system():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    obs = 4 * torch.rand(2000, 1, generator=g) - 2
    action = 2 * torch.rand(2000, 1, generator=g) - 1
    model = DynamicsEnsemble(1, 1, num=3, hidden_dims=(64, 64))
    loss = fit(model, obs, action, obs + action, -obs[:, 0].pow(2), steps=600, lr=3e-3, generator=g)
    assert loss < 1e-3  # standardised targets: a share of their variance
    start = torch.tensor([0.4, -0.4]).view(2, 1, 1)
    good, bad = Gain(-0.5), Gain(0.5)
    estimate = partial(amq_estimate, model=model, critic=NextStateQ(), start_obs=start, steps=3)
    assert estimate(good) == pytest.approx(-0.0175, abs=0.01)
    assert estimate(bad) == pytest.approx(-0.9975, rel=0.02)
    _, reward = model_rollout(bad, model, NextStateQ(), start, steps=3)
    assert reward == pytest.approx(-(0.16 + 0.36 + 0.81) / 3, abs=0.02)
    gate = OPEGate(estimate)
    gate.reset(Gain(0.0))  # doing nothing: Q = -0.16 everywhere
    assert not gate.consider(bad) and gate.consider(good) and not gate.consider(Gain(0.0))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="OPEGate margin must be >= 0, got -0.1"):
        OPEGate(lambda policy: 0.0, margin=-0.1)
    with pytest.raises(ValueError, match="AM-Q needs a rollout of at least one step, got steps=0"):
        model_rollout(Gain(1.0), ExactModel(), NextStateQ(), START, steps=0)
    with pytest.raises(ValueError, match="a dynamics ensemble needs at least one member, got num=0"):
        DynamicsEnsemble(1, 1, num=0)
    with pytest.raises(ValueError, match="fit needs at least one transition and one step, got 0 and 10"):
        fit(DynamicsEnsemble(1, 1), torch.zeros(0, 1), torch.zeros(0, 1), torch.zeros(0, 1), torch.zeros(0), steps=10)
