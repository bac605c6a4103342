"""Q-chunking (robopol.algos.qc): the chunk TD loss, the distilled actor's loss and best-of-N extraction on tiny
hand batches with stand-in critics whose outputs are known, and the configuration errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robopol.algos.offline import BestOfN, OneStepActor
from robopol.algos.qc import QC, critic_loss, distill_actor_loss
from robopol.policies.flow import FlowPolicy
from robopol.policies.mlp import MLPPolicy
from robopol.runtime import ChunkActor


class FixedCritic(nn.Module):
    """Stand-in critic: ``forward(obs, chunk) = scale * fn(obs, chunk)`` (E, B), with one trainable scale (1)
    so gradients can be traced; records every chunk it is shown."""

    def __init__(self, fn, logits: bool = False) -> None:
        super().__init__()
        self.fn, self.logits = fn, logits
        self.scale = nn.Parameter(torch.ones(()))
        self.chunks: list[torch.Tensor] = []

    def forward(self, obs, chunk=None):
        if chunk is not None:
            self.chunks.append(chunk.detach().clone())
        return self.scale * self.fn(obs, chunk)

    def values(self, obs, chunk=None):
        out = self(obs, chunk)
        return torch.sigmoid(out) if self.logits else out


def flow_policy(horizon: int = 2, action_steps: int | None = None, **kw) -> FlowPolicy:
    torch.manual_seed(0)
    return FlowPolicy(1, 1, obs_steps=1, horizon=horizon,
                      action_steps=horizon if action_steps is None else action_steps,
                      backbone="mlp", hidden_dims=[8], **kw)


def qc(policy=None, **kw) -> QC:
    args = dict(critic_hidden_dims=(8,), actor_hidden_dims=(8,))
    args.update(kw)
    return QC(flow_policy() if policy is None else policy, 10, **args)


def hand_batch() -> dict[str, torch.Tensor]:
    """Three 2-step windows: a full chunk, a chunk that ends at a terminal, and one cut by a time limit.
    First actions 1.5 and -3 lie outside [-1, 1] (the critic must see them clipped)."""
    return {
        "obs": torch.zeros(3, 1, 1),
        "action": torch.tensor([[[1.5], [0.2]], [[0.0], [0.2]], [[-3.0], [0.2]]]),
        "action_is_pad": torch.zeros(3, 2, dtype=torch.bool),
        "next_obs": torch.tensor([2.0, 1.0, 1.0]).view(3, 1, 1),
        "reward_sum": torch.tensor([1.0, 0.5, 2.0]),
        "discount": torch.tensor([0.81, 0.9, 0.81]),
        "mask": torch.tensor([True, False, True]),
        "terminal": torch.tensor([False, True, False]),
        "truncated": torch.tensor([False, False, True]),
        "valid": torch.tensor([[True, True], [True, True], [True, True]]),
    }


def online_and_target():
    # Q_0(s, a) = a_0, Q_1(s, a) = a_0 + 1 (a_0 the clipped first action)
    online = FixedCritic(lambda obs, chunk: torch.stack([chunk[:, 0, 0], chunk[:, 0, 0] + 1]))
    # Q'_0(s', a') = s' + a'_0, Q'_1(s', a') = 2 s' + a'_0
    target = FixedCritic(lambda obs, chunk: torch.stack([obs[:, 0, 0] + chunk[:, 0, 0],
                                                         2 * obs[:, 0, 0] + chunk[:, 0, 0]]))
    return online, target


# ------------------------------------------------------------------ critic loss


def test_critic_loss_by_hand_with_a_terminal_and_the_truncated_window_dropped():
    online, target = online_and_target()
    batch = hand_batch()
    next_chunk = torch.full((3, 2, 1), 0.5)
    algo = qc()
    weight = algo.critic_weight(batch)  # drop_truncated (the default): ~truncated
    torch.testing.assert_close(weight, torch.tensor([1.0, 1.0, 0.0]))
    loss, metrics = critic_loss(online, target, batch, next_chunk, "mean", weight)

    # Q' at (s', a'): members [2.5, 1.5, 1.5] and [4.5, 2.5, 2.5] -> mean [3.5, 2, 2]
    # y = R + discount * mask * mean Q': [1 + 0.81 * 3.5, 0.5 (terminal), 2 + 0.81 * 2] = [3.835, 0.5, 3.62]
    # Q at the clipped dataset chunk (first actions 1, 0, -1): members [1, 0, -1] and [2, 1, 0]
    kept = (1 - 3.835) ** 2 + (2 - 3.835) ** 2 + (0 - 0.5) ** 2 + (1 - 0.5) ** 2
    assert loss.item() == pytest.approx(kept / 4, rel=1e-6)  # 2.9761125
    assert metrics["critic_loss"] == pytest.approx(kept / 4, rel=1e-6)
    assert metrics["q_mean"] == pytest.approx((1 + 0 - 1 + 2 + 1 + 0) / 6)
    assert metrics["target_mean"] == pytest.approx((3.835 + 0.5 + 3.62) / 3, rel=1e-6)
    torch.testing.assert_close(online.chunks[0][:, 0, 0], torch.tensor([1.0, 0.0, -1.0]))  # clipped
    torch.testing.assert_close(target.chunks[0], next_chunk)

    loss.backward()
    assert online.scale.grad is not None and target.scale.grad is None  # the target is a constant

    # drop_truncated=false: the time-limited window bootstraps from its last state and counts
    assert qc(drop_truncated=False).critic_weight(batch) is None
    all_three, _ = critic_loss(online, target, batch, next_chunk, "mean", None)
    truncated = (-1 - 3.62) ** 2 + (0 - 3.62) ** 2
    assert all_three.item() == pytest.approx((kept + truncated) / 6, rel=1e-6)  # 7.7255417


def test_critic_loss_min_aggregation_takes_the_smaller_target_member():
    online, target = online_and_target()
    loss, metrics = critic_loss(online, target, hand_batch(), torch.full((3, 2, 1), 0.5), "min",
                                torch.tensor([1.0, 1.0, 0.0]))
    # min Q' = [2.5, 1.5, 1.5]: y = [1 + 0.81 * 2.5, 0.5, 2 + 0.81 * 1.5] = [3.025, 0.5, 3.215]
    kept = (1 - 3.025) ** 2 + (2 - 3.025) ** 2 + 0.25 + 0.25
    assert loss.item() == pytest.approx(kept / 4, rel=1e-6)
    assert metrics["target_mean"] == pytest.approx((3.025 + 0.5 + 3.215) / 3, rel=1e-6)


# ------------------------------------------------------------------ distilled one-step actor (QC-FQL)


class ScaleActor(nn.Module):
    """Stand-in one-step actor ``mu(s, z) = w z`` with w = 2."""

    horizon, action_dim = 2, 1

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, obs, noise):
        return self.w * noise


def constant_velocity_flow(v: float) -> FlowPolicy:
    """Flow policy whose network returns the velocity v everywhere: Euler from noise z ends at z + v."""
    flow = flow_policy(inference_steps=4)
    flow.net = _Const(v)
    return flow


class _Const(nn.Module):
    def __init__(self, v: float) -> None:
        super().__init__()
        self.v = v

    def forward(self, x, level, obs):
        return torch.full_like(x, self.v)


@pytest.mark.parametrize("normalize_q", [False, True])
def test_distill_actor_loss_by_hand(normalize_q):
    actor, flow = ScaleActor(), constant_velocity_flow(0.3)
    # Q_0 = sum of the chunk, Q_1 = 3 * sum: the member mean is 2 * sum(clip(mu))
    critic = FixedCritic(lambda obs, chunk: torch.stack([chunk.sum((1, 2)), 3 * chunk.sum((1, 2))]))
    obs = torch.zeros(6, 1, 1)
    loss, metrics = distill_actor_loss(actor, flow, critic, obs, alpha=10.0, normalize_q=normalize_q,
                                       generator=torch.Generator().manual_seed(0))

    z = torch.randn((6, 2, 1), generator=torch.Generator().manual_seed(0))  # the same noise
    # distillation: mu = 2 z against the flow's ODE end z + 0.3
    distill = ((2 * z - (z + 0.3)) ** 2).mean()
    q = 2 * (2 * z).clamp(-1, 1).sum((1, 2))
    q_term = -q.mean() / (q.abs().mean() if normalize_q else 1.0)
    assert metrics["distill_mse"] == pytest.approx(distill.item(), rel=1e-5)
    assert metrics["actor_q"] == pytest.approx(q.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(10.0 * distill.item() + q_term.item(), rel=1e-5)
    torch.testing.assert_close(critic.chunks[0], (2 * z).clamp(-1, 1))  # Q sees the clipped chunk

    loss.backward()
    # d/dw: 10 * mean(2 (w z - z - 0.3) z) - d(mean q)/dw * (1 / stopgrad(mean |q|) when normalised), where
    # d q_b / dw = 2 * sum over unclipped entries of z (clipped entries pass no gradient)
    d_distill = 10.0 * (2 * (2 * z - z - 0.3) * z).mean()
    unclipped = ((2 * z).abs() < 1).float()
    d_q = (2 * (z * unclipped).sum((1, 2))).mean()
    scale = q.abs().mean() if normalize_q else 1.0
    assert actor.w.grad.item() == pytest.approx((d_distill - d_q / scale).item(), rel=1e-5)


# ------------------------------------------------------------------ best-of-N extraction


class ListPolicy(nn.Module):
    """Stand-in behaviour policy: row i of a batch gets the chunk 0.1, 0.2 or 1.7 (constant over the chunk) for
    i % 3 = 0, 1, 2, so n = 3 repeats of an observation receive all three in that order; records its calls."""

    obs_steps, horizon, action_steps, action_dim = 1, 2, 2, 1
    CHUNKS = (0.1, 0.2, 1.7)

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Identity()
        self.calls: list[tuple[torch.Tensor, dict]] = []

    def sample(self, obs, generator=None, sampler=None, steps=None):
        self.calls.append((obs.clone(), {"sampler": sampler, "steps": steps}))
        values = torch.tensor([self.CHUNKS[i % len(self.CHUNKS)] for i in range(obs.shape[0])])
        return values.view(-1, 1, 1).expand(-1, 2, 1).clone()


def score_critic() -> FixedCritic:
    """Scores by observation (0 or 1) and chunk (0.1 -> 0, 0.2 -> 1, clipped 1.7 -> 2).
    obs 0: member 0 [0, 6, 2], member 1 [1, -2, 1.5]: the mean prefers chunk 1, the min chunk 2.
    obs 1: both members [5, 0, 0]: chunk 0."""
    table = torch.tensor([[[0.0, 6.0, 2.0], [1.0, -2.0, 1.5]], [[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]])

    def fn(obs, chunk):
        k = (chunk[:, 0, 0] > 0.15).long() + (chunk[:, 0, 0] > 0.5).long()
        o = obs[:, 0, 0].long()
        return torch.stack([table[o, 0, k], table[o, 1, k]])

    return FixedCritic(fn)


@pytest.mark.parametrize(("aggregation", "expected"), [("mean", [0.2, 0.1]), ("min", [1.0, 0.1])])
def test_best_of_n_returns_the_highest_scoring_clipped_chunk_per_observation(aggregation, expected):
    policy, critic = ListPolicy(), score_critic()
    best = BestOfN(policy, critic, n=3, aggregation=aggregation)
    obs = torch.tensor([0.0, 1.0]).view(2, 1, 1)
    chunk = best.sample(obs, sampler="euler", steps=3)
    assert chunk.shape == (2, 2, 1)
    torch.testing.assert_close(chunk, torch.tensor(expected).view(2, 1, 1).expand(2, 2, 1))
    # each observation is repeated n times, consecutively; the sampler choice is passed through
    seen_obs, kwargs = policy.calls[0]
    assert seen_obs[:, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert kwargs == {"sampler": "euler", "steps": 3}
    assert critic.chunks[0].max().item() == 1.0  # the critic scores the clipped chunks
    assert (best.obs_steps, best.horizon, best.action_steps, best.action_dim) == (1, 2, 2, 1)
    assert best.net is policy.net  # the runtime counts the behaviour policy's calls


def test_best_of_n_needs_at_least_one_sample():
    with pytest.raises(ValueError, match="algo.best_of_n must be at least 1, got 0"):
        BestOfN(ListPolicy(), score_critic(), n=0)


def test_eval_policy_is_best_of_n_over_the_critic_or_the_one_step_actor():
    algo = qc(best_of_n=5, q_agg="min")
    best = algo.eval_policy()
    assert isinstance(best, BestOfN) and best.critic is algo.critic and best.policy is algo.policy
    assert (best.n, best.aggregation) == (5, "min")
    chunk = best.sample(torch.zeros(3, 1, 1))
    assert chunk.shape == (3, 2, 1) and chunk.abs().max() <= 1.0
    distill = qc(extraction="distill")
    assert isinstance(distill.eval_policy(), OneStepActor) and distill.eval_policy() is distill.actor
    assert "actor" in distill.modules() and "actor" in distill.optimizers
    # distill: the TD target bootstraps from the one-step actor's chunk, clipped
    with torch.no_grad():
        distill.actor.net.out.bias.fill_(5.0)
    torch.testing.assert_close(distill.next_chunks(torch.zeros(4, 1, 1)), torch.ones(4, 2, 1))


@pytest.mark.parametrize("extraction", ["best_of_n", "distill"])
def test_deployed_qc_policy_keeps_the_discrete_action_dims(extraction):
    from robopol.data.normalize import Normalizer

    torch.manual_seed(0)
    policy = FlowPolicy(1, 2, obs_steps=1, horizon=2, action_steps=2, backbone="mlp", hidden_dims=[8],
                        discrete_dims=[1], discrete_scale=0.5)
    algo = QC(policy, 10, critic_hidden_dims=(8,), actor_hidden_dims=(8,), extraction=extraction)
    normalizer = Normalizer.fit({"obs": torch.zeros(4, 1).numpy(), "action": torch.rand(4, 2).numpy()},
                                modes={"obs": "identity", "action": "minmax"})
    actor = ChunkActor(algo.eval_policy(), normalizer, ["obs"])
    assert actor.discrete_dims == [1]


def test_best_of_n_td_target_bootstraps_from_the_best_of_n_chunk():
    algo = qc(best_of_n=3, q_agg="mean")
    algo.policy = ListPolicy()
    algo.critic = algo.critic_target = score_critic()  # whichever of the two scores the candidates
    next_chunk = algo.next_chunks(torch.tensor([0.0, 1.0]).view(2, 1, 1))
    torch.testing.assert_close(next_chunk[:, 0, 0], torch.tensor([0.2, 0.1]))


# ------------------------------------------------------------------ updates and configuration


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
        "truncated": torch.zeros(batch, dtype=torch.bool),
        "valid": torch.ones(batch, 2, dtype=torch.bool),
    }


@pytest.mark.parametrize("extraction", ["best_of_n", "distill"])
def test_update_trains_every_group_and_moves_the_target_critic_by_tau(extraction):
    algo = qc(extraction=extraction, tau=0.25)
    old_target = copy.deepcopy(algo.critic_target)
    old_policy = copy.deepcopy(algo.policy)
    metrics = algo.update(random_batch())
    assert {"loss", "critic_loss", "q_mean", "target_mean", "velocity_mse"} <= set(metrics)
    if extraction == "distill":
        assert {"distill_mse", "actor_q"} <= set(metrics)
    for t, t_old, c in zip(algo.critic_target.parameters(), old_target.parameters(), algo.critic.parameters(),
                           strict=True):
        torch.testing.assert_close(t, 0.75 * t_old + 0.25 * c)  # Polyak after the critic step
    assert any(not torch.equal(p, q) for p, q in zip(algo.policy.parameters(), old_policy.parameters(),
                                                      strict=True))
    assert algo.steps == 1


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"set policy.action_steps=policy.horizon \(got action_steps=1, "
                                         r"horizon=2\)"):
        qc(flow_policy(horizon=2, action_steps=1))
    with pytest.raises(ValueError, match="algo.extraction must be one of best_of_n, distill, got 'ddpg'"):
        qc(extraction="ddpg")
    with pytest.raises(ValueError, match="algo.q_agg must be one of min, mean, got 'max'"):
        qc(q_agg="max")
    with pytest.raises(ValueError, match=r"QC needs a generative \(flow or diffusion\) policy"):
        qc(MLPPolicy(1, 1, obs_steps=1, horizon=2, action_steps=2, hidden_dims=(8,)))
    with pytest.raises(ValueError, match=r"algo.gamma must be in \(0, 1\], got 0"):
        qc(gamma=0.0)
    with pytest.raises(ValueError, match=r"algo.tau must be in \(0, 1\], got 1.5"):
        qc(tau=1.5)
    with pytest.raises(ValueError, match="algo.reward must be one of store, sparse, success, got 'dense'"):
        qc(reward="dense")
    with pytest.raises(ValueError, match=r"algo.ema_decay must be in \[0, 1\), got 1.0"):
        qc(ema_decay=1.0)


def test_best_of_n_below_one_is_refused_when_the_algorithm_is_built():
    with pytest.raises(ValueError, match="algo.best_of_n must be at least 1"):
        qc(best_of_n=0)


# ------------------------------------------------------------------ end to end on the toy task


def train_tiny(tmp_path, toy_store, *overrides: str):
    """``robopol train`` in process on point_reach with tiny networks; returns the run directory."""
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    cfg = compose("train", [*overrides, f"data={toy_store}", "policy.hidden_dims=[32,32]",
                            "algo.critic_hidden_dims=[64,64]", "trainer.steps=30", "trainer.batch_size=32",
                            "trainer.log_every=10", "trainer.eval_episodes=2", "trainer.progress=false",
                            "trainer.num_threads=1"])
    result = train(cfg, tmp_path / "run")
    assert result.steps == 30 and result.final_eval is not None
    return result.run_dir


def saved(run_dir, module: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from robopol.checkpoint import load_checkpoint

    weights = load_file(load_checkpoint(run_dir).path / "model.safetensors")
    return {k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".", 1)[0] == module}


def assert_weights(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert set(state) == set(expected)
    for key, value in state.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("extraction", ["best_of_n", "distill"])
def test_train_qc_on_point_reach_then_load_and_evaluate_the_deployed_policy(tmp_path, toy_store, extraction):
    from robopol.checkpoint import load_checkpoint
    from robopol.runtime import evaluate, load_actor
    from robopol.tasks import make_env
    from robopol.train.run import read_metrics

    run = train_tiny(tmp_path, toy_store, "algo=qc", f"algo.extraction={extraction}", "algo.best_of_n=4",
                     "algo.q_agg=min", "algo.actor_hidden_dims=[32,32]", "policy=flow_mlp", "policy.horizon=4",
                     "policy.action_steps=4")
    logged = {k for record in read_metrics(run / "metrics.jsonl") for k in record}
    assert {"train/critic_loss", "train/q_mean", "train/target_mean", "val/loss", "eval/success_rate"} <= logged
    names = set(load_checkpoint(run).module_names())
    assert names == ({"critic", "critic_target", "policy"} | ({"actor"} if extraction == "distill" else set()))

    actor, ckpt = load_actor(str(run))
    if extraction == "best_of_n":
        assert isinstance(actor.policy, BestOfN)
        assert (actor.policy.n, actor.policy.aggregation) == (4, "min")
        assert_weights(actor.policy.critic, saved(run, "critic"))
        assert_weights(actor.policy.policy, saved(run, "policy"))
    else:
        assert isinstance(actor.policy, OneStepActor)
        assert_weights(actor.policy, saved(run, "actor"))
    assert actor.horizon == actor.action_steps == 4  # whole chunks, open loop
    env = make_env(ckpt.config.task, num_envs=2, seed=0)
    try:
        result = evaluate(env, actor, episodes=2, seed=0)
    finally:
        env.close()
    assert result.episodes == 2 and 0.0 <= result.success_rate <= 1.0 and result.mean_length > 0
    assert actor.plans > 0 and actor.nfe > 0


def test_qc_training_resumes_bit_exactly(assert_resume_is_exact):
    assert_resume_is_exact(["algo=qc", "algo.best_of_n=4", "policy=flow_mlp",
                            "policy.horizon=4", "policy.action_steps=4"])
