"""IQL: every loss by hand on a fixed batch, the AWR clip, bad settings, a bandit it solves and a toy run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopol.algos.iql import IQL, actor_loss, awr_weights, q_loss, value_loss
from robopol.cli.app import compose
from robopol.errors import ConfigError
from robopol.policies.flow import FlowPolicy
from robopol.policies.mlp import MLPPolicy
from robopol.runtime import evaluate, load_actor
from robopol.tasks import make_env
from robopol.train.run import read_metrics
from robopol.train.trainer import build, train


class Table(nn.Module):
    """Stand-in critic / value net: member ``m``'s output for a state is ``table[m][id]``, with the id stored in
    ``obs[:, 0, 0]``; one scale parameter so gradients can be checked."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * self.table[:, obs[:, 0, 0].long()]


def fixed_batch() -> dict[str, torch.Tensor]:
    """Three windows: states 0, 1, 2, next states 3, 4, 5; the second ran into a time limit."""
    return {
        "obs": torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1),
        "next_obs": torch.tensor([3.0, 4.0, 5.0]).view(3, 1, 1),
        "action": torch.zeros(3, 2, 1),
        "action_is_pad": torch.zeros(3, 2, dtype=torch.bool),
        "reward_sum": torch.tensor([1.0, -0.5, 0.0]),
        "discount": torch.tensor([0.9, 0.81, 0.9]),
        "mask": torch.tensor([True, True, False]),
        "truncated": torch.tensor([False, True, False]),
    }


def flow(horizon: int = 2, **kw) -> FlowPolicy:
    return FlowPolicy(1, 1, 1, horizon, horizon, backbone="mlp", hidden_dims=[16], sampler="euler",
                      inference_steps=2, **kw)


# Target critic at the dataset chunks: members (1, 0, 2) and (0.5, 1, 3) -> min (0.5, 0, 2).
CRITIC_TARGET = [[1.0, 0.0, 2.0], [0.5, 1.0, 3.0]]
# V at states 0..5: (1, -1, 2) now, (2, 1, 5) next.
VALUE = [[1.0, -1.0, 2.0, 2.0, 1.0, 5.0]]


def test_value_loss_is_the_expectile_of_the_min_target_q_by_hand():
    value = Table(VALUE)
    loss, metrics = value_loss(value, Table(CRITIC_TARGET), fixed_batch(), expectile=0.7, weight=None)
    # u = min Q' - V = (0.5 - 1, 0 + 1, 2 - 2) = (-0.5, 1, 0); weights (0.3, 0.7, 0.7)
    assert loss.item() == pytest.approx((0.3 * 0.25 + 0.7 * 1.0 + 0.0) / 3)
    assert metrics["v_mean"] == pytest.approx((1.0 - 1.0 + 2.0) / 3)
    dropped, _ = value_loss(value, Table(CRITIC_TARGET), fixed_batch(), 0.7, weight=torch.tensor([1.0, 0.0, 1.0]))
    assert dropped.item() == pytest.approx((0.3 * 0.25 + 0.0) / 2)
    loss.backward()
    assert value.scale.grad is not None


def test_q_loss_backs_up_onto_v_of_the_next_state_by_hand():
    critic = Table([[3.0, 0.0, 1.0], [2.0, 0.31, -1.0]])
    loss, metrics = q_loss(critic, Table(VALUE), fixed_batch(), weight=None)
    # targets: 1 + 0.9 * 2 = 2.8; -0.5 + 0.81 * 1 = 0.31; 0 (terminal: no bootstrap from V = 5)
    assert metrics["target_mean"] == pytest.approx((2.8 + 0.31 + 0.0) / 3)
    squared = [0.2 ** 2, 0.31 ** 2, 1.0, 0.8 ** 2, 0.0, 1.0]
    assert loss.item() == pytest.approx(sum(squared) / 6)
    kept, _ = q_loss(critic, Table(VALUE), fixed_batch(), weight=torch.tensor([1.0, 0.0, 1.0]))
    assert kept.item() == pytest.approx((0.04 + 1.0 + 0.64 + 1.0) / 4)


def test_awr_weights_by_hand_and_clipped_at_100():
    weights = awr_weights(torch.tensor([-0.5, 1.0, 0.0, 2.0, 1e4]), beta=3.0, max_weight=100.0)
    # exp(-1.5), exp(3), exp(0), exp(6) = 403.4 -> 100, exp(3e4) -> 100 (no inf)
    expected = torch.tensor([0.22313016014842982, 20.085536923187668, 1.0, 100.0, 100.0])
    torch.testing.assert_close(weights, expected)
    assert awr_weights(torch.tensor([1.0]), beta=0.0, max_weight=100.0).item() == 1.0


class Recorder(nn.Module):
    """Stand-in policy whose loss is the sum of the weights it was given."""

    def loss(self, batch):
        self.batch = batch
        return batch["sample_weight"].sum(), {"mse": 0.0}


def test_actor_loss_weights_the_policy_loss_with_the_target_min_advantage():
    policy = Recorder()
    batch = fixed_batch()
    loss, metrics = actor_loss(policy, Table(CRITIC_TARGET), Table(VALUE), batch, {"obs": batch["obs"]},
                               beta=3.0, max_weight=10.0)
    # advantages (-0.5, 1, 0) -> exp(-1.5), exp(3) = 20.09 clipped to 10, 1
    expected = torch.tensor([0.22313016014842982, 10.0, 1.0])
    torch.testing.assert_close(policy.batch["sample_weight"], expected)
    assert loss.item() == pytest.approx(expected.sum().item())
    assert metrics["advantage"] == pytest.approx(0.5 / 3) and metrics["awr_weight_max"] == 10.0


def test_update_order_value_actor_critic_then_polyak():
    torch.manual_seed(0)
    algo = IQL(flow(), total_steps=10, critic_hidden_dims=[8], tau=0.5)
    batch = fixed_batch()
    batch["valid"] = torch.ones(3, 2, dtype=torch.bool)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in algo.nets.items()}
    metrics = algo.update(batch)
    for key in ("critic", "critic_target", "value"):
        assert any(not torch.equal(a, b) for a, b in zip(before[key], algo.nets[key].parameters(), strict=True)), key
    for target, source, old in zip(algo.critic_target.parameters(), algo.critic.parameters(), before["critic_target"],
                                   strict=True):
        torch.testing.assert_close(target, 0.5 * old + 0.5 * source)
    assert metrics["actor_lr"] == pytest.approx(3e-4) and algo.steps == 1
    algo.steps = 5
    assert algo.actor_lr() == pytest.approx(1.5e-4)  # cosine half way
    assert IQL(flow(), total_steps=10, critic_hidden_dims=[8], actor_lr_decay=False).actor_lr() == 3e-4


@pytest.mark.parametrize("kwargs, message", [
    ({"expectile": 1.0}, "algo.expectile must be in (0, 1), got 1.0"),
    ({"expectile": 0.0}, "algo.expectile must be in (0, 1), got 0.0"),
    ({"beta": -1.0}, "algo.beta must be >= 0, got -1.0"),
    ({"max_weight": 0.0}, "algo.max_weight must be > 0, got 0.0"),
    ({"num_critics": 0}, "algo.num_critics must be at least 1, got 0"),
    ({"gamma": 1.5}, "algo.gamma must be in (0, 1], got 1.5"),
    ({"tau": 0.0}, "algo.tau must be in (0, 1], got 0.0"),
    ({"reward": "dense"}, "algo.reward must be one of store, sparse, success, got 'dense'"),
])
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        IQL(flow(), total_steps=10, **kwargs)


def test_a_regression_policy_is_refused_and_config_errors_name_the_algo():
    with pytest.raises(ValueError, match="use a flow or diffusion policy, got MLPPolicy"):
        IQL(MLPPolicy(1, 1, 1, 2, 2), total_steps=10)
    cfg = compose("train", ["algo=iql", "policy=flow_mlp", "algo.expectile=1.5"], complete=False)
    with pytest.raises(ConfigError, match=r"algo=iql: algo\.expectile must be in \(0, 1\), got 1\.5"):
        build(cfg.algo, "algo", policy=flow(), total_steps=10)


def test_awr_moves_a_bimodal_bc_policy_to_the_rewarded_mode():
    """A one-step bandit: actions near -0.6 earn 0, near +0.6 earn 1, and every step is terminal, so Q(a) is
    the reward. Plain BC splits its samples 50/50; IQL's weights exp(3 (Q - V)) favour the rewarded mode."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    policy = FlowPolicy(1, 1, 1, 1, 1, backbone="mlp", hidden_dims=[64, 64], layer_norm=True, sampler="euler",
                        inference_steps=4)
    algo = IQL(policy, total_steps=300, lr=3e-3, critic_hidden_dims=[32], actor_lr_decay=False, tau=0.05)
    for _ in range(300):
        side = torch.where(torch.rand(128, generator=g) < 0.5, -0.6, 0.6)
        action = (side + 0.05 * torch.randn(128, generator=g)).view(128, 1, 1)
        algo.update({"obs": torch.zeros(128, 1, 1), "next_obs": torch.zeros(128, 1, 1), "action": action,
                     "action_is_pad": torch.zeros(128, 1, dtype=torch.bool), "valid": torch.ones(128, 1, dtype=torch.bool),
                     "reward_sum": (side > 0).float(), "discount": torch.full((128,), 0.99),
                     "mask": torch.zeros(128, dtype=torch.bool), "truncated": torch.zeros(128, dtype=torch.bool)})
    q = algo.critic(torch.zeros(2, 1, 1), torch.tensor([-0.6, 0.6]).view(2, 1, 1)).min(dim=0).values
    assert q[0].item() == pytest.approx(0.0, abs=0.15) and q[1].item() == pytest.approx(1.0, abs=0.15)
    v = algo.value(torch.zeros(1, 1, 1)).item()
    assert 0.5 < v < 1.0  # the 0.7-expectile of a 50/50 mix of 0 and 1 is 0.7
    samples = policy.sample(torch.zeros(1000, 1, 1), generator=torch.Generator().manual_seed(1))
    assert (samples > 0).float().mean().item() > 0.8 and samples.mean().item() > 0.4  # the data's mean is 0


def test_iql_trains_on_the_toy_task_and_its_checkpoint_evaluates(tmp_path, toy_store):
    cfg = compose("train", [f"data={toy_store}", "algo=iql", "policy=flow_mlp", "policy.hidden_dims=[32,32]",
                            "policy.horizon=4", "policy.action_steps=4", "algo.critic_hidden_dims=[32,32]",
                            "trainer.steps=200", "trainer.batch_size=64", "trainer.log_every=20",
                            "trainer.eval_episodes=2", "trainer.progress=false", "algo.lr=1e-3"])
    result = train(cfg, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/critic_loss" in r]
    assert records[-1]["train/critic_loss"] < 0.5 * records[0]["train/critic_loss"]
    assert records[-1]["train/q_mean"] < 0  # rewards are minus the distance to the goal
    assert records[-1]["train/actor_lr"] < 1e-5  # cosine decay to 0 over the run
    actor, ckpt = load_actor(str(result.run_dir))
    assert {"policy", "critic", "critic_target", "value"} <= set(ckpt.module_names())
    env = make_env(cfg.task, num_envs=2, seed=0)
    assert evaluate(env, actor, 2, seed=0).episodes == 2
