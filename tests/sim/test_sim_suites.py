"""Every MuJoCo suite through the task configs: specs, short rollouts and determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest

from robopol.cli.app import compose
from robopol.errors import ConfigError
from robopol.tasks import make_env

# One option per environment; the single-task variants share their env with the goal-conditioned one.
SUITES = {
    "cube_single": ({"observation": (28,), "goal": (28,)}, 5, 200),
    "cube_double_task2": ({"observation": (37,)}, 5, 500),
    "scene": ({"observation": (40,), "goal": (40,)}, 5, 750),
    "puzzle_3x3_task4": ({"observation": (55,)}, 5, 500),
    "pointmaze_umaze": ({"observation": (4,), "achieved_goal": (2,), "goal": (2,)}, 2, 300),
    "pointmaze_medium": ({"observation": (4,), "achieved_goal": (2,), "goal": (2,)}, 2, 600),
    "antmaze_umaze": ({"observation": (105,), "achieved_goal": (2,), "goal": (2,)}, 8, 700),
    "fetch_push": ({"observation": (25,), "achieved_goal": (3,), "goal": (3,)}, 4, 50),
    "fetch_pick_and_place": ({"observation": (25,), "achieved_goal": (3,), "goal": (3,)}, 4, 50),
    "halfcheetah": ({"observation": (17,)}, 6, 1000),
    "hopper": ({"observation": (11,)}, 3, 1000),
    "walker2d": ({"observation": (17,)}, 6, 1000),
    "ant": ({"observation": (105,)}, 8, 1000),
}


def task(name, **overrides):
    args = [f"task={name}", "out=unused", "task.backend=inprocess"]
    args += [f"task.{k}={v}" for k, v in overrides.items()]
    return compose("collect", args).task


def rollout(env, seed, steps):
    rng = np.random.default_rng(seed)
    obs = env.reset(seed=seed)
    trace = [obs]
    spec = env.spec.action
    for _ in range(steps):
        result = env.step(rng.uniform(spec.low, spec.high, size=(env.num_envs, *spec.shape)))
        trace.append(result.obs)
    return trace, result


@pytest.mark.parametrize("name", list(SUITES))
def test_suite_spec_rollout_and_determinism(name):
    keys, action_dim, limit = SUITES[name]
    env = make_env(task(name), num_envs=1, seed=0)
    try:
        spec = env.spec
        assert spec.task == name and spec.max_episode_steps == limit and spec.dt > 0
        assert {k: v.shape for k, v in spec.observation.items()} == keys
        assert spec.goal_key == ("goal" if "goal" in keys else None)
        assert spec.action.shape == (action_dim,) and len(spec.action.names) == action_dim
        assert spec.action.low == (-1.0,) * action_dim and spec.action.high == (1.0,) * action_dim
        a, last = rollout(env, 7, 4)
        b, _ = rollout(env, 7, 4)
        c, _ = rollout(env, 8, 4)
        assert last.reward.shape == (1,) and last.reward.dtype == np.float32 and last.success.dtype == bool
        for x, y in zip(a, b, strict=True):
            assert set(x) == set(keys)
            for k in keys:
                assert x[k].shape == (1, *keys[k]) and x[k].dtype == np.float32
                np.testing.assert_array_equal(x[k], y[k])
        assert any(not np.array_equal(a[-1][k], c[-1][k]) for k in keys)  # another seed, another episode
        state = env.get_state(0)
        assert state.dtype == np.float64 and np.isfinite(state).all()
    finally:
        env.close()


def test_grouped_worker_pool_steps_a_mujoco_suite_like_one_process():
    # task.envs_per_worker reaches the worker pool through the task config: 3 envs in workers of 2 and 1
    single = make_env(task("cube_single_task1"), num_envs=3, seed=0)
    grouped = make_env(task("cube_single_task1", backend="workers", envs_per_worker=2), num_envs=3, seed=0)
    try:
        assert len(grouped._members) == 2
        a, last_a = rollout(single, 3, 5)
        b, last_b = rollout(grouped, 3, 5)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["observation"], y["observation"])
        np.testing.assert_array_equal(last_a.reward, last_b.reward)
        np.testing.assert_array_equal(single.get_state(2), grouped.get_state(2))
    finally:
        single.close(), grouped.close()


def test_goal_conditioned_ogbench_draws_the_task_from_the_seed():
    env = make_env(task("puzzle_3x3"), num_envs=1, seed=0)
    try:
        drawn = {}
        for seed in range(12):
            env.reset(seed=seed)
            drawn[seed] = env.episode_info(0)["task_id"]
        assert set(drawn.values()) <= {1, 2, 3, 4, 5} and len(set(drawn.values())) > 1
        env.reset(seed=3)
        assert env.episode_info(0) == {"seed": 3, "task_id": drawn[3]}
        env.reset(seed=3, options={"task_id": 5})
        assert env.episode_info(0)["task_id"] == 5
    finally:
        env.close()


def test_single_task_variant_uses_ogbench_reward():
    env = make_env(task("cube_single_task1"), num_envs=1, seed=0)
    try:
        env.reset(seed=0)
        result = env.step(np.zeros((1, 5)))
        assert env.episode_info(0)["task_id"] == 1 and "goal" not in result.obs
        assert result.reward[0] == -1.0  # one cube, not at its goal
    finally:
        env.close()


def test_unknown_task_and_bad_env_fields_fail_in_one_line():
    with pytest.raises(ConfigError, match="task"):
        compose("collect", ["task=cube_triple", "out=x"])
    with pytest.raises(ConfigError, match="unknown OGBench env id 'cube-triple-v0'"):
        make_env(task("cube_single", env_id="cube-triple-v0"), num_envs=1, seed=0)
    with pytest.raises(ConfigError, match="task_id must be 0"):
        make_env(task("cube_single", task_id=7), num_envs=1, seed=0)
    with pytest.raises(ConfigError, match="backend must be one of"):
        make_env(task("hopper", backend="cuda"), num_envs=1, seed=0)
