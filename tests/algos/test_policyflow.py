"""PolicyFlow (robopol.algos.policyflow) and its noisy flow policy: the ratio is exactly 1 for an unchanged
policy and follows the advantage after a step, the Brownian residual against hand values, the time grid,
learning a contextual bandit, the end-to-end loop, and configuration errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributions import Normal

from robopol.algos.policyflow import PolicyFlow, brownian_residual, interpolation_times, policy_log_density
from robopol.policies.noisy_flow import NoisyFlowPolicy

from .helpers import bandit_rollout


def make_policyflow(**kw) -> PolicyFlow:
    torch.manual_seed(0)
    policy = NoisyFlowPolicy(obs_dim=2, action_dim=1, hidden_dims=(32, 32), time_dim=8, flow_steps=4)
    return PolicyFlow(policy, total_steps=10, num_envs=4, rollout_steps=8, critic_hidden_dims=(16,), **kw)


def test_rollout_fields_and_the_ratio_of_an_unchanged_policy_is_one():
    algo = make_policyflow()
    # a trained-looking flow: give the output layer weights so the velocity is not zero
    torch.nn.init.normal_(algo.policy.net.out.weight, std=0.3)
    obs = torch.rand(6, 2)
    out = algo.act(obs)
    torch.testing.assert_close(out["action"], out["endpoint"] + out["noise"])
    torch.testing.assert_close(out["endpoint"], algo.policy.flow(out["z"], obs))
    std = algo.policy.log_std.exp()
    torch.testing.assert_close(out["logp"], Normal(0.0, std).log_prob(out["noise"]).sum(-1))
    batch = {"obs": obs, **out}
    for t_value in (0.0, 0.375, 1.0):
        t = torch.full((6,), t_value)
        logp, v_new, v_old, _ = policy_log_density(algo.policy, copy.deepcopy(algo.policy), batch, t)
        torch.testing.assert_close(v_new, v_old)
        torch.testing.assert_close(logp, out["logp"], rtol=0, atol=1e-6)  # log ratio 0: ratio exactly 1


def test_prior_std_scales_the_flow_input_and_so_the_initial_policy():
    policy = NoisyFlowPolicy(obs_dim=2, action_dim=3, hidden_dims=(16,), time_dim=8, flow_steps=2, prior_std=0.2)
    torch.manual_seed(0)
    z = policy.draw_z(torch.zeros(20_000, 2))
    assert z.shape == (20_000, 3)
    torch.testing.assert_close(z.std(0), torch.full((3,), 0.2), rtol=0.03, atol=0)
    # the zero-initialised flow is the identity, so both the rollout and deployment draw N(0, 0.2^2)
    algo = PolicyFlow(policy, total_steps=1, num_envs=2, rollout_steps=2, minibatches=1, critic_hidden_dims=(8,))
    out = algo.act(torch.zeros(20_000, 2))
    torch.testing.assert_close(out["endpoint"], out["z"])
    torch.testing.assert_close(out["z"].std(0), torch.full((3,), 0.2), rtol=0.03, atol=0)
    sampled = policy.sample(torch.zeros(20_000, 1, 2))
    torch.testing.assert_close(sampled.std((0, 1)), torch.full((3,), 0.2), rtol=0.03, atol=0)


def test_flow_is_the_midpoint_integral_of_the_velocity_field():
    torch.manual_seed(0)
    policy = NoisyFlowPolicy(obs_dim=3, action_dim=2, hidden_dims=(16, 16), time_dim=8, flow_steps=3)
    torch.nn.init.normal_(policy.net.out.weight, std=0.5)  # a non-trivial field
    z, obs = torch.randn(5, 2), torch.randn(5, 3)
    x, dt = z, 1 / 3
    for i in range(3):  # by hand, one full velocity call per evaluation
        t = torch.full((5,), i * dt)
        half = x + 0.5 * dt * policy.velocity(x, t, obs)
        x = x + dt * policy.velocity(half, t + 0.5 * dt, obs)
    torch.testing.assert_close(policy.flow(z, obs), x)
    assert (x - z).abs().max() > 0.1


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_the_ratio_follows_the_advantage_after_a_step(advantage):
    algo = make_policyflow(epochs=1, minibatches=1, reward_norm=False, norm_advantages=False, lr=1e-3)
    torch.nn.init.normal_(algo.policy.net.out.weight, std=0.3)
    rollout = bandit_rollout(algo, steps=1)
    rollout["reward"] = torch.zeros_like(rollout["reward"])
    rollout["reward"][0, 0] = advantage  # only the first env's action carries an advantage
    rollout["value"] = torch.zeros_like(rollout["value"])
    before = copy.deepcopy(algo.policy)
    algo.update(rollout)
    batch = {k: v[0, :1] for k, v in rollout.items()}
    grid = torch.arange(9.0) / 8  # every time of the 4-step grid
    log_ratios = [policy_log_density(algo.policy, before, batch, t.reshape(1))[0] - batch["logp"] for t in grid]
    assert torch.stack(log_ratios).mean().item() * advantage > 0


def test_brownian_residual_hand_values():
    v_new = torch.tensor([[1.0, -2.0]])
    v_old = torch.tensor([[0.5, 1.0]])
    x_t = torch.tensor([[0.2, 0.4]])
    t = torch.tensor([0.25])
    # (1 - t) v_new - (x_t - t v_old) = 0.75 * [1, -2] - ([0.2, 0.4] - 0.25 * [0.5, 1])
    expected = torch.tensor([[0.75 - (0.2 - 0.125), -1.5 - (0.4 - 0.25)]])
    torch.testing.assert_close(brownian_residual(v_new, v_old, x_t, t), expected)
    # zero exactly when v_new is minus the score (t v_old - x) / (1 - t) of the path
    aligned = (x_t - t[:, None] * v_old) / (1 - t[:, None])
    torch.testing.assert_close(brownian_residual(aligned, v_old, x_t, t), torch.zeros(1, 2))


def test_interpolation_times_cover_the_step_ends_and_midpoints():
    t = interpolation_times(4000, flow_steps=4, generator=torch.Generator().manual_seed(0))
    assert set((t * 8).round().long().tolist()) == set(range(9))
    torch.testing.assert_close(t * 8, (t * 8).round())


def test_policyflow_learns_a_contextual_bandit():
    algo = make_policyflow(lr=3e-3, epochs=4, minibatches=4, reward_norm=False, brownian_coef=0.0,
                           entropy_coef=0.0)
    probe = torch.tensor([[-0.8, 0.0], [0.0, 0.5], [0.7, -0.3]])

    def error() -> float:
        gen = torch.Generator().manual_seed(0)
        draws = torch.stack([algo.policy.sample(probe.unsqueeze(1), gen)[:, 0, 0] for _ in range(20)])
        return (draws - probe[:, 0]).abs().mean().item()

    before = error()
    for _ in range(60):
        algo.update(bandit_rollout(algo))
    assert before > 0.5
    assert error() < 0.6 * before, (before, error())


def test_policyflow_runs_through_the_online_loop(tmp_path):
    from robopol.cli.app import compose
    from robopol.runtime import load_actor
    from robopol.train.trainer import train

    overrides = ["task=point_reach", "policy=noisy_flow", "algo=policyflow", "algo.num_envs=2",
                 "algo.rollout_steps=10", "algo.epochs=1", "algo.minibatches=2", "policy.hidden_dims=[16]",
                 "policy.flow_steps=2", "algo.critic_hidden_dims=[16]", "trainer.steps=2",
                 "trainer.eval_episodes=2", "trainer.videos=false", "trainer.progress=false",
                 "trainer.num_threads=1"]
    result = train(compose("train", overrides), tmp_path / "run")
    assert result.final_eval is not None and result.final_eval.episodes == 2
    actor, _ = load_actor(str(tmp_path / "run"))
    assert isinstance(actor.policy, NoisyFlowPolicy)


def test_policyflow_settings_are_checked():
    from robopol.policies.gaussian import GaussianPolicy

    with pytest.raises(ValueError, match="use policy=noisy_flow"):
        PolicyFlow(GaussianPolicy(2, 1), total_steps=1)
    with pytest.raises(ValueError, match="algo.brownian_coef must be >= 0"):
        make_policyflow(brownian_coef=-1.0)
    with pytest.raises(ValueError, match="policy.flow_steps must be a positive integer"):
        NoisyFlowPolicy(2, 1, flow_steps=0)
    with pytest.raises(ValueError, match=r"policy.hidden_dims must list at least one width .* got \[\]"):
        NoisyFlowPolicy(2, 1, hidden_dims=[])
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match=f"policy.prior_std must be positive .* got {bad}"):
            NoisyFlowPolicy(2, 1, prior_std=bad)
