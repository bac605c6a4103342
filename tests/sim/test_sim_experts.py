"""Scripted experts: they solve short tasks, their knobs act, their planners match hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
from robopol.sim.experts.maze import MazeGraph
from robopol.sim.experts.ogbench import solve_lights_out

from robopol.cli.app import compose
from robopol.errors import ConfigError
from robopol.tasks import make_env, make_expert


def build(name, backend="inprocess", num_envs=1, **kw):
    cfg = compose("collect", [f"task={name}", "out=unused", f"task.backend={backend}"]).task
    env = make_env(cfg, num_envs=num_envs, seed=0)
    return env, make_expert(cfg, env, seed=0, **{"noise": 0.0, **kw})


def run_episode(env, expert, seed):
    obs = env.reset(seed=seed)
    expert.reset(seed=0)
    actions = []
    while True:
        actions.append(expert.act(obs))
        result = env.step(actions[-1])
        obs = result.obs
        if (result.terminated | result.truncated).all():
            return bool(result.success.all()), np.stack(actions)


@pytest.mark.parametrize("name,seeds", [("cube_single_task1", [0]), ("pointmaze_umaze", [0, 1, 2]),
                                        ("fetch_push", [0, 1, 2]), ("fetch_pick_and_place", [0, 1])])
def test_expert_solves_the_task(name, seeds):
    env, expert = build(name)
    try:
        assert all(run_episode(env, expert, s)[0] for s in seeds)
    finally:
        env.close()


def test_expert_drives_a_batch_with_one_controller_per_env():
    env, expert = build("pointmaze_umaze", num_envs=3)
    try:
        success, actions = run_episode(env, expert, 10)
        assert success and actions.shape[1:] == (3, 2)
    finally:
        env.close()


def test_noise_knob_is_seeded_and_bounded():
    env, clean = build("pointmaze_umaze")
    try:
        cfg = compose("collect", ["task=pointmaze_umaze", "out=x"]).task
        noisy = make_expert(cfg, env, noise=0.5, seed=0)
        _, a0 = run_episode(env, clean, 4)
        _, a1 = run_episode(env, noisy, 4)
        _, a2 = run_episode(env, noisy, 4)
        n = min(len(a0), len(a1))
        assert np.abs(a1[:n] - a0[:n]).mean() > 0.1
        np.testing.assert_array_equal(a1, a2)  # same seeds, same noise
        assert np.abs(a1).max() <= 1.0
        assert env.clipped_actions == 0  # the expert clips its own noisy actions
    finally:
        env.close()


def test_play_variant_chases_other_goals():
    env, expert = build("pointmaze_umaze", variant="play")
    env.autoreset = True  # passing through the task's goal ends an episode; play goes on in the next one
    try:
        obs = env.reset(seed=0)
        expert.reset(seed=0)
        targets = set()
        for _ in range(600):
            obs = env.step(expert.act(obs)).obs
            targets.add(tuple(np.round(expert.controllers[0].target, 3)))
            if len(targets) == 3:
                break
        assert len(targets) == 3  # reached random sub-goals and moved on to new ones
    finally:
        env.close()


def test_expert_variants_and_backend_are_checked():
    cfg = compose("collect", ["task=pointmaze_umaze", "out=x", "task.backend=inprocess"]).task
    env = make_env(cfg, num_envs=1, seed=0)
    with pytest.raises(ConfigError, match="has no expert variant 'teleport'.*'waypoint', 'play'"):
        make_expert(cfg, env, noise=0.0, seed=0, variant="teleport")
    with pytest.raises(ConfigError, match="noise must be >= 0"):
        make_expert(cfg, env, noise=-1.0, seed=0)
    toy = compose("collect", ["out=x"]).task
    with pytest.raises(ConfigError, match="has no variants"):
        make_expert(toy, make_env(toy, 1, 0), noise=0.0, seed=0, variant="play")
    with pytest.raises(ConfigError, match="no scripted expert"):
        locomotion = compose("collect", ["task=hopper", "out=x"]).task
        make_expert(locomotion, env, noise=0.0, seed=0)
    workers = make_env(compose("collect", ["task=pointmaze_umaze", "out=x", "task.backend=workers"]).task,
                       num_envs=1, seed=0)
    try:
        with pytest.raises(ConfigError, match="needs the in-process back end"):
            make_expert(cfg, workers, noise=0.0, seed=0)
    finally:
        workers.close()


def toggled(presses, rows, cols):
    """Lights-out by hand: each press flips its button and its 4-neighbours."""
    state = np.zeros((rows, cols), dtype=np.uint8)
    for b in np.flatnonzero(presses):
        r, c = divmod(int(b), cols)
        for dr, dc in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
            if 0 <= r + dr < rows and 0 <= c + dc < cols:
                state[r + dr, c + dc] ^= 1
    return state.ravel()


def test_lights_out_solution_toggles_exactly_the_needed_buttons():
    rng = np.random.default_rng(0)
    for _ in range(20):  # 3x3 (OGBench's puzzle-3x3): every pattern has a solution
        need = rng.integers(0, 2, 9).astype(np.uint8)
        np.testing.assert_array_equal(toggled(solve_lights_out(need, 3, 3), 3, 3), need)
    np.testing.assert_array_equal(solve_lights_out(np.array([0, 1, 0, 1, 1, 1, 0, 1, 0]), 3, 3),
                                  [0, 0, 0, 0, 1, 0, 0, 0, 0])  # the plus shape is the centre press
    # 4x4 is singular: reachable patterns are solved, most random ones are reported unsolvable.
    for _ in range(10):
        need = toggled(rng.integers(0, 2, 16), 4, 4)
        np.testing.assert_array_equal(toggled(solve_lights_out(need, 4, 4), 4, 4), need)
    assert sum(solve_lights_out(rng.integers(0, 2, 16), 4, 4) is None for _ in range(40)) > 20


def test_maze_graph_shortest_path_and_aim_point():
    class UMaze:  # gymnasium-robotics' U maze, scaling 1, centred at the origin
        maze_map = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
        maze_size_scaling = 1.0

        def cell_rowcol_to_xy(self, rc):
            return np.array([rc[1] + 0.5 - 2.5, 2.5 - (rc[0] + 0.5)])

        def cell_xy_to_rowcol(self, xy):
            return np.array([int(np.floor(2.5 - xy[1])), int(np.floor(xy[0] + 2.5))])

    graph = MazeGraph(UMaze())
    assert graph.path((1, 1), (3, 1)) == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
    assert graph.path((1, 1), (1, 1)) == [(1, 1)]
    start, goal = graph.centre((1, 1)), graph.centre((3, 1))
    np.testing.assert_allclose(graph.aim(start, goal, 0.5), start + [0.5, 0.0])  # along the top corridor
    np.testing.assert_allclose(graph.aim(graph.centre((1, 3)), goal, 0.5), graph.centre((1, 3)) + [0.0, -0.5])
    np.testing.assert_allclose(graph.aim(graph.centre((3, 2)), goal, 5.0), goal)
