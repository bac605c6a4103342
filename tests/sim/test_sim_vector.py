"""The batched env interface on the numpy point mass: specs, seeds, auto-reset, clipping and failures."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pytest
from robopol.sim import vector
from robopol.sim.toy import PointMassSim
from robopol.sim.vector import InProcessVectorEnv, WorkerVectorEnv, make_vector_env

from robopol.envs import SimulatorEnv
from robopol.errors import ConfigError


def rollout(env, seed, steps, actions=None):
    obs = [env.reset(seed=seed)]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        a = rng.uniform(-1, 1, size=(env.num_envs, 2)) if actions is None else actions
        obs.append(env.step(a).obs)
    return obs


def test_spec_reset_and_step_shapes():
    env = make_vector_env(PointMassSim, num_envs=3, seed=0, backend="inprocess", name="pm",
                          max_episode_steps=7)
    assert isinstance(env, SimulatorEnv)
    assert env.spec.task == "pm" and env.spec.max_episode_steps == 7 and env.spec.goal_key == "goal"
    assert env.spec.action.shape == (2,) and env.spec.action.low == (-1.0, -1.0)
    assert env.spec.action.names == ("vx", "vy")
    obs = env.reset(seed=5)
    assert set(obs) == {"pos", "goal"} and obs["pos"].shape == (3, 2) and obs["pos"].dtype == np.float32
    assert env.episode_seeds.tolist() == [5, 6, 7]
    result = env.step(np.zeros((3, 2)))
    for arr, dtype in ((result.reward, np.float32), (result.terminated, bool), (result.truncated, bool),
                       (result.success, bool)):
        assert arr.shape == (3,) and arr.dtype == dtype
    assert result.info["clipped"].tolist() == [False] * 3


def test_time_limit_truncates_and_finished_envs_are_frozen():
    env = make_vector_env(partial(PointMassSim, max_speed=0.0), num_envs=2, seed=0, backend="inprocess",
                          max_episode_steps=3)
    env.reset(seed=0)
    for t in range(3):
        result = env.step(np.zeros((2, 2)))
        assert result.truncated.tolist() == [t == 2] * 2
    frozen = env.step(np.ones((2, 2)))  # ignored: both episodes are over
    assert frozen.truncated.all() and not frozen.reward.any() and env.done.all()
    np.testing.assert_array_equal(frozen.obs["pos"], result.obs["pos"])
    env.reset()
    assert not env.done.any() and env.episode_seeds.tolist() == [2, 3]  # the sequence continues


def test_autoreset_returns_the_final_observation_and_uses_the_next_seeds():
    env = make_vector_env(partial(PointMassSim, max_speed=0.0), num_envs=2, seed=0, backend="inprocess",
                          autoreset=True, max_episode_steps=2)
    first = env.reset(seed=10)
    env.step(np.zeros((2, 2)))
    result = env.step(np.zeros((2, 2)))
    assert result.truncated.all()
    np.testing.assert_array_equal(result.info["final_obs"]["goal"], first["goal"])
    assert env.episode_seeds.tolist() == [12, 13]
    fresh = PointMassSim().reset(12)
    np.testing.assert_array_equal(result.obs["goal"][0], fresh["goal"])


def test_reset_done_restarts_only_the_envs_that_ended():
    env = make_vector_env(partial(PointMassSim, max_speed=0.0), num_envs=3, seed=0, backend="inprocess",
                          max_episode_steps=2)
    first = env.reset(seed=10)
    env.step(np.zeros((3, 2)))
    assert env.reset_done()["goal"].tolist() == first["goal"].tolist()  # nothing ended: nothing restarts
    env.step(np.zeros((3, 2)))
    assert env.done.all() and env.episode_seeds.tolist() == [10, 11, 12]
    restarted = env.reset_done()
    assert not env.done.any() and env.episode_seeds.tolist() == [13, 14, 15]
    np.testing.assert_array_equal(restarted["goal"][0], PointMassSim().reset(13)["goal"])
    assert not env.step(np.zeros((3, 2))).truncated.any()  # new episodes, new time limits


def test_toy_env_freezes_ended_envs_until_reset_done():
    from robopol.sim.toy import PointReachEnv

    env = PointReachEnv(num_envs=2, seed=0, max_episode_steps=2)
    env.reset(seed=0)
    env.step(np.zeros((2, 2)))
    ended = env.step(np.ones((2, 2)))
    assert ended.truncated.all() or ended.terminated.any()
    frozen = env.step(np.ones((2, 2)))  # ended envs do not move
    np.testing.assert_array_equal(frozen.obs["pos"], ended.obs["pos"])
    restarted = env.reset_done()
    assert not (restarted["pos"] == ended.obs["pos"]).all()
    assert not env.step(np.zeros((2, 2))).truncated.any()


@pytest.mark.parametrize("backend", ["inprocess", "workers"])
def test_same_seed_same_rollout(backend):
    env = make_vector_env(PointMassSim, num_envs=2, seed=0, backend=backend)
    try:
        a, b = rollout(env, 3, 6), rollout(env, 3, 6)
        c = rollout(env, 4, 6)
    finally:
        env.close()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["pos"], y["pos"])
    assert not np.array_equal(a[0]["goal"], c[0]["goal"])
    # Env 1 of seed 3 and env 0 of seed 4 run the same episode seed: the back end adds nothing of its own.
    np.testing.assert_array_equal(a[0]["goal"][1], c[0]["goal"][0])


def test_bad_actions_are_refused_and_out_of_bounds_actions_are_clipped_and_counted(caplog):
    env = make_vector_env(PointMassSim, num_envs=2, seed=0, backend="inprocess", name="pm")
    with pytest.raises(ConfigError, match="call reset"):
        env.step(np.zeros((2, 2)))
    env.reset(seed=0)
    with pytest.raises(ConfigError, match=r"task 'pm': actions must have shape \(2, 2\).*got \(2, 3\)"):
        env.step(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"NaN or inf for env 1 \(seed 1\)"):
        env.step(np.array([[0.0, 0.0], [np.nan, 0.0]]))
    pos = env.step(np.zeros((2, 2))).obs["pos"]
    with caplog.at_level(logging.WARNING, logger="robopol.sim"):
        result = env.step(np.array([[5.0, 0.0], [0.5, 0.0]]))
    assert result.info["clipped"].tolist() == [True, False]
    assert env.clipped_actions == 1 and env.clipped_per_env.tolist() == [1, 0]
    assert "clipped" in caplog.text
    # The clipped action moved the point by exactly one full-scale step.
    assert result.obs["pos"][0, 0] == pytest.approx(min(1.0, pos[0, 0] + 0.1), abs=1e-6)


@pytest.mark.parametrize("backend,fault", [("inprocess", "raise"), ("inprocess", "nan"), ("workers", "raise"),
                                           ("workers", "nan"), ("workers", "exit")])
def test_a_failing_env_is_reported_and_reset_alone(backend, fault, caplog):
    factory = partial(PointMassSim, fault=fault, fault_step=2, fault_seeds=[101])
    env = make_vector_env(factory, num_envs=3, seed=0, backend=backend, autoreset=True)
    assert isinstance(env, WorkerVectorEnv if backend == "workers" else InProcessVectorEnv)
    try:
        env.reset(seed=100)
        env.step(np.zeros((3, 2)))
        with caplog.at_level(logging.WARNING, logger="robopol.sim"):
            result = env.step(np.zeros((3, 2)))
        (error,) = result.info["errors"]
        assert error["env"] == 1 and error["seed"] == 101 and error["step"] == 2
        assert "env 1 (episode seed 101) failed at step 2" in caplog.text
        assert result.truncated.tolist() == [False, True, False] and not result.terminated[1]
        assert np.isfinite(result.obs["pos"]).all()
        assert env.episode_seeds.tolist() == [100, 104, 102]  # only env 1 moved on to its next seed
        for _ in range(3):  # the batch keeps running, the failed env included
            result = env.step(np.zeros((3, 2)))
            assert "errors" not in result.info
        assert env.failures == [error]
    finally:
        env.close()


def test_grouped_workers_step_exactly_like_one_process():
    # 5 envs over workers of 2, 2 and 1 envs, with auto-reset across several episodes.
    def run(backend, **kw):
        env = make_vector_env(partial(PointMassSim, max_speed=0.3), num_envs=5, seed=0, backend=backend,
                              autoreset=True, max_episode_steps=7, **kw)
        rng, out = np.random.default_rng(1), [env.reset(seed=10)]
        try:
            for _ in range(20):
                r = env.step(rng.uniform(-1, 1, size=(5, 2)))
                out.append({**r.obs, "reward": r.reward, "ended": r.terminated | r.truncated, "ok": r.success})
            if backend == "workers":
                assert len(env._members) == 3
            return out, env.episode_seeds.copy()
        finally:
            env.close()

    (single, seeds_single), (grouped, seeds_grouped) = run("inprocess"), run("workers", envs_per_worker=2)
    for a, b in zip(single, grouped, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(seeds_single, seeds_grouped)
    assert (seeds_single >= 15).all()  # every env moved past its first episode


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_a_failing_env_does_not_disturb_the_envs_sharing_its_worker(fault):
    factory = partial(PointMassSim, fault=fault, fault_step=2, fault_seeds=[101])
    env = make_vector_env(factory, num_envs=3, seed=0, backend="workers", autoreset=True, envs_per_worker=2)
    clean = make_vector_env(PointMassSim, num_envs=3, seed=0, backend="inprocess", autoreset=True)
    try:
        env.reset(seed=100), clean.reset(seed=100)
        for _ in range(2):
            result, reference = env.step(np.full((3, 2), 0.3)), clean.step(np.full((3, 2), 0.3))
        assert [e["env"] for e in result.info["errors"]] == [1]
        assert env.episode_seeds.tolist() == [100, 104, 102]
        np.testing.assert_array_equal(result.obs["pos"][[0, 2]], reference.obs["pos"][[0, 2]])
    finally:
        env.close(), clean.close()


def test_a_dying_worker_takes_its_envs_with_it_and_each_is_reset():
    factory = partial(PointMassSim, fault="exit", fault_step=2, fault_seeds=[101])
    env = make_vector_env(factory, num_envs=3, seed=0, backend="workers", autoreset=True, envs_per_worker=2)
    try:
        env.reset(seed=100)
        env.step(np.zeros((3, 2)))
        result = env.step(np.zeros((3, 2)))
        # Env 1's simulator killed worker 0, which also ran env 0; env 2 (worker 1) is untouched.
        assert [e["env"] for e in result.info["errors"]] == [0, 1]
        assert all("worker process died" in e["error"] for e in result.info["errors"])
        assert result.truncated.tolist() == [True, True, False]
        assert env.episode_seeds.tolist() == [103, 104, 102]
        for _ in range(3):
            assert "errors" not in env.step(np.zeros((3, 2))).info
    finally:
        env.close()


def test_envs_of_a_worker_that_died_outside_a_step_fail_at_their_next_step():
    env = make_vector_env(PointMassSim, num_envs=2, seed=0, backend="workers", autoreset=True, envs_per_worker=2)
    try:
        env.reset(seed=0)
        env.step(np.zeros((2, 2)))
        env._procs[0].kill()
        env._procs[0].join()
        with pytest.raises(RuntimeError, match="env 0: get_state failed: worker process (died|is gone)"):
            env.get_state(0)
        with pytest.raises(RuntimeError, match="env 1: get_state failed: its worker process died while "
                                               "serving another env"):
            env.get_state(1)
        # Both were rebuilt but never reset: they must not step as if alive.
        result = env.step(np.zeros((2, 2)))
        assert [e["env"] for e in result.info["errors"]] == [0, 1]
        assert all("died while serving another env" in e["error"] for e in result.info["errors"])
        assert env.episode_seeds.tolist() == [2, 3]
        assert "errors" not in env.step(np.zeros((2, 2))).info
    finally:
        env.close()


def test_worker_pool_reports_an_env_that_cannot_be_built():
    with pytest.raises(ConfigError, match="cannot build the env in worker 0.*fault must be"):
        make_vector_env(partial(PointMassSim, fault="melt"), num_envs=2, backend="workers")


def test_backend_and_size_are_checked():
    with pytest.raises(ConfigError, match="backend must be one of"):
        make_vector_env(PointMassSim, num_envs=1, backend="gpu")
    with pytest.raises(ConfigError, match="num_envs must be at least 1"):
        make_vector_env(PointMassSim, num_envs=0)
    with pytest.raises(ConfigError, match=r"envs_per_worker must be >= 0 \(0: spread the envs over the CPUs\), got -1"):
        make_vector_env(PointMassSim, num_envs=2, backend="workers", envs_per_worker=-1)
    with pytest.raises(ConfigError, match="envs_per_worker must be between 1 and 255, got 256"):
        WorkerVectorEnv(PointMassSim, num_envs=2, envs_per_worker=256)


@pytest.mark.parametrize("cpus,num_envs,sizes", [(2, 5, [3, 2]), (2, 2, [1, 1]), (4, 10, [3, 3, 3, 1]),
                                                 (8, 3, [1, 1, 1])])
def test_envs_per_worker_zero_spreads_the_envs_over_the_cpus(monkeypatch, cpus, num_envs, sizes):
    monkeypatch.setattr(vector, "usable_cpus", lambda: cpus)
    env = make_vector_env(PointMassSim, num_envs=num_envs, backend="workers", envs_per_worker=0)
    try:
        assert [len(m) for m in env._members] == sizes
    finally:
        env.close()
