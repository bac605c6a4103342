"""Store validation: find every inconsistency a sampler or trainer would trip over, with its location.

``validate_store`` reads the zarr group directly (not through ``EpisodeStore.open``, which refuses some
broken stores), so it can report on any store, including foreign ones and ones that fail to open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from robopol.data.store import (
    SOURCES,
    EpisodeStore,
    _array_names,
    _child,
    _describe,
    open_zarr_group,
    read_commit_record,
)
from robopol.errors import StoreError

__all__ = ["StoreProblem", "check_store", "validate_store"]

_BLOCK_BYTES = 64 << 20  # NaN scans read this much at a time, so huge stores validate in bounded memory


@dataclass(frozen=True)
class StoreProblem:
    """One inconsistency: the array key, episode and step index within the episode where it applies."""

    key: str | None
    episode: int | None
    index: int | None
    message: str

    def __str__(self) -> str:
        return self.message


def validate_store(
    location_or_store: Any,
    required_keys: Iterable[str] = (),
    max_per_key: int = 10,
) -> list[StoreProblem]:
    """Every problem in a store (empty list when clean); at most ``max_per_key`` step-level ones per key.

    Checks: ``meta/episode_ends`` present, integer, non-negative, increasing with no empty episode; each
    data array's length against ``episode_ends[-1]``; NaN/Inf in float data (episode and step reported);
    per-episode metadata lengths; required keys. A robopol store's arrays may run past the committed end
    (the tail a killed writer leaves, invisible to readers); that is not a problem.
    """
    if isinstance(location_or_store, EpisodeStore):
        return _validate(
            location_or_store.group, location_or_store.location, tuple(required_keys), max_per_key
        )
    group, where = open_zarr_group(location_or_store, "r")
    try:
        return _validate(group, where, tuple(required_keys), max_per_key)
    finally:
        group.store.close()


def check_store(location_or_store: Any, required_keys: Iterable[str] = (), max_shown: int = 5) -> None:
    """Raise ``StoreError`` listing the first ``max_shown`` problems when the store is not clean."""
    problems = validate_store(location_or_store, required_keys)
    if not problems:
        return
    where = (
        location_or_store.location
        if isinstance(location_or_store, EpisodeStore)
        else _describe(location_or_store)
    )
    shown = "\n".join(f"  - {p.message}" for p in problems[:max_shown])
    more = len(problems) - max_shown
    tail = f"\n  ... and {more} more; run validate_store() for the full list" if more > 0 else ""
    raise StoreError(f"{where}: the episode store has {len(problems)} problem(s):\n{shown}{tail}")


# ------------------------------------------------------------------------------------------------ checks


def _validate(
    group: zarr.Group, where: str, required: tuple[str, ...], max_per_key: int
) -> list[StoreProblem]:
    problems: list[StoreProblem] = []
    rec = read_commit_record(group)
    data_group = _child(group, "data")
    if not isinstance(data_group, zarr.Group):
        data_group = None
        problems.append(
            StoreProblem(
                "data", None, None, f"{where}: the data/ group is missing; expected data/<key> arrays"
            )
        )
    keys = list(rec["keys"]) if rec is not None else _array_names(data_group)
    for k in required:
        if k not in keys:
            problems.append(
                StoreProblem(
                    k,
                    None,
                    None,
                    f"{where}: required key data/{k} is missing (the store has {keys}); re-collect or convert "
                    f"the data with that key",
                )
            )

    ends_arr = _child(group, "meta/episode_ends")
    if not isinstance(ends_arr, zarr.Array):
        problems.append(
            StoreProblem(
                "meta/episode_ends",
                None,
                None,
                f"{where}: meta/episode_ends is missing, so episode boundaries are unknown; the store needs "
                f"an int64 array of cumulative episode ends (diffusion_policy layout)",
            )
        )
        return problems
    if not np.issubdtype(ends_arr.dtype, np.integer) or ends_arr.ndim != 1:
        problems.append(
            StoreProblem(
                "meta/episode_ends",
                None,
                None,
                f"{where}: meta/episode_ends has dtype {ends_arr.dtype} and shape {ends_arr.shape}; it must be a "
                f"1-D integer array of cumulative episode ends",
            )
        )
        return problems
    if rec is not None:
        n = int(rec["n_episodes"])
        if ends_arr.shape[0] < n:
            problems.append(
                StoreProblem(
                    "meta/episode_ends",
                    ends_arr.shape[0],
                    None,
                    f"{where}: the commit record lists {n} episodes but meta/episode_ends has only "
                    f"{ends_arr.shape[0]}; episodes {ends_arr.shape[0]}..{n - 1} are lost",
                )
            )
            n = ends_arr.shape[0]
    else:
        n = ends_arr.shape[0]
    ends = np.asarray(ends_arr[:n], dtype=np.int64)
    problems += _check_ends(ends, where, max_per_key)
    total = int(ends[-1]) if n else 0
    if rec is not None and total != int(rec["n_steps"]):
        problems.append(
            StoreProblem(
                "meta/episode_ends",
                n - 1,
                None,
                f"{where}: the commit record says {rec['n_steps']} steps but meta/episode_ends[{n - 1}] = {total}",
            )
        )
    # Rows -> episodes needs sorted ends; a running max keeps the mapping defined for broken ones.
    sorted_ends = np.maximum.accumulate(np.maximum(ends, 0)) if n else ends

    for k in keys:
        a = _child(data_group, k) if data_group is not None else None
        if not isinstance(a, zarr.Array):
            if rec is not None and data_group is not None:
                problems.append(
                    StoreProblem(
                        k, None, None, f"{where}: data/{k} is listed in the commit record but missing"
                    )
                )
            continue
        problems += _check_data(a, k, sorted_ends, total, rec is not None, where, max_per_key)

    meta_group = _child(group, "meta")
    present = _array_names(meta_group)
    for f in rec["meta_fields"] if rec is not None else ():
        if f"episode_{f}" not in present:
            problems.append(
                StoreProblem(
                    f"meta/episode_{f}",
                    None,
                    None,
                    f"{where}: meta/episode_{f} is listed in the commit record but missing",
                )
            )
    for name in present:
        if not name.startswith("episode_") or name == "episode_ends":
            continue
        if rec is not None and name[len("episode_") :] not in rec["meta_fields"]:
            continue  # created by an append that never committed
        problems += _check_meta(meta_group[name], name, n, rec is not None, where, max_per_key)
    return problems


def _check_ends(ends: np.ndarray, where: str, limit: int) -> list[StoreProblem]:
    out: list[StoreProblem] = []
    lengths = np.diff(ends, prepend=0)
    for i in np.flatnonzero(ends < 0)[:limit]:
        out.append(
            StoreProblem(
                "meta/episode_ends",
                int(i),
                None,
                f"{where}: meta/episode_ends[{i}] = {int(ends[i])} is negative (episode {i}); ends are "
                f"cumulative step counts and must be >= 1",
            )
        )
    for i in np.flatnonzero(lengths < 0)[:limit]:
        prev = int(ends[i - 1]) if i else 0
        out.append(
            StoreProblem(
                "meta/episode_ends",
                int(i),
                None,
                f"{where}: meta/episode_ends decreases at episode {i} ({prev} -> {int(ends[i])}); ends must "
                f"be strictly increasing",
            )
        )
    for i in np.flatnonzero(lengths == 0)[:limit]:
        out.append(
            StoreProblem(
                "meta/episode_ends",
                int(i),
                None,
                f"{where}: episode {i} is empty (zero length: meta/episode_ends[{i}] = {int(ends[i])} equals "
                f"the previous end); drop it or rebuild episode_ends",
            )
        )
    return out


def _locate(sorted_ends: np.ndarray, row: int) -> tuple[int | None, int]:
    """(episode, step within episode) of a concatenated row; episode None past the last episode."""
    ep = int(np.searchsorted(sorted_ends, row, side="right"))
    if ep >= len(sorted_ends):
        return None, row - (int(sorted_ends[-1]) if len(sorted_ends) else 0)
    return ep, row - (int(sorted_ends[ep - 1]) if ep else 0)


def _check_data(
    a: zarr.Array, k: str, sorted_ends: np.ndarray, total: int, committed: bool, where: str, limit: int
) -> list[StoreProblem]:
    out: list[StoreProblem] = []
    if a.ndim == 0:
        return [
            StoreProblem(k, None, None, f"{where}: data/{k} is a scalar; per-step arrays need a time axis")
        ]
    length = a.shape[0]
    if length < total:
        ep, idx = _locate(sorted_ends, length)
        out.append(
            StoreProblem(
                k,
                ep,
                idx,
                f"{where}: data/{k} has {length} steps but meta/episode_ends[-1] = {total}: data ends inside "
                f"episode {ep} at step {idx}; drop the incomplete episodes or re-write data/{k}",
            )
        )
    elif length > total and not committed:
        out.append(
            StoreProblem(
                k,
                len(sorted_ends),
                0,
                f"{where}: data/{k} has {length} steps but meta/episode_ends[-1] = {total}: {length - total} "
                f"steps after the last episode (episode {len(sorted_ends)} would start at index 0 there); "
                f"truncate data/{k} or add the missing episode end",
            )
        )
    if a.dtype.kind not in "fc":
        return out
    rows = min(length, total) if committed else length
    row_bytes = max(1, math.prod(a.shape[1:]) * a.dtype.itemsize)
    block = max(1, _BLOCK_BYTES // row_bytes)
    found = 0
    for r0 in range(0, rows, block):
        x = np.asarray(a[r0 : min(rows, r0 + block)])
        flat = x.reshape(len(x), -1)
        bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        listed = bad_rows[: max(0, limit - found)]
        for r in listed:
            row = r0 + int(r)
            ep, idx = _locate(sorted_ends, row)
            what = "NaN" if np.isnan(flat[r]).any() else "Inf"
            at = f"episode {ep}, step {idx}" if ep is not None else f"step {idx} after the last episode"
            out.append(
                StoreProblem(
                    k,
                    ep,
                    idx,
                    f"{where}: data/{k} has {what} at {at} (row {row}); fix or drop that episode before training",
                )
            )
        found += len(listed)
        if len(listed) < len(bad_rows):
            remaining = len(bad_rows) - len(listed) + _count_nonfinite(a, r0 + block, rows, block)
            out.append(
                StoreProblem(
                    k,
                    None,
                    None,
                    f"{where}: data/{k} has {remaining} more non-finite steps beyond those listed",
                )
            )
            break
    return out


def _count_nonfinite(a: zarr.Array, start: int, stop: int, block: int) -> int:
    count = 0
    for r0 in range(start, stop, block):
        x = np.asarray(a[r0 : min(stop, r0 + block)])
        count += int((~np.isfinite(x.reshape(len(x), -1)).all(axis=1)).sum())
    return count


def _check_meta(
    a: zarr.Array, name: str, n: int, committed: bool, where: str, limit: int
) -> list[StoreProblem]:
    key = f"meta/{name}"
    if a.ndim != 1:
        return [
            StoreProblem(key, None, None, f"{where}: {key} has shape {a.shape}; per-episode metadata is 1-D")
        ]
    length = a.shape[0]
    if length < n or (length != n and not committed):
        return [
            StoreProblem(
                key,
                min(length, n),
                None,
                f"{where}: {key} has {length} values but the store has {n} episodes (first mismatch at episode "
                f"{min(length, n)}); per-episode metadata needs one value per episode",
            )
        ]
    out: list[StoreProblem] = []
    if name == "episode_source":
        codes = np.asarray(a[:n])
        for i in np.flatnonzero((codes < 0) | (codes >= len(SOURCES)))[:limit]:
            out.append(
                StoreProblem(
                    key,
                    int(i),
                    None,
                    f"{where}: {key}[{i}] = {codes[i]} is not a source code (0..{len(SOURCES) - 1} for {list(SOURCES)})",
                )
            )
    return out
