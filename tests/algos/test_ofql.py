"""One-step flow Q-learning (robopol.algos.ofql): the one-step chunk, the alpha-normalised actor loss, the
double-Q critic target from the EMA actor, and configuration errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robopol.algos import ofql as ofql_module
from robopol.algos.offline import BestOfN
from robopol.algos.ofql import OFQL, actor_loss, critic_loss, one_step_chunk
from robopol.policies.flow import FlowPolicy
from robopol.policies.meanflow import MeanFlowPolicy


def meanflow(**kw) -> MeanFlowPolicy:
    torch.manual_seed(0)
    return MeanFlowPolicy(1, 1, obs_steps=1, horizon=2, action_steps=2, backbone="mlp", hidden_dims=[8],
                          embed_dim=16, **kw)


class FixedCritic(nn.Module):
    """Stand-in critic ``scale * fn(obs, chunk)`` (E, B) with a trainable scale of 1; records chunks."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.scale = nn.Parameter(torch.ones(()))
        self.chunks: list[torch.Tensor] = []

    def forward(self, obs, chunk=None):
        self.chunks.append(chunk.detach().clone())
        return self.scale * self.fn(obs, chunk)


class LinearNet(nn.Module):
    """Stand-in mean-flow network ``u(x, (t, r), obs) = w * (x + 1) + obs`` (w = 0.5); records the levels."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.levels: list[torch.Tensor] = []

    def forward(self, x, level, obs):
        self.levels.append(level.detach().clone())
        return self.w * (x + 1) + obs


class ConstNet(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, level, obs):
        return torch.full_like(x, self.value)


# ------------------------------------------------------------------ the one-step chunk


def test_one_step_chunk_is_noise_plus_the_average_velocity_from_zero_to_one_and_differentiable():
    policy = meanflow()
    policy.net = LinearNet()
    noise = torch.tensor([[[0.2], [-1.0]], [[1.0], [0.0]]])
    obs = torch.tensor([0.0, 3.0]).view(2, 1, 1)
    chunk = one_step_chunk(policy, obs, noise)
    # a = z + u(z, 0, 1) = z + 0.5 (z + 1) + obs
    torch.testing.assert_close(chunk, noise + 0.5 * (noise + 1) + obs)
    torch.testing.assert_close(policy.net.levels[0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # (t, r) = (0, 1)
    chunk.sum().backward()
    assert policy.net.w.grad.item() == pytest.approx((noise + 1).sum().item())


def test_one_step_chunk_is_what_the_deployed_sampler_returns_and_its_gradient_reaches_every_weight():
    policy = meanflow()
    obs = torch.randn(4, 1, 1, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((4, 2, 1), generator=torch.Generator().manual_seed(5))
    chunk = one_step_chunk(policy, obs, noise)
    # policy.sample draws the same noise from the same seed and makes one average-velocity jump
    torch.testing.assert_close(chunk, policy.sample(obs, generator=torch.Generator().manual_seed(5)))
    chunk.pow(2).sum().backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None, name
    assert all(p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if n.endswith("weight"))


# ------------------------------------------------------------------ actor loss


def test_actor_loss_alpha_is_eta_over_mean_abs_q_of_the_one_step_chunk():
    policy = meanflow()
    # Q_0 = sum of the chunk, Q_1 = 3 sum + 1: the member mean is 2 sum + 0.5
    critic = FixedCritic(lambda obs, chunk: torch.stack([chunk.sum((1, 2)), 3 * chunk.sum((1, 2)) + 1]))
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(6, 1, 1, generator=g)
    bc_batch = {"obs": obs, "action": torch.rand(6, 2, 1, generator=g) * 2 - 1,
                "action_is_pad": torch.zeros(6, 2, dtype=torch.bool)}
    loss, metrics = actor_loss(policy, critic, bc_batch, eta=0.1, generator=torch.Generator().manual_seed(7))

    # replay: the BC loss draws first, then the one-step noise
    replay = torch.Generator().manual_seed(7)
    bc, _ = policy.loss(bc_batch, replay)
    noise = torch.randn((6, 2, 1), generator=replay)
    chunk = one_step_chunk(policy, obs, noise).clamp(-1, 1)
    torch.testing.assert_close(critic.chunks[0], chunk.detach())
    q = 2 * chunk.sum((1, 2)) + 0.5
    alpha = 0.1 / q.detach().abs().mean().item()
    assert metrics["alpha"] == pytest.approx(alpha, rel=1e-5)
    assert metrics["actor_q"] == pytest.approx(q.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((bc - alpha * q.mean()).item(), rel=1e-5)

    # alpha is a constant for the gradient: the same as differentiating bc - (float alpha) * mean Q
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    expected = torch.autograd.grad(bc - alpha * q.mean(), list(policy.parameters()))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_actor_loss_with_a_fixed_q_scale_uses_eta_over_it_whatever_the_critic_values():
    policy = meanflow()
    g = torch.Generator().manual_seed(0)
    bc_batch = {"obs": torch.randn(4, 1, 1, generator=g), "action": torch.rand(4, 2, 1, generator=g) * 2 - 1,
                "action_is_pad": torch.zeros(4, 2, dtype=torch.bool)}
    for offset in (-90.0, -5.0):  # an exploited critic's |Q| shrinks: alpha must not follow it
        critic = FixedCritic(lambda obs, chunk, c=offset: torch.stack([chunk.sum((1, 2)) + c]))
        loss, metrics = actor_loss(policy, critic, bc_batch, eta=2.0, generator=torch.Generator().manual_seed(7),
                                   q_scale=100.0)
        bc, _ = policy.loss(bc_batch, torch.Generator().manual_seed(7))
        assert metrics["alpha"] == pytest.approx(0.02)
        assert loss.item() == pytest.approx(bc.item() - 0.02 * metrics["actor_q"], rel=1e-5)


def test_actor_loss_with_actor_q_agg_min_maximises_the_pessimistic_member():
    policy = meanflow()
    # Q_0 = sum of the chunk, Q_1 = 3 sum + 1: the min is Q_0 where sum > -0.5
    critic = FixedCritic(lambda obs, chunk: torch.stack([chunk.sum((1, 2)), 3 * chunk.sum((1, 2)) + 1]))
    g = torch.Generator().manual_seed(0)
    bc_batch = {"obs": torch.randn(6, 1, 1, generator=g), "action": torch.rand(6, 2, 1, generator=g) * 2 - 1,
                "action_is_pad": torch.zeros(6, 2, dtype=torch.bool)}
    loss, metrics = actor_loss(policy, critic, bc_batch, eta=1.0, generator=torch.Generator().manual_seed(7),
                               q_scale=10.0, actor_q_agg="min")
    total = critic.chunks[0].sum((1, 2))
    q = torch.minimum(total, 3 * total + 1)
    assert metrics["actor_q"] == pytest.approx(q.mean().item(), rel=1e-5)
    bc, _ = policy.loss(bc_batch, torch.Generator().manual_seed(7))
    assert loss.item() == pytest.approx(bc.item() - 0.1 * q.mean().item(), rel=1e-5)


# ------------------------------------------------------------------ critic loss


def test_critic_target_takes_the_min_over_target_critics_at_the_target_actors_clipped_chunk():
    target_actor = meanflow()
    target_actor.net = ConstNet(5.0)  # u = 5: every one-step chunk clips to +1
    # Q'_0 = sum(a') + s' (sum(a') = 2), Q'_1 = 3 s'
    target_critic = FixedCritic(lambda obs, chunk: torch.stack([chunk.sum((1, 2)) + obs[:, 0, 0],
                                                                3 * obs[:, 0, 0]]))
    # Q_0 = a_0, Q_1 = a_0 + 1 at the clipped dataset chunk
    online = FixedCritic(lambda obs, chunk: torch.stack([chunk[:, 0, 0], chunk[:, 0, 0] + 1]))
    batch = {
        "obs": torch.zeros(3, 1, 1),
        "action": torch.tensor([[[0.5], [0.0]], [[3.0], [0.0]], [[-0.5], [0.0]]]),
        "next_obs": torch.tensor([0.5, 2.0, 1.0]).view(3, 1, 1),
        "reward_sum": torch.tensor([1.0, 0.0, 0.5]),
        "discount": torch.tensor([0.81, 0.81, 0.9]),
        "mask": torch.tensor([True, True, False]),
    }
    loss, metrics = critic_loss(online, target_critic, target_actor, batch, None,
                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(target_critic.chunks[0], torch.ones(3, 2, 1))
    # Q'_0 = [2.5, 4, 3], Q'_1 = [1.5, 6, 3] -> min [1.5, 4, 3]
    # y = [1 + 0.81 * 1.5, 0 + 0.81 * 4, 0.5 (terminal)] = [2.215, 3.24, 0.5]
    # Q at the clipped chunk (first actions 0.5, 1, -0.5): [[0.5, 1, -0.5], [1.5, 2, 0.5]]
    errors = [(0.5 - 2.215) ** 2, (1 - 3.24) ** 2, (-0.5 - 0.5) ** 2,
              (1.5 - 2.215) ** 2, (2 - 3.24) ** 2, (0.5 - 0.5) ** 2]
    assert loss.item() == pytest.approx(sum(errors) / 6, rel=1e-5)
    assert metrics["target_mean"] == pytest.approx((2.215 + 3.24 + 0.5) / 3, rel=1e-6)
    weighted, _ = critic_loss(online, target_critic, target_actor, batch, torch.tensor([1.0, 0.0, 1.0]))
    assert weighted.item() == pytest.approx((errors[0] + errors[2] + errors[3] + errors[5]) / 4, rel=1e-5)
    weighted.backward()
    assert online.scale.grad is not None and target_critic.scale.grad is None
    # q_agg=mean: Q' = mean([2.5, 4, 3], [1.5, 6, 3]) = [2, 5, 3] -> y = [1 + 0.81 * 2, 0.81 * 5, 0.5]
    _, metrics = critic_loss(online, target_critic, target_actor, batch, None, q_agg="mean")
    assert metrics["target_mean"] == pytest.approx((2.62 + 4.05 + 0.5) / 3, rel=1e-6)


def random_batch(batch: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "obs": torch.randn(batch, 1, 1, generator=g),
        "action": torch.rand(batch, 2, 1, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(batch, 2, dtype=torch.bool),
        "next_obs": torch.randn(batch, 1, 1, generator=g),
        "reward_sum": torch.randn(batch, generator=g),
        "discount": torch.full((batch,), 0.99**2),
        "mask": torch.ones(batch, dtype=torch.bool),
        "terminal": torch.zeros(batch, dtype=torch.bool),
        "truncated": torch.tensor([False] * (batch - 1) + [True]),
        "valid": torch.ones(batch, 2, dtype=torch.bool),
    }


def test_update_uses_the_ema_actor_and_target_critics_then_moves_both_averages(monkeypatch):
    algo = OFQL(meanflow(), 10, critic_hidden_dims=(8,), ema_decay=0.9, tau=0.5, eta=0.3, q_scale=50.0)
    with torch.no_grad():  # make the EMA actor differ from the trained policy
        for p in algo.ema.parameters():
            p.add_(0.1)
    seen = {}

    def critic_spy(critic, target_critic, target_actor, batch, weight, generator=None, q_agg="min"):
        seen.update(critic=critic, target_critic=target_critic, target_actor=target_actor, weight=weight, q_agg=q_agg)
        return critic_loss(critic, target_critic, target_actor, batch, weight, generator, q_agg)

    def actor_spy(policy, critic, bc_batch, eta, generator=None, q_scale=0.0, actor_q_agg="mean"):
        seen.update(actor_policy=policy, actor_critic=critic, eta=eta, q_scale=q_scale, actor_q_agg=actor_q_agg,
                    critic_frozen=not any(p.requires_grad for p in critic.parameters()))
        return actor_loss(policy, critic, bc_batch, eta, generator, q_scale, actor_q_agg)

    monkeypatch.setattr(ofql_module, "critic_loss", critic_spy)
    monkeypatch.setattr(ofql_module, "actor_loss", actor_spy)
    old_ema, old_target = copy.deepcopy(algo.ema), copy.deepcopy(algo.critic_target)
    metrics = algo.update(random_batch())
    assert seen["critic"] is algo.critic and seen["target_critic"] is algo.critic_target
    assert seen["target_actor"] is algo.ema and algo.ema is not algo.policy and seen["q_agg"] == "min"
    torch.testing.assert_close(seen["weight"], torch.tensor([1.0] * 7 + [0.0]))  # drop_truncated
    assert seen["actor_policy"] is algo.policy and seen["actor_critic"] is algo.critic and seen["eta"] == 0.3
    assert seen["q_scale"] == 50.0 and seen["actor_q_agg"] == "mean"
    assert seen["critic_frozen"] and all(p.requires_grad for p in algo.critic.parameters())
    assert {"loss", "policy_loss", "critic_loss", "alpha", "actor_q", "meanflow_mse"} <= set(metrics)
    for e, e_old, p in zip(algo.ema.parameters(), old_ema.parameters(), algo.policy.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * e_old + 0.1 * p)
    for t, t_old, c in zip(algo.critic_target.parameters(), old_target.parameters(), algo.critic.parameters(),
                           strict=True):
        torch.testing.assert_close(t, 0.5 * t_old + 0.5 * c)
    assert algo.eval_policy() is algo.ema


def test_expectile_backup_bootstraps_from_the_value_net_and_never_asks_the_actor(monkeypatch):
    algo = OFQL(meanflow(), 10, critic_hidden_dims=(8,), backup="expectile", expectile=0.8)
    monkeypatch.setattr(ofql_module, "critic_loss", lambda *a, **k: pytest.fail("the actor-based target ran"))
    batch = random_batch()
    with torch.no_grad():
        expected_v = algo.value(batch["obs"])[0]
    before = [p.clone() for p in algo.value.parameters()]
    metrics = algo.update(batch)
    assert metrics["v_mean"] == pytest.approx(expected_v.mean().item(), rel=1e-5)
    # Q's target uses the value net after its own step
    with torch.no_grad():
        v_next = algo.value(batch["next_obs"])[0]
    target = batch["reward_sum"] + batch["discount"] * batch["mask"].float() * v_next
    assert metrics["target_mean"] == pytest.approx(target.mean().item(), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.value.parameters(), strict=True))
    assert "value" in algo.nets and "value" in algo.optimizers


def test_config_errors():
    with pytest.raises(ValueError, match="OFQL trains the mean-flow head: use policy=meanflow, got FlowPolicy"):
        OFQL(FlowPolicy(1, 1, obs_steps=1, horizon=2, action_steps=2, backbone="mlp", hidden_dims=[8]), 10)
    with pytest.raises(ValueError, match=r"uses the EMA \(target\) actor: algo.ema_decay must be in \(0, 1\)"):
        OFQL(meanflow(), 10, ema_decay=0.0)
    with pytest.raises(ValueError, match=r"algo.ema_decay must be in \[0, 1\), got 1.0"):
        OFQL(meanflow(), 10, ema_decay=1.0)
    with pytest.raises(ValueError, match="algo.eta and algo.q_scale must be >= 0, got -1.0 and 0.0"):
        OFQL(meanflow(), 10, eta=-1.0)
    with pytest.raises(ValueError, match="algo.eta and algo.q_scale must be >= 0, got 0.1 and -100.0"):
        OFQL(meanflow(), 10, q_scale=-100.0)
    with pytest.raises(ValueError, match="algo.q_agg must be one of min, mean, got 'max'"):
        OFQL(meanflow(), 10, q_agg="max")
    with pytest.raises(ValueError, match="algo.actor_q_agg must be one of min, mean, got 'median'"):
        OFQL(meanflow(), 10, actor_q_agg="median")
    with pytest.raises(ValueError, match="algo.backup must be one of actor, expectile, got 'sarsa'"):
        OFQL(meanflow(), 10, backup="sarsa")
    with pytest.raises(ValueError, match=r"algo.expectile must be in \(0, 1\), got 1.0"):
        OFQL(meanflow(), 10, backup="expectile", expectile=1.0)
    with pytest.raises(ValueError, match=r"algo.best_of_n must be at least 1 \(1: OFQL's single sample\), got 0"):
        OFQL(meanflow(), 10, best_of_n=0)


def test_eval_policy_is_the_ema_actor_or_its_best_of_n_chunks_by_the_critic():
    single = OFQL(meanflow(), 10, critic_hidden_dims=(8,))
    assert single.eval_policy() is single.ema
    algo = OFQL(meanflow(), 10, critic_hidden_dims=(8,), best_of_n=3, q_agg="mean")
    best = algo.eval_policy()
    assert isinstance(best, BestOfN) and best.policy is algo.ema and best.critic is algo.critic
    assert (best.n, best.aggregation) == (3, "mean")
    obs = torch.randn(4, 1, 1)
    chunks = best.sample(obs, generator=torch.Generator().manual_seed(0))
    candidates = algo.ema.sample(obs.repeat_interleave(3, dim=0), generator=torch.Generator().manual_seed(0))
    values = algo.critic.values(obs.repeat_interleave(3, dim=0), candidates.clamp(-1, 1)).mean(0).view(4, 3)
    picked = candidates.clamp(-1, 1).view(4, 3, 2, 1)[torch.arange(4), values.argmax(1)]
    torch.testing.assert_close(chunks, picked)


# ------------------------------------------------------------------ end to end on the toy task


@pytest.mark.parametrize("best_of_n", [1, 3])
def test_train_ofql_on_point_reach_then_load_and_evaluate_the_ema_policy(tmp_path, toy_store, best_of_n):
    from safetensors.torch import load_file

    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.runtime import evaluate, load_actor
    from robopol.tasks import make_env
    from robopol.train.run import read_metrics
    from robopol.train.trainer import train

    cfg = compose("train", ["algo=ofql", "policy=meanflow", "policy.horizon=4", "policy.action_steps=4",
                            f"data={toy_store}", "policy.hidden_dims=[32,32]", "algo.critic_hidden_dims=[64,64]",
                            "trainer.steps=30", "trainer.batch_size=32", "trainer.log_every=10",
                            "trainer.eval_episodes=2", "trainer.progress=false", "trainer.num_threads=1",
                            f"algo.best_of_n={best_of_n}"])
    run = train(cfg, tmp_path / "run").run_dir
    logged = {k for record in read_metrics(run / "metrics.jsonl") for k in record}
    assert {"train/critic_loss", "train/alpha", "train/actor_q", "train/policy_loss"} <= logged
    assert set(load_checkpoint(run).module_names()) == {"critic", "critic_target", "ema", "policy"}

    actor, ckpt = load_actor(str(run))
    policy = actor.policy
    weights = load_file(ckpt.path / "model.safetensors")

    def assert_saved_as(module: nn.Module, name: str) -> None:
        expected = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"{name}.")}
        state = module.state_dict()
        assert set(state) == set(expected)
        for key, value in state.items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)

    if best_of_n > 1:
        assert isinstance(policy, BestOfN) and (policy.n, policy.aggregation) == (3, "min")
        assert_saved_as(policy.critic, "critic")  # the critic that picks the chunk is the trained one
        policy = policy.policy
    assert isinstance(policy, MeanFlowPolicy) and policy.sampler == "one_step"
    assert_saved_as(policy, "ema")  # the deployed weights are the EMA actor's
    env = make_env(ckpt.config.task, num_envs=2, seed=0)
    try:
        result = evaluate(env, actor, episodes=2, seed=0)
    finally:
        env.close()
    assert result.episodes == 2 and 0.0 <= result.success_rate <= 1.0
    assert actor.plans > 0 and actor.nfe == actor.plans  # one (batched) actor call per 4-step chunk
    assert actor.plans == -(-actor.steps // 4)  # a new chunk every 4 steps


def test_ofql_training_resumes_bit_exactly(assert_resume_is_exact):
    assert_resume_is_exact(["algo=ofql", "policy=meanflow",
                            "policy.horizon=4", "policy.action_steps=4"])
