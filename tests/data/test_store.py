"""EpisodeStore: layout, round trips, locations, legacy zarr v2 stores, error messages and crash safety."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.storage

from robopol.data.store import (
    PRESETS,
    SOURCES,
    EpisodeIndexError,
    EpisodeStore,
    KeySpec,
    time_chunk,
)
from robopol.data.validate import validate_store
from robopol.errors import StoreError

REPO = Path(__file__).resolve().parents[2]


def make_episode(i: int) -> dict[str, np.ndarray]:
    """Deterministic episode ``i``: the crash tests regenerate it to check what the store holds."""
    rng = np.random.default_rng(1000 + i)
    length = 3 + (7 * i) % 11
    return {
        "obs": rng.standard_normal((length, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
        "reward": rng.standard_normal(length).astype(np.float32),
        "terminal": np.arange(length) == length - 1,
        "img": rng.integers(0, 255, (length, 4, 4, 3), dtype=np.uint8),
    }


def make_small(i: int) -> dict[str, np.ndarray]:
    """A two-key episode: the write-by-write crash tests replay every write, so fewer arrays keep them fast."""
    ep = make_episode(i)
    return {"obs": ep["obs"], "terminal": ep["terminal"]}


def make_meta(i: int) -> dict:
    return {"source": SOURCES[i % 3], "success": i % 2 == 0, "seed": 100 + i, "task_id": i % 4}


def fill(store: EpisodeStore, n: int, start: int = 0, make=make_episode) -> None:
    for i in range(start, start + n):
        store.add_episode(make(i), **make_meta(i))


def assert_episodes_equal(store: EpisodeStore, n: int, make=make_episode) -> None:
    assert len(store) == n
    data = store.load()
    ends = store.episode_ends
    for i in range(n):
        start = ends[i - 1] if i else 0
        for k, v in make(i).items():
            got = data[k][start : ends[i]]
            assert got.dtype == v.dtype, (i, k)
            np.testing.assert_array_equal(got, v, err_msg=f"episode {i} key {k}")


# ------------------------------------------------------------------------------------------ round trips


def test_roundtrip_local(tmp_path):
    path = tmp_path / "demo.zarr"
    store = EpisodeStore.create(path)
    fill(store, 5)
    assert store.add_episode(make_episode(5), **make_meta(5)) == 5

    reader = EpisodeStore.open(path)
    assert reader.mode == "r" and reader.zarr_format == 3 and reader.has_commit_record
    lengths = [len(make_episode(i)["obs"]) for i in range(6)]
    assert reader.n_steps == sum(lengths)
    np.testing.assert_array_equal(reader.episode_lengths, lengths)
    np.testing.assert_array_equal(reader.episode_ends, np.cumsum(lengths))
    np.testing.assert_array_equal(reader.episode_starts, np.cumsum([0, *lengths[:-1]]))
    assert reader.episode_ends.dtype == np.int64
    assert_episodes_equal(reader, 6)
    ep = reader.get_episode(-1)
    np.testing.assert_array_equal(ep["img"], make_episode(5)["img"])
    assert set(reader.get_episode(2, keys=["obs"])) == {"obs"}
    assert reader.episode_bounds(1) == (lengths[0], lengths[0] + lengths[1])
    assert reader.episode_meta(4) == {"source": "policy", "success": True, "seed": 104, "task_id": 0}
    meta = reader.meta_arrays()
    assert meta["source"].dtype == np.int8 and meta["success"].dtype == bool
    np.testing.assert_array_equal(meta["seed"], 100 + np.arange(6))
    np.testing.assert_array_equal(meta["source"], np.arange(6) % 3)
    assert reader.spec() == {
        "obs": KeySpec((5,), np.dtype(np.float32)),
        "action": KeySpec((2,), np.dtype(np.float32)),
        "reward": KeySpec((), np.dtype(np.float32)),
        "terminal": KeySpec((), np.dtype(bool)),
        "img": KeySpec((4, 4, 3), np.dtype(np.uint8)),
    }
    assert reader.keys() == ["obs", "action", "reward", "terminal", "img"]
    assert reader.meta_fields() == ["source", "success", "seed", "task_id"]
    assert "episodes=6" in repr(reader) and str(path) in repr(reader)
    # Iteration (also across several small read blocks) gives the same episodes in order.
    for block in (64 << 20, 100):
        for i, episode in enumerate(reader.episodes(block_bytes=block)):
            for k, v in make_episode(i).items():
                np.testing.assert_array_equal(episode[k], v)
        assert i == 5
    assert sum(1 for _ in reader) == 6
    np.testing.assert_array_equal(reader.read("obs", 2, 5), reader.load(["obs"])["obs"][2:5])


def test_v3_layout_chunks_and_compression(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    fill(store, 2)
    g = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert g.metadata.zarr_format == 3
    assert (tmp_path / "s.zarr" / "zarr.json").is_file()
    for key in ("obs", "img"):
        a = g[f"data/{key}"]
        assert a.chunks[1:] == a.shape[1:], "chunks must span the trailing dims (time-only chunking)"
        (codec,) = a.compressors
        assert type(codec).__name__ == "BloscCodec" and codec.cname.value == "zstd"
    assert g["data/obs"].chunks[0] == time_chunk((5,), np.float32, "lowdim") >= 1000
    assert g["meta/episode_ends"].dtype == np.int64
    assert set(g["meta"].array_keys()) == {
        "episode_ends",
        "episode_source",
        "episode_success",
        "episode_seed",
        "episode_task_id",
    }


def test_presets_pick_time_chunks():
    frame = (96, 96, 3)
    assert time_chunk(frame, np.uint8, "image") <= 4
    assert time_chunk((224, 224, 3), np.uint8, "image") == 1
    assert time_chunk((10,), np.float32, "lowdim") > 1000
    assert time_chunk((10,), np.float32, "image") < time_chunk((10,), np.float32, "lowdim")
    assert time_chunk((), np.float32, "lowdim") == PRESETS["lowdim"].max_time_chunk


def test_image_preset_store_uses_small_time_chunks(tmp_path):
    store = EpisodeStore.create(tmp_path / "img.zarr", preset="image")
    rng = np.random.default_rng(0)
    store.add_episode(
        {"img": rng.integers(0, 255, (6, 96, 96, 3), dtype=np.uint8), "action": np.zeros((6, 2))}
    )
    assert store.group["data/img"].chunks == (2, 96, 96, 3)
    assert EpisodeStore.open(tmp_path / "img.zarr").preset == "image"


def test_safe_dtype_cast_and_extra_meta(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode({"x": np.zeros((3, 2), np.float64)}, level=np.float32(1.5), flag=True)
    store.add_episode({"x": np.ones((2, 2), np.float32)}, level=2, flag=False)  # float32 -> float64 is safe
    assert store.spec()["x"].dtype == np.float64
    assert store.meta_arrays()["level"].dtype == np.float32
    assert store.episode_meta(1) == {
        "source": "expert",
        "success": False,
        "seed": -1,
        "task_id": -1,
        "level": 2.0,
        "flag": False,
    }


def test_drop_last_episode(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    fill(store, 3)
    store.drop_last_episode()
    assert len(store) == 2
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert_episodes_equal(reopened, 2)
    assert len(reopened.meta_arrays()["seed"]) == 2
    assert store.group["data/obs"].shape[0] == reopened.n_steps  # truncated on disk too
    fill(store, 1, start=2)
    assert_episodes_equal(EpisodeStore.open(tmp_path / "s.zarr"), 3)
    for _ in range(3):
        store.drop_last_episode()
    assert len(store) == 0 and store.n_steps == 0
    with pytest.raises(StoreError, match="cannot drop the last episode of an empty store"):
        store.drop_last_episode()
    fill(store, 1)  # the key set survives an empty store
    assert_episodes_equal(store, 1)


def test_refresh_sees_new_episodes(tmp_path):
    writer = EpisodeStore.create(tmp_path / "s.zarr")
    fill(writer, 1)
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    fill(writer, 2, start=1)
    assert len(reader) == 1
    reader.refresh()
    assert_episodes_equal(reader, 3)


def test_attrs(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.set_attrs(task="reach", env_args={"fps": 10})
    fill(store, 1)
    assert EpisodeStore.open(tmp_path / "s.zarr").attrs == {"task": "reach", "env_args": {"fps": 10}}
    with pytest.raises(StoreError, match="reserved for the commit record"):
        store.set_attrs(robopol=1)


def test_memory_url_roundtrip_and_copy_to(tmp_path):
    url = f"memory://robopol-test-{uuid.uuid4().hex}/a.zarr"
    store = EpisodeStore.create(url)
    fill(store, 4)
    store.set_attrs(origin="test")
    same = EpisodeStore.open(url)  # a second handle on the process-wide fsspec memory filesystem
    assert same.location == url
    assert_episodes_equal(same, 4)

    copy = same.copy_to(f"memory://robopol-test-{uuid.uuid4().hex}/b.zarr")
    assert_episodes_equal(copy, 4)
    assert copy.attrs == {"origin": "test"}
    for f, v in same.meta_arrays().items():
        np.testing.assert_array_equal(copy.meta_arrays()[f], v)
        assert copy.meta_arrays()[f].dtype == v.dtype

    # Small blocks: the copy streams in many commits and still matches.
    disk = copy.copy_to(f"file://{tmp_path / 'c.zarr'}", block_bytes=200)
    assert_episodes_equal(EpisodeStore.open(tmp_path / "c.zarr"), 4)
    assert disk.mode == "a"
    with pytest.raises(StoreError, match="copy_to needs a different location than the source store"):
        copy.copy_to(copy.location, overwrite=True)
    v2 = copy.copy_to(tmp_path / "v2.zarr", zarr_format=2)
    assert v2.zarr_format == 2 and (tmp_path / "v2.zarr" / ".zgroup").is_file()
    assert_episodes_equal(EpisodeStore.open(tmp_path / "v2.zarr"), 4)


def test_create_zarr_v2_and_append(tmp_path):
    store = EpisodeStore.create(tmp_path / "v2.zarr", zarr_format=2)
    fill(store, 2)
    fill(EpisodeStore.open(tmp_path / "v2.zarr", mode="a"), 1, start=2)
    reader = EpisodeStore.open(tmp_path / "v2.zarr")
    assert reader.zarr_format == 2
    assert_episodes_equal(reader, 3)
    assert (tmp_path / "v2.zarr" / "data" / "obs" / ".zarray").is_file()
    (codec,) = reader.group["data/obs"].compressors
    assert isinstance(codec, numcodecs.Blosc) and codec.cname == "zstd"


# ------------------------------------------------------------------------------------ diffusion_policy


def write_diffusion_policy_store(store: object, lengths: list[int]) -> dict[str, np.ndarray]:
    """A ReplayBuffer-style zarr v2 store (as diffusion_policy writes it) with numcodecs Blosc codecs."""
    rng = np.random.default_rng(0)
    t = sum(lengths)
    arrays = {
        "action": rng.standard_normal((t, 2)).astype(np.float32),
        "state": rng.standard_normal((t, 5)).astype(np.float32),
        "img": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
    }
    root = zarr.open_group(store=store, mode="w", zarr_format=2)
    data = root.create_group("data")
    lz4 = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    zstd = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    for k, v in arrays.items():
        chunks = (1, *v.shape[1:]) if k == "img" else v.shape
        a = data.create_array(
            k, shape=v.shape, chunks=chunks, dtype=v.dtype, compressors=zstd if k == "img" else lz4
        )
        a[:] = v
    ends = root.create_group("meta").create_array(
        "episode_ends", shape=(len(lengths),), dtype=np.int64, compressors=None
    )
    ends[:] = np.cumsum(lengths)
    return arrays


def check_legacy(store: EpisodeStore, arrays: dict, lengths: list[int]) -> None:
    assert store.zarr_format == 2 and not store.has_commit_record
    assert len(store) == len(lengths)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(lengths))
    assert sorted(store.keys()) == sorted(arrays)
    loaded = store.load()
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v)
    np.testing.assert_array_equal(
        store.get_episode(1)["state"], arrays["state"][lengths[0] : sum(lengths[:2])]
    )
    assert store.meta_arrays() == {}
    assert store.episode_meta(0) == {}


def test_reads_diffusion_policy_v2_directory_and_zip(tmp_path):
    lengths = [4, 6, 3]
    arrays = write_diffusion_policy_store(zarr.storage.LocalStore(tmp_path / "replay.zarr"), lengths)
    zs = zarr.storage.ZipStore(tmp_path / "replay.zarr.zip", mode="w")
    write_diffusion_policy_store(zs, lengths)
    zs.close()
    assert (tmp_path / "replay.zarr" / ".zgroup").is_file()

    check_legacy(EpisodeStore.open(tmp_path / "replay.zarr"), arrays, lengths)
    with EpisodeStore.open(tmp_path / "replay.zarr.zip") as zipped:
        check_legacy(zipped, arrays, lengths)
        assert validate_store(zipped) == []
        # copy_to converts to zarr v3 and adds default per-episode metadata.
        v3 = zipped.copy_to(tmp_path / "v3.zarr")
    assert v3.zarr_format == 3 and v3.has_commit_record and v3.preset == "image"
    np.testing.assert_array_equal(v3.episode_ends, np.cumsum(lengths))
    np.testing.assert_array_equal(v3.load()["img"], arrays["img"])
    assert v3.episode_meta(2) == {"source": "expert", "success": False, "seed": -1, "task_id": -1}

    with pytest.raises(StoreError, match="zip stores are read-only"):
        EpisodeStore.open(tmp_path / "replay.zarr.zip", mode="a")

    # Appending adopts the v2 directory store in place: it stays v2 and readable by diffusion_policy.
    adopted = EpisodeStore.open(tmp_path / "replay.zarr", mode="a")
    assert adopted.has_commit_record and adopted.meta_fields() == ["source", "success", "seed", "task_id"]
    new = {k: v[:2] for k, v in arrays.items()}
    adopted.add_episode(new, source="policy", success=True)
    reader = EpisodeStore.open(tmp_path / "replay.zarr")
    assert reader.zarr_format == 2 and len(reader) == 4
    np.testing.assert_array_equal(reader.get_episode(3)["state"], new["state"])
    assert reader.episode_meta(3)["source"] == "policy"
    assert reader.episode_meta(0) == {"source": "expert", "success": False, "seed": -1, "task_id": -1}
    assert (tmp_path / "replay.zarr" / "meta" / "episode_seed" / ".zarray").is_file()
    assert validate_store(reader) == []


def test_legacy_store_with_inconsistent_lengths_refuses_to_open(tmp_path):
    write_diffusion_policy_store(zarr.storage.LocalStore(tmp_path / "bad.zarr"), [4, 6])
    zarr.open_group(tmp_path / "bad.zarr", mode="a")["data/state"].resize((7, 5))
    with pytest.raises(
        StoreError, match=r"data/state has 7 steps but meta/episode_ends\[-1\] = 10; run validate_store"
    ):
        EpisodeStore.open(tmp_path / "bad.zarr")


# ------------------------------------------------------------------------------------------ errors


def test_location_errors(tmp_path):
    for mode in ("r", "a"):
        with pytest.raises(
            StoreError, match=f"no episode store at {tmp_path / 'missing.zarr'}: the path does not exist"
        ):
            EpisodeStore.open(tmp_path / "missing.zarr", mode=mode)
    assert not (tmp_path / "missing.zarr").exists()  # opening for append never creates anything
    url = f"memory://robopol-missing-{uuid.uuid4().hex}"
    with pytest.raises(StoreError, match=f"no episode store at {url}: no zarr group found there"):
        EpisodeStore.open(url, mode="a")
    assert len(EpisodeStore.create(url)) == 0  # ... so create() still works afterwards
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a zarr directory store"):
        EpisodeStore.open(tmp_path / "file.txt")
    with pytest.raises(StoreError, match="no zip file at"):
        EpisodeStore.open(tmp_path / "missing.zarr.zip")
    with pytest.raises(StoreError, match="zip stores are read-only"):
        EpisodeStore.create(tmp_path / "new.zarr.zip")
    with pytest.raises(StoreError, match="no episode store at memory://"):
        EpisodeStore.open(f"memory://robopol-missing-{uuid.uuid4().hex}")
    with pytest.raises(StoreError, match="not a usable fsspec URL"):
        EpisodeStore.open("nosuchprotocol://bucket/store.zarr")
    with pytest.raises(StoreError, match="must be a path, an fsspec URL or a zarr Store"):
        EpisodeStore.open(42)
    with pytest.raises(StoreError, match="mode must be 'r' or 'a'"):
        EpisodeStore.open(tmp_path / "x.zarr", mode="w")
    with pytest.raises(StoreError, match="unknown store preset 'video'"):
        EpisodeStore.create(tmp_path / "x.zarr", preset="video")
    with pytest.raises(StoreError, match="zarr_format must be 2 or 3"):
        EpisodeStore.create(tmp_path / "x.zarr", zarr_format=4)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_missing_fsspec_backend_is_named():
    with pytest.raises(StoreError, match=r"fsspec backend for 's3://' is not installed.*s3fs"):
        EpisodeStore.open("s3://robopol-bucket/store.zarr")


def test_not_an_episode_store(tmp_path):
    zarr.open_group(tmp_path / "plain.zarr", mode="w").create_group("data")
    with pytest.raises(StoreError, match="has no meta/episode_ends array, so it is not an episode store"):
        EpisodeStore.open(tmp_path / "plain.zarr")
    g = zarr.open_group(tmp_path / "nodata.zarr", mode="w")
    g.create_array("meta/episode_ends", shape=(0,), dtype=np.int64)
    with pytest.raises(StoreError, match="has no data/ group"):
        EpisodeStore.open(tmp_path / "nodata.zarr")


def test_create_refuses_to_clobber(tmp_path):
    path = tmp_path / "s.zarr"
    fill(EpisodeStore.create(path), 2)
    with pytest.raises(StoreError, match="already holds a zarr store: pass overwrite=True"):
        EpisodeStore.create(path)
    assert len(EpisodeStore.create(path, overwrite=True)) == 0
    assert len(EpisodeStore.open(path)) == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(StoreError, match="non-empty directory that is not a zarr store; refusing"):
        EpisodeStore.create(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"


def test_newer_format_version_is_refused(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    rec = dict(store.group.attrs["robopol"], version=99)
    store.group.update_attributes({"robopol": rec})
    with pytest.raises(StoreError, match="newer robopol .*version 99.*upgrade robopol"):
        EpisodeStore.open(tmp_path / "s.zarr")


def test_commit_record_inconsistencies_are_reported(tmp_path):
    def broken(name: str, **changes) -> Path:
        path = tmp_path / name
        store = EpisodeStore.create(path)
        fill(store, 2)
        store.group.update_attributes({"robopol": dict(store.group.attrs["robopol"], **changes)})
        return path

    with pytest.raises(
        StoreError, match="commit record lists 5 episodes but meta/episode_ends has only 2 entries"
    ):
        EpisodeStore.open(broken("a.zarr", n_episodes=5))
    with pytest.raises(StoreError, match=r"commit record says 3 steps but meta/episode_ends\[1\] = \d+"):
        EpisodeStore.open(broken("b.zarr", n_steps=3))
    with pytest.raises(StoreError, match="data/ghost is listed in the commit record but missing"):
        EpisodeStore.open(broken("c.zarr", keys=["obs", "ghost"]))
    with pytest.raises(StoreError, match="meta/episode_rank is listed in the commit record but missing"):
        EpisodeStore.open(broken("d.zarr", meta_fields=["source", "rank"]))
    zarr.create_array(tmp_path / "array.zarr", shape=(3,), dtype=np.int64)
    with pytest.raises(StoreError, match="holds a zarr array, not an episode store group"):
        EpisodeStore.open(tmp_path / "array.zarr")


@pytest.fixture
def store3(tmp_path) -> EpisodeStore:
    store = EpisodeStore.create(tmp_path / "s.zarr")
    fill(store, 3)
    return store


def test_step_array_errors(store3, tmp_path):
    ep = make_episode(3)
    where = f"{tmp_path / 's.zarr'}: episode 3"
    cases = [
        (
            {k: v for k, v in ep.items() if k != "img"} | {"extra": ep["reward"]},
            r"keys do not match the store's keys .*missing \['img'\], unexpected \['extra'\]",
        ),
        (
            ep | {"obs": ep["obs"].astype(np.float64)},
            r"key 'obs': dtype float64 cannot be stored losslessly as the store's float32; convert it with "
            r"\.astype\('float32'\)",
        ),
        (
            ep | {"obs": ep["obs"][:, :4]},
            r"key 'obs': per-step shape \(4,\) does not match the store's \(5,\)",
        ),
        (ep | {"action": ep["action"][:-1]}, r"every step array needs the same length > 0, got lengths"),
        ({k: v[:0] for k, v in ep.items()}, r"same length > 0"),
        ({}, r"no step arrays given"),
        (ep | {"obs": np.array(["a"] * len(ep["obs"]))}, r"key 'obs': dtype <U1 is not storable"),
    ]
    for steps, pattern in cases:
        with pytest.raises(StoreError, match=pattern) as info:
            store3.add_episode(steps)
        assert where in str(info.value)
    assert len(store3) == 3
    assert_episodes_equal(EpisodeStore.open(tmp_path / "s.zarr"), 3)


def test_first_episode_errors(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    with pytest.raises(
        StoreError, match=r"key 'reward': per-step flags hold one scalar per step .* got shape \(3, 2\)"
    ):
        store.add_episode({"reward": np.zeros((3, 2))})
    with pytest.raises(StoreError, match=r"key 'a/b' is not a valid name"):
        store.add_episode({"a/b": np.zeros(3)})
    with pytest.raises(StoreError, match=r"key 'x': needs a leading time axis"):
        store.add_episodes({"x": np.float32(1.0)}, [1])
    with pytest.raises(StoreError, match=r"metadata field name 'bad-name' is invalid"):
        store.add_episode({"x": np.zeros(3)}, **{"bad-name": 1})
    with pytest.raises(StoreError, match=r"extra metadata field 'label' must hold bool, int or float"):
        store.add_episode({"x": np.zeros(3)}, label="left")
    assert len(store) == 0 and store.keys() == []
    store.add_episode({"x": np.zeros(3)})  # the failed attempts left nothing behind
    assert store.keys() == ["x"]


def test_meta_field_errors(store3, tmp_path):
    ep = make_episode(3)
    cases = [
        ({"source": "robot"}, r"episode 3: source 'robot' is not one of \['expert', 'policy', 'human'\]"),
        ({"source": 7}, r"source 7 is not one of"),
        ({"seed": 1.5}, r"metadata field 'seed' must hold integers"),
        ({"success": 2}, r"episode 3: metadata field 'success' = 2 cannot be stored as bool"),
        ({"difficulty": 0.5}, r"metadata fields \['difficulty'\] are not in this store's fields"),
        ({"seed": [1, 2]}, r"metadata field 'seed' must be a scalar"),
    ]
    for meta, pattern in cases:
        with pytest.raises(StoreError, match=pattern):
            store3.add_episode(ep, **meta)
    extra = EpisodeStore.create(tmp_path / "extra.zarr")
    extra.add_episode(ep, difficulty=0.5)
    with pytest.raises(
        StoreError, match=r"metadata field 'difficulty' is missing; .* pass difficulty=\.\.\."
    ):
        extra.add_episode(ep)
    assert len(store3) == 3 and len(extra) == 1


def test_add_episodes_errors(store3):
    ep = make_episode(3)
    with pytest.raises(StoreError, match=r"episode 4 would have length 0"):
        store3.add_episodes(ep, [2, 2, len(ep["obs"])])
    with pytest.raises(StoreError, match=r"episode_ends\[-1\] = 2 but the step arrays have"):
        store3.add_episodes(ep, [2])
    with pytest.raises(StoreError, match="non-empty 1-D integer array"):
        store3.add_episodes(ep, [1.5])
    with pytest.raises(StoreError, match=r"metadata field 'seed' needs one value per episode \(2\)"):
        store3.add_episodes(ep, [1, len(ep["obs"])], {"seed": [1, 2, 3]})
    added = store3.add_episodes(ep, [1, len(ep["obs"])], {"seed": [5, 6], "source": ["human", "policy"]})
    assert added == range(3, 5)
    assert [store3.episode_meta(i)["source"] for i in added] == ["human", "policy"]


def test_read_errors(store3, tmp_path):
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    with pytest.raises(EpisodeIndexError, match=r"episode 3 is out of range: the store has 3 episodes"):
        reader.get_episode(3)
    with pytest.raises(IndexError):
        reader.episode_meta(-4)
    with pytest.raises(StoreError, match="episode index must be an int"):
        reader.get_episode(1.0)
    with pytest.raises(StoreError, match=r"unknown keys \['nope'\]; the store has"):
        reader.load(["nope"])
    with pytest.raises(
        StoreError, match=r"is open read-only: cannot append episodes to it; use EpisodeStore\.open"
    ):
        reader.add_episode(make_episode(3))
    with pytest.raises(StoreError, match="is open read-only: cannot drop episodes"):
        reader.drop_last_episode()
    with pytest.raises(StoreError, match="is open read-only: cannot set attributes on it"):
        reader.set_attrs(note="x")


# ------------------------------------------------------------------------------------------ crash safety


class _Crash(Exception):
    """Stands in for the writer process dying: after it, no write reaches the store."""


def _count_writes(monkeypatch, budget: int | None) -> list[int]:
    """Count LocalStore writes/deletes; after ``budget`` of them every further one fails (a "crash")."""
    count = [0]
    orig_set, orig_delete = zarr.storage.LocalStore.set, zarr.storage.LocalStore.delete

    def gate() -> None:
        count[0] += 1
        if budget is not None and count[0] > budget:
            raise _Crash(f"crash after {budget} writes")

    async def set_(self, key, value):
        gate()
        return await orig_set(self, key, value)

    async def delete(self, key):
        gate()
        return await orig_delete(self, key)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    monkeypatch.setattr(zarr.storage.LocalStore, "delete", delete)
    return count


@pytest.mark.parametrize("committed", [0, 2])
def test_crash_at_every_write_of_an_append(tmp_path, committed):
    """Kill the writer between any two file writes of add_episode: the store stays consistent."""
    base = tmp_path / "base.zarr"
    fill(EpisodeStore.create(base), committed, make=make_small)
    with pytest.MonkeyPatch.context() as mp:
        probe = tmp_path / "probe.zarr"
        shutil.copytree(base, probe)
        count = _count_writes(mp, None)
        fill(EpisodeStore.open(probe, mode="a"), 1, start=committed, make=make_small)
        writes = count[0]
    assert writes >= 10  # data, metadata and ends arrays (shape + chunk each) and the commit record
    for budget in range(writes):
        path = tmp_path / f"crash{budget}.zarr"
        shutil.copytree(base, path)
        store = EpisodeStore.open(path, mode="a")
        with pytest.MonkeyPatch.context() as mp:
            _count_writes(mp, budget)
            with pytest.raises(StoreError, match=f"writing episodes {committed}..{committed} failed"):
                fill(store, 1, start=committed, make=make_small)
        reader = EpisodeStore.open(path)
        assert_episodes_equal(reader, committed, make=make_small)
        assert validate_store(reader) == [], budget
        appender = EpisodeStore.open(path, mode="a")  # repairs the uncommitted tail
        fill(appender, 1, start=committed, make=make_small)
        assert_episodes_equal(EpisodeStore.open(path), committed + 1, make=make_small)


def test_crash_at_every_write_of_drop_last_episode(tmp_path):
    base = tmp_path / "base.zarr"
    fill(EpisodeStore.create(base), 3, make=make_small)
    with pytest.MonkeyPatch.context() as mp:
        shutil.copytree(base, tmp_path / "probe.zarr")
        count = _count_writes(mp, None)
        EpisodeStore.open(tmp_path / "probe.zarr", mode="a").drop_last_episode()
        writes = count[0]
    for budget in range(writes):
        path = tmp_path / f"crash{budget}.zarr"
        shutil.copytree(base, path)
        store = EpisodeStore.open(path, mode="a")
        with pytest.MonkeyPatch.context() as mp:
            _count_writes(mp, budget)
            with pytest.raises(_Crash):
                store.drop_last_episode()
        reader = EpisodeStore.open(path)
        assert len(reader) in (2, 3)  # before or after the commit, never in between
        assert_episodes_equal(reader, len(reader), make=make_small)
        assert validate_store(reader) == []


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import fill
    from robopol.data.store import EpisodeStore

    store = EpisodeStore.open(sys.argv[1], mode="a")
    print("ready", len(store), flush=True)
    while True:
        fill(store, 1, start=len(store))
    """
)


def test_sigkill_mid_append_keeps_store_consistent(tmp_path):
    """A writer process appending in a loop is SIGKILLed at random moments; every committed episode
    survives intact, no partial episode is visible, the store validates clean and appends continue."""
    path = tmp_path / "live.zarr"
    EpisodeStore.create(path)
    script = WRITER.format(tests=str(Path(__file__).parent))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rng = np.random.default_rng(7)
    seen = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("ready"), proc.stderr.read()
            assert int(line.split()[1]) == seen
            time.sleep(float(rng.uniform(0.05, 0.3)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        reader = EpisodeStore.open(path)
        assert len(reader) >= seen
        seen = len(reader)
        assert_episodes_equal(reader, seen)
        for i in range(seen):
            assert reader.episode_meta(i) == make_meta(i)
        assert validate_store(path) == []
    assert seen > 5  # the writers did make progress between kills
    store = EpisodeStore.open(path, mode="a")
    fill(store, 1, start=seen)
    assert_episodes_equal(EpisodeStore.open(path), seen + 1)
    assert not list(path.rglob("*.partial")), "opening for append removes a killed writer's temp files"
