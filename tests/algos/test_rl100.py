"""RL-100's OPE-gated offline PPO (robopol.algos.rl100): the reference's rollout and advantages, the surrogate
against the reference, the imitation-to-PPO switch, the gate's decisions, learning on a bandit, config errors
and the trainer round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopol.algos.dppo import FinetunedDiffusion, chain_levels, step_log_probs
from robopol.algos.ope import critic_estimate
from robopol.algos.rl100 import RL100, ppo_loss, reference_rollout
from robopol.policies.diffusion import DiffusionPolicy
from robopol.policies.flow import FlowPolicy


def make_policy(seed: int = 0, horizon: int = 2, hidden: int = 16, **kw) -> DiffusionPolicy:
    torch.manual_seed(seed)
    return DiffusionPolicy(obs_dim=1, action_dim=1, obs_steps=1, horizon=horizon, action_steps=horizon,
                           backbone="mlp", hidden_dims=(hidden, hidden), embed_dim=16, num_train_timesteps=20,
                           inference_steps=5, **kw)


class FixedCritic(nn.Module):
    """Stand-in critic ``fn(obs, chunk)`` (E, B), or a value ``fn(obs)`` (1, B), with a trainable scale of 1."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, obs, chunk=None):
        return self.scale * (self.fn(obs) if chunk is None else self.fn(obs, chunk))

    def values(self, obs, chunk=None):
        return self(obs, chunk)


def batch_of(obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor) -> dict[str, torch.Tensor]:
    """One-step episodes: every window ends at a terminal, so Q(s, a) is the reward."""
    n, horizon = action.shape[:2]
    return {"obs": obs, "action": action, "action_is_pad": torch.zeros(n, horizon, dtype=torch.bool),
            "next_obs": obs, "reward_sum": reward, "discount": torch.full((n,), 0.99 ** horizon),
            "mask": torch.zeros(n, dtype=torch.bool), "terminal": torch.ones(n, dtype=torch.bool),
            "truncated": torch.zeros(n, dtype=torch.bool), "valid": torch.ones(n, horizon, dtype=torch.bool)}


def random_batch(n: int = 8, horizon: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    action = torch.rand(n, horizon, 1, generator=g) * 2 - 1
    return batch_of(torch.randn(n, 1, 1, generator=g), action, -(action - 0.5).pow(2).sum((1, 2)))


# ------------------------------------------------------------------ the reference's rollout and the surrogate


def test_reference_rollout_scores_its_clean_chunk_by_min_q_minus_v_and_normalises():
    policy = make_policy()
    levels = chain_levels(policy)
    critic = FixedCritic(lambda obs, chunk: torch.stack([chunk.sum((1, 2)), chunk.sum((1, 2)) + 1.0]))
    value = FixedCritic(lambda obs: obs.sum((1, 2))[None])
    obs = torch.randn(6, 1, 1)
    out = reference_rollout(policy, policy, critic, value, obs, levels, ft_steps=3, sampling_std=0.1,
                            logprob_std=0.2, generator=torch.Generator().manual_seed(3))
    assert out["chain"].shape == (6, 4, 2, 1)  # the last 3 steps: 4 states
    chunk = out["chain"][:, -1].clamp(-1, 1)
    raw = chunk.sum((1, 2)) - obs.sum((1, 2))  # min over [sum, sum + 1] minus V
    torch.testing.assert_close(out["raw_advantage"], raw)
    torch.testing.assert_close(out["advantage"], (raw - raw.mean()) / raw.std(correction=0))
    torch.testing.assert_close(out["logp"], step_log_probs(policy, obs, out["chain"], levels[-4:], 0.2, 2))


def test_ppo_loss_at_the_reference_is_minus_the_step_weighted_mean_advantage():
    policy = make_policy()
    levels = chain_levels(policy)
    critic = FixedCritic(lambda obs, chunk: chunk.sum((1, 2))[None])
    value = FixedCritic(lambda obs: torch.zeros(1, obs.shape[0]))
    obs = torch.randn(8, 1, 1)
    rollout = reference_rollout(policy, policy, critic, value, obs, levels, 3, 0.1, 0.1)
    weights = 0.9 ** torch.arange(2, -1, -1, dtype=torch.float32)
    loss, metrics = ppo_loss(policy, obs, rollout, levels[-4:], 0.1, weights, torch.tensor([0.01, 0.02, 0.05]))
    # the trained network is the reference: every ratio is 1
    assert loss.item() == pytest.approx(-(rollout["advantage"][:, None] * weights).mean().item(), abs=1e-6)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-7) and metrics["clip_fraction"] == 0.0


# ------------------------------------------------------------------ imitation, the switch, the gate


def test_imitation_then_the_ema_becomes_policy_frozen_and_reference_and_the_rate_drops():
    algo = RL100(make_policy(), total_steps=10, bc_steps=2, ema_decay=0.5, critic_hidden_dims=(8,), ft_steps=3,
                 ppo_lr=1e-5, lr=1e-2)
    batch = random_batch()
    initial = {k: v.clone() for k, v in algo.reference.state_dict().items()}
    algo.update(batch)
    assert not algo.improving and algo.eval_policy() is algo.ema
    assert all(torch.equal(v, initial[k]) for k, v in algo.reference.state_dict().items())
    algo.update(batch)
    assert algo.improving
    ema = algo.ema.state_dict()
    for net in (algo.policy, algo.frozen, algo.reference):
        for key, value in net.state_dict().items():
            assert torch.equal(value, ema[key]), key
    assert algo.optimizers["policy"].param_groups[0]["lr"] == 1e-5
    deployed = algo.eval_policy()
    assert isinstance(deployed, FinetunedDiffusion) and deployed.policy is algo.reference
    assert algo.behaviour_policy() is algo.reference  # the validation loss scores what is deployed
    metrics = algo.update(batch)  # a PPO update
    assert {"ppo_loss", "approx_kl", "gate_accepted"} <= set(metrics)
    moved = [not torch.equal(a, b) for a, b in zip(algo.policy.parameters(), algo.reference.parameters(), strict=True)]
    assert any(moved)  # the trained network left the reference


def test_rl100_without_imitation_starts_ppo_from_the_initial_weights():
    algo = RL100(make_policy(), total_steps=3, bc_steps=0, critic_hidden_dims=(8,), ft_steps=2)
    assert algo.improving and isinstance(algo.eval_policy(), FinetunedDiffusion)
    assert algo.optimizers["policy"].param_groups[0]["lr"] == algo.ppo_lr
    assert "ppo_loss" in algo.update(random_batch())


def _gate_with(candidate_seed: int, reference_seed: int, margin: float = 0.0) -> tuple[RL100, bool, dict]:
    algo = RL100(make_policy(), total_steps=3, bc_steps=0, critic_hidden_dims=(8,), ft_steps=2,
                 gate_margin=margin)
    algo.critic_target = FixedCritic(lambda obs, chunk: chunk.sum((1, 2))[None])
    algo.policy.load_state_dict(make_policy(candidate_seed).state_dict())
    algo.reference.load_state_dict(make_policy(reference_seed).state_dict())
    before = {k: v.clone() for k, v in algo.reference.state_dict().items()}
    return algo, algo.gate(torch.linspace(-1, 1, 16).view(16, 1, 1)), before


def _score(algo: RL100, seed: int) -> float:
    policy = make_policy(seed)
    return critic_estimate(FinetunedDiffusion(algo.frozen, policy, 2), algo.critic_target,
                           torch.linspace(-1, 1, 16).view(16, 1, 1), aggregation="min", seed=algo.steps)


def test_the_gate_accepts_a_better_policy_and_rejects_a_worse_one():
    probe, _, _ = _gate_with(1, 2)
    better, worse = (1, 2) if _score(probe, 1) > _score(probe, 2) else (2, 1)
    gap = abs(_score(probe, 1) - _score(probe, 2))
    assert gap > 1e-3  # two random networks disagree

    algo, accepted, _ = _gate_with(better, worse)
    assert accepted and algo.gate_stats["gate_accepted"] == 1
    assert algo.gate_stats["gate_candidate"] > algo.gate_stats["gate_reference"]
    for key, value in algo.reference.state_dict().items():
        assert torch.equal(value, algo.policy.state_dict()[key]), key

    for args in ((worse, better, 0.0), (better, worse, gap + 1.0)):  # worse, or better by less than the margin
        algo, accepted, before = _gate_with(*args)
        assert not accepted and algo.gate_stats["gate_accepted"] == 0
        assert all(torch.equal(v, before[k]) for k, v in algo.reference.state_dict().items())


def test_rl100_moves_a_uniform_imitation_policy_towards_the_best_action_of_a_bandit(one_torch_thread):
    """Offline one-step data with uniform actions in [-1, 1] and reward -(a - 0.5)^2: imitation learns the
    uniform spread; the gated PPO phase moves the deployed chain towards a = 0.5."""
    torch.manual_seed(0)
    n = 4096
    obs = torch.randn(n, 1, 1)
    action = torch.rand(n, 1, 1) * 2 - 1
    data = batch_of(obs, action, -(action - 0.5).pow(2).sum((1, 2)))
    policy = make_policy(horizon=1, hidden=64)
    algo = RL100(policy, total_steps=900, bc_steps=400, lr=3e-3, ppo_lr=3e-4, ft_steps=3, sampling_std=0.3,
                 logprob_std=0.3, clip=0.2, clip_base=0.1, gate_every=20, critic_hidden_dims=(64, 64),
                 num_critics=2, tau=0.05, expectile=0.9)
    g = torch.Generator().manual_seed(0)

    def mean_reward(deployed: nn.Module) -> float:
        probe = torch.randn(512, 1, 1, generator=torch.Generator().manual_seed(9))
        chunk = deployed.sample(probe, generator=torch.Generator().manual_seed(9)).clamp(-1, 1)
        return -(chunk - 0.5).pow(2).mean().item()

    for step in range(900):
        idx = torch.randint(0, n, (256,), generator=g)
        algo.update({k: v[idx] for k, v in data.items()})
        if step == 399:
            imitation = mean_reward(algo.eval_policy())
    final = mean_reward(algo.eval_policy())
    assert imitation < -0.3  # about uniform actions: E(a - 0.5)^2 = 1/3 + 1/4
    assert algo.gate_stats["gate_accepted"] >= 3
    assert final > imitation + 0.2, (imitation, final)


# ------------------------------------------------------------------ configuration errors


def test_config_errors():
    with pytest.raises(ValueError, match="algo=rl100 fine-tunes the DDIM chain of a diffusion policy: use "
                                         "policy=diffusion_mlp .*got FlowPolicy"):
        RL100(FlowPolicy(1, 1, obs_steps=1, horizon=2, action_steps=2, backbone="mlp", hidden_dims=[8]), 10)
    with pytest.raises(ValueError, match="got DiffusionPolicy with sampler ddpm"):
        RL100(make_policy(sampler="ddpm"), 10)
    with pytest.raises(ValueError, match=r"algo.bc_steps must be in \[0, trainer.steps=10\) so that PPO runs, "
                                         r"got 10"):
        RL100(make_policy(), 10, bc_steps=10)
    with pytest.raises(ValueError, match=r"algo.ft_steps must be in \[1, policy.inference_steps=5\], got 6"):
        RL100(make_policy(), 10, bc_steps=2, ft_steps=6)
    with pytest.raises(ValueError, match=r"algo.ppo_lr must be positive and algo.expectile in \(0, 1\), got 0.0"):
        RL100(make_policy(), 10, bc_steps=2, ppo_lr=0.0)
    with pytest.raises(ValueError, match="algo.sampling_std and algo.logprob_std must be positive"):
        RL100(make_policy(), 10, bc_steps=2, sampling_std=0.0)
    with pytest.raises(ValueError, match=r"algo.clip_base must be in \(0, algo.clip=0.01\], got 0.1"):
        RL100(make_policy(), 10, bc_steps=2, clip_base=0.1)
    with pytest.raises(ValueError, match="algo.gate_every must be at least 1, got 0"):
        RL100(make_policy(), 10, bc_steps=2, gate_every=0)


# ------------------------------------------------------------------ the trainer


def test_train_rl100_on_point_reach_then_deploy_the_reference(tmp_path, toy_store):
    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.runtime import evaluate, load_actor
    from robopol.tasks import make_env
    from robopol.train.run import read_metrics
    from robopol.train.trainer import train

    cfg = compose("train", ["algo=rl100", "policy=diffusion_mlp", "policy.horizon=4", "policy.action_steps=4",
                            f"data={toy_store}", "policy.hidden_dims=[32,32]", "algo.critic_hidden_dims=[32,32]",
                            "algo.bc_steps=10", "algo.gate_every=5", "trainer.steps=20", "trainer.ckpt_every=5",
                            "trainer.batch_size=32", "trainer.log_every=5", "trainer.eval_episodes=2",
                            "trainer.progress=false", "trainer.num_threads=1"])
    run = train(cfg, tmp_path / "run").run_dir
    logged = {k for record in read_metrics(run / "metrics.jsonl") for k in record}
    assert {"train/critic_loss", "train/value_loss", "train/ppo_loss", "train/gate_accepted"} <= logged
    assert set(load_checkpoint(run).module_names()) == {"critic", "critic_target", "value", "frozen", "reference",
                                                        "policy"}
    actor, ckpt = load_actor(str(run))
    assert isinstance(actor.policy, FinetunedDiffusion)
    env = make_env(ckpt.config.task, num_envs=2, seed=0)
    try:
        result = evaluate(env, actor, episodes=2, seed=0)
    finally:
        env.close()
    assert result.episodes == 2 and actor.nfe == 10 * actor.plans  # the DDIM-10 chain per chunk
    imitation, _ = load_actor(str(run / "checkpoints" / "step_00000005"))
    assert isinstance(imitation.policy, DiffusionPolicy)  # before the switch: the imitation policy itself


def test_rl100_training_resumes_bit_exactly(assert_resume_is_exact):
    assert_resume_is_exact(["algo=rl100", "policy=diffusion_mlp", "policy.horizon=4", "policy.action_steps=4",
                            "algo.bc_steps=5", "algo.gate_every=3"])
