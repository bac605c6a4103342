"""The actor's chunk execution, evaluation statistics and the task-compatibility check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from robopol.sim.toy import PointReachEnv, PointReachExpert

from robopol.data.normalize import Normalizer
from robopol.envs import ArraySpec, EnvSpec
from robopol.errors import CheckpointError, ConfigError
from robopol.runtime import ChunkActor, check_env_matches, evaluate, wilson_interval


class CountingPolicy(torch.nn.Module):
    """Chunk h of plan p is the action (p, h) in normalised space; records the observations it saw."""

    obs_steps, horizon, action_steps = 2, 4, 3

    def __init__(self):
        super().__init__()
        self.plans: list[torch.Tensor] = []

    def sample(self, obs):
        self.plans.append(obs.clone())
        p = float(len(self.plans))
        h = torch.arange(self.horizon, dtype=obs.dtype)
        return torch.stack([torch.full_like(h, p), h], dim=-1).expand(obs.shape[0], -1, -1) / 10


def identity_normalizer():
    data = {"x": np.zeros((2, 1), np.float32), "action": np.array([[-1.0, -1.0], [1.0, 1.0]], np.float32)}
    return Normalizer.fit(data, {"x": "identity", "action": "minmax"})


def test_actor_replans_every_action_steps_and_pads_history():
    policy = CountingPolicy()
    actor = ChunkActor(policy, identity_normalizer(), obs_keys=["x"])
    actions = [actor.act({"x": np.full((1, 1), t, np.float32)}) for t in range(7)]
    assert len(policy.plans) == 3  # steps 0, 3, 6
    np.testing.assert_allclose([a[0, 0] for a in actions], [0.1] * 3 + [0.2] * 3 + [0.3], atol=1e-6)
    np.testing.assert_allclose([a[0, 1] for a in actions], [0.0, 0.1, 0.2, 0.0, 0.1, 0.2, 0.0], atol=1e-6)
    # First plan: history padded by repeating step 0; later plans see steps t-1 and t.
    assert policy.plans[0][0, :, 0].tolist() == [0.0, 0.0]
    assert policy.plans[1][0, :, 0].tolist() == [2.0, 3.0]
    actor.reset()
    actor.act({"x": np.full((1, 1), 9, np.float32)})
    assert policy.plans[-1][0, :, 0].tolist() == [9.0, 9.0]


def test_actor_clips_to_the_normaliser_bounds():
    class Wild(CountingPolicy):
        def sample(self, obs):
            return torch.full((obs.shape[0], self.horizon, 2), 5.0)

    actor = ChunkActor(Wild(), identity_normalizer(), obs_keys=["x"])
    np.testing.assert_allclose(actor.act({"x": np.zeros((1, 1), np.float32)}), [[1.0, 1.0]])


def test_wilson_interval_hand_computed():
    low, high = wilson_interval(9, 10)
    assert low == pytest.approx(0.5958, abs=1e-4) and high == pytest.approx(0.9821, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_evaluate_counts_expert_successes():
    env = PointReachEnv(num_envs=4, max_episode_steps=30)

    class ExpertActor:
        def __init__(self):
            self.expert = PointReachExpert(env)

        def reset(self):
            pass

        def reseed(self, seed):
            pass

        def act(self, obs):
            return self.expert.act(obs)

    result = evaluate(env, ExpertActor(), episodes=10, seed=0)
    assert result.episodes == 10 and result.success_rate == 1.0
    assert 1 <= result.mean_length < 30


def test_mismatched_task_is_refused():
    env = PointReachEnv(num_envs=1)
    trained = env.spec.describe()
    check_env_matches(env.spec, trained, ["goal", "pos"])
    other = EnvSpec("cube", {"pos": ArraySpec((3,)), "goal": ArraySpec((2,))}, ArraySpec((4,)), 10)
    with pytest.raises(CheckpointError, match=r"trained on task 'point_reach' and cannot run on task 'cube'.*"
                                              r"'pos' has shape \[3\].*actions have shape \[4\]"):
        check_env_matches(other, trained, ["goal", "pos"])


def test_temporal_ensemble_weights_older_chunks_first():
    policy = CountingPolicy()  # plan p predicts (p/10, h/10) for chunk step h
    actor = ChunkActor(policy, identity_normalizer(), obs_keys=["x"], execution="ensemble", ensemble_decay=0.5)
    actions = [actor.act({"x": np.zeros((1, 1), np.float32)})[0] for _ in range(6)]
    assert len(policy.plans) == 6  # one plan per step
    # Step 2: chunks planned at steps 0, 1, 2 (plans 1, 2, 3) predict offsets 2, 1, 0 for it.
    w = np.exp(-0.5 * np.arange(3))
    expected = (w @ np.array([[0.1, 0.2], [0.2, 0.1], [0.3, 0.0]])) / w.sum()
    np.testing.assert_allclose(actions[2], expected, atol=1e-6)
    # Step 5: only chunks younger than H=4 (planned at 2..5) take part.
    w = np.exp(-0.5 * np.arange(4))
    expected = (w @ np.array([[0.3, 0.3], [0.4, 0.2], [0.5, 0.1], [0.6, 0.0]])) / w.sum()
    np.testing.assert_allclose(actions[5], expected, atol=1e-6)


def test_actor_passes_the_sampler_choice_and_rejects_unknown_execution():
    class Recording(CountingPolicy):
        def sample(self, obs, **kwargs):
            self.kwargs = kwargs
            return super().sample(obs)

    policy = Recording()
    ChunkActor(policy, identity_normalizer(), ["x"], sampler="ddim", steps=5).act({"x": np.zeros((1, 1))})
    assert policy.kwargs == {"sampler": "ddim", "steps": 5}
    ChunkActor(policy, identity_normalizer(), ["x"]).act({"x": np.zeros((1, 1))})
    assert policy.kwargs == {}
    with pytest.raises(ConfigError, match="execution must be one of receding, ensemble, got 'chunky'"):
        ChunkActor(policy, identity_normalizer(), ["x"], execution="chunky")


def test_record_video_renders_one_episode_and_skips_envs_that_cannot_render(tmp_path):
    from robopol.cli.app import compose
    from robopol.runtime import record_video
    from robopol.tasks import make_env

    class Still:
        def reset(self):
            pass

        def act(self, obs):
            return np.zeros((1, 5), np.float32)

    task = compose("collect", ["task=cube_single_task1", "task.max_episode_steps=5", "out=x"]).task
    env = make_env(task, num_envs=1, seed=0)
    try:
        path = record_video(env, Still(), tmp_path / "v.mp4", seed=3, width=64, height=48)
    finally:
        env.close()
    import imageio.v2 as imageio

    frames = imageio.mimread(path)
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)  # reset frame + 5 steps
    assert record_video(PointReachEnv(num_envs=1), Still(), tmp_path / "no.mp4", seed=0) is None
    assert not (tmp_path / "no.mp4").exists()
