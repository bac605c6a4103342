"""`robopol data ...` and `robopol bench data` as a user runs them."""

from __future__ import annotations

import numpy as np
import zarr
from conftest import run_cli

from robopol.data.store import EpisodeStore


def test_validate_clean_and_broken_stores(tmp_path, toy_store):
    proc = run_cli("data", "validate", toy_store, cwd=tmp_path, check=True)
    assert "OK, no problems found" in proc.stdout

    broken = tmp_path / "broken.zarr"
    g = zarr.open_group(broken, mode="w")
    obs = np.zeros((9, 2), np.float32)
    obs[6, 1] = np.nan
    g.create_group("data").create_array("obs", shape=obs.shape, dtype=obs.dtype)[...] = obs
    g.create_group("meta").create_array("episode_ends", shape=(3,), dtype=np.int64)[...] = [4, 4, 9]
    proc = run_cli("data", "validate", str(broken), cwd=tmp_path)
    assert proc.returncode == 1
    assert "2 problem(s)" in proc.stdout and "obs" in proc.stdout and "NaN" in proc.stdout
    assert "empty" in proc.stdout  # episode 1 has no steps

    proc = run_cli("train", f"data={broken}", "trainer.steps=2", "trainer.progress=false",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "the episode store has" in proc.stderr and "Traceback" not in proc.stderr


def test_info_prints_tables_and_writes_a_plot(tmp_path, toy_store):
    proc = run_cli("data", "info", toy_store, "--plot", f"out={tmp_path / 'info.png'}", cwd=tmp_path, check=True)
    assert "40" in proc.stdout and "action" in proc.stdout and "goal" in proc.stdout
    assert (tmp_path / "info.png").stat().st_size > 1000


def test_convert_store_copy_round_trip(tmp_path, toy_store):
    dst = tmp_path / "copy.zarr"
    proc = run_cli("data", "convert", toy_store, str(dst), "format=zarr", cwd=tmp_path, check=True)
    assert "40 episodes" in proc.stdout
    a, b = EpisodeStore.open(toy_store), EpisodeStore.open(dst)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys():
        np.testing.assert_array_equal(a.load([key])[key], b.load([key])[key])
    proc = run_cli("data", "convert", toy_store, cwd=tmp_path)
    assert proc.returncode == 2 and "takes SOURCE DESTINATION" in proc.stderr


def test_bench_data_quick_writes_json(tmp_path):
    proc = run_cli("bench", "data", "quick=true", f"out_dir={tmp_path}", cwd=tmp_path, check=True)
    assert "windows" in proc.stdout.lower()
    assert (tmp_path / "data.json").is_file()


def test_replay_reports_zero_divergence_and_writes_video(tmp_path):
    store = tmp_path / "cube.zarr"
    run_cli("collect", "task=cube_single_task1", "episodes=2", f"out={store}", "num_workers=0", cwd=tmp_path,
            check=True)
    proc = run_cli("data", "replay", str(store), f"out={tmp_path / 'videos'}", "episodes=[1]", cwd=tmp_path,
                   check=True)
    assert "1 episodes replayed; largest state divergence 0" in proc.stdout
    assert (tmp_path / "videos" / "episode_1.mp4").stat().st_size > 1000
