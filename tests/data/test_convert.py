"""Converters: OGBench, robomimic, LeRobot v3 (both ways), Minari and zarr stores; bit-exact round trips."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import zarr
import zarr.storage

from robopol.data.convert import (
    convert,
    detect_format,
    export_lerobot,
    read_lerobot,
    read_minari,
    read_ogbench,
    read_robomimic,
)
from robopol.data.store import EpisodeStore
from robopol.data.validate import validate_store
from robopol.errors import MissingExtraError, StoreError

h5py = pytest.importorskip("h5py")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def assert_same(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Bit-exact: same dtype, same shape, same bytes (NaNs included)."""
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), what


# ----------------------------------------------------------------------------------------------- OGBench


def ogbench_arrays(lengths=(5, 7, 4), extra=True) -> dict[str, np.ndarray]:
    """An OGBench raw dataset: rows of all trajectories, terminals = 1 on each trajectory's last row."""
    rng = np.random.default_rng(0)
    t = sum(lengths)
    terminals = np.zeros(t, np.float32)
    terminals[np.cumsum(lengths) - 1] = 1.0
    arrays = {
        "observations": rng.standard_normal((t, 6)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (t, 3)).astype(np.float32),
        "terminals": terminals,
    }
    if extra:
        arrays |= {
            "qpos": rng.standard_normal((t, 4)),
            "qvel": rng.standard_normal((t, 4)),
            "button_states": rng.integers(0, 2, (t, 2)).astype(np.int64),
            "rewards": (rng.uniform(size=t) > 0.7).astype(np.float32) - 1.0,
        }
        arrays["masks"] = (arrays["rewards"] != 0).astype(np.float32)  # ogbench: masks = 1 - success
    return arrays


def test_ogbench_npz_to_store_is_bit_exact(tmp_path):
    arrays = ogbench_arrays()
    src = tmp_path / "cube-single-play-v0.npz"
    np.savez(src, **arrays)
    store = convert(src, tmp_path / "out.zarr")
    assert detect_format(src) == "ogbench"
    np.testing.assert_array_equal(store.episode_ends, [5, 12, 16])
    data = store.load()
    names = {"observations": "obs", "actions": "action", "rewards": "reward", "masks": "mask"}
    for k, v in arrays.items():
        assert_same(data[names.get(k, k)], v, k)
    # Derived true terminals from masks (OGBench's terminals only mark trajectory ends).
    assert_same(data["terminal"], arrays["masks"] == 0, "terminal")
    assert store.episode_meta(0)["source"] == "expert"
    assert store.attrs["converted_from"]["format"] == "ogbench"
    assert validate_store(store) == []

    # ogbench's own loader sees the same rows (compact layout keeps every row).
    from ogbench.utils import load_dataset

    ref = load_dataset(str(src), compact_dataset=True)
    np.testing.assert_array_equal(ref["observations"], data["obs"])
    np.testing.assert_array_equal(ref["valids"], 1.0 - data["terminals"])


def test_ogbench_trailing_steps_and_errors(tmp_path):
    arrays = ogbench_arrays(extra=False)
    arrays["terminals"][-1] = 0.0  # the last trajectory has no terminal row: kept as a final episode
    np.savez(tmp_path / "a.npz", **arrays)
    episodes = read_ogbench(tmp_path / "a.npz", source="policy")
    np.testing.assert_array_equal(episodes.episode_ends, [5, 12, 16])
    assert episodes.meta["source"].tolist() == [1, 1, 1]

    np.savez(tmp_path / "b.npz", observations=arrays["observations"], terminals=arrays["terminals"])
    with pytest.raises(StoreError, match=r"b\.npz: OGBench key 'actions' is missing"):
        read_ogbench(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", **(arrays | {"qpos": np.zeros((3, 2))}))
    with pytest.raises(
        StoreError, match=r"c\.npz: array 'qpos' has shape \(3, 2\) but 'terminals' has 16 steps"
    ):
        read_ogbench(tmp_path / "c.npz")
    with pytest.raises(StoreError, match="no OGBench dataset at"):
        read_ogbench(tmp_path / "missing.npz")
    with pytest.raises(StoreError, match=r"source 'robot' is not one of"):
        read_ogbench(tmp_path / "a.npz", source="robot")


# --------------------------------------------------------------------------------------------- robomimic


def write_robomimic(path, lengths=(4, 6, 3)):
    """A robomimic-style HDF5 file; demo names out of lexical order to test numeric sorting."""
    rng = np.random.default_rng(1)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        data.attrs["total"] = sum(lengths)
        for name, t in zip(["demo_0", "demo_10", "demo_2"], lengths, strict=True):
            g = data.create_group(name)
            g.attrs["num_samples"] = t
            demo = {
                "obs/robot0_eef_pos": rng.standard_normal((t, 3)),
                "obs/agentview_image": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
                "next_obs/robot0_eef_pos": rng.standard_normal((t, 3)),
                "next_obs/agentview_image": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
                "actions": rng.uniform(-1, 1, (t, 7)),
                "rewards": np.r_[np.zeros(t - 1), 1.0],
                "dones": np.r_[np.zeros(t - 1, np.int64), 1],
                "states": rng.standard_normal((t, 10)),
            }
            for k, v in demo.items():
                g.create_dataset(k, data=v)
            demos[name] = demo
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_2"]))
        mask.create_dataset("valid", data=np.array([b"demo_10"]))
    return demos


def test_robomimic_hdf5_to_store_is_bit_exact(tmp_path):
    src = tmp_path / "lift_ph.hdf5"
    demos = write_robomimic(src)
    assert detect_format(src) == "robomimic"
    store = convert(src, tmp_path / "lift.zarr")
    order = ["demo_0", "demo_2", "demo_10"]  # numeric order, as robomimic sorts demos
    np.testing.assert_array_equal(store.episode_lengths, [len(demos[d]["actions"]) for d in order])
    names = {
        "obs/robot0_eef_pos": "robot0_eef_pos",
        "obs/agentview_image": "agentview_image",
        "actions": "action",
        "rewards": "reward",
        "dones": "terminal",
        "states": "sim_state",
    }
    assert sorted(store.keys()) == sorted(names.values())
    data = store.load()
    for k, key in names.items():
        assert_same(data[key], np.concatenate([demos[d][k] for d in order]), k)
    assert store.preset == "image"  # a (T, H, W, C) key picks small time chunks
    meta = store.meta_arrays()
    assert meta["mask_train"].tolist() == [True, True, False]
    assert meta["mask_valid"].tolist() == [False, False, True]
    assert store.episode_meta(0)["source"] == "human"
    assert store.attrs["env_args"] == {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}

    with_next = read_robomimic(src, include_next_obs=True)
    assert_same(
        with_next.data["next_robot0_eef_pos"],
        np.concatenate([demos[d]["next_obs/robot0_eef_pos"] for d in order]),
    )


def test_robomimic_errors(tmp_path):
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(StoreError, match=r"empty\.hdf5: no 'data' group"):
        read_robomimic(tmp_path / "empty.hdf5")
    with h5py.File(tmp_path / "ragged.hdf5", "w") as f:
        g = f.create_group("data/demo_0")
        g.create_dataset("actions", data=np.zeros((4, 2)))
        g.create_dataset("rewards", data=np.zeros(3))
    with pytest.raises(
        StoreError, match=r"data/demo_0/rewards has shape \(3,\) but actions has 4 steps \(episode 0\)"
    ):
        read_robomimic(tmp_path / "ragged.hdf5")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(StoreError, match="is not a readable HDF5 file"):
        read_robomimic(tmp_path / "junk.hdf5")


# ----------------------------------------------------------------------------------------------- LeRobot


def lowdim_store(path, n=5) -> EpisodeStore:
    store = EpisodeStore.create(path)
    rng = np.random.default_rng(2)
    for i in range(n):
        t = 3 + 2 * i
        store.add_episode(
            {
                "state": rng.standard_normal((t, 3)).astype(np.float32),
                "action": rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                "reward": rng.standard_normal(t).astype(np.float32),
                "terminal": np.arange(t) == t - 1,
                "gripper": rng.standard_normal((t, 1)),
                "contacts": rng.integers(0, 5, (t, 4)).astype(np.int16),
                "pose": rng.standard_normal((t, 2, 2)).astype(np.float32),
            },
            source=["expert", "policy", "human"][i % 3],
            success=i % 2 == 0,
            seed=10 + i,
            task_id=[3, 7][i % 2],
            difficulty=0.25 * i,
        )
    return store


def assert_stores_equal(a: EpisodeStore, b: EpisodeStore) -> None:
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    assert a.keys() == b.keys() or sorted(a.keys()) == sorted(b.keys())
    da, db = a.load(), b.load()
    for k in a.keys():
        assert_same(db[k], da[k], k)
    ma, mb = a.meta_arrays(), b.meta_arrays()
    assert sorted(ma) == sorted(mb)
    for f in ma:
        assert_same(mb[f], ma[f], f)


@pytest.mark.parametrize("file_mb", [100.0, 0.0005])  # one data file, or many (episodes never split)
def test_lerobot_export_import_roundtrip(tmp_path, file_mb):
    store = lowdim_store(tmp_path / "s.zarr")
    out = export_lerobot(store, tmp_path / "lerobot", fps=10, robot_type="ur5e", data_file_size_mb=file_mb)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_episodes"] == 5
    assert info["total_frames"] == store.n_steps and info["robot_type"] == "ur5e"
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [3], "names": None}
    assert feats["next.reward"]["shape"] == [1] and feats["next.done"]["dtype"] == "bool"
    assert feats["observation.gripper"]["shape"] == [1] and feats["observation.pose"]["shape"] == [2, 2]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in feats
    files = sorted((out / "data").glob("chunk-*/file-*.parquet"))
    assert (len(files) == 1) == (file_mb == 100.0)
    table = pq.read_table(files[0])
    assert table["timestamp"].type == pa.float32() and table["next.reward"].type == pa.float32()
    np.testing.assert_allclose(table["timestamp"].to_numpy()[:3], [0.0, 0.1, 0.2], rtol=1e-6)
    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert episodes["length"].to_pylist() == store.episode_lengths.tolist()
    assert episodes["tasks"].to_pylist()[:2] == [["task 3"], ["task 7"]]
    for row, (f_idx, start, stop) in enumerate(
        zip(
            episodes["data/file_index"].to_pylist(),
            episodes["dataset_from_index"].to_pylist(),
            episodes["dataset_to_index"].to_pylist(),
            strict=True,
        )
    ):
        ep_rows = pq.read_table(files[f_idx])["episode_index"].to_numpy()
        assert (ep_rows == row).sum() == stop - start  # the whole episode sits in its file
    stats = json.loads((out / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(
        stats["observation.state"]["mean"], store.load()["state"].mean(axis=0), rtol=1e-5
    )
    assert pq.read_table(out / "meta" / "tasks.parquet")["task"].to_pylist() == ["task 3", "task 7"]

    assert detect_format(out) == "lerobot"
    back = convert(out, tmp_path / "back.zarr")
    assert_stores_equal(store, back)
    assert back.attrs["converted_from"]["fps"] == 10

    with pytest.raises(StoreError, match="exists and is not empty: pass overwrite=True"):
        export_lerobot(store, out, fps=10)
    export_lerobot(tmp_path / "s.zarr", out, fps=5, overwrite=True)  # from a location, replacing
    assert json.loads((out / "meta" / "info.json").read_text())["fps"] == 5


def test_export_lerobot_errors(tmp_path):
    store = lowdim_store(tmp_path / "s.zarr", n=1)
    with pytest.raises(StoreError, match="fps must be > 0, got 0"):
        export_lerobot(store, tmp_path / "a", fps=0)
    with pytest.raises(StoreError, match="the store has no episodes to export"):
        export_lerobot(EpisodeStore.create(tmp_path / "empty.zarr"), tmp_path / "b", fps=10)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    with pytest.raises(StoreError, match="is not a LeRobot dataset; refusing to delete it"):
        export_lerobot(store, tmp_path / "mine", fps=10, overwrite=True)
    assert (tmp_path / "mine" / "keep.txt").exists()
    clash = EpisodeStore.create(tmp_path / "clash.zarr")
    clash.add_episode({"state": np.zeros((2, 1)), "observation.state": np.zeros((2, 1))})
    with pytest.raises(
        StoreError,
        match="store key 'observation.state' maps to LeRobot column 'observation.state', "
        "which is already used",
    ):
        export_lerobot(clash, tmp_path / "c", fps=10)


def write_foreign_lerobot(root, features_extra=None, frame_index=None, episode_index=None, version="v3.0"):
    """A LeRobot v3 dataset as LeRobot writes it (no robopol hints): list columns, scalar flags."""
    lengths = [3, 4]
    t = sum(lengths)
    rng = np.random.default_rng(3)
    state = rng.standard_normal((t, 2)).astype(np.float32)
    action = rng.standard_normal((t, 2)).astype(np.float32)
    ep = np.repeat([0, 1], lengths) if episode_index is None else np.asarray(episode_index)
    frames = (
        np.concatenate([np.arange(n) for n in lengths]) if frame_index is None else np.asarray(frame_index)
    )
    table = pa.table(
        {
            "observation.state": pa.array(state.tolist(), type=pa.list_(pa.float32())),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), 2),
            "next.reward": pa.array(rng.standard_normal(t).astype(np.float32)),
            "next.done": pa.array(frames == np.repeat(np.array(lengths) - 1, lengths)),
            "next.success": pa.array([False, False, True, False, False, False, False]),
            "timestamp": pa.array((frames / 10).astype(np.float32)),
            "frame_index": pa.array(frames.astype(np.int64)),
            "episode_index": pa.array(ep.astype(np.int64)),
            "index": pa.array(np.arange(t, dtype=np.int64)),
            "task_index": pa.array(np.repeat([1, 0], lengths).astype(np.int64)),
        }
    )
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data" / "chunk-000" / "file-000.parquet")
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
    } | (features_extra or {})
    info = {"codebase_version": version, "fps": 10, "features": features}
    (root / "meta").mkdir()
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return state, action, table


def test_read_foreign_lerobot_dataset(tmp_path):
    state, action, table = write_foreign_lerobot(tmp_path / "ds")
    episodes = read_lerobot(tmp_path / "ds")
    np.testing.assert_array_equal(episodes.episode_ends, [3, 7])
    assert sorted(episodes.data) == ["action", "next.done", "next.success", "reward", "state"]
    assert_same(episodes.data["state"], state)
    assert_same(episodes.data["action"], action)
    assert_same(episodes.data["reward"], table["next.reward"].to_numpy())  # flags stay per-step scalars
    assert episodes.meta["task_id"].tolist() == [1, 0]
    assert episodes.meta["success"].tolist() == [True, False]


def test_lerobot_rejects_video_and_bad_layouts(tmp_path):
    video = {"observation.images.top": {"dtype": "video", "shape": [96, 96, 3], "names": None}}
    write_foreign_lerobot(tmp_path / "vid", features_extra=video)
    with pytest.raises(
        StoreError, match=r"video columns are not supported yet: \['observation.images.top'\]"
    ):
        convert(tmp_path / "vid", tmp_path / "x.zarr")
    assert "state" in read_lerobot(tmp_path / "vid", skip_video=True).data

    write_foreign_lerobot(tmp_path / "frames", frame_index=[0, 1, 2, 0, 1, 3, 4])
    with pytest.raises(StoreError, match=r"frame_index in episode 1 is 3 at row 5, expected 2"):
        read_lerobot(tmp_path / "frames")
    write_foreign_lerobot(tmp_path / "order", episode_index=[0, 0, 1, 1, 0, 1, 1])
    with pytest.raises(StoreError, match="episode_index goes back from 1 to 0 at row 4"):
        read_lerobot(tmp_path / "order")
    write_foreign_lerobot(tmp_path / "old", version="v2.1")
    with pytest.raises(StoreError, match="codebase_version 'v2.1' is not supported"):
        read_lerobot(tmp_path / "old")
    with pytest.raises(StoreError, match="no LeRobot dataset at"):
        read_lerobot(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------ Minari


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minari_dataset_to_store_is_bit_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(4)
    buffers = []
    for i, t in enumerate([5, 8, 3]):
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=100 + i,
                observations=rng.standard_normal((t + 1, 4)).astype(np.float32),
                actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                rewards=rng.standard_normal(t),
                terminations=np.r_[np.zeros(t - 1, bool), i != 1],
                truncations=np.r_[np.zeros(t - 1, bool), i == 1],
                infos={},
            )
        )
    minari.create_dataset_from_buffers(
        "robopol/pointmass-v0",
        buffers,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
        author="robopol tests",
    )
    root = tmp_path / "minari" / "robopol" / "pointmass-v0"
    assert detect_format(root) == "minari"
    store = convert(root, tmp_path / "m.zarr")
    np.testing.assert_array_equal(store.episode_ends, [5, 13, 16])
    data = store.load()
    assert_same(data["obs"], np.concatenate([b.observations[:-1] for b in buffers]), "obs")
    assert_same(data["action"], np.concatenate([b.actions for b in buffers]), "action")
    assert_same(data["reward"], np.concatenate([np.asarray(b.rewards) for b in buffers]), "reward")
    assert_same(data["terminal"], np.concatenate([b.terminations for b in buffers]), "terminal")
    assert_same(data["truncated"], np.concatenate([b.truncations for b in buffers]), "truncated")
    assert store.meta_arrays()["seed"].tolist() == [100, 101, 102]
    assert store.attrs["converted_from"]["dataset_id"] == "robopol/pointmass-v0"

    # By dataset id under MINARI_DATASETS_PATH, keeping the final observations as next_obs.
    by_id = read_minari("robopol/pointmass-v0", include_next_obs=True)
    assert_same(by_id.data["next_obs"], np.concatenate([b.observations[1:] for b in buffers]), "next_obs")
    with pytest.raises(StoreError, match="no Minari dataset at robopol/missing-v0"):
        read_minari("robopol/missing-v0")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minari_dict_observations(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(5)
    space = gym.spaces.Dict(
        {
            "observation": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
            "desired_goal": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
        }
    )
    obs = {"observation": rng.standard_normal((5, 3)), "desired_goal": rng.standard_normal((5, 2))}
    buffer = EpisodeBuffer(
        id=0,
        observations=obs,
        actions=rng.standard_normal((4, 2)).astype(np.float32),
        rewards=np.zeros(4),
        terminations=np.zeros(4, bool),
        truncations=np.r_[np.zeros(3, bool), True],
        infos={},
    )
    minari.create_dataset_from_buffers(
        "robopol/goal-v0",
        [buffer],
        observation_space=space,
        action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
        author="robopol tests",
    )
    episodes = read_minari(tmp_path / "minari" / "robopol" / "goal-v0" / "data" / "main_data.hdf5")
    assert_same(episodes.data["observation"], obs["observation"][:-1])
    assert_same(episodes.data["desired_goal"], obs["desired_goal"][:-1])
    assert episodes.meta["seed"].tolist() == [-1]


# ----------------------------------------------------------------------------------------- zarr, dispatch


def test_convert_legacy_zip_store_to_v3(tmp_path):
    zs = zarr.storage.ZipStore(tmp_path / "pusht.zarr.zip", mode="w")
    g = zarr.open_group(store=zs, mode="w", zarr_format=2)
    action = np.random.default_rng(6).standard_normal((9, 2)).astype(np.float32)
    g.create_array("data/action", shape=action.shape, dtype=action.dtype)[...] = action
    g.create_array("meta/episode_ends", shape=(2,), dtype=np.int64)[...] = [4, 9]
    zs.close()
    assert detect_format(tmp_path / "pusht.zarr.zip") == "zarr"
    store = convert(tmp_path / "pusht.zarr.zip", tmp_path / "pusht.zarr")
    assert store.zarr_format == 3 and store.has_commit_record
    assert_same(store.load()["action"], action)
    with pytest.raises(StoreError, match="already holds a zarr store"):
        convert(tmp_path / "pusht.zarr.zip", tmp_path / "pusht.zarr")
    with pytest.raises(StoreError, match=r"unknown options \['source'\]"):
        convert(tmp_path / "pusht.zarr.zip", tmp_path / "other.zarr", source="human")


def test_detect_format_and_dispatch_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match=r"cannot tell the dataset format of .*notes\.txt: pass fmt="):
        convert(tmp_path / "notes.txt", tmp_path / "o.zarr")
    with pytest.raises(StoreError, match="does not exist"):
        detect_format(tmp_path / "missing")
    with pytest.raises(StoreError, match="unknown dataset format 'csv'"):
        convert(tmp_path / "notes.txt", tmp_path / "o.zarr", fmt="csv")
    np.savez(tmp_path / "d.npz", **ogbench_arrays(extra=False))
    with pytest.raises(
        StoreError, match="reading .*d.npz as ogbench: .*unexpected keyword argument 'skip_video'"
    ):
        convert(tmp_path / "d.npz", tmp_path / "o.zarr", skip_video=True)
    assert detect_format("memory://somewhere/s.zarr") == "zarr"
    assert detect_format(tmp_path / "x.h5") == "robomimic"


def test_missing_formats_extra_is_named(tmp_path, monkeypatch):
    write_robomimic(tmp_path / "r.hdf5")
    store = lowdim_store(tmp_path / "s.zarr", n=1)
    monkeypatch.setitem(sys.modules, "h5py", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for call in (
        lambda: read_robomimic(tmp_path / "r.hdf5"),
        lambda: read_minari(tmp_path),
        lambda: read_lerobot(tmp_path),
        lambda: export_lerobot(store, tmp_path / "out", fps=10),
    ):
        with pytest.raises(MissingExtraError, match=r"pip install 'robopol\[formats\]'"):
            call()
