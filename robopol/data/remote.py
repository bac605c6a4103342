"""Episode stores beyond one disk: a local cache of remote stores, and shards merged into one store.

Any fsspec URL is a store location (``s3://``, ``gs://``, ``memory://``, ... when its fsspec package is
installed; see :mod:`robopol.data.store`). Two things make that practical at scale:

- **Cache** (:func:`cached_store`): training reads a whole store into RAM once, and sampling then never
  touches it, but every run would download it again. ``cached_store(url, folder)`` keeps one local copy per
  URL and copies again only when the remote's committed episodes changed.
- **Shards** (:func:`merge_stores`): a store has one writer at a time (its crash safety rests on a single
  commit record, which concurrent appends would race on). Collection at scale therefore writes one store
  per process or machine (``robopol collect out=<url>/shard-3.zarr seed=30000``) and ``robopol data merge``
  joins them: episodes in shard order, metadata kept, the sources untouched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np

from robopol.data.store import SOURCES, EpisodeStore
from robopol.errors import StoreError

CACHE_DIR = "~/.cache/robopol/stores"


def is_local(location: str) -> bool:
    """Plain paths and ``file://`` URLs; everything else goes through fsspec."""
    return "://" not in location or location.lower().startswith("file://")


def expand_locations(patterns: Sequence[str]) -> list[str]:
    """Glob patterns (``*``, ``?``, ``[...]``) expanded over local paths or fsspec URLs, sorted per pattern;
    names without wildcards are kept as given."""
    out: list[str] = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            out.append(pattern)
            continue
        fs, path = fsspec.core.url_to_fs(pattern)
        matches = sorted(fs.glob(path))
        if "://" in pattern:  # keep the user's scheme (fsspec strips it)
            scheme = pattern.split("://", 1)[0]
            matches = [f"{scheme}://{m}" for m in matches]
        if not matches:
            raise StoreError(f"no store matches {pattern}")
        out += matches
    return out


def _fingerprint(store: EpisodeStore) -> dict:
    """What changes whenever committed episodes change: counts, keys, fields and every episode end."""
    return {"episodes": len(store), "steps": store.n_steps, "keys": sorted(store.keys()),
            "fields": sorted(store.meta_fields()), "ends": store.episode_ends.tolist()}


def cached_store(location: str, cache_dir: str = CACHE_DIR) -> str:
    """A local copy of the store at ``location`` (unchanged for local paths), copied on first use and again
    when the remote's committed episodes differ from the copy's; returns the path to open."""
    if is_local(location):
        return location
    remote = EpisodeStore.open(location)
    folder = Path(os.path.expanduser(cache_dir))
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / f"{hashlib.sha256(location.encode()).hexdigest()[:16]}.zarr"
    if local.exists():
        try:
            if _fingerprint(EpisodeStore.open(local)) == _fingerprint(remote):
                return str(local)
        except StoreError:
            pass  # an unreadable copy is replaced below
    partial = folder / f"{local.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    remote.copy_to(str(partial))
    shutil.rmtree(local, ignore_errors=True)
    partial.rename(local)  # readers see the old copy or the whole new one
    (folder / f"{local.stem}.url").write_text(location + "\n")
    return str(local)


def merge_stores(sources: Sequence[str], out: str, overwrite: bool = False) -> EpisodeStore:
    """Append every committed episode of ``sources`` (in order) to a new store at ``out``.

    The shards must hold the same keys with the same per-step shapes and dtypes; episodes keep their
    metadata. Duplicate (task, seed) pairs across shards are refused: they are the same episode collected
    twice (give each collection process its own ``seed`` range).
    """
    if not sources:
        raise StoreError("robopol data merge needs at least one source store")
    if out in sources:
        raise StoreError(f"the merged store {out} is also a source; write it to a new location")
    shards = [EpisodeStore.open(s) for s in sources]
    spec = shards[0].spec()
    for shard in shards[1:]:
        if shard.spec() != spec:
            raise StoreError(f"{shard.location} does not match {shards[0].location}: keys, per-step shapes or "
                             f"dtypes differ ({dict(shard.spec())} vs {dict(spec)})")
    tasks = {shard.location: shard.attrs.get("task") for shard in shards}
    if len({repr(t) for t in tasks.values()}) > 1:
        raise StoreError(f"the shards were collected on different tasks: {tasks}")
    _check_seeds(shards)
    merged = EpisodeStore.create(out, preset=shards[0].preset, overwrite=overwrite)
    for shard in shards:
        if len(shard):
            meta = shard.meta_arrays()
            if "source" in meta:  # stored as codes, written as names
                meta["source"] = np.asarray([SOURCES[c] for c in meta["source"]], dtype=object)
            merged.add_episodes(shard.load(), shard.episode_ends, meta)
    merged.set_attrs(**shards[0].attrs, merged_from=list(sources))
    return merged


def _check_seeds(shards: Sequence[EpisodeStore]) -> None:
    seen: dict[tuple, str] = {}
    for shard in shards:
        meta = shard.meta_arrays()
        if "seed" not in meta:
            continue
        tasks = meta.get("task_id", np.zeros(len(shard), dtype=np.int64))
        for task, seed in zip(tasks.tolist(), meta["seed"].tolist(), strict=True):
            key = (task, seed)
            if key in seen and seen[key] != shard.location:
                raise StoreError(f"{shard.location} and {seen[key]} both hold the episode of task {task} with seed "
                                 f"{seed}: collect each shard with its own seed range (seed=...)")
            seen[key] = shard.location
