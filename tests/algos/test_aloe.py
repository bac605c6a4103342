"""ALOE: pessimistic aggregation, the TD evaluation target, advantages and weights by hand (with a human
takeover), intervention flags cut by the real sampler, bad settings, a bandit it solves and a toy run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robopol.algos.aloe import (
    ALOE,
    advantage_weights,
    advantages,
    critic_loss,
    intervention_chunks,
    pessimistic,
    policy_value,
)
from robopol.cli.app import compose
from robopol.data.normalize import Normalizer
from robopol.data.sampler import WindowConfig, WindowSampler
from robopol.errors import ConfigError
from robopol.policies.flow import FlowPolicy
from robopol.policies.mlp import MLPPolicy
from robopol.runtime import load_actor
from robopol.train.run import read_metrics
from robopol.train.trainer import build, to_batch, train


class Linear(nn.Module):
    """Stand-in critic: ``Q_m(s, a) = base[m][id] + slope[m] * a``, ``id = obs[:, 0, 0]``, ``a`` the chunk's
    first action."""

    def __init__(self, base: list[list[float]], slope: list[float]) -> None:
        super().__init__()
        self.base, self.slope = torch.tensor(base), torch.tensor(slope)[:, None]
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.base[:, obs[:, 0, 0].long()] + self.slope * chunk[:, 0, 0])


class Cycle(nn.Module):
    """Stand-in policy: row ``r`` of a batch gets the chunk filled with ``offsets[r % len(offsets)]``."""

    horizon = action_steps = 2

    def __init__(self, offsets: list[float]) -> None:
        super().__init__()
        self.offsets = torch.tensor(offsets)

    def sample(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        rows = torch.arange(obs.shape[0]) % len(self.offsets)
        return self.offsets[rows].view(-1, 1, 1).expand(-1, 2, 1).clone()


# Members Q_0 = base_0 + a and Q_1 = base_1 + 2a over states 0..5 (0..2 now, 3..5 next).
CRITIC = Linear([[0.0, 1.0, 2.0, 1.0, 2.0, 0.0], [0.5, 0.0, 3.0, 2.0, 1.0, 0.0]], [1.0, 2.0])
# K = 2 policy samples: -0.5, and 1.5 which is clipped to 1.
POLICY = Cycle([-0.5, 1.5])


def fixed_batch() -> dict[str, torch.Tensor]:
    """Three two-step windows; the third starts a human takeover at its second step and ends in a terminal."""
    return {
        "obs": torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1),
        "next_obs": torch.tensor([3.0, 4.0, 5.0]).view(3, 1, 1),
        "action": torch.tensor([0.25, 1.0, -1.0]).view(3, 1, 1).expand(3, 2, 1).clone(),
        "action_is_pad": torch.tensor([[False, True], [False, False], [False, False]]),
        "valid": torch.tensor([[True, False], [True, False], [True, True]]),
        "reward_sum": torch.tensor([1.0, 0.5, -1.0]),
        "discount": torch.tensor([0.81, 0.81, 0.9]),
        "mask": torch.tensor([True, True, False]),
        "truncated": torch.zeros(3, dtype=torch.bool),
        # flags on a padded step (window 0), past a terminal (window 1) and inside the chunk (window 2)
        "intervention": torch.tensor([[False, True], [False, True], [False, True]]),
    }


def test_pessimistic_aggregation_by_hand():
    values = torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, 3.0], [2.0, 1.0, 6.0]])
    torch.testing.assert_close(pessimistic(values, "min"), torch.tensor([1.0, 1.0, 0.0]))
    # means (2, 3, 3); population stds sqrt(2/3), sqrt(14/3), sqrt(6)
    expected = torch.tensor([2.0 - 0.5 * 0.816496580927726, 3.0 - 0.5 * 2.160246899469287,
                             3.0 - 0.5 * 2.449489742783178])
    torch.testing.assert_close(pessimistic(values, "mean_minus_std", 0.5), expected)
    torch.testing.assert_close(pessimistic(values, "mean_minus_std", 0.0), torch.tensor([2.0, 3.0, 3.0]))
    with pytest.raises(ValueError, match="algo.pessimism must be one of min, mean_minus_std, got 'max'"):
        pessimistic(values, "max")


def test_td_target_evaluates_the_current_policy_at_the_next_state_by_hand():
    loss, metrics = critic_loss(CRITIC, CRITIC, POLICY, fixed_batch(), "min", 1.0, weight=None)
    # a' per row: -0.5, 1 (clipped 1.5), -0.5; Q'_pess(s', a'): min(1-0.5, 2-1) = 0.5, min(3, 3) = 3,
    # min(-0.5, -1) = -1 (unused: terminal). Targets 1 + 0.81*0.5, 0.5 + 0.81*3, -1.
    assert metrics["target_mean"] == pytest.approx((1.405 + 2.93 - 1.0) / 3)
    # Q at the data: member 0 (0.25, 2, 1), member 1 (1, 2, 1)
    squared = [(0.25 - 1.405) ** 2, (2 - 2.93) ** 2, 4.0, (1 - 1.405) ** 2, (2 - 2.93) ** 2, 4.0]
    assert loss.item() == pytest.approx(sum(squared) / 6)
    loss.backward()
    assert CRITIC.scale.grad is not None
    CRITIC.scale.grad = None


def test_advantages_against_k_policy_samples_by_hand():
    batch = fixed_batch()
    # V^pi: s0 (min(-0.5, -0.5) + min(1, 2.5)) / 2 = 0.25; s1 (min(0.5, -1) + min(2, 2)) / 2 = 0.5;
    # s2 (min(1.5, 2) + min(3, 5)) / 2 = 2.25
    torch.testing.assert_close(policy_value(CRITIC, POLICY, batch["obs"], 2, "min", 1.0),
                               torch.tensor([0.25, 0.5, 2.25]))
    # Q_pess(s, a_data): min(0.25, 1) = 0.25, min(2, 2) = 2, min(1, 1) = 1
    torch.testing.assert_close(advantages(CRITIC, POLICY, batch, 2, "min", 1.0), torch.tensor([0.0, 1.5, -1.25]))


def test_weights_with_a_human_intervention_segment_by_hand():
    batch = fixed_batch()
    human = intervention_chunks(batch, horizon=2)
    assert human.tolist() == [False, False, True]  # padded and post-terminal flags do not count
    advantage = torch.tensor([0.0, 1.5, -1.25])
    # exp(0) = 1, exp(3) = 20.09 -> 5, exp(-2.5) = 0.0821 -> raised to the floor 1 for the human chunk
    torch.testing.assert_close(advantage_weights(advantage, 0.5, 5.0, human, 1.0), torch.tensor([1.0, 5.0, 1.0]))
    torch.testing.assert_close(advantage_weights(advantage, 0.5, 5.0, human, 0.0),
                               torch.tensor([1.0, 5.0, 0.0820849986238988]))
    torch.testing.assert_close(advantage_weights(advantage, 0.5, 5.0), torch.tensor([1.0, 5.0, 0.0820849986238988]))
    assert advantage_weights(torch.tensor([1e4]), 1.0, 20.0).item() == 20.0  # no overflow
    del batch["intervention"]
    assert intervention_chunks(batch, 2) is None


def test_intervention_windows_from_the_sampler_keep_values_inside_their_episode():
    """Episode 0 (6 steps) is taken over by a human from step 3 and ends in a terminal; episode 1 (4 steps) is
    autonomous and ends at a time limit. Chunk flags, masks and bootstraps per anchor, by hand."""
    ends = np.array([6, 10])
    data = {"x": np.arange(10, dtype=np.float32)[:, None], "action": np.zeros((10, 1), np.float32),
            "reward": np.ones(10, np.float32),
            "terminal": np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0], bool),
            "intervention": np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0], bool)}
    config = WindowConfig(obs_keys=("x",), obs_steps=1, horizon=2, critic=True, gamma=0.5,
                          step_keys=("intervention",))
    windows = WindowSampler(data, ends, config, seed=0).sample(64)
    normalizer = Normalizer.fit({k: data[k] for k in ("x", "action")}, modes={"x": "identity", "action": "identity"})
    batch = to_batch(windows, ["x"], normalizer, torch.device("cpu"))
    batch["intervention"] = torch.as_tensor(windows["intervention"])  # what the trainer is to pass on
    anchor = windows["index"]
    human = intervention_chunks(batch, horizon=2)
    # chunks [t, t+1]: human from anchor 2 (step 3 flagged) to 5; episode 1's anchors never
    assert human.tolist() == [2 <= t <= 5 for t in anchor]
    for i, t in enumerate(anchor.tolist()):
        if t in (4, 5):  # the chunk holds the terminal step 5: no bootstrap
            assert not batch["mask"][i] and batch["terminal"][i]
        if t == 5:  # one valid step: reward 1, nothing from episode 1
            assert batch["reward_sum"][i] == 1.0 and batch["next_obs"][i, 0, 0] == 5.0
        if t == 3:
            assert batch["reward_sum"][i] == 1.5 and batch["discount"][i] == 0.25
        if t == 9:  # the time limit bootstraps from its own last state, inside episode 1
            assert batch["truncated"][i] and batch["next_obs"][i, 0, 0] == 9.0
    algo = ALOE(FlowPolicy(1, 1, 1, 2, 2, backbone="mlp", hidden_dims=[8], sampler="euler", inference_steps=2),
                total_steps=1, critic_hidden_dims=[8], num_critics=2)
    metrics = algo.update(batch)
    assert metrics["human_chunks"] == pytest.approx(human.float().mean().item())
    assert metrics["weight_mean"] > 0 and np.isfinite(metrics["loss"])


def flow(horizon: int = 2, action_steps: int | None = None) -> FlowPolicy:
    return FlowPolicy(1, 1, 1, horizon, action_steps or horizon, backbone="mlp", hidden_dims=[16], sampler="euler",
                      inference_steps=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"pessimism": "max"}, "algo.pessimism must be one of min, mean_minus_std, got 'max'"),
    ({"num_critics": 1}, "algo.num_critics must be at least 2 for a pessimistic ensemble, got 1"),
    ({"pessimism_coef": -1.0}, "algo.pessimism_coef must be >= 0, got -1.0"),
    ({"policy_samples": 0}, "algo.policy_samples must be a positive integer, got 0"),
    ({"temperature": 0.0}, "algo.temperature must be > 0, got 0.0"),
    ({"max_weight": -1.0}, "algo.max_weight must be > 0, got -1.0"),
    ({"intervention_weight": -0.5}, "algo.intervention_weight must be >= 0, got -0.5"),
    ({"gamma": 0.0}, "algo.gamma must be in (0, 1], got 0.0"),
    ({"ema_decay": 1.0}, "algo.ema_decay must be in [0, 1), got 1.0"),
])
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        ALOE(flow(), total_steps=10, **kwargs)
    assert str(err.value) == message


def test_policies_it_cannot_train_are_refused_and_config_errors_name_the_algo():
    with pytest.raises(ValueError, match="use a flow or diffusion policy, got MLPPolicy"):
        ALOE(MLPPolicy(1, 1, 1, 2, 2), total_steps=10)
    with pytest.raises(ValueError, match="set policy.action_steps=policy.horizon"):
        ALOE(flow(4, 2), total_steps=10)
    cfg = compose("train", ["algo=aloe", "policy=flow_mlp", "algo.pessimism=median"], complete=False)
    with pytest.raises(ConfigError, match="algo=aloe: algo.pessimism must be one of min, mean_minus_std"):
        build(cfg.algo, "algo", policy=flow(), total_steps=10)
    assert ALOE(flow(), total_steps=10).window_options().get("step_keys") is None
    assert ALOE(flow(), total_steps=10, interventions=True).window_options()["step_keys"] == ("intervention",)


def test_weighted_flow_matching_moves_a_bimodal_policy_to_the_rewarded_mode():
    """One-step bandit (every step terminal): Q^pi(a) is the reward, 1 near +0.6 and 0 near -0.6, so
    V^pi is the policy's success rate and the weights exp(A / 0.2) pull the policy to the rewarded mode; the
    unrewarded mode is flagged human on half its windows and keeps a weight of at least 1 there."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    policy = FlowPolicy(1, 1, 1, 1, 1, backbone="mlp", hidden_dims=[64, 64], layer_norm=True, sampler="euler",
                        inference_steps=2)
    algo = ALOE(policy, total_steps=200, lr=1e-3, critic_hidden_dims=[32], num_critics=3,
                pessimism="mean_minus_std", temperature=0.2, policy_samples=2, tau=0.05, intervention_weight=0.2)
    n = 64
    for _ in range(200):
        side = torch.where(torch.rand(n, generator=g) < 0.5, -0.6, 0.6)
        action = (side + 0.05 * torch.randn(n, generator=g)).view(n, 1, 1)
        human = (side < 0) & (torch.rand(n, generator=g) < 0.5)
        metrics = algo.update({
            "obs": torch.zeros(n, 1, 1), "next_obs": torch.zeros(n, 1, 1), "action": action,
            "action_is_pad": torch.zeros(n, 1, dtype=torch.bool), "valid": torch.ones(n, 1, dtype=torch.bool),
            "reward_sum": (side > 0).float(), "discount": torch.full((n,), 0.99),
            "mask": torch.zeros(n, dtype=torch.bool), "truncated": torch.zeros(n, dtype=torch.bool),
            "intervention": human.view(n, 1)})
    q = algo.critic(torch.zeros(2, 1, 1), torch.tensor([-0.6, 0.6]).view(2, 1, 1)).mean(dim=0)
    assert q[0].item() == pytest.approx(0.0, abs=0.15) and q[1].item() == pytest.approx(1.0, abs=0.15)
    assert metrics["human_chunks"] == pytest.approx(0.25, abs=0.1)
    samples = policy.sample(torch.zeros(1000, 1, 1), generator=torch.Generator().manual_seed(1))
    assert (samples > 0).float().mean().item() > 0.8 and samples.mean().item() > 0.4  # the data's mean is 0


def test_aloe_trains_on_the_toy_task_and_its_checkpoint_evaluates(tmp_path, toy_store):
    cfg = compose("train", [f"data={toy_store}", "algo=aloe", "policy=flow_mlp", "policy.hidden_dims=[32,32]",
                            "policy.horizon=4", "policy.action_steps=4", "policy.inference_steps=2",
                            "algo.critic_hidden_dims=[32,32]", "algo.num_critics=3", "algo.policy_samples=2",
                            "trainer.steps=200", "trainer.batch_size=64", "trainer.log_every=20",
                            "trainer.eval_episodes=2", "trainer.progress=false", "algo.lr=1e-3"])
    result = train(cfg, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/critic_loss" in r]
    assert records[-1]["train/critic_loss"] < 0.5 * records[0]["train/critic_loss"]
    assert records[-1]["train/q_mean"] < 0 and records[-1]["train/q_ensemble_std"] > 0
    _, ckpt = load_actor(str(result.run_dir))
    assert {"policy", "critic", "critic_target"} <= set(ckpt.module_names())


def test_intervention_flags_reach_the_batch_through_the_trainer(tmp_path, toy_store):
    from robopol.data.store import EpisodeStore

    source = EpisodeStore.open(toy_store)
    data, ends = source.load(), source.episode_ends
    flags = np.zeros(len(data["action"]), dtype=bool)
    starts = np.concatenate([[0], ends[:-1]])
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if i % 2 == 0:
            flags[s + (e - s) // 2:e] = True  # a human takes over the second half of every other episode
    mixed = EpisodeStore.create(str(tmp_path / "mixed.zarr"))
    mixed.add_episodes({**data, "intervention": flags}, ends)
    common = ["algo=aloe", "algo.interventions=true", "policy=flow_mlp", "policy.hidden_dims=[32,32]",
              "policy.horizon=4", "policy.action_steps=4", "policy.inference_steps=2",
              "algo.critic_hidden_dims=[32,32]", "algo.num_critics=2", "algo.policy_samples=1",
              "trainer.steps=10", "trainer.batch_size=64", "trainer.log_every=5", "trainer.eval_episodes=0",
              "trainer.progress=false"]
    train(compose("train", [f"data={tmp_path / 'mixed.zarr'}", *common]), tmp_path / "run")
    shares = [r["train/human_chunks"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if "train/human_chunks" in r]
    assert shares and all(0.1 < s < 0.9 for s in shares)  # a mix of human and policy chunks was seen
    with pytest.raises(ConfigError, match=r"reads the per-step \['intervention'\] flags, and store .* has none"):
        train(compose("train", [f"data={toy_store}", *common]), tmp_path / "run2")
