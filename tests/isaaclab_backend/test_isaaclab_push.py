"""robopol's Isaac Lab UR5e push task: reset randomisation, and demonstrations collected with its expert.

Runs in CI's Python 3.12 leg (see test_isaaclab_tasks.py); its own module, so that only one Isaac Lab
simulation exists at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("isaaclab_newton", reason="Isaac Lab 3 needs Python 3.12 with the 'isaaclab' extra "
                                       "(scripts/isaaclab_env.sh); CI runs these in its second leg")

from robopol.cli.app import compose  # noqa: E402
from robopol.collect import collect_episodes  # noqa: E402
from robopol.data.store import EpisodeStore  # noqa: E402
from robopol.tasks import make_env  # noqa: E402


def _task():
    return compose("collect", ["task=isaaclab/ur5e_push", "out=unused"]).task


def test_resets_randomise_cube_and_goal_and_the_cube_rests_on_the_table():
    env = make_env(_task(), num_envs=8, seed=0)
    try:
        obs = env.reset(seed=3)["state"]
        cube, goal = obs[:, 15:18], obs[:, 18:21]
        assert ((cube[:, :2] >= [0.40, -0.15]) & (cube[:, :2] <= [0.55, 0.15])).all()
        assert (np.linalg.norm(goal[:, :2] - cube[:, :2], axis=1) >= 0.10 - 1e-5).all()
        assert len({tuple(c.round(4)) for c in cube}) == 8
        for _ in range(10):
            rest = env.step(np.zeros((8, 3))).obs["state"]
        np.testing.assert_allclose(rest[:, 17], 0.02, atol=3e-3)
        np.testing.assert_allclose(rest[:, 15:17], cube[:, :2], atol=1e-3)
    finally:
        env.close()


def test_expert_demonstrations_reach_the_goal_and_are_stored(tmp_path):
    out = str(tmp_path / "push.zarr")
    result = collect_episodes(_task(), out, episodes=16, num_workers=0, num_envs=16, progress=False)
    assert result.expert_success_rate >= 0.9
    store = EpisodeStore.open(out)
    assert len(store) == 16 and {"action", "state", "reward", "terminal"} <= set(store.keys())
    assert sorted(store.meta_arrays()["seed"].tolist()) == list(range(16))


def test_a_registered_gymnasium_id_builds_through_isaac_labs_own_config_parser():
    import gymnasium as gym

    gym.register(id="Robopol-Test-UR5e-Reach-v0", entry_point="robopol.sim.isaaclab.ur5e:UR5eReachEnv",
                 disable_env_checker=True,
                 kwargs={"env_cfg_entry_point": "robopol.sim.isaaclab.ur5e:UR5eReachEnvCfg"})
    task = compose("collect", ["task=isaaclab/ur5e_reach", "out=unused", "task.gym_id=Robopol-Test-UR5e-Reach-v0",
                               "task.env_class=", "task.env_cfg=", "task.max_episode_steps=30"]).task
    env = make_env(task, num_envs=2, seed=0)
    try:
        assert env.spec.max_episode_steps == 30 and env.num_envs == 2
        assert env.reset(seed=0)["state"].shape == (2, 18)
    finally:
        env.close()


def test_a_task_config_naming_both_or_neither_builder_is_refused():
    from robopol.errors import ConfigError

    task = compose("collect", ["task=isaaclab/ur5e_reach", "out=unused", "task.gym_id=Isaac-Foo-v0"]).task
    with pytest.raises(ConfigError, match="set either task.gym_id or both task.env_class and task.env_cfg"):
        make_env(task, num_envs=2, seed=0)


@pytest.mark.parametrize(("override", "message"), [
    ("task.observation={state:critic}", r"maps 'state' to the observation group 'critic', which the task does "
                                        r"not have; its groups: \['policy'\]"),
    ("task.action_low=[-1,-1]", r"task.action_low and task.action_high need one bound per action dimension, "
                                r"got 2 and 3"),
    ("task.success_term=reached", r"success_term='reached' names a termination term, which only manager-based "
                                  r"tasks have"),
])
def test_a_task_config_that_does_not_fit_the_task_is_one_clear_error(override, message):
    from robopol.errors import ConfigError

    task = compose("collect", ["task=isaaclab/ur5e_reach", "out=unused", override]).task
    with pytest.raises(ConfigError, match=message):
        make_env(task, num_envs=2, seed=0)
