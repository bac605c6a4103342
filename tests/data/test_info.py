"""store_info / print_store_info / plot_store_info."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from rich.console import Console

import robopol.data.info as info_mod
from robopol.data.info import plot_store_info, print_store_info, store_info
from robopol.data.store import EpisodeStore


@pytest.fixture
def store(tmp_path) -> EpisodeStore:
    store = EpisodeStore.create(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    for i, (length, source) in enumerate([(4, "expert"), (6, "expert"), (3, "policy"), (7, "human")]):
        obs = rng.standard_normal((length, 3)).astype(np.float32) * (i + 1)
        if i == 2:
            obs[1, 2] = np.nan  # ignored by the stats, counted as non-finite
        store.add_episode(
            {"obs": obs, "action": rng.uniform(-2, 2, (length, 2)), "count": np.arange(length)},
            source=source,
            success=i != 1,
        )
    return store


def test_store_info(store):
    info = store_info(store.location)
    assert info["episodes"] == 4 and info["steps"] == 20
    assert info["zarr_format"] == 3 and info["preset"] == "lowdim"
    assert info["episode_length"] == {"min": 3, "max": 7, "mean": 5.0, "median": 5.0}
    assert info["success_rate"] == pytest.approx(0.75)
    assert info["sources"] == {"expert": 2, "policy": 1, "human": 1}
    assert info["keys"]["obs"]["shape"] == [3] and info["keys"]["obs"]["dtype"] == "float32"
    assert info["keys"]["count"] == {
        "shape": [],
        "dtype": "int64",
        "chunks": list(store.group["data/count"].chunks),
    }
    data = store.load()
    for key in ("obs", "action"):
        x = data[key].astype(np.float64)
        finite = x[np.isfinite(x)]
        stats = info["keys"][key]["stats"]
        assert stats["mean"] == pytest.approx(finite.mean())
        assert stats["std"] == pytest.approx(finite.std())
        assert (stats["min"], stats["max"]) == (finite.min(), finite.max())
    assert info["keys"]["obs"]["stats"]["nonfinite"] == 1
    assert info["keys"]["action"]["stats"]["nonfinite"] == 0
    assert store_info(store, stats=False)["keys"]["obs"].get("stats") is None


def test_stats_stream_in_blocks(store, monkeypatch):
    whole = store_info(store)["keys"]["obs"]["stats"]
    monkeypatch.setattr(info_mod, "_BLOCK_BYTES", 12)  # one row of obs per block
    assert store_info(store)["keys"]["obs"]["stats"] == pytest.approx(whole)


def test_info_of_legacy_store_without_metadata(tmp_path):
    g = zarr.open_group(tmp_path / "dp.zarr", mode="w", zarr_format=2)
    g.create_array("data/action", shape=(5, 2), dtype=np.float32)[...] = np.ones((5, 2))
    g.create_array("meta/episode_ends", shape=(2,), dtype=np.int64)[...] = [2, 5]
    info = store_info(tmp_path / "dp.zarr")
    assert info["episodes"] == 2 and info["success_rate"] is None and info["sources"] == {}
    assert info["keys"]["action"]["stats"] == {
        "mean": 1.0,
        "std": 0.0,
        "min": 1.0,
        "max": 1.0,
        "nonfinite": 0,
    }


def test_print_store_info(store):
    console = Console(record=True, width=200)
    print_store_info(store_info(store), console=console)
    text = console.export_text()
    assert store.location in text
    for needle in ("episodes", "20", "success rate", "75.0%", "expert: 2", "obs", "(3,)", "float32", "count"):
        assert needle in text, needle
    empty = EpisodeStore.create(store.location + "-empty")
    console = Console(record=True, width=200)
    print_store_info(store_info(empty), console=console)
    assert "episodes" in console.export_text()


def test_plot_store_info(store, tmp_path):
    out = plot_store_info(store, tmp_path / "plots" / "info.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    # From a location, with precomputed info, and for a store with nothing to range-plot.
    assert plot_store_info(store.location, tmp_path / "b.png", info=store_info(store)).is_file()
    empty = EpisodeStore.create(tmp_path / "empty.zarr")
    assert plot_store_info(empty, tmp_path / "c.png").is_file()
