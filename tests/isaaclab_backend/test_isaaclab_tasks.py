"""Isaac Lab 3 back end: the adapter's semantics and robopol's UR5e tasks, on CPU (kit-less, Newton/MuJoCo-Warp).

These run in CI's Python 3.12 leg (``scripts/isaaclab_env.sh``); in the Python 3.11 leg they are skipped.
Building an env costs ~10 s with a warm Warp kernel cache, so each task is built once per module.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("isaaclab_newton", reason="Isaac Lab 3 needs Python 3.12 with the 'isaaclab' extra "
                                       "(scripts/isaaclab_env.sh); CI runs these in its second leg")

import torch  # noqa: E402

from robopol.cli.app import compose  # noqa: E402
from robopol.errors import ConfigError  # noqa: E402
from robopol.tasks import make_env, make_expert  # noqa: E402

N = 4


def _task(name: str):
    return compose("collect", [f"task=isaaclab/{name}", "out=unused"]).task


@pytest.fixture(scope="module")
def reach():
    env = make_env(_task("ur5e_reach"), num_envs=N, seed=0)
    yield env
    env.close()


def _run_expert_until_an_env_ends(env, expert, max_steps: int = 200):
    for _ in range(max_steps):
        out = env.step_tensors(expert.act_tensors())
        if bool((out.terminated | out.truncated).any()):
            return out
    raise AssertionError("no episode ended")


def test_spec_dtypes_and_devices(reach):
    spec = reach.spec
    assert spec.observation["state"].shape == (18,)
    assert spec.action.shape == (3,) and spec.action.low == (-1.0,) * 3 and spec.action.high == (1.0,) * 3
    assert spec.max_episode_steps == 80 and spec.dt == pytest.approx(0.05)
    obs = reach.reset_tensors(seed=0)
    assert obs["state"].dtype == torch.float32 and obs["state"].device == reach.device
    out = reach.step_tensors(torch.zeros(N, 3))
    assert out.reward.shape == (N,) and out.reward.dtype == torch.float32
    for flag in (out.terminated, out.truncated, out.success, out.clipped):
        assert flag.dtype == torch.bool and flag.shape == (N,) and flag.device == reach.device
    numpy_out = reach.step(np.zeros((N, 3)))
    assert isinstance(numpy_out.obs["state"], np.ndarray) and numpy_out.obs["state"].shape == (N, 18)
    assert numpy_out.reward.dtype == np.float32 and numpy_out.terminated.dtype == bool


def test_bad_actions_are_refused_and_out_of_bounds_clipped(reach):
    reach.reset(seed=0)
    with pytest.raises(ConfigError, match=r"actions must have shape \(4, 3\), got \(4, 2\)"):
        reach.step(np.zeros((N, 2)))
    bad = np.zeros((N, 3))
    bad[1, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN or inf"):
        reach.step(bad)
    before = reach.clipped_actions
    actions = np.zeros((N, 3))
    actions[2, 0] = 3.0
    out = reach.step(actions)
    assert out.info["clipped"].tolist() == [False, False, True, False]
    assert reach.clipped_actions == before + 1


def test_reset_is_a_function_of_the_episode_seed(reach):
    first = reach.reset(seed=7)["state"]
    assert [reach.episode_info(i)["seed"] for i in range(N)] == [7, 8, 9, 10]
    reach.step(np.ones((N, 3)))
    again = reach.reset(seed=7)["state"]
    np.testing.assert_allclose(first, again, atol=1e-5)
    other = reach.reset(seed=8)["state"]
    np.testing.assert_allclose(other[0], first[1], atol=1e-5)  # env 0 now has env 1's former seed
    goals = first[:, 15:18]
    assert len({tuple(g.round(4)) for g in goals}) == N  # different goals per env
    low, high = np.array([0.35, -0.25, 0.10]), np.array([0.60, 0.25, 0.40])
    assert ((goals >= low) & (goals <= high)).all()


def test_forward_kinematics_agrees_with_the_simulator(reach):
    reach.reset(seed=1)
    for _ in range(3):
        reach.step(np.array([[1.0, 0.0, -1.0]] * N))
    task = reach.env
    kin = task.chain.forward(task.joint_pos())
    bodies = task.robot.data.body_link_pos_w.torch - task.scene.env_origins[:, None]
    for j, body in enumerate(("shoulder_link", "upper_arm_link", "forearm_link", "wrist_1_link", "wrist_2_link",
                              "wrist_3_link")):
        sim = bodies[:, task.robot.body_names.index(body)]
        torch.testing.assert_close(kin.joint_pos[:, j], sim, atol=2e-3, rtol=0)


def test_frozen_env_repeats_its_last_step_until_reset_done(reach):
    reach.reset(seed=20)
    expert = make_expert(_task("ur5e_reach"), reach, noise=0.0, seed=0)
    out = _run_expert_until_an_env_ends(reach, expert)
    ended = int(torch.nonzero(out.terminated | out.truncated)[0])
    assert bool(out.success[ended]) == bool(out.terminated[ended])
    last_obs, seed = out.obs["state"][ended].clone(), reach.episode_info(ended)["seed"]
    flags = (bool(out.terminated[ended]), bool(out.truncated[ended]))
    assert flags == (True, False)  # the expert reached the goal
    # the final observation, not Isaac Lab's already-reset one
    assert float(torch.linalg.norm(last_obs[12:15] - last_obs[15:18])) < 0.03
    for _ in range(2):
        frozen = reach.step_tensors(expert.act_tensors())
        torch.testing.assert_close(frozen.obs["state"][ended], last_obs)
        assert float(frozen.reward[ended]) == 0.0
        assert (bool(frozen.terminated[ended]), bool(frozen.truncated[ended])) == flags
    assert reach.done[ended] and reach.episode_info(ended)["seed"] == seed  # still the finished episode's
    obs = reach.reset_done_tensors()
    assert not reach.done.any()
    # Isaac Lab's own reset drew seed + N, and that episode was stepped while frozen: it starts over with seed + 2N
    assert reach.episode_info(ended)["seed"] == seed + 2 * N
    # a fresh episode: the flange is back near home, far from where the last one ended
    assert float(torch.linalg.norm(obs["state"][ended, 12:15] - last_obs[12:15])) > 0.05
    fresh = reach.step_tensors(torch.zeros(N, 3))
    assert not bool(fresh.terminated[ended] | fresh.truncated[ended])


def test_reset_done_without_frozen_steps_keeps_the_auto_reset_episode(reach):
    reach.reset(seed=40)
    expert = make_expert(_task("ur5e_reach"), reach, noise=0.0, seed=0)
    out = _run_expert_until_an_env_ends(reach, expert)
    ended = int(torch.nonzero(out.terminated | out.truncated)[0])
    seed = reach.episode_info(ended)["seed"]
    reach.reset_done_tensors()
    assert reach.episode_info(ended)["seed"] == seed + N  # Isaac Lab's own reset is used, no seed is skipped


def test_autoreset_reports_final_observations(reach):
    reach.autoreset = True
    try:
        reach.reset(seed=60)
        expert = make_expert(_task("ur5e_reach"), reach, noise=0.0, seed=0)
        for _ in range(200):
            result = reach.step(expert.act(None))
            if result.terminated.any():
                break
        i = int(np.flatnonzero(result.terminated)[0])
        final = result.info["final_obs"]["state"][i]
        assert np.linalg.norm(final[12:15] - final[15:18]) < 0.03  # the episode ended at its goal
        assert np.linalg.norm(result.obs["state"][i, 12:15] - final[12:15]) > 0.05  # and a new one began
        assert not reach.done.any()
        calm = reach.step(np.zeros((N, 3)))
        # only steps where an episode ended carry it (Isaac Lab keeps the last one in its extras)
        assert ("final_obs" in calm.info) == bool((calm.terminated | calm.truncated).any())
    finally:
        reach.autoreset = False


def test_time_limit_truncates(reach):
    reach.reset(seed=80)
    for _ in range(reach.spec.max_episode_steps):
        out = reach.step_tensors(torch.zeros(N, 3))
    assert bool((out.truncated | out.terminated).all())
    assert not bool((out.truncated & out.terminated).any())


def test_reach_expert_succeeds(reach):
    expert = make_expert(_task("ur5e_reach"), reach, noise=0.0, seed=0)
    successes = []
    for batch in range(3):
        reach.reset(seed=100 + batch * N)
        success = torch.zeros(N, dtype=torch.bool)
        while not reach.done.all():
            success |= reach.step_tensors(expert.act_tensors()).success
        successes += success.tolist()
    assert np.mean(successes) >= 0.9
