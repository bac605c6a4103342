"""Collection into the episode store (workers, resume, knobs, failures), replay and video, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from omegaconf import OmegaConf
from robopol.sim.replay import replay_store

from robopol.cli.app import compose
from robopol.collect import collect_episodes
from robopol.data.store import EpisodeStore
from robopol.errors import ConfigError


def task(name):
    return compose("collect", [f"task={name}", "out=unused"]).task


def faulty_task(**fault):
    return OmegaConf.create({"name": "point_mass", "_target_": "robopol.sim.toy.make_point_mass_env",
                             "expert": "", "max_episode_steps": 20, **fault})


def store_content(path):
    store = EpisodeStore.open(path)
    n = len(store)
    return [store.get_episode(i) for i in range(n)], [store.episode_meta(i) for i in range(n)]


def test_workers_write_what_one_process_writes_and_it_replays_exactly(tmp_path):
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    ra = collect_episodes(task("pointmaze_umaze"), a, episodes=4, num_workers=2, progress=False)
    rb = collect_episodes(task("pointmaze_umaze"), b, episodes=4, num_workers=0, progress=False)
    assert ra.episodes == rb.episodes == 4 and ra.expert_success_rate == 1.0 and ra.steps == rb.steps
    (eps_a, meta_a), (eps_b, meta_b) = store_content(a), store_content(b)
    assert meta_a == meta_b and [m["seed"] for m in meta_a] == [0, 1, 2, 3]
    for x, y in zip(eps_a, eps_b, strict=True):
        assert set(x) == {"observation", "achieved_goal", "goal", "action", "reward", "terminal", "state"}
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
        assert x["terminal"][-1] and not x["terminal"][:-1].any()  # it ended at the goal
    rows = replay_store(a, task("pointmaze_umaze"))
    assert [r["episode"] for r in rows] == [0, 1, 2, 3]
    assert all(r["max_divergence"] == 0.0 and r["reset_divergence"] == 0.0 for r in rows)
    assert all(r["replayed_success"] == r["success"] for r in rows)
    assert [r["steps"] for r in rows] == [len(e["action"]) for e in eps_a]


def test_ogbench_episodes_replay_exactly_and_render_to_mp4(tmp_path):
    import imageio.v2 as imageio

    path = str(tmp_path / "cube.zarr")
    result = collect_episodes(task("cube_single_task1"), path, episodes=2, num_workers=2, progress=False)
    assert result.expert_success_rate == 1.0 and result.per_task == {1: (2, 1.0)}
    rows = replay_store(path, task("cube_single_task1"), episodes=[1], video=str(tmp_path / "ep.mp4"),
                        width=64, height=64)
    (row,) = rows
    assert row["max_divergence"] == 0.0 and row["replayed_success"] and row["seed"] == 1
    frames = imageio.mimread(row["video"], memtest=False)
    assert len(frames) == row["steps"] + 1 and frames[0].shape == (64, 64, 3)
    # Replaying other actions than the stored ones diverges, and the report says so.
    store = EpisodeStore.open(path)
    episode, meta = store.get_episode(0), store.episode_meta(0)
    episode["action"][10:, 0] = -episode["action"][10:, 0]
    tampered = EpisodeStore.create(str(tmp_path / "tampered.zarr"))
    tampered.set_attrs(task="cube_single_task1")
    tampered.add_episode(episode, **meta)
    (row,) = replay_store(str(tmp_path / "tampered.zarr"), task("cube_single_task1"))
    assert row["reset_divergence"] == 0.0 and row["max_divergence"] > 1e-3


def test_resume_continues_the_seed_sequence_and_knobs_are_recorded(tmp_path):
    path = str(tmp_path / "mix.zarr")
    first = collect_episodes(task("fetch_push"), path, episodes=6, random_fraction=0.5, noise=0.1, seed=0,
                             progress=False)
    second = collect_episodes(task("fetch_push"), path, episodes=3, random_fraction=0.5, noise=0.1, seed=0,
                              progress=False)
    assert first.first_seed == 0 and second.first_seed == 6
    _, meta = store_content(path)
    assert [m["seed"] for m in meta] == list(range(9))
    assert all(m["noise"] == pytest.approx(0.1) for m in meta)
    kinds = {(m["source"], m["random"]) for m in meta}
    assert kinds == {("expert", False), ("policy", True)}  # both kinds at 50%, over 9 episodes
    assert first.expert_episodes + second.expert_episodes == sum(not m["random"] for m in meta)
    # The mixture is a function of the episode seed: a fresh store draws the same kinds.
    again = str(tmp_path / "again.zarr")
    collect_episodes(task("fetch_push"), again, episodes=9, random_fraction=0.5, noise=0.1, progress=False)
    assert [m["random"] for m in store_content(again)[1]] == [m["random"] for m in meta]
    with pytest.raises(ConfigError, match="holds episodes of task 'fetch_push', not 'pointmaze_umaze'"):
        collect_episodes(task("pointmaze_umaze"), path, episodes=1, progress=False)


@pytest.mark.parametrize("fault,workers", [("raise", 0), ("exit", 1)])
def test_episodes_whose_simulation_fails_are_left_out(tmp_path, fault, workers):
    path = str(tmp_path / "faults.zarr")
    result = collect_episodes(faulty_task(fault=fault, fault_seeds=[2]), path, episodes=4,
                              random_fraction=1.0, num_workers=workers, progress=False)
    assert result.episodes == 4 and result.failed == 1
    eps, meta = store_content(path)
    assert [m["seed"] for m in meta] == [0, 1, 3, 4] and all(len(e["action"]) == 20 for e in eps)


def test_collect_refuses_bad_input(tmp_path):
    out = str(tmp_path / "x.zarr")
    with pytest.raises(ConfigError, match="no scripted expert: collect it with random_fraction=1"):
        collect_episodes(task("hopper"), out, episodes=1, progress=False)
    with pytest.raises(ConfigError, match="random_fraction must be in"):
        collect_episodes(task("pointmaze_umaze"), out, episodes=1, random_fraction=2.0, progress=False)
    with pytest.raises(ConfigError, match="episodes must be at least 1"):
        collect_episodes(task("pointmaze_umaze"), out, episodes=0, progress=False)
    collect_episodes(task("pointmaze_umaze"), out, episodes=1, progress=False)
    with pytest.raises(ConfigError, match="replay it with task=pointmaze_umaze"):
        replay_store(out, task("pointmaze_medium"))
    with pytest.raises(ConfigError, match="episode 5 does not exist"):
        replay_store(out, task("pointmaze_umaze"), episodes=[5])


def test_cli_collect_prints_success_and_speed(tmp_path):
    proc = run_cli("collect", "task=pointmaze_umaze", "episodes=3", f"out={tmp_path / 's.zarr'}",
                   "num_workers=2", cwd=tmp_path, check=True)
    out = " ".join(proc.stdout.split())  # rich wraps long lines
    assert "collected 3 episodes" in out and "steps/s with 2 workers" in out
    assert "expert success rate 100.0% over 3 expert episodes" in out
    bad = run_cli("collect", "task=pointmaze_large", f"out={tmp_path / 't.zarr'}", cwd=tmp_path)
    assert bad.returncode == 2 and "pointmaze_large" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not Path(tmp_path / "t.zarr").exists()
