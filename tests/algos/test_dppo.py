"""DPPO (robopol.algos.dppo): per-step log-densities against a direct Gaussian evaluation, the noise-free chain
is the deployed DDIM sampler, the clip schedule and denoising discount by hand, an unchanged policy has ratio
1, learning a contextual bandit, checkpoint round trip of the deployed policy, and configuration errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from robopol.algos.dppo import DPPO, FinetunedDiffusion, chain_levels, run_chain, step_clips, step_log_probs
from robopol.errors import ConfigError
from robopol.policies.diffusion import DiffusionPolicy

from .helpers import bandit_rollout


def make_policy(horizon: int = 1, action_steps: int = 1, **kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(obs_dim=2, action_dim=2, obs_steps=1, horizon=horizon, action_steps=action_steps,
                           backbone="mlp",
                           hidden_dims=(32, 32), embed_dim=16, num_train_timesteps=20, inference_steps=5, **kw)


def make_dppo(**kw) -> DPPO:
    return DPPO(make_policy(), total_steps=10, **{"num_envs": 16, "rollout_steps": 8, "critic_hidden_dims": (16,),
                                                  "ft_steps": 3, **kw})


def test_step_log_probs_match_a_direct_gaussian_evaluation():
    policy = make_policy(horizon=3)
    levels = chain_levels(policy)[-4:]  # the last three steps: levels 8 -> 4 -> 0 -> -1
    obs = torch.randn(2, 1, 2)
    chain = torch.randn(2, 4, 3, 2) * 0.5
    got = step_log_probs(policy, obs, chain, levels, std=0.3, action_steps=2)
    for b in range(2):
        for k in range(3):
            mean = policy.solver_step(chain[b:b + 1, k], levels[k:k + 1], levels[k + 1:k + 2], obs[b:b + 1])
            elementwise = -0.5 * ((chain[b, k + 1] - mean[0]) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)
            expected = elementwise.clamp(-5, 2)[:2].mean()  # the first two (executed) chunk steps only
            torch.testing.assert_close(got[b, k], expected)


def test_log_probs_are_clamped_like_dppo():
    policy = make_policy()
    levels = chain_levels(policy)[-2:]
    chain = torch.zeros(1, 2, 1, 2)
    chain[0, 1] = 100.0  # far from any mean: every element at the floor
    assert step_log_probs(policy, torch.zeros(1, 1, 2), chain, levels, 0.1, 1).item() == -5.0


def test_noise_free_chain_is_the_policys_ddim_sampler():
    dppo = make_dppo()
    torch.nn.init.normal_(dppo.policy.net.mlp.out.weight, std=0.5)  # a net that moves the chunk
    dppo.frozen.load_state_dict(dppo.policy.state_dict())
    obs = torch.randn(4, 1, 2)
    deployed = dppo.eval_policy().sample(obs, generator=torch.Generator().manual_seed(3))
    direct = dppo.policy.sample(obs, generator=torch.Generator().manual_seed(3), sampler="ddim")
    torch.testing.assert_close(deployed, direct, rtol=1e-5, atol=1e-5)


def test_early_steps_run_the_frozen_network():
    dppo = make_dppo()
    torch.nn.init.normal_(dppo.policy.net.mlp.out.weight, std=0.5)  # now differs from the frozen copy
    obs, x = torch.randn(3, 1, 2), torch.randn(3, 1, 2)
    chain = run_chain(dppo.frozen, dppo.policy, obs, x, dppo.denoising.levels, ft_steps=3, std=0.0)
    expected = x
    for i in range(5):
        net = dppo.frozen if i < 2 else dppo.policy
        expected = net.solver_step(expected, dppo.denoising.levels[i].expand(3), dppo.denoising.levels[i + 1].expand(3), obs)
        if i == 1:
            torch.testing.assert_close(chain[:, 0], expected)
    torch.testing.assert_close(chain[:, -1], expected)


def test_clip_schedule_and_denoising_discount_by_hand():
    clips = step_clips(3, clip_base=0.001, clip=0.01, rate=3.0)
    growth = [(math.exp(3 * u) - 1) / (math.exp(3) - 1) for u in (0.0, 0.5, 1.0)]
    torch.testing.assert_close(clips, torch.tensor([0.001 + 0.009 * g for g in growth]))
    torch.testing.assert_close(step_clips(3, 0.001, 0.01, rate=0.0), torch.tensor([0.001, 0.0055, 0.01]))
    torch.testing.assert_close(step_clips(1, 0.001, 0.01, 3.0), torch.tensor([0.01]))
    torch.testing.assert_close(make_dppo(gamma_denoise=0.5).denoising.advantage_weights, torch.tensor([0.25, 0.5, 1.0]))


def test_rollout_fields_and_an_unchanged_policy_has_ratio_one():
    dppo = make_dppo()
    obs = torch.rand(5, 2)
    out = dppo.act(obs)
    assert out["chain"].shape == (5, 4, 1, 2) and out["logp"].shape == (5, 3) and out["action"].shape == (5, 2)
    torch.testing.assert_close(out["action"], dppo.policy.to_external(out["chain"][:, -1])[:, 0])
    chunked = DPPO(make_policy(horizon=4, action_steps=3), total_steps=1, ft_steps=2).act(obs)
    assert chunked["action"].shape == (5, 3, 2) and chunked["chain"].shape == (5, 3, 4, 2)
    logp, _, _ = dppo.policy_terms({"obs": obs, **out})
    torch.testing.assert_close(logp, out["logp"])


def test_each_step_is_clipped_at_its_own_epsilon():
    dppo = make_dppo(clip=0.2, clip_base=0.02, clip_rate=0.0)  # clips 0.02, 0.11, 0.2
    logp = torch.log(torch.full((1, 3), 1.5))  # ratio 1.5 at every step
    loss, stats = dppo.surrogate(logp, torch.zeros(1, 3), torch.ones(1))
    weights = dppo.denoising.advantage_weights
    expected = -(torch.tensor([1.02, 1.11, 1.2]) * weights).mean()
    torch.testing.assert_close(loss, expected)
    assert stats["clip_fraction"] == 1.0


def test_learns_a_contextual_bandit():
    torch.manual_seed(1)
    dppo = make_dppo(lr=3e-3, critic_lr=3e-3, epochs=4, minibatches=2, clip=0.2, clip_base=0.1, reward_norm=False,
                     sampling_std=0.2, ft_steps=5)

    def mean_reward() -> float:
        obs = torch.rand(256, 2) * 2 - 1
        action = dppo.eval_policy().sample(obs[:, None])[:, 0, 0].clamp(-1, 1)
        return -(action - obs[:, 0]).pow(2).mean().item()

    before = mean_reward()
    for _ in range(40):
        dppo.update(bandit_rollout(dppo))
    after = mean_reward()
    assert after > before + 0.1 and after > -0.1, (before, after)


@pytest.mark.parametrize("deploy", ["chain", "student"])
def test_checkpoint_round_trip_of_the_deployed_policy(tmp_path, deploy):
    from omegaconf import OmegaConf

    from robopol.checkpoint import load_checkpoint, save_checkpoint
    from robopol.policies.consistency import ConsistencyPolicy

    dppo = make_dppo(student=True, deploy=deploy)
    torch.nn.init.normal_(dppo.policy.net.mlp.out.weight, std=0.5)
    torch.nn.init.normal_(dppo.student.head.net.mlp.out.weight, std=0.5)
    cfg = OmegaConf.create({"algo": {"_target_": "robopol.algos.dppo.DPPO", "ft_steps": 3, "deploy": deploy}})
    save_checkpoint(tmp_path, step=1, modules=dppo.modules(), config=cfg, training_state={"step": 1})
    loaded = DPPO.load_eval_policy(load_checkpoint(tmp_path / "step_00000001"), make_policy())
    assert isinstance(loaded, FinetunedDiffusion if deploy == "chain" else ConsistencyPolicy)
    obs = torch.randn(3, 1, 2)
    torch.testing.assert_close(loaded.sample(obs, torch.Generator().manual_seed(0)),
                               dppo.eval_policy().sample(obs, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("kw, message", [
    ({"ft_steps": 0}, "algo.ft_steps must be in"),
    ({"ft_steps": 6}, "algo.ft_steps must be in"),
    ({"sampling_std": 0.0}, "must be positive"),
    ({"clip_base": 0.5}, "algo.clip_base must be in"),
    ({"gamma_denoise": 0.0}, "algo.gamma_denoise must be in"),
])
def test_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        DPPO(make_policy(), total_steps=1, **{"ft_steps": 3, **kw})


def test_bad_policies():
    with pytest.raises(ValueError, match="policy.obs_steps=1, got 2"):
        DPPO(DiffusionPolicy(2, 2, 2, 4, 2, backbone="mlp", hidden_dims=(8,)), total_steps=1)
    with pytest.raises(ValueError, match="policy.sampler=ddim"):
        DPPO(make_policy(sampler="ddpm"), total_steps=1)
    with pytest.raises(ValueError, match="use policy=diffusion_mlp"):
        DPPO(copy.deepcopy(torch.nn.Linear(2, 2)), total_steps=1)


@pytest.mark.parametrize("deploy", ["chain", "student"])
def test_dppo_runs_through_the_online_loop_and_deploys(tmp_path, deploy):
    from robopol.cli.app import compose
    from robopol.policies.consistency import ConsistencyPolicy
    from robopol.runtime import load_actor
    from robopol.train.trainer import train

    overrides = ["task=point_reach", "policy=diffusion_mlp", "policy.horizon=1", "policy.action_steps=1",
                 "policy.hidden_dims=[16]", "policy.embed_dim=8", "policy.inference_steps=4", "algo=dppo",
                 "algo.ft_steps=2", "algo.num_envs=2", "algo.rollout_steps=10", "algo.epochs=1",
                 "algo.minibatches=2", "algo.critic_hidden_dims=[16]", "trainer.steps=2", "trainer.eval_episodes=2",
                 "trainer.videos=false", "trainer.progress=false", "trainer.num_threads=1",
                 f"algo.student={deploy == 'student'}", f"algo.deploy={deploy}"]
    result = train(compose("train", overrides), tmp_path / "run")
    assert result.final_eval is not None and result.final_eval.episodes == 2
    actor, _ = load_actor(str(tmp_path / "run"))
    if deploy == "chain":
        assert isinstance(actor.policy, FinetunedDiffusion) and actor.policy.ft_steps == 2
        actor.reset()
        obs = {"pos": np.zeros((1, 2), np.float32), "goal": np.ones((1, 2), np.float32)}
        actor.act(obs)
        assert actor.nfe == 4  # both networks' calls count: 2 frozen + 2 fine-tuned steps
        with pytest.raises(ConfigError, match="drop sampler= and steps="):
            load_actor(str(tmp_path / "run"), sampler="ddim")[0].act(obs)
    else:
        assert isinstance(actor.policy, ConsistencyPolicy)


def test_student_loss_is_action_matching_against_the_current_chain():
    from robopol.algos.dppo import student_loss
    from robopol.policies.consistency import ConsistencyPolicy

    dppo = make_dppo(student=True)
    torch.nn.init.normal_(dppo.policy.net.mlp.out.weight, std=0.5)
    obs = torch.randn(4, 1, 2)
    loss, _ = student_loss(dppo.student, dppo.frozen, dppo.policy, obs, dppo.denoising.levels, 3, torch.Generator().manual_seed(5))
    noise = torch.randn((4, 1, 2), generator=torch.Generator().manual_seed(5))
    goal = run_chain(dppo.frozen, dppo.policy, obs, noise, dppo.denoising.levels, 3, 0.0)[:, -1]
    student: ConsistencyPolicy = dppo.student
    one_step = student.consistency(noise, student.head.level_at(1.0).expand(4), obs)
    torch.testing.assert_close(loss, (one_step - goal).pow(2).mean())


def test_the_student_tracks_the_improving_policy():
    torch.manual_seed(2)
    dppo = make_dppo(lr=3e-3, critic_lr=3e-3, epochs=4, minibatches=2, clip=0.2, clip_base=0.1, reward_norm=False,
                     sampling_std=0.2, ft_steps=5, student=True, student_lr=3e-3, student_epochs=16, deploy="student")
    assert dppo.eval_policy() is dppo.student
    initial = copy.deepcopy(dppo.student)
    for _ in range(40):
        dppo.update(bandit_rollout(dppo))
    obs = torch.rand(256, 1, 2) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    chain = FinetunedDiffusion(dppo.frozen, dppo.policy, dppo.denoising.ft_steps).sample(obs, generator)[:, 0, 0]
    student = dppo.student.sample(obs, torch.Generator().manual_seed(0))[:, 0, 0]
    untrained = initial.sample(obs, torch.Generator().manual_seed(0))[:, 0, 0]
    reward = -(student.clamp(-1, 1) - obs[:, 0, 0]).pow(2).mean().item()
    tracking, stale = (student - chain).pow(2).mean().item(), (untrained - chain).pow(2).mean().item()
    print(f"student reward {reward:.3f}, student-chain {tracking:.4f}, initial-chain {stale:.4f}")
    assert reward > -0.1  # the one-step head solves the bandit too
    assert tracking < 0.25 * stale


def test_deploy_student_needs_the_student():
    with pytest.raises(ValueError, match="algo.deploy=student needs the consistency head"):
        make_dppo(deploy="student")
    with pytest.raises(ValueError, match="algo.deploy must be one of"):
        make_dppo(deploy="ema")


def test_dppo_fine_tunes_a_bc_checkpoint(tmp_path, toy_store):
    from safetensors.torch import load_file

    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.errors import ConfigError
    from robopol.train.trainer import train

    common = ["trainer.videos=false", "trainer.progress=false", "trainer.num_threads=1", "trainer.eval_episodes=2"]
    bc = ["task=point_reach", f"data={toy_store}", "algo=bc", "policy=diffusion_mlp", "policy.horizon=1",
          "policy.action_steps=1", "policy.obs_steps=1", "policy.hidden_dims=[16]", "policy.embed_dim=8",
          "policy.inference_steps=4", "trainer.steps=20", "trainer.batch_size=16", *common]
    train(compose("train", bc), tmp_path / "bc")
    dppo = ["task=point_reach", f"init={tmp_path / 'bc'}", "algo=dppo", "algo.ft_steps=2", "algo.num_envs=2",
            "algo.rollout_steps=8", "algo.epochs=1", "algo.minibatches=2", "algo.critic_hidden_dims=[16]",
            "trainer.steps=2", *common]
    train(compose("train", dppo), tmp_path / "dppo")
    bc_ckpt, dppo_ckpt = load_checkpoint(tmp_path / "bc"), load_checkpoint(tmp_path / "dppo")
    assert dppo_ckpt.config.policy == bc_ckpt.config.policy
    bc_weights = load_file(bc_ckpt.path / "model.safetensors")
    dppo_weights = load_file(dppo_ckpt.path / "model.safetensors")
    assert any(key.startswith("policy.") for key in bc_weights)
    for key, value in bc_weights.items():  # the frozen early steps are BC's policy, untouched
        if key.startswith("policy."):
            torch.testing.assert_close(dppo_weights["frozen." + key[7:]], value)
    assert dppo_ckpt.normalizer()[0] == bc_ckpt.normalizer()[0]  # deployed with the BC normaliser
    for key, value in bc_ckpt.normalizer()[1].items():
        torch.testing.assert_close(torch.as_tensor(dppo_ckpt.normalizer()[1][key]), torch.as_tensor(value))

    with pytest.raises(ConfigError, match="do not fit task 'multigoal'"):
        train(compose("train", [*dppo[1:], "task=multigoal"]), tmp_path / "wrong_task")
    with pytest.raises(ConfigError, match="init=.* fine-tunes a policy with an online algorithm"):
        train(compose("train", [*bc, f"init={tmp_path / 'bc'}"]), tmp_path / "bc2")
