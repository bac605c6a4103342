"""Store summaries: a JSON-able dict, rich tables for the terminal and a PNG overview."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from robopol.data.store import SOURCES, EpisodeStore

__all__ = ["plot_store_info", "print_store_info", "store_info"]

_BLOCK_BYTES = 64 << 20  # stats stream through float arrays in blocks of this size


def _as_store(location_or_store: Any) -> tuple[EpisodeStore, bool]:
    if isinstance(location_or_store, EpisodeStore):
        return location_or_store, False
    return EpisodeStore.open(location_or_store, mode="r"), True


def _float_stats(store: EpisodeStore, key: str) -> dict[str, float | int]:
    """Mean/std/min/max over the finite values of a float key, streamed so big stores fit in memory."""
    shape, dtype = store.spec()[key]
    row_bytes = max(1, math.prod(shape) * dtype.itemsize)
    block = max(1, _BLOCK_BYTES // row_bytes)
    count, total, total_sq, nonfinite = 0, 0.0, 0.0, 0
    lo, hi = math.inf, -math.inf
    for start in range(0, store.n_steps, block):
        x = np.asarray(store.read(key, start, start + block), dtype=np.float64).ravel()
        finite = np.isfinite(x)
        nonfinite += int(x.size - finite.sum())
        x = x[finite]
        if x.size:
            count += x.size
            total += float(x.sum())
            total_sq += float(np.square(x).sum())
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if count == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "nonfinite": nonfinite}
    mean = total / count
    # Sum-of-squares variance is exact enough for a summary and needs only one pass.
    std = math.sqrt(max(0.0, total_sq / count - mean * mean))
    return {"mean": mean, "std": std, "min": lo, "max": hi, "nonfinite": nonfinite}


def store_info(location_or_store: Any, stats: bool = True) -> dict[str, Any]:
    """Summary of a store: sizes, keys (shape, dtype, chunks, float stats), lengths, success, sources."""
    store, opened = _as_store(location_or_store)
    try:
        lengths = store.episode_lengths
        keys: dict[str, Any] = {}
        for k, (shape, dtype) in store.spec().items():
            entry: dict[str, Any] = {
                "shape": list(shape),
                "dtype": str(dtype),
                "chunks": list(store.group["data"][k].chunks),
            }
            if stats and dtype.kind == "f":
                entry["stats"] = _float_stats(store, k)
            keys[k] = entry
        meta = store.meta_arrays()
        info: dict[str, Any] = {
            "location": store.location,
            "zarr_format": store.zarr_format,
            "preset": store.preset,
            "episodes": len(store),
            "steps": store.n_steps,
            "episode_length": (
                {
                    "min": int(lengths.min()),
                    "max": int(lengths.max()),
                    "mean": float(lengths.mean()),
                    "median": float(np.median(lengths)),
                }
                if len(lengths)
                else None
            ),
            "keys": keys,
            "meta_fields": store.meta_fields(),
            "success_rate": float(meta["success"].mean()) if "success" in meta and len(store) else None,
            "sources": {},
        }
        if "source" in meta:
            codes, counts = np.unique(meta["source"], return_counts=True)
            info["sources"] = {
                (SOURCES[c] if 0 <= c < len(SOURCES) else f"code {c}"): int(n)
                for c, n in zip(codes.tolist(), counts.tolist(), strict=True)
            }
        return info
    finally:
        if opened:
            store.close()


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def print_store_info(info: dict[str, Any], console: Any = None) -> None:
    """Print ``store_info`` output as two rich tables (summary and keys)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(title="episode store", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("location", str(info["location"]))
    summary.add_row("format", f"zarr v{info['zarr_format']}, preset {info['preset']}")
    summary.add_row("episodes", str(info["episodes"]))
    summary.add_row("steps", str(info["steps"]))
    lengths = info.get("episode_length")
    if lengths:
        summary.add_row(
            "episode length",
            f"min {lengths['min']}  median {_fmt(lengths['median'])}  mean {_fmt(lengths['mean'])}  max {lengths['max']}",
        )
    if info.get("success_rate") is not None:
        summary.add_row("success rate", f"{100 * info['success_rate']:.1f}%")
    if info.get("sources"):
        summary.add_row("sources", ", ".join(f"{k}: {v}" for k, v in info["sources"].items()))
    if info.get("meta_fields"):
        summary.add_row("episode metadata", ", ".join(info["meta_fields"]))
    console.print(summary)

    keys = Table(title="data keys")
    for col in ("key", "shape/step", "dtype", "mean", "std", "min", "max", "non-finite"):
        keys.add_column(col, justify="right" if col not in ("key", "dtype") else "left")
    for k, entry in info["keys"].items():
        st = entry.get("stats")
        cells = [_fmt(st[c]) for c in ("mean", "std", "min", "max", "nonfinite")] if st else [""] * 5
        keys.add_row(k, str(tuple(entry["shape"])), entry["dtype"], *cells)
    console.print(keys)


def plot_store_info(location_or_store: Any, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write a PNG with the episode-length histogram and each float key's value range (min..max, mean±std)."""
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    store, opened = _as_store(location_or_store)
    try:
        info = info or store_info(store)
        lengths = store.episode_lengths
    finally:
        if opened:
            store.close()
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_len, ax_keys = fig.subplots(1, 2)
    if len(lengths):
        ax_len.hist(
            lengths, bins=min(50, max(1, len(np.unique(lengths)))), color="tab:blue", edgecolor="white"
        )
    else:
        ax_len.text(0.5, 0.5, "no episodes", ha="center", va="center", transform=ax_len.transAxes)
    ax_len.set_xlabel("episode length (steps)")
    ax_len.set_ylabel("episodes")
    ax_len.set_title(f"{info['episodes']} episodes, {info['steps']} steps")

    ranged = [
        (k, e["stats"])
        for k, e in info["keys"].items()
        if e.get("stats") and not math.isnan(e["stats"]["min"])
    ]
    if ranged:
        ys = np.arange(len(ranged))
        lo = np.array([s["min"] for _, s in ranged])
        hi = np.array([s["max"] for _, s in ranged])
        mean = np.array([s["mean"] for _, s in ranged])
        std = np.array([s["std"] for _, s in ranged])
        ax_keys.barh(ys, hi - lo, left=lo, height=0.5, color="tab:gray", alpha=0.5, label="min..max")
        ax_keys.errorbar(mean, ys, xerr=std, fmt="o", color="tab:red", capsize=3, label="mean ± std")
        ax_keys.set_yticks(ys, [k for k, _ in ranged])
        ax_keys.legend(loc="best", fontsize="small")
    else:
        ax_keys.text(0.5, 0.5, "no float keys", ha="center", va="center", transform=ax_keys.transAxes)
    ax_keys.set_xlabel("value")
    ax_keys.set_title("value range per float key")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
