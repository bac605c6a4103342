"""validate_store / check_store: one deliberately broken store per problem, and the exact report."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from robopol.data.store import EpisodeStore
from robopol.data.validate import StoreProblem, check_store, validate_store
from robopol.errors import StoreError


def raw_store(path, ends, arrays=None, meta=None, zarr_format=3):
    """A store written with zarr directly (no commit record), so it can be broken in any way."""
    g = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    data = g.create_group("data")
    total = int(ends[-1]) if ends else 0
    arrays = (
        arrays if arrays is not None else {"obs": np.arange(total * 2, dtype=np.float32).reshape(total, 2)}
    )
    for k, v in arrays.items():
        data.create_array(k, shape=v.shape, dtype=v.dtype)[...] = v
    m = g.create_group("meta")
    if ends is not None:
        m.create_array("episode_ends", shape=(len(ends),), dtype=np.int64)[...] = np.asarray(ends)
    for k, v in (meta or {}).items():
        m.create_array(f"episode_{k}", shape=v.shape, dtype=v.dtype)[...] = v
    return path


def only(problems: list[StoreProblem]) -> StoreProblem:
    assert len(problems) == 1, [p.message for p in problems]
    return problems[0]


def test_clean_stores_have_no_problems(tmp_path):
    assert validate_store(raw_store(tmp_path / "a.zarr", [3, 5, 9])) == []
    assert validate_store(raw_store(tmp_path / "v2.zarr", [3, 5], zarr_format=2)) == []
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode({"obs": np.ones((4, 2)), "terminal": np.zeros(4, bool)}, success=True)
    assert validate_store(store) == [] and validate_store(tmp_path / "s.zarr", required_keys=["obs"]) == []
    check_store(store, required_keys=["obs", "terminal"])  # no exception


def test_data_shorter_than_episode_ends(tmp_path):
    path = raw_store(tmp_path / "a.zarr", [3, 5, 9], {"obs": np.zeros((7, 2), np.float32)})
    p = only(validate_store(path))
    assert (p.key, p.episode, p.index) == ("obs", 2, 2)
    assert str(path) in p.message
    assert (
        "data/obs has 7 steps but meta/episode_ends[-1] = 9: data ends inside episode 2 at step 2"
        in p.message
    )
    assert "drop the incomplete episodes" in p.message


def test_data_longer_than_episode_ends(tmp_path):
    path = raw_store(tmp_path / "a.zarr", [3, 5], {"obs": np.zeros((8, 2), np.float32)})
    p = only(validate_store(path))
    assert (p.key, p.episode, p.index) == ("obs", 2, 0)
    assert "data/obs has 8 steps but meta/episode_ends[-1] = 5: 3 steps after the last episode" in p.message


def test_committed_store_short_array_is_a_problem_but_an_uncommitted_tail_is_not(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    for n in (3, 4):
        store.add_episode({"obs": np.ones((n, 2), np.float32), "reward": np.zeros(n, np.float32)})
    # A killed writer leaves arrays longer than the commit record: readers ignore it, so it is clean.
    store.group["data/obs"].resize((12, 2))
    store.group["meta/episode_seed"].resize((5,))
    assert validate_store(tmp_path / "s.zarr") == []
    # Shorter than committed is real damage.
    store.group["data/reward"].resize((5,))
    p = only(validate_store(tmp_path / "s.zarr"))
    assert (p.key, p.episode, p.index) == ("reward", 1, 2)
    assert "data/reward has 5 steps but meta/episode_ends[-1] = 7" in p.message


def test_arrays_missing_from_a_committed_store(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode({"obs": np.ones((3, 2), np.float32), "action": np.zeros((3, 1))})
    del store.group["data"]["action"]
    del store.group["meta"]["episode_seed"]
    problems = validate_store(tmp_path / "s.zarr")
    assert [p.key for p in problems] == ["action", "meta/episode_seed"]
    assert "data/action is listed in the commit record but missing" in problems[0].message
    assert "meta/episode_seed is listed in the commit record but missing" in problems[1].message


def test_non_monotonic_episode_ends(tmp_path):
    path = raw_store(tmp_path / "a.zarr", [3, 6, 4, 9])
    p = only(validate_store(path))
    assert (p.key, p.episode, p.index) == ("meta/episode_ends", 2, None)
    assert "meta/episode_ends decreases at episode 2 (6 -> 4); ends must be strictly increasing" in p.message
    with pytest.raises(StoreError, match="meta/episode_ends is negative or decreasing at episode 2"):
        EpisodeStore.open(path)


def test_empty_episode(tmp_path):
    p = only(validate_store(raw_store(tmp_path / "a.zarr", [3, 3, 5])))
    assert (p.key, p.episode) == ("meta/episode_ends", 1)
    assert "episode 1 is empty (zero length: meta/episode_ends[1] = 3 equals the previous end)" in p.message
    p = only(validate_store(raw_store(tmp_path / "b.zarr", [0, 4])))
    assert p.episode == 0 and "episode 0 is empty" in p.message


def test_negative_episode_ends(tmp_path):
    problems = validate_store(raw_store(tmp_path / "a.zarr", [-2, 4], {"obs": np.zeros((4, 2), np.float32)}))
    messages = [p.message for p in problems]
    assert any("meta/episode_ends[0] = -2 is negative (episode 0)" in m for m in messages), messages
    assert problems[0].key == "meta/episode_ends" and problems[0].episode == 0


def test_nan_and_inf_are_located(tmp_path):
    obs = np.zeros((9, 2), np.float32)
    obs[4, 1] = np.nan  # episode 1 (steps 3..4), step 1
    obs[8, 0] = np.inf  # episode 2 (steps 5..8), step 3
    ints = np.zeros((9,), np.int64)  # integer data is never scanned
    problems = validate_store(raw_store(tmp_path / "a.zarr", [3, 5, 9], {"obs": obs, "n": ints}))
    assert [(p.key, p.episode, p.index) for p in problems] == [("obs", 1, 1), ("obs", 2, 3)]
    assert "data/obs has NaN at episode 1, step 1 (row 4); fix or drop that episode" in problems[0].message
    assert "data/obs has Inf at episode 2, step 3 (row 8)" in problems[1].message
    limited = validate_store(tmp_path / "a.zarr", max_per_key=1)
    assert len(limited) == 2 and "1 more non-finite steps beyond those listed" in limited[1].message


def test_nan_scan_covers_every_block(tmp_path, monkeypatch):
    import robopol.data.validate as v

    monkeypatch.setattr(v, "_BLOCK_BYTES", 16)  # 2 rows of 2 float32 per block
    obs = np.zeros((9, 2), np.float32)
    obs[[0, 7], 0] = np.nan
    problems = validate_store(raw_store(tmp_path / "a.zarr", [3, 5, 9], {"obs": obs}))
    assert [(p.episode, p.index) for p in problems] == [(0, 0), (2, 2)]


def test_meta_length_mismatch(tmp_path):
    path = raw_store(tmp_path / "a.zarr", [3, 5, 9], meta={"success": np.ones(2, bool), "seed": np.arange(3)})
    p = only(validate_store(path))
    assert (p.key, p.episode) == ("meta/episode_success", 2)
    assert "meta/episode_success has 2 values but the store has 3 episodes" in p.message


def test_bad_source_codes(tmp_path):
    path = raw_store(tmp_path / "a.zarr", [3, 5], meta={"source": np.array([0, 9], np.int8)})
    p = only(validate_store(path))
    assert (p.key, p.episode) == ("meta/episode_source", 1)
    assert "meta/episode_source[1] = 9 is not a source code" in p.message


def test_missing_required_keys(tmp_path):
    path = raw_store(tmp_path / "a.zarr", [3, 5])
    problems = validate_store(path, required_keys=["obs", "action", "reward"])
    assert [p.key for p in problems] == ["action", "reward"]
    assert "required key data/action is missing (the store has ['obs'])" in problems[0].message


def test_missing_episode_ends(tmp_path):
    path = raw_store(tmp_path / "a.zarr", None, {"obs": np.zeros((4, 2), np.float32)})
    p = only(validate_store(path))
    assert p.key == "meta/episode_ends"
    assert "meta/episode_ends is missing, so episode boundaries are unknown" in p.message


def test_check_store_raises_with_first_problems(tmp_path):
    obs = np.full((9, 2), np.nan, np.float32)
    path = raw_store(tmp_path / "a.zarr", [3, 3, 9], {"obs": obs})
    with pytest.raises(StoreError) as info:
        check_store(path, required_keys=["action"], max_shown=2)
    text = str(info.value)
    # 1 missing key + 1 empty episode + 9 NaN steps
    assert text.startswith(f"{path}: the episode store has 11 problem(s):")
    assert "required key data/action is missing" in text and "episode 1 is empty" in text
    assert "... and 9 more; run validate_store() for the full list" in text


def test_bad_location_raises(tmp_path):
    with pytest.raises(StoreError, match="no episode store at"):
        validate_store(tmp_path / "nope.zarr")
