"""Episode stores at fsspec URLs: round trips, the local cache, and shards collected concurrently then merged."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from robopol.cli.app import compose
from robopol.collect import collect_episodes
from robopol.data.remote import cached_store, expand_locations, merge_stores
from robopol.data.store import EpisodeStore
from robopol.data.validate import validate_store
from robopol.errors import StoreError
from robopol.train.run import read_metrics
from robopol.train.trainer import train


def toy_task():
    return compose("collect", ["out=unused"]).task


def test_collect_train_and_read_back_through_a_memory_url(tmp_path):
    url = "memory://robopol-test/roundtrip/demos.zarr"
    collect_episodes(toy_task(), url, episodes=12, seed=0, progress=False, num_workers=0)
    remote = EpisodeStore.open(url)
    assert len(remote) == 12
    local = remote.copy_to(str(tmp_path / "copy.zarr"))
    for key in remote.keys():
        np.testing.assert_array_equal(local.load([key])[key], remote.load([key])[key])
    np.testing.assert_array_equal(local.meta_arrays()["seed"], np.arange(12))
    cfg = compose("train", [f"data={url}", "trainer.steps=5", "trainer.batch_size=8", "trainer.eval_episodes=0",
                            "trainer.progress=false", "policy.hidden_dims=[16]"])
    train(cfg, tmp_path / "run")
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")][-1] == 5


def test_the_cache_copies_a_remote_store_once_and_again_when_it_grows(tmp_path):
    url = "memory://robopol-test/cache/demos.zarr"
    collect_episodes(toy_task(), url, episodes=4, seed=0, progress=False, num_workers=0)
    cache = tmp_path / "cache"
    path = cached_store(url, str(cache))
    assert path.startswith(str(cache)) and len(EpisodeStore.open(path)) == 4
    stamp = os.stat(os.path.join(path, "zarr.json")).st_mtime_ns
    assert cached_store(url, str(cache)) == path
    assert os.stat(os.path.join(path, "zarr.json")).st_mtime_ns == stamp  # not copied again
    collect_episodes(toy_task(), url, episodes=2, seed=0, progress=False, num_workers=0)  # appends
    assert len(EpisodeStore.open(cached_store(url, str(cache)))) == 6
    assert {p.name for p in cache.iterdir()} == {os.path.basename(path), os.path.basename(path)[:-5] + ".url"}
    assert cached_store(str(tmp_path / "local.zarr"), str(cache)) == str(tmp_path / "local.zarr")  # local: as is


def test_concurrent_collectors_write_shards_that_merge_into_one_store(tmp_path):
    env = {**os.environ, "MUJOCO_GL": "egl"}
    shards = [f"local://{tmp_path}/shards/shard-{i}.zarr" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "robopol", "collect", "task=point_reach", "episodes=6",
                               f"out={shard}", f"seed={1000 * i}", "num_workers=0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, shard in enumerate(shards)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    merged_path = str(tmp_path / "merged.zarr")
    proc = subprocess.run([sys.executable, "-m", "robopol", "data", "merge", f"local://{tmp_path}/shards/shard-*.zarr",
                           merged_path], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "merged 2 store(s)" in proc.stdout
    merged = EpisodeStore.open(merged_path)
    assert validate_store(merged_path) == []
    assert len(merged) == 12
    np.testing.assert_array_equal(merged.meta_arrays()["seed"], [*range(6), *range(1000, 1006)])
    parts = [EpisodeStore.open(s) for s in shards]
    for key in merged.keys():
        np.testing.assert_array_equal(merged.load([key])[key], np.concatenate([p.load([key])[key] for p in parts]))
    assert merged.episode_meta(7)["source"] == "expert"
    assert merged.attrs["merged_from"] == expand_locations([f"local://{tmp_path}/shards/shard-*.zarr"])


def test_merge_refuses_duplicate_episodes_mismatched_keys_and_missing_shards(tmp_path):
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    collect_episodes(toy_task(), a, episodes=2, seed=0, progress=False, num_workers=0)
    collect_episodes(toy_task(), b, episodes=2, seed=1, progress=False, num_workers=0)
    with pytest.raises(StoreError, match="both hold the episode of task 0 with seed 1: collect each shard with its "
                                         "own seed range"):
        merge_stores([a, b], str(tmp_path / "out.zarr"))
    other = EpisodeStore.create(str(tmp_path / "other.zarr"))
    other.add_episode({"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(StoreError, match="other.zarr does not match .*a.zarr: keys, per-step shapes or dtypes"):
        merge_stores([a, str(tmp_path / "other.zarr")], str(tmp_path / "out.zarr"))
    with pytest.raises(StoreError, match="is also a source"):
        merge_stores([a, b], a)
    with pytest.raises(StoreError, match="no store matches"):
        expand_locations([str(tmp_path / "none-*.zarr")])
