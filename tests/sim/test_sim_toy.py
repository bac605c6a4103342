"""The numpy toy tasks: PointReach's auto-reset, and MultiGoal's goals, reward, success at any goal and its
multimodal expert."""

from __future__ import annotations

import numpy as np
import pytest
from robopol.sim.toy import MultiGoalEnv, MultiGoalExpert, PointReachEnv

from robopol.errors import ConfigError


def test_point_reach_auto_reset_reports_final_observations_and_starts_new_episodes():
    env = PointReachEnv(num_envs=3, max_episode_steps=2)
    env.autoreset = True
    first = env.reset(seed=0)
    env.step(np.zeros((3, 2)))
    result = env.step(np.zeros((3, 2)))  # the time limit ends every episode
    assert result.truncated.all() and not result.terminated.any()
    np.testing.assert_array_equal(result.info["final_obs"]["pos"], first["pos"])  # zero velocity: it stayed
    assert not np.array_equal(result.obs["goal"], first["goal"])  # new episodes, new goals
    assert not env.step(np.zeros((3, 2))).truncated.any()  # their clocks restarted


def test_multigoal_goals_reward_and_success_at_any_goal():
    env = MultiGoalEnv(num_envs=2, num_goals=4, radius=1.0, max_speed=0.25)
    np.testing.assert_allclose(env.goals, [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-12)
    obs = env.reset(seed=0)
    assert set(obs) == {"pos"} and np.abs(obs["pos"]).max() < 0.05
    env._pos[:] = 0.0  # exactly at the centre
    result = env.step(np.array([[1.0, 0.0], [0.0, -1.0]]))  # 0.25 towards goals 0 and 3
    np.testing.assert_allclose(result.reward, [-0.75, -0.75], atol=1e-6)
    for _ in range(2):
        result = env.step(np.array([[1.0, 0.0], [0.0, -1.0]]))
    assert not result.success.any()  # 0.25 from the goals
    result = env.step(np.array([[0.8, 0.0], [0.0, -0.8]]))
    assert result.success.all() and result.terminated.all()
    np.testing.assert_array_equal(env.nearest_goal(result.obs["pos"].astype(np.float64)), [0, 3])


def test_multigoal_expert_demonstrates_every_mode():
    env = MultiGoalEnv(num_envs=60)
    env.autoreset = True
    expert = MultiGoalExpert(env, seed=0)
    obs = env.reset(seed=0)
    reached = []
    for _ in range(30):
        result = env.step(expert.act(obs))
        if result.success.any():
            final = result.info["final_obs"]["pos"][result.success].astype(np.float64)
            reached += env.nearest_goal(final).tolist()
        obs = result.obs
    assert len(reached) >= 60 and set(reached) == set(range(6))


def test_multigoal_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="num_goals must be at least 1"):
        MultiGoalEnv(num_goals=0)
