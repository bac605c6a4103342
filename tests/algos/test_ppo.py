"""Gaussian PPO (robopol.algos.ppo) and the on-policy loop (robopol.train.online): GAE, the losses and the
learning-rate rule against hand-computed values, running statistics, learning on a contextual bandit, the
end-to-end loop with resume and evaluation, and configuration errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from robopol.algos.ppo import (
    PPO,
    RunningMeanStd,
    adapt_lr,
    clipped_surrogate_loss,
    clipped_value_loss,
    gae,
)
from robopol.errors import DivergedError
from robopol.policies.gaussian import GaussianPolicy

from .helpers import bandit_rollout


def test_gae_matches_a_hand_computed_rollout_with_an_episode_end():
    # one env, 3 steps; the episode ends after step 1 (its next value already accounts for how it ended)
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    next_values = torch.tensor([[1.0], [0.0], [2.0]])
    end = torch.tensor([[False], [True], [False]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, next_values, end, gamma, lam)
    d2 = 3.0 + 0.9 * 2.0 - 1.5  # 3.3
    d1 = 2.0 + 0.0 - 1.0  # 1.0, no carry across the end
    d0 = 1.0 + 0.9 * 1.0 - 0.5  # 1.4
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(5, 2), torch.randn(5, 2)
    next_values = torch.cat([values[1:], torch.zeros(1, 2)])  # last step terminal
    end = torch.zeros(5, 2, dtype=torch.bool)
    end[-1] = True
    _, ret = gae(rewards, values, next_values, end, 0.9, 1.0)
    discounted = torch.stack([sum(0.9 ** (k - t) * rewards[k] for k in range(t, 5)) for t in range(5)])
    torch.testing.assert_close(ret, discounted)


def test_clipped_surrogate_hand_values():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -2.0, 3.0])
    loss, stats = clipped_surrogate_loss(logp, old, adv, clip=0.2)
    # min(1.5, 1.2) * 1 = 1.2; min(0.5 * -2, 0.8 * -2) = -1.6; min(1.1 * 3, 1.1 * 3) = 3.3
    assert loss.item() == pytest.approx(-(1.2 - 1.6 + 3.3) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    ratio = torch.tensor([1.5, 0.5, 1.1])
    assert stats["approx_kl"] == pytest.approx(((ratio - 1) - ratio.log()).mean().item())


def test_clipped_value_loss_hand_values():
    values, old, returns = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0])
    # entry 0: (2-3)^2 = 1 vs clipped value 1.2: (1.2-3)^2 = 3.24 -> 3.24; entry 1: 1 vs 1 -> 1
    assert clipped_value_loss(values, old, returns, 0.2).item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert clipped_value_loss(values, old, returns, 0.0).item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)


def test_adaptive_learning_rate_rule():
    assert adapt_lr(1e-3, kl=0.05, desired_kl=0.01) == pytest.approx(1e-3 / 1.5)
    assert adapt_lr(1e-3, kl=0.001, desired_kl=0.01) == pytest.approx(1.5e-3)
    assert adapt_lr(1e-3, kl=0.01, desired_kl=0.01) == 1e-3
    assert adapt_lr(9e-3, kl=0.0, desired_kl=0.01) == 1e-2  # clamped
    assert adapt_lr(1.2e-5, kl=1.0, desired_kl=0.01) == 1e-5


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 50)]
    rms = RunningMeanStd(4)
    for b in batches:
        rms.update(torch.as_tensor(b))
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-10)
    assert rms.count.item() == len(data)


def make_ppo(**kw) -> PPO:
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=2, action_dim=1, hidden_dims=(16,))
    return PPO(policy, total_steps=kw.pop("total_steps", 10), num_envs=4, rollout_steps=8,
               critic_hidden_dims=(16,), **kw)


def test_reward_scaling_divides_by_the_std_of_the_discounted_return():
    algo = make_ppo(gamma=0.5)
    end = torch.tensor([False, False, False, True])
    first = algo.scale_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), end)
    returns = np.array([1.0, 2.0, 3.0, 4.0])  # first step: the discounted return is the reward
    std = math.sqrt(returns.var() + 1e-8)
    torch.testing.assert_close(first, torch.tensor([1.0, 2.0, 3.0, 4.0]) / std)
    algo.scale_rewards(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.zeros(4, dtype=torch.bool))
    # returns 0.5 * previous + 1; env 3 ended, so it restarts from 1
    expected = np.array([1.5, 2.0, 2.5, 1.0])
    all_returns = np.concatenate([returns, expected])
    np.testing.assert_allclose(algo.return_rms.var.item(), all_returns.var(), rtol=1e-10)


def test_ppo_learns_a_contextual_bandit():
    algo = make_ppo(lr=3e-3, epochs=4, minibatches=4, reward_norm=False)
    probe = torch.tensor([[-0.8, 0.0], [0.0, 0.5], [0.7, -0.3]])
    before = (algo.policy.sample(probe.unsqueeze(1))[:, 0, 0] - probe[:, 0]).abs().mean().item()
    for _ in range(60):
        metrics = algo.update(bandit_rollout(algo))
    after = (algo.policy.sample(probe.unsqueeze(1))[:, 0, 0] - probe[:, 0]).abs().mean().item()
    assert before > 0.4
    assert after < 0.15, (before, after)
    assert set(metrics) >= {"policy_loss", "value_loss", "entropy", "kl", "approx_kl", "clip_fraction", "lr",
                            "explained_variance", "action_std"}


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_a_step_moves_the_log_density_of_an_action_with_its_advantage(advantage):
    algo = make_ppo(epochs=1, minibatches=1, reward_norm=False, norm_advantages=False)
    rollout = bandit_rollout(algo, steps=1)
    rollout["reward"] = torch.zeros_like(rollout["reward"])
    rollout["reward"][0, 0] = advantage  # only the first env's action carries an advantage
    rollout["value"] = torch.zeros_like(rollout["value"])
    obs, action = rollout["obs"][0, :1], rollout["action"][0, :1]
    before = algo.policy.distribution(obs).log_prob(action).sum()
    algo.update(rollout)
    after = algo.policy.distribution(obs).log_prob(action).sum()
    assert (after - before).item() * advantage > 0


def test_learning_rate_schedules():
    linear = make_ppo(lr_schedule="linear", lr=1e-3, total_steps=4, epochs=1, minibatches=1)
    lrs = []
    for _ in range(4):
        lrs.append(linear.update(bandit_rollout(linear))["lr"])
    assert lrs == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    adaptive = make_ppo(lr_schedule="adaptive", lr=1e-3, desired_kl=1e-9, epochs=1, minibatches=1)
    assert adaptive.update(bandit_rollout(adaptive))["lr"] == pytest.approx(1e-3 / 1.5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr_schedule": "cosine"}, "algo.lr_schedule must be one of fixed, linear, adaptive"),
    ({"minibatches": 64}, "algo.minibatches=64 exceeds the 32 transitions"),
    ({"epochs": 0}, "algo.epochs must be at least 1"),
    ({"lam": 1.5}, "algo.gamma and algo.lam must be in"),
])
def test_bad_ppo_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_ppo(**kwargs)


def test_ppo_needs_the_gaussian_policy():
    from robopol.policies.mlp import MLPPolicy

    with pytest.raises(ValueError, match="use policy=gaussian"):
        PPO(MLPPolicy(2, 1), total_steps=1)
    with pytest.raises(ValueError, match="policy.horizon"):
        GaussianPolicy(2, 1, horizon=4)


# ----------------------------------------------------------------------------------------- the online loop

BASE = ["task=point_reach", "policy=gaussian", "algo=ppo", "algo.num_envs=4", "algo.rollout_steps=25",
        "algo.epochs=2", "algo.minibatches=4", "policy.hidden_dims=[16]", "algo.critic_hidden_dims=[16]",
        "trainer.steps=4", "trainer.log_every=1", "trainer.ckpt_every=2", "trainer.eval_episodes=2",
        "trainer.eval_every=2", "trainer.videos=false", "trainer.progress=false", "trainer.num_threads=1"]


def test_online_loop_trains_evaluates_checkpoints_and_resumes(tmp_path):
    from safetensors.torch import load_file

    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.runtime import evaluate, load_actor
    from robopol.tasks import make_env
    from robopol.train.trainer import train

    run = tmp_path / "run"
    train(compose("train", [*BASE, "trainer.stop_after=2"]), run)
    first = load_checkpoint(str(run / "checkpoints" / "step_00000002"))
    assert first.training_state()["algo"]["iterations"] == 2
    result = train(compose("train", [*BASE, f"resume={run}"]), run)
    assert result.steps == 4
    final = load_checkpoint(str(run / "checkpoints" / "step_00000004"))
    state = final.training_state()["algo"]
    assert state["iterations"] == 4
    assert state["optimizer"]["state"][0]["step"].item() == 4 * 2 * 4  # iterations x epochs x minibatches
    weights = load_file(run / "checkpoints" / "step_00000004" / "model.safetensors")
    assert weights["obs_rms.count"].item() == 4 * 4 * 25  # every observation of 4 iterations, resumed ones too

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/policy_loss" in r]
    assert train_steps == [1, 2, 3, 4]
    assert all(r["train/env_steps"] == r["step"] * 100 for r in records if "train/env_steps" in r)
    assert any("eval/mean_return" in r for r in records)

    # the checkpoint is a policy checkpoint like any other: robopol eval's loader runs it
    actor, _ = load_actor(str(run))
    env = make_env(compose("train", BASE).task, num_envs=2, seed=0)
    assert evaluate(env, actor, 2, seed=0).episodes == 2
    env.close()


def test_checkpoint_normalizer_reproduces_the_training_normalisation():
    from robopol.cli.app import compose
    from robopol.runtime import obs_features
    from robopol.tasks import make_env
    from robopol.train.online import flat_obs, policy_normalizer

    env = make_env(compose("train", BASE).task, num_envs=3, seed=0)
    keys = sorted(env.spec.observation)
    obs_dim = sum(int(np.prod(env.spec.observation[k].shape)) for k in keys)
    algo = PPO(GaussianPolicy(obs_dim=obs_dim, action_dim=2), total_steps=1, num_envs=3, minibatches=1)
    obs = env.reset(seed=0)
    for _ in range(3):
        algo.normalize_obs(flat_obs(obs, keys), update=True)
        obs = env.step(np.random.default_rng(0).uniform(-1, 1, size=(3, 2))).obs
    normalizer = policy_normalizer(algo, env.spec, keys)
    runtime = obs_features({k: torch.as_tensor(v).unsqueeze(1) for k, v in obs.items()}, keys, normalizer)
    torch.testing.assert_close(runtime[:, 0].double(), algo.normalize_obs(flat_obs(obs, keys)).double(),
                               rtol=1e-5, atol=1e-5)
    low, high = env.spec.action.low, env.spec.action.high
    np.testing.assert_allclose(normalizer.unnormalize("action", np.array([[-1.0, 1.0]])), [[low[0], high[1]]])
    env.close()


def test_online_loop_refuses_data_and_offline_policies(tmp_path):
    from robopol.cli.app import compose
    from robopol.errors import ConfigError
    from robopol.train.trainer import train

    with pytest.raises(ConfigError, match="learns from its own rollouts; drop data="):
        train(compose("train", [*BASE, "data=some.zarr"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="use policy=gaussian"):
        train(compose("train", [*BASE, "policy=mlp"]), tmp_path / "b")


def test_online_loop_closes_its_envs_when_setup_fails(tmp_path, monkeypatch):
    from robopol.cli.app import compose
    from robopol.errors import ConfigError
    from robopol.train import online
    from robopol.train.trainer import train

    closed = []
    real_make_env = online.make_env

    def recording_make_env(task, num_envs, seed):
        env = real_make_env(task, num_envs=num_envs, seed=seed)
        env.close = lambda: closed.append(num_envs)
        return env

    monkeypatch.setattr(online, "make_env", recording_make_env)
    with pytest.raises(ConfigError, match="use policy=gaussian"):
        train(compose("train", [*BASE, "policy=mlp"]), tmp_path / "run")
    assert sorted(closed) == [2, 4]  # the evaluation envs and the rollout envs


def test_critic_warmup_trains_only_the_critic():
    torch.manual_seed(0)
    algo = PPO(GaussianPolicy(obs_dim=2, action_dim=1, hidden_dims=(8,)), total_steps=10, num_envs=4,
               rollout_steps=8, minibatches=2, critic_warmup=1)
    policy_before = copy.deepcopy(algo.policy.state_dict())
    critic_before = copy.deepcopy(algo.critic.state_dict())
    algo.update(bandit_rollout(algo))
    for key, value in algo.policy.state_dict().items():
        torch.testing.assert_close(value, policy_before[key])
    assert any(not torch.equal(v, critic_before[k]) for k, v in algo.critic.state_dict().items())
    algo.update(bandit_rollout(algo))  # warm-up over: the policy learns
    assert any(not torch.equal(v, policy_before[k]) for k, v in algo.policy.state_dict().items())
    with pytest.raises(ValueError, match="algo.critic_warmup must be >= 0, got -1"):
        PPO(GaussianPolicy(obs_dim=2, action_dim=1), total_steps=1, critic_warmup=-1)


def test_a_non_finite_loss_is_named():
    algo = PPO(GaussianPolicy(obs_dim=2, action_dim=1, hidden_dims=(8,)), total_steps=10, num_envs=4,
               rollout_steps=8, minibatches=2)
    rollout = bandit_rollout(algo)
    rollout["reward"][0, 0] = float("nan")
    with pytest.raises(DivergedError, match="algo=ppo: the loss became non-finite in iteration 1"):
        algo.update(rollout)
