"""Converters between episode stores and other dataset formats.

Readers return :class:`EpisodeArrays` (episodes concatenated on axis 0 plus ``episode_ends``) and keep
every array bit-exact (same dtype, same values); :func:`convert` writes them into an episode store.

Key names in the store:

==============  ==========================================================================================
OGBench .npz    observations->obs, actions->action, rewards->reward, masks->mask, next_observations->next_obs;
                terminals and other per-step arrays (qpos, qvel, button_states...) keep their names.
                Episodes end at ``terminals == 1``. Rows are stored exactly as in the file, so each
                episode's last row holds the final observation and OGBench's padding action. With
                ``masks``, a derived bool ``terminal = masks == 0`` marks true terminals (no bootstrap).
                OGBench's ``terminals`` only marks trajectory ends (time limits), so it is not ``terminal``.
robomimic       obs/<k>-><k>, actions->action, rewards->reward, dones->terminal, states->sim_state,
                next_obs/<k>->next_<k> (with ``include_next_obs``); filter keys in ``mask/`` become
                boolean per-episode fields ``mask_<name>``; ``data.attrs['env_args']`` goes to the attrs.
LeRobot v3      observation.<x>-><x>, action->action, next.reward->reward, others (next.done, next.success)
                keep their names: next.done also marks time limits, so it is not ``terminal``. The
                bookkeeping columns episode_index/frame_index/timestamp/index are dropped, task_index becomes
                the per-episode ``task_id``. Only low-dimensional columns: video/image columns are refused.
                Datasets written by :func:`export_lerobot` carry their exact store keys and step shapes.
Minari (HDF5)   observations->obs (dict observations: one key per entry, nested names joined by '.'),
                actions->action, rewards->reward, terminations->terminal, truncations->truncated; the
                final observation of each episode is kept only as ``next_obs`` (``include_next_obs``).
==============  ==========================================================================================
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robopol.data.store import SOURCES, STEP_FLAGS, EpisodeStore
from robopol.errors import StoreError, require_extra

__all__ = [
    "FORMATS",
    "EpisodeArrays",
    "convert",
    "detect_format",
    "export_lerobot",
    "read_lerobot",
    "read_minari",
    "read_ogbench",
    "read_robomimic",
]

FORMATS = ("ogbench", "robomimic", "lerobot", "minari", "zarr")

OGBENCH_KEYS = {
    "observations": "obs",
    "actions": "action",
    "rewards": "reward",
    "masks": "mask",
    "next_observations": "next_obs",
}
ROBOMIMIC_KEYS = {"actions": "action", "rewards": "reward", "dones": "terminal", "states": "sim_state"}
MINARI_KEYS = {"rewards": "reward", "terminations": "terminal", "truncations": "truncated"}
# LeRobot columns with a fixed meaning in the store; other observation.<x> columns map to <x>.
LEROBOT_TO_STORE = {"action": "action", "next.reward": "reward"}
LEROBOT_BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_RESERVED = {"action", "reward", "terminal", "terminals", "truncated", "mask", "sim_state", "intervention"}


@dataclass
class EpisodeArrays:
    """Episodes read from a foreign format, in the store's layout."""

    data: dict[str, np.ndarray]
    """Per-step arrays, all episodes concatenated on axis 0."""
    episode_ends: np.ndarray
    """Cumulative episode ends (int64)."""
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    """One value per episode per metadata field (source, success, seed, task_id, extras)."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Provenance written to the store's root attributes (JSON-serialisable)."""

    def __len__(self) -> int:
        return len(self.episode_ends)


def _source_codes(source: str, n: int, where: str) -> np.ndarray:
    if source not in SOURCES:
        raise StoreError(f"{where}: source {source!r} is not one of {list(SOURCES)}")
    return np.full(n, SOURCES.index(source), dtype=np.int8)


def _ends_from_lengths(lengths: list[int]) -> np.ndarray:
    return np.cumsum(np.asarray(lengths, dtype=np.int64))


# ----------------------------------------------------------------------------------------------- OGBench


def read_ogbench(path: str | os.PathLike, source: str = "expert") -> EpisodeArrays:
    """Read an OGBench ``.npz`` dataset (ogbench's raw file, before ``load_dataset`` reshapes it)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no OGBench dataset at {path}: expected a .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not a readable .npz file ({exc})") from exc
    for k in ("observations", "actions", "terminals"):
        if k not in raw:
            raise StoreError(
                f"{path}: OGBench key {k!r} is missing (found {sorted(raw)}); is this an OGBench dataset?"
            )
    t = len(raw["terminals"])
    data: dict[str, np.ndarray] = {}
    for k, v in raw.items():
        if v.ndim == 0 or len(v) != t:
            raise StoreError(
                f"{path}: array {k!r} has shape {v.shape} but 'terminals' has {t} steps; every array must be per-step"
            )
        if v.dtype.kind not in "biuf":
            raise StoreError(
                f"{path}: array {k!r} has dtype {v.dtype}; only numeric per-step arrays are supported"
            )
        data[OGBENCH_KEYS.get(k, k)] = v
    if "mask" in data and "terminal" not in data:
        data["terminal"] = data["mask"].reshape(t, -1)[:, 0] == 0
    if t == 0:
        raise StoreError(f"{path}: the dataset has no steps")
    ends = np.flatnonzero(raw["terminals"].reshape(t, -1)[:, 0] > 0) + 1
    if len(ends) == 0 or ends[-1] != t:
        # Steps after the last terminal form a final, unterminated episode; keeping it keeps every row.
        ends = np.append(ends, t)
    ends = ends.astype(np.int64)
    attrs = {
        "converted_from": {
            "format": "ogbench",
            "path": str(path),
            "keys": {k: OGBENCH_KEYS.get(k, k) for k in raw},
        }
    }
    return EpisodeArrays(data, ends, {"source": _source_codes(source, len(ends), str(path))}, attrs)


# --------------------------------------------------------------------------------------------- robomimic


def _demo_sort_key(name: str) -> tuple[int, str]:
    suffix = name[len("demo_") :]
    return (int(suffix), name) if suffix.isdigit() else (1 << 62, name)


def read_robomimic(
    path: str | os.PathLike, source: str = "human", include_next_obs: bool = False
) -> EpisodeArrays:
    """Read a robomimic HDF5 file: ``data/demo_<i>/{obs/<k>, actions, rewards, dones, states}``."""
    h5py = require_extra("h5py", "formats", "reading robomimic HDF5 files")
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no robomimic file at {path}: expected an .hdf5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path} is not a readable HDF5 file ({exc})") from exc
    with f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise StoreError(f"{path}: no 'data' group; robomimic files hold data/demo_<i> groups")
        demos = sorted((k for k in f["data"] if k.startswith("demo_")), key=_demo_sort_key)
        if not demos:
            raise StoreError(f"{path}: data/ holds no demo_<i> groups")
        parts: dict[str, list[np.ndarray]] = {}
        names: dict[str, str] = {}
        lengths: list[int] = []
        for d, demo in enumerate(demos):
            g = f["data"][demo]
            if "actions" not in g:
                raise StoreError(f"{path}: data/{demo} has no 'actions' dataset")
            arrays: dict[str, np.ndarray] = {}
            for k in ROBOMIMIC_KEYS:
                if k in g:
                    arrays[k] = g[k][()]
            for group_name, prefix in (("obs", ""), ("next_obs", "next_")):
                if group_name == "next_obs" and not include_next_obs:
                    continue
                if group_name in g:
                    for k in g[group_name]:
                        arrays[f"{group_name}/{k}"] = g[group_name][k][()]
                        key = f"{prefix}{k}"
                        names[f"{group_name}/{k}"] = f"obs.{k}" if key in _RESERVED else key
            length = len(arrays["actions"])
            for k, v in arrays.items():
                if v.dtype.kind not in "biuf":
                    raise StoreError(
                        f"{path}: data/{demo}/{k} has dtype {v.dtype}; only numeric arrays are supported"
                    )
                if v.ndim == 0 or len(v) != length:
                    raise StoreError(
                        f"{path}: data/{demo}/{k} has shape {v.shape} but actions has {length} steps (episode {d})"
                    )
            if d == 0:
                parts = {k: [] for k in arrays}
            elif set(arrays) != set(parts):
                raise StoreError(
                    f"{path}: data/{demo} (episode {d}) has datasets {sorted(arrays)} but data/{demos[0]} has "
                    f"{sorted(parts)}; every demo must have the same datasets"
                )
            if length == 0:
                raise StoreError(f"{path}: data/{demo} (episode {d}) has zero steps")
            for k, v in arrays.items():
                parts[k].append(v)
            lengths.append(length)
        data = {names.get(k, ROBOMIMIC_KEYS.get(k, k)): np.concatenate(v) for k, v in parts.items()}
        meta: dict[str, np.ndarray] = {"source": _source_codes(source, len(demos), str(path))}
        if "mask" in f:
            for filt in f["mask"]:
                members = {m.decode() if isinstance(m, bytes) else str(m) for m in f["mask"][filt][()]}
                field_name = "mask_" + "".join(c if c.isalnum() else "_" for c in filt)
                meta[field_name] = np.array([d in members for d in demos], dtype=bool)
        env_args = f["data"].attrs.get("env_args")
        if isinstance(env_args, bytes):
            env_args = env_args.decode()
        try:
            env_args = json.loads(env_args) if isinstance(env_args, str) else env_args
        except json.JSONDecodeError:
            pass  # keep the raw string
    attrs = {
        "converted_from": {"format": "robomimic", "path": str(path), "demos": demos[:1] + demos[-1:]},
        "env_args": env_args if isinstance(env_args, dict | str | type(None)) else str(env_args),
    }
    return EpisodeArrays(data, _ends_from_lengths(lengths), meta, attrs)


# ----------------------------------------------------------------------------------------------- LeRobot


def _lerobot_key(column: str) -> str:
    if column in LEROBOT_TO_STORE:
        return LEROBOT_TO_STORE[column]
    if column.startswith("observation."):
        return column[len("observation.") :]
    return column


def _store_column(key: str) -> str:
    """LeRobot column for a store key (export); ``info.json`` records the inverse mapping."""
    inverse = {v: k for k, v in LEROBOT_TO_STORE.items()} | {"terminal": "next.done"}
    if key in inverse:
        return inverse[key]
    return key if "." in key else f"observation.{key}"


def _column_to_numpy(pa: Any, column: Any, shape: list[int] | None, where: str) -> np.ndarray:
    """An arrow column (scalars or nested lists) as one numpy array with a leading step axis."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if arr.null_count:
        raise StoreError(f"{where}: the column has {arr.null_count} null values; fill them before importing")
    rows = len(arr)
    dims: list[int] = []
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        before = len(arr)
        arr = arr.flatten()
        if before and len(arr) % before:
            raise StoreError(f"{where}: ragged list column; every step needs the same number of values")
        dims.append(len(arr) // before if before else 0)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raise StoreError(
            f"{where}: column type {arr.type} is not numeric; only low-dimensional columns are supported"
        )
    values = arr.to_numpy(zero_copy_only=False)
    step_shape = tuple(shape) if shape is not None else tuple(dims)
    if math.prod(step_shape) * rows != values.size:
        raise StoreError(f"{where}: {values.size} values do not fit {rows} steps of shape {step_shape}")
    return values.reshape((rows, *step_shape))


def read_lerobot(path: str | os.PathLike, source: str = "human", skip_video: bool = False) -> EpisodeArrays:
    """Read a low-dimensional LeRobot v3 dataset directory (``meta/info.json`` + ``data/chunk-*/file-*.parquet``)."""
    pa = require_extra("pyarrow", "formats", "reading LeRobot parquet datasets")
    pq = require_extra("pyarrow.parquet", "formats", "reading LeRobot parquet datasets")
    root = Path(path)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise StoreError(f"no LeRobot dataset at {root}: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{info_path} is not valid JSON ({exc})") from exc
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise StoreError(
            f"{info_path}: codebase_version {version!r} is not supported; only LeRobot v3 datasets are "
            f"(convert older ones with lerobot's convert_dataset_v21_to_v30 script)"
        )
    features: dict[str, Any] = info.get("features", {})
    unsupported = {k: f.get("dtype") for k, f in features.items() if f.get("dtype") in ("video", "image")}
    if unsupported and not skip_video:
        raise StoreError(
            f"{root}: video columns are not supported yet: {sorted(unsupported)} have dtype video/image; only "
            f"low-dimensional LeRobot datasets can be imported (pass skip_video=True to import the other columns)"
        )
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise StoreError(f"{root}: no data/chunk-*/file-*.parquet files")
    try:
        table = pa.concat_tables([pq.read_table(p) for p in files])
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"{root}: cannot read the data parquet files ({exc})") from exc
    if "episode_index" not in table.column_names:
        raise StoreError(f"{root}: the data files have no episode_index column")
    t = table.num_rows
    if t == 0:
        raise StoreError(f"{root}: the data files have no rows")
    ep = table["episode_index"].to_numpy()
    step = np.diff(ep)
    if (step < 0).any():
        row = int(np.flatnonzero(step < 0)[0]) + 1
        raise StoreError(
            f"{root}: episode_index goes back from {ep[row - 1]} to {ep[row]} at row {row}; rows must be "
            f"grouped by episode in order"
        )
    ends = np.append(np.flatnonzero(step != 0) + 1, t).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    episode_ids = ep[starts]
    if "frame_index" in table.column_names:
        frame = table["frame_index"].to_numpy()
        expected = np.arange(t) - np.repeat(starts, ends - starts)
        if not np.array_equal(frame, expected):
            row = int(np.flatnonzero(frame != expected)[0])
            e = int(np.searchsorted(ends, row, side="right"))
            raise StoreError(
                f"{root}: frame_index in episode {int(episode_ids[e])} is {int(frame[row])} at row {row}, expected "
                f"{int(expected[row])}; frames must be contiguous from 0"
            )
    hints: dict[str, Any] = (info.get("robopol") or {}).get("columns", {})
    data: dict[str, np.ndarray] = {}
    for col in table.column_names:
        if col in LEROBOT_BOOKKEEPING or col in unsupported:
            continue
        hint = hints.get(col, {})
        key = hint.get("key") or _lerobot_key(col)
        if key in data:
            raise StoreError(f"{root}: columns map to the same store key {key!r}; rename one of them")
        x = _column_to_numpy(pa, table[col], hint.get("shape"), f"{root}: column {col!r}")
        if "shape" not in hint and key in STEP_FLAGS and x.shape[1:] == (1,):  # flags are per-step scalars
            x = x.reshape(t)
        data[key] = x
    if not data:
        raise StoreError(f"{root}: no low-dimensional data columns to import")
    n = len(ends)
    meta: dict[str, np.ndarray] = {"source": _source_codes(source, n, str(root))}
    if "task_index" in table.column_names:
        task = table["task_index"].to_numpy()
        if np.array_equal(task, np.repeat(task[starts], ends - starts)):
            meta["task_id"] = task[starts].astype(np.int64)
        else:
            data["task_index"] = task  # changes within episodes: keep it per step
    if "success" in data or "next.success" in data:
        flags = data.get("next.success", data.get("success")).reshape(t, -1).any(axis=1)
        meta["success"] = np.logical_or.reduceat(flags, starts)
    meta.update(_read_lerobot_episode_meta(pq, root, episode_ids))
    attrs = {
        "converted_from": {
            "format": "lerobot",
            "path": str(root),
            "codebase_version": version,
            "fps": info.get("fps"),
            "robot_type": info.get("robot_type"),
        }
    }
    return EpisodeArrays(data, ends, meta, attrs)


def _read_lerobot_episode_meta(pq: Any, root: Path, episode_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-episode ``robopol/<field>`` columns that :func:`export_lerobot` wrote, in data order."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        return {}
    import pyarrow as pa

    table = pa.concat_tables([pq.read_table(p) for p in files])
    cols = [c for c in table.column_names if c.startswith("robopol/")]
    if not cols or "episode_index" not in table.column_names:
        return {}
    row_of = {int(e): i for i, e in enumerate(table["episode_index"].to_numpy())}
    missing = [int(e) for e in episode_ids if int(e) not in row_of]
    if missing:
        raise StoreError(f"{root}: meta/episodes has no rows for episodes {missing[:5]}")
    order = np.array([row_of[int(e)] for e in episode_ids])
    return {c[len("robopol/") :]: table[c].to_numpy()[order] for c in cols}


def export_lerobot(
    store: EpisodeStore | Any,
    dst_dir: str | os.PathLike,
    fps: float,
    *,
    overwrite: bool = False,
    robot_type: str | None = None,
    task_names: Mapping[int, str] | None = None,
    data_file_size_mb: float = 100.0,
) -> Path:
    """Write a store as a LeRobot v3 low-dimensional dataset; returns ``dst_dir``.

    Writes ``data/chunk-XXX/file-XXX.parquet`` (episodes never split across files), ``meta/info.json``,
    ``meta/episodes/chunk-000/file-000.parquet`` (with the store's per-episode metadata as
    ``robopol/<field>`` columns), ``meta/tasks.parquet`` and ``meta/stats.json``. ``info.json`` also records
    each column's store key and exact step shape, so :func:`read_lerobot` restores the store bit-exactly.
    """
    pa = require_extra("pyarrow", "formats", "writing LeRobot parquet datasets")
    pq = require_extra("pyarrow.parquet", "formats", "writing LeRobot parquet datasets")
    opened = not isinstance(store, EpisodeStore)
    src = EpisodeStore.open(store, mode="r") if opened else store
    dst = Path(dst_dir)
    try:
        if not fps or fps <= 0:
            raise StoreError(f"export to {dst}: fps must be > 0, got {fps!r}")
        if len(src) == 0:
            raise StoreError(f"{src.location}: the store has no episodes to export")
        if dst.exists() and any(dst.iterdir()):
            if not overwrite:
                raise StoreError(
                    f"{dst} exists and is not empty: pass overwrite=True or choose a new directory"
                )
            if not (dst / "meta" / "info.json").is_file():
                raise StoreError(
                    f"{dst} is not a LeRobot dataset; refusing to delete it: choose a new directory"
                )
            shutil.rmtree(dst)
        _write_lerobot(pa, pq, src, dst, float(fps), robot_type, task_names or {}, data_file_size_mb)
    finally:
        if opened:
            src.close()
    return dst


def _arrow_column(pa: Any, x: np.ndarray) -> Any:
    """Scalar steps -> plain column; (d,) -> fixed_size_list<d>; (a, b, ...) -> nested fixed lists."""
    arr = pa.array(np.ascontiguousarray(x).reshape(-1))
    for d in reversed(x.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, d)
    return arr


def _write_lerobot(
    pa: Any,
    pq: Any,
    src: EpisodeStore,
    dst: Path,
    fps: float,
    robot_type: str | None,
    task_names: Mapping[int, str],
    data_file_size_mb: float,
) -> None:
    spec = src.spec()
    columns: dict[str, str] = {}
    for k in spec:
        col = _store_column(k)
        if col in columns.values() or col in LEROBOT_BOOKKEEPING:
            raise StoreError(
                f"{src.location}: store key {k!r} maps to LeRobot column {col!r}, which is already used"
            )
        columns[k] = col
    data = src.load()
    ends = src.episode_ends
    n, t = len(ends), src.n_steps
    lengths = src.episode_lengths
    starts = ends - lengths
    meta = src.meta_arrays()
    task_ids = meta.get("task_id", np.full(n, -1, dtype=np.int64))
    unique_tasks = np.unique(task_ids)
    task_index_of_episode = np.searchsorted(unique_tasks, task_ids).astype(np.int64)
    frame_index = np.arange(t, dtype=np.int64) - np.repeat(starts, lengths)
    bookkeeping = {
        "timestamp": (frame_index / fps).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.repeat(np.arange(n, dtype=np.int64), lengths),
        "index": np.arange(t, dtype=np.int64),
        "task_index": np.repeat(task_index_of_episode, lengths),
    }
    # LeRobot stores shape [1] features as plain scalar columns.
    step_arrays = {columns[k]: (data[k].reshape(t) if spec[k].shape == (1,) else data[k]) for k in spec}
    step_arrays.update(bookkeeping)
    row_bytes = sum(max(1, v[:1].nbytes) for v in step_arrays.values())
    rows_per_file = max(1, int(data_file_size_mb * (1 << 20)) // row_bytes)

    chunks_size = 1000
    file_of_episode = np.zeros(n, dtype=np.int64)
    file_no, rows_in_file = 0, 0
    for e in range(n):  # whole episodes per file, as LeRobot v3 expects
        if rows_in_file and rows_in_file + lengths[e] > rows_per_file:
            file_no, rows_in_file = file_no + 1, 0
        file_of_episode[e] = file_no
        rows_in_file += int(lengths[e])
    for f in range(file_no + 1):
        eps = np.flatnonzero(file_of_episode == f)
        a, b = int(starts[eps[0]]), int(ends[eps[-1]])
        table = pa.table({c: _arrow_column(pa, v[a:b]) for c, v in step_arrays.items()})
        out = dst / "data" / f"chunk-{f // chunks_size:03d}" / f"file-{f % chunks_size:03d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)

    tasks = [task_names.get(int(i), f"task {int(i)}") for i in unique_tasks]
    episodes = {
        "episode_index": pa.array(np.arange(n, dtype=np.int64)),
        "tasks": pa.array([[tasks[i]] for i in task_index_of_episode], type=pa.list_(pa.string())),
        "length": pa.array(lengths.astype(np.int64)),
        "data/chunk_index": pa.array(file_of_episode // chunks_size),
        "data/file_index": pa.array(file_of_episode % chunks_size),
        "dataset_from_index": pa.array(starts.astype(np.int64)),
        "dataset_to_index": pa.array(ends.astype(np.int64)),
        "meta/episodes/chunk_index": pa.array(np.zeros(n, dtype=np.int64)),
        "meta/episodes/file_index": pa.array(np.zeros(n, dtype=np.int64)),
    }
    for f_name, v in meta.items():
        episodes[f"robopol/{f_name}"] = pa.array(v)
    ep_path = dst / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(episodes), ep_path)
    pq.write_table(
        pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)), "task": pa.array(tasks)}),
        dst / "meta" / "tasks.parquet",
    )

    features: dict[str, Any] = {}
    hints: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for k, (shape, dtype) in spec.items():
        col = columns[k]
        features[col] = {"dtype": str(dtype), "shape": list(shape) or [1], "names": None}
        hints[col] = {"key": k, "shape": list(shape)}
    for col, v in bookkeeping.items():
        features[col] = {"dtype": str(v.dtype), "shape": [1], "names": None}
    for col, v in step_arrays.items():
        x = v.reshape(t, -1).astype(np.float64)
        stats[col] = {
            "min": x.min(axis=0).tolist(),
            "max": x.max(axis=0).tolist(),
            "mean": x.mean(axis=0).tolist(),
            "std": x.std(axis=0).tolist(),
            "count": [t],
        }
    info = {
        "codebase_version": "v3.0",
        "robot_type": robot_type,
        "total_episodes": n,
        "total_frames": t,
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_file_size_mb,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{n}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "features": features,
        "robopol": {"columns": hints, "store": src.location},
    }
    (dst / "meta" / "info.json").write_text(json.dumps(info, indent=2, allow_nan=True))
    (dst / "meta" / "stats.json").write_text(json.dumps(stats, indent=2, allow_nan=True))


# ------------------------------------------------------------------------------------------------ Minari


def _flatten_h5(h5py: Any, node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, h5py.Dataset):
        out[prefix] = node
        return
    for k in node:
        _flatten_h5(h5py, node[k], f"{prefix}.{k}" if prefix else k, out)


def _minari_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name == "main_data.hdf5":
        return p.parent.parent
    if p.is_dir():
        return p
    # Not a path: treat it as a dataset id under minari's local datasets root.
    root = Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))
    candidate = root / str(path)
    if candidate.is_dir():
        return candidate
    raise StoreError(
        f"no Minari dataset at {path}: pass the dataset directory (holding data/main_data.hdf5) or a local "
        f"dataset id under {root} (set MINARI_DATASETS_PATH to change that root)"
    )


def read_minari(
    path_or_id: str | os.PathLike, source: str = "expert", include_next_obs: bool = False
) -> EpisodeArrays:
    """Read a local Minari HDF5 dataset (a directory with ``data/main_data.hdf5`` and ``data/metadata.json``)."""
    h5py = require_extra("h5py", "formats", "reading Minari datasets")
    root = _minari_dir(path_or_id)
    meta_path = root / "data" / "metadata.json"
    metadata: dict[str, Any] = {}
    if meta_path.is_file():
        metadata = json.loads(meta_path.read_text())
    if metadata.get("data_format", "hdf5") != "hdf5":
        raise StoreError(
            f"{root}: Minari data_format {metadata.get('data_format')!r} is not supported yet; only 'hdf5' datasets are"
        )
    h5_path = root / "data" / "main_data.hdf5"
    if not h5_path.is_file():
        raise StoreError(f"no Minari dataset at {root}: {h5_path} is missing")
    with h5py.File(h5_path, "r") as f:
        names = sorted(
            (k for k in f if k.startswith("episode_")),
            key=lambda k: int(k.split("_", 1)[1]) if k.split("_", 1)[1].isdigit() else 1 << 62,
        )
        if not names:
            raise StoreError(f"{h5_path}: no episode_<i> groups")
        parts: dict[str, list[np.ndarray]] = {}
        lengths: list[int] = []
        seeds: list[int] = []
        for e, name in enumerate(names):
            g = f[name]
            where = f"{h5_path}: {name} (episode {e})"
            for k in ("observations", "actions", *MINARI_KEYS):
                if k not in g:
                    raise StoreError(f"{where} has no {k!r}")
            length = int(g["rewards"].shape[0])
            if length == 0:
                raise StoreError(f"{where} has zero steps")
            arrays: dict[str, np.ndarray] = {}
            obs: dict[str, Any] = {}
            _flatten_h5(h5py, g["observations"], "", obs)
            for k, ds in obs.items():
                if ds.dtype.kind not in "biuf":
                    raise StoreError(
                        f"{where}: observations {k or '(array)'} has dtype {ds.dtype}; JPEG-encoded image "
                        f"observations are not supported yet"
                    )
                x = ds[()]
                if len(x) != length + 1:
                    raise StoreError(
                        f"{where}: observations {k or '(array)'} has {len(x)} rows; Minari stores steps + 1 = {length + 1}"
                    )
                key = "obs" if k == "" else (f"obs.{k}" if k in _RESERVED or k == "obs" else k)
                arrays[key] = x[:length]
                if include_next_obs:
                    arrays["next_obs" if k == "" else f"next_{k}"] = x[1:]
            acts: dict[str, Any] = {}
            _flatten_h5(h5py, g["actions"], "", acts)
            for k, ds in acts.items():
                arrays["action" if k == "" else f"action.{k}"] = ds[()]
            for k, store_key in MINARI_KEYS.items():
                arrays[store_key] = g[k][()]
            for k, x in arrays.items():
                if x.dtype.kind not in "biuf" or x.ndim == 0 or len(x) != length:
                    raise StoreError(
                        f"{where}: {k} has shape {x.shape} and dtype {x.dtype}; expected {length} numeric steps"
                    )
            if e == 0:
                parts = {k: [] for k in arrays}
            elif set(arrays) != set(parts):
                raise StoreError(f"{where} has arrays {sorted(arrays)} but episode 0 has {sorted(parts)}")
            for k, x in arrays.items():
                parts[k].append(x)
            lengths.append(length)
            seed = g.attrs.get("seed")
            seeds.append(int(seed) if seed is not None and np.ndim(seed) == 0 else -1)
    data = {k: np.concatenate(v) for k, v in parts.items()}
    meta = {
        "source": _source_codes(source, len(names), str(root)),
        "seed": np.asarray(seeds, dtype=np.int64),
    }
    attrs = {
        "converted_from": {
            "format": "minari",
            "path": str(root),
            "dataset_id": metadata.get("dataset_id"),
            "env_spec": metadata.get("env_spec"),
        }
    }
    return EpisodeArrays(data, _ends_from_lengths(lengths), meta, attrs)


# ---------------------------------------------------------------------------------------------- dispatch


def detect_format(src: str | os.PathLike) -> str:
    """The format of ``src`` from its path: one of :data:`FORMATS`."""
    s = os.fspath(src)
    if "://" in s:
        return "zarr"
    p = Path(s)
    name = p.name.lower()
    if name.endswith(".npz"):
        return "ogbench"
    if name.endswith(".zarr") or name.endswith(".zarr.zip"):
        return "zarr"
    if p.is_dir():
        if (p / "zarr.json").is_file() or (p / ".zgroup").is_file():
            return "zarr"
        if (p / "meta" / "info.json").is_file():
            return "lerobot"
        if (p / "data" / "main_data.hdf5").is_file() or (p / "data" / "metadata.json").is_file():
            return "minari"
    if name == "main_data.hdf5":
        return "minari"
    if name.endswith((".hdf5", ".h5")):
        return "robomimic"
    if not p.exists():
        raise StoreError(
            f"{s} does not exist: pass an existing file or directory (or fmt='minari' for a dataset id)"
        )
    raise StoreError(
        f"cannot tell the dataset format of {s}: pass fmt= one of {list(FORMATS)} "
        f"(.npz = ogbench, .hdf5 = robomimic, a directory with meta/info.json = lerobot, "
        f"with data/main_data.hdf5 = minari, .zarr = zarr)"
    )


READERS = {
    "ogbench": read_ogbench,
    "robomimic": read_robomimic,
    "lerobot": read_lerobot,
    "minari": read_minari,
}


def convert(
    src: str | os.PathLike,
    dst: Any,
    fmt: str | None = None,
    *,
    overwrite: bool = False,
    preset: str | None = None,
    zarr_format: int = 3,
    **options: Any,
) -> EpisodeStore:
    """Convert a dataset to an episode store at ``dst``; ``fmt`` is detected from ``src`` when None.

    ``options`` go to the reader (``source``, ``include_next_obs``, ``skip_video``). ``fmt='zarr'`` copies
    another episode store, e.g. a diffusion_policy zarr v2 ``.zarr.zip``, into zarr v3.
    """
    fmt = fmt or detect_format(src)
    if fmt == "zarr":
        if options:
            raise StoreError(f"converting the zarr store {src}: unknown options {sorted(options)}")
        with EpisodeStore.open(src, mode="r") as s:
            return s.copy_to(dst, overwrite=overwrite, zarr_format=zarr_format, preset=preset)
    if fmt not in READERS:
        raise StoreError(f"unknown dataset format {fmt!r} for {src}: use one of {list(FORMATS)}")
    try:
        episodes = READERS[fmt](src, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise StoreError(f"reading {src} as {fmt}: {exc}") from exc
        raise
    if preset is None:
        preset = "image" if any(v.ndim >= 4 for v in episodes.data.values()) else "lowdim"
    store = EpisodeStore.create(dst, preset=preset, overwrite=overwrite, zarr_format=zarr_format)
    store.add_episodes(episodes.data, episodes.episode_ends, episodes.meta)
    store.set_attrs(**episodes.attrs)
    return store
