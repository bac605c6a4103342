"""WindowSampler against hand-computed windows on a tiny store whose values encode their step index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robopol.data.sampler import WindowConfig, WindowSampler, split_episodes
from robopol.errors import CheckpointError, ConfigError, StoreError

# Three episodes: [0, 3) ends by a time limit, [3, 8) truly terminates at step 7, [8, 10) is a time limit.
ENDS = np.array([3, 8, 10], dtype=np.int64)


def _data() -> dict[str, np.ndarray]:
    steps = np.arange(10)
    terminal = np.zeros(10, dtype=bool)
    terminal[7] = True
    return {
        "obs": np.stack([steps, 10 * steps], axis=1).astype(np.float32),  # obs[i] = (i, 10 i)
        "action": (100 + steps).astype(np.float32)[:, None],  # action[i] = 100 + i
        "reward": (steps + 1).astype(np.float32),  # r_i = i + 1
        "terminal": terminal,
        "intervention": steps % 2 == 1,
        "pos": (1000 + steps).astype(np.float64)[:, None],
    }


def _cfg(**kw) -> WindowConfig:
    base = dict(obs_keys=("obs",), obs_steps=2, horizon=4, gamma=0.5)
    base.update(kw)
    return WindowConfig(**base)


def _at(sampler: WindowSampler, t: int) -> dict[str, np.ndarray]:
    """The single window anchored at global step t."""
    (pos,) = np.flatnonzero(sampler.anchors == t)
    batch = sampler.windows(np.array([pos]))
    return {k: v[0] for k, v in batch.items()}


def test_default_padding_anchors_every_step_and_dtypes():
    s = WindowSampler(_data(), ENDS, _cfg(critic=True, step_keys=("intervention",)))
    assert len(s) == 10
    np.testing.assert_array_equal(s.anchors, np.arange(10))
    b = s.sample(5)
    assert b["obs"].shape == (5, 2, 2) and b["obs"].dtype == np.float32
    assert b["action"].shape == (5, 4, 1) and b["action"].dtype == np.float32
    assert b["intervention"].shape == (5, 4) and b["intervention"].dtype == bool
    for key in ("obs_is_pad", "action_is_pad", "valid", "terminal", "mask", "truncated", "next_obs_is_pad"):
        assert b[key].dtype == bool, key
    for key in ("index", "next_index"):
        assert b[key].dtype == np.int64, key
    assert b["reward_sum"].dtype == np.float32 and b["discount"].dtype == np.float32
    assert b["next_obs.obs"].shape == (5, 2, 2)


def test_zero_padding_keeps_only_windows_inside_an_episode():
    s = WindowSampler(_data(), ENDS, _cfg(pad_before=0, pad_after=0))
    # Window spans To-1 + H = 5 steps: only episode [3, 8) fits, anchored at t=4.
    np.testing.assert_array_equal(s.anchors, [4])
    w = _at(s, 4)
    np.testing.assert_array_equal(w["obs"][:, 0], [3, 4])
    np.testing.assert_array_equal(w["action"][:, 0], [104, 105, 106, 107])
    assert not w["obs_is_pad"].any() and not w["action_is_pad"].any()


def test_full_chunk_inside_episode():
    s = WindowSampler(_data(), ENDS, _cfg(critic=True))
    w = _at(s, 3)
    np.testing.assert_array_equal(w["obs"], [[3, 30], [3, 30]])  # step 2 is in another episode: repeat 3
    np.testing.assert_array_equal(w["obs_is_pad"], [True, False])
    np.testing.assert_array_equal(w["action"][:, 0], [103, 104, 105, 106])
    np.testing.assert_array_equal(w["valid"], [True] * 4)
    # r3 + r4/2 + r5/4 + r6/8 = 4 + 2.5 + 1.5 + 0.875
    assert w["reward_sum"] == pytest.approx(8.875)
    assert w["discount"] == pytest.approx(0.5**4)
    assert not w["terminal"] and w["mask"] and not w["truncated"]
    assert w["next_index"] == 7  # t + H
    np.testing.assert_array_equal(w["next_obs.obs"][:, 0], [6, 7])
    np.testing.assert_array_equal(w["next_obs_is_pad"], [False, False])


def test_terminal_inside_chunk_stops_reward_and_bootstrap():
    s = WindowSampler(_data(), ENDS, _cfg(critic=True))
    w = _at(s, 5)
    np.testing.assert_array_equal(w["action"][:, 0], [105, 106, 107, 107])
    np.testing.assert_array_equal(w["action_is_pad"], [False, False, False, True])
    np.testing.assert_array_equal(w["valid"], [True, True, True, False])  # terminal step 7 itself is valid
    assert w["reward_sum"] == pytest.approx(6 + 7 / 2 + 8 / 4)
    assert w["terminal"] and not w["mask"] and not w["truncated"]
    assert w["discount"] == pytest.approx(0.5**3)
    assert w["next_index"] == 7


def test_terminal_in_the_middle_of_an_episode_invalidates_later_steps():
    data = {
        "obs": np.arange(6, dtype=np.float32)[:, None],
        "action": np.arange(6, dtype=np.float32)[:, None],
        "reward": np.ones(6, dtype=np.float32),
        "terminal": np.array([0, 0, 1, 0, 0, 0], dtype=bool),
    }
    s = WindowSampler(data, np.array([6]), _cfg(critic=True))
    w = _at(s, 0)
    np.testing.assert_array_equal(w["action_is_pad"], [False] * 4)  # steps exist ...
    np.testing.assert_array_equal(w["valid"], [True, True, True, False])  # ... but come after the terminal
    assert w["reward_sum"] == pytest.approx(1 + 0.5 + 0.25)
    assert w["terminal"] and not w["mask"]
    assert w["next_index"] == 3  # t + n, not t + H
    w = _at(s, 3)  # the terminal lies before this chunk: no effect
    np.testing.assert_array_equal(w["valid"], [True, True, True, False])
    assert not w["terminal"] and w["truncated"] and w["next_index"] == 5


def test_chunk_crossing_episode_end_without_terminal_bootstraps_from_last_state():
    s = WindowSampler(_data(), ENDS, _cfg(critic=True))
    w = _at(s, 1)
    np.testing.assert_array_equal(w["obs"][:, 0], [0, 1])
    np.testing.assert_array_equal(w["action"][:, 0], [101, 102, 102, 102])
    np.testing.assert_array_equal(w["action_is_pad"], [False, False, True, True])
    np.testing.assert_array_equal(w["valid"], [True, True, False, False])
    assert w["reward_sum"] == pytest.approx(2 + 3 / 2)
    assert not w["terminal"] and w["mask"] and w["truncated"]
    assert w["discount"] == pytest.approx(0.25)
    assert w["next_index"] == 2  # min(t + n, e - 1): the last stored state of the episode
    np.testing.assert_array_equal(w["next_obs.obs"][:, 0], [1, 2])


def test_chunk_ending_exactly_at_episode_end_is_truncated():
    s = WindowSampler(_data(), np.array([4, 10]), _cfg(critic=True))
    w = _at(s, 0)
    np.testing.assert_array_equal(w["valid"], [True] * 4)
    assert w["truncated"] and w["mask"] and w["next_index"] == 3
    assert w["discount"] == pytest.approx(0.5**4)


def test_episode_shorter_than_history_and_horizon():
    s = WindowSampler(_data(), ENDS, _cfg(obs_steps=3, critic=True))
    w = _at(s, 8)  # episode [8, 10) has 2 steps; window needs 3 history + 4 chunk steps
    np.testing.assert_array_equal(w["obs"][:, 0], [8, 8, 8])
    np.testing.assert_array_equal(w["obs_is_pad"], [True, True, False])
    np.testing.assert_array_equal(w["action"][:, 0], [108, 109, 109, 109])
    np.testing.assert_array_equal(w["action_is_pad"], [False, False, True, True])
    np.testing.assert_array_equal(w["valid"], [True, True, False, False])
    assert w["reward_sum"] == pytest.approx(9 + 10 / 2)
    assert w["next_index"] == 9
    np.testing.assert_array_equal(w["next_obs.obs"][:, 0], [8, 8, 9])
    np.testing.assert_array_equal(w["next_obs_is_pad"], [True, False, False])


def test_latency_shifts_the_chunk_and_drops_fully_padded_anchors():
    s = WindowSampler(_data(), ENDS, _cfg(latency_steps=1, critic=True, step_keys=("intervention",)))
    np.testing.assert_array_equal(s.anchors, [0, 1, 3, 4, 5, 6, 8])
    w = _at(s, 3)
    np.testing.assert_array_equal(w["obs"][:, 0], [3, 3])
    np.testing.assert_array_equal(w["action"][:, 0], [104, 105, 106, 107])
    np.testing.assert_array_equal(w["intervention"], [False, True, False, True])
    assert w["reward_sum"] == pytest.approx(5 + 6 / 2 + 7 / 4 + 8 / 8)
    assert w["terminal"]  # the terminal step 7 is the chunk's last step
    w = _at(s, 6)
    np.testing.assert_array_equal(w["action"][:, 0], [107, 107, 107, 107])
    np.testing.assert_array_equal(w["action_is_pad"], [False, True, True, True])
    assert w["reward_sum"] == pytest.approx(8.0) and w["discount"] == pytest.approx(0.5)


def test_gamma_power_per_chunk_position():
    data = _data()
    for h in range(4):
        data["reward"] = np.zeros(10, dtype=np.float32)
        data["reward"][3 + h] = 1.0
        w = _at(WindowSampler(data, ENDS, _cfg(critic=True, gamma=0.9)), 3)
        assert w["reward_sum"] == pytest.approx(0.9**h, rel=1e-6)
        assert w["discount"] == pytest.approx(0.9**4, rel=1e-6)


def test_no_terminal_key_means_time_limits_only():
    data = _data()
    del data["terminal"]
    w = _at(WindowSampler(data, ENDS, _cfg(critic=True)), 5)
    np.testing.assert_array_equal(w["valid"], [True, True, True, False])
    assert not w["terminal"] and w["mask"] and w["truncated"]


def test_episode_subset_and_batch_matches_single_windows():
    s = WindowSampler(_data(), ENDS, _cfg(critic=True), episodes=[0, 2])
    np.testing.assert_array_equal(s.anchors, [0, 1, 2, 8, 9])
    batch = s.windows(np.arange(len(s)))
    for i in range(len(s)):
        single = s.windows(np.array([i]))
        for key, value in batch.items():
            np.testing.assert_array_equal(value[i], single[key][0], err_msg=key)


def test_lazy_zarr_arrays_match_numpy():
    zarr = pytest.importorskip("zarr")
    data = _data()
    lazy = {k: zarr.array(v) for k, v in data.items()}
    a = WindowSampler(data, ENDS, _cfg(critic=True), seed=3).sample(32)
    b = WindowSampler(lazy, ENDS, _cfg(critic=True), seed=3).sample(32)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_goal_relabelling_modes():
    data = _data()
    current = WindowSampler(data, ENDS, _cfg(goal_key="pos", p_current=1, p_future=0)).sample(64)
    np.testing.assert_array_equal(current["goal_index"], current["index"])
    np.testing.assert_array_equal(current["goal"][:, 0], 1000 + current["index"])
    assert current["goal"].dtype == np.float64

    future = WindowSampler(data, ENDS, _cfg(goal_key="pos")).sample(2000)
    end = ENDS[np.searchsorted(ENDS, future["index"], side="right")]
    assert np.all(future["goal_index"] >= future["index"]) and np.all(future["goal_index"] < end)
    from_zero = future["goal_index"][future["index"] == 0]
    np.testing.assert_array_equal(np.unique(from_zero), [0, 1, 2])  # uniform over [t, e) includes t

    geo = WindowSampler(data, ENDS, _cfg(goal_key="pos", future_sampling="geometric", gamma=0.5)).sample(2000)
    end = ENDS[np.searchsorted(ENDS, geo["index"], side="right")]
    assert np.all(geo["goal_index"] == np.minimum(np.maximum(geo["goal_index"], geo["index"] + 1), end - 1))

    rand = WindowSampler(
        data, ENDS, _cfg(goal_key="pos", goal_out_key="g", p_future=0, p_random=1), episodes=[0, 2]
    ).sample(2000)
    np.testing.assert_array_equal(np.unique(rand["goal_index"]), [0, 1, 2, 8, 9])
    np.testing.assert_array_equal(rand["g"][:, 0], 1000 + rand["goal_index"])

    mixed = WindowSampler(data, ENDS, _cfg(goal_key="pos", p_current=0.5, p_future=0.5), seed=1).sample(4000)
    share_current = np.mean(mixed["goal_index"] == mixed["index"])
    # Future goals equal t with probability 1/(e - t) too; expected share is 0.5 + 0.5 * E[1/(e-t)].
    end = ENDS[np.searchsorted(ENDS, mixed["index"], side="right")]
    expected = 0.5 + 0.5 * np.mean(1.0 / (end - mixed["index"]))
    assert share_current == pytest.approx(expected, abs=0.03)


def test_sampling_is_deterministic_in_seed():
    a = WindowSampler(_data(), ENDS, _cfg(), seed=7).sample(16)
    b = WindowSampler(_data(), ENDS, _cfg(), seed=7).sample(16)
    c = WindowSampler(_data(), ENDS, _cfg(), seed=8).sample(16)
    np.testing.assert_array_equal(a["index"], b["index"])
    assert not np.array_equal(a["index"], c["index"])


def test_epoch_visits_every_anchor_once_and_reshuffles():
    s = WindowSampler(_data(), ENDS, _cfg())
    first = [b["index"] for b in s.iter_epoch(3)]
    assert [len(i) for i in first] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.arange(10))
    second = np.concatenate([b["index"] for b in s.iter_epoch(3, drop_last=True)])
    assert second.size == 9 and np.unique(second).size == 9
    assert not np.array_equal(np.concatenate(first)[:9], second)
    assert s.epoch == 2


def _run(sampler: WindowSampler, epochs: int) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(epochs):
        out += list(sampler.iter_epoch(4))
    return out


def test_resume_mid_epoch_reproduces_the_uninterrupted_batches():
    cfg = _cfg(critic=True, goal_key="pos", p_current=0.2, p_future=0.5, p_random=0.3)
    reference = _run(WindowSampler(_data(), ENDS, cfg, seed=5), epochs=3)

    interrupted = WindowSampler(_data(), ENDS, cfg, seed=5)
    it = interrupted.iter_epoch(4)
    head = [next(it), next(it)]
    state = json.loads(json.dumps(interrupted.state_dict()))  # must survive a JSON round trip
    resumed = WindowSampler(_data(), ENDS, cfg, seed=0)
    resumed.load_state_dict(state)
    tail = list(resumed.iter_epoch(4)) + _run(resumed, epochs=2)

    got = head + tail
    assert len(got) == len(reference) == 9
    for want, have in zip(reference, got, strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], have[key], err_msg=key)


def test_load_state_from_other_store_fails():
    state = WindowSampler(_data(), ENDS, _cfg()).state_dict()
    other = WindowSampler(_data(), ENDS, _cfg(), episodes=[1])
    with pytest.raises(CheckpointError, match="10 windows but this sampler has 5"):
        other.load_state_dict(state)


def test_split_episodes():
    train, val = split_episodes(10, 0.2, seed=0)
    assert val.size == 2 and train.size == 8
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(10))
    again = split_episodes(10, 0.2, seed=0)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(split_episodes(10, 0.2, seed=1)[1], val)
    assert split_episodes(3, 0.9, seed=0)[0].size == 1  # at least one training episode
    assert split_episodes(1, 0.5)[1].size == 0
    assert split_episodes(5, 0.0)[1].size == 0
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\).*got 1.0"):
        split_episodes(5, 1.0)
    with pytest.raises(ConfigError, match="got -0.1"):
        split_episodes(5, -0.1)
    with pytest.raises(StoreError, match="no episodes"):
        split_episodes(0, 0.1)


def test_data_errors_name_the_problem():
    data = _data()
    with pytest.raises(StoreError, match=r"no key\(s\) \['state'\]"):
        WindowSampler(data, ENDS, _cfg(obs_keys=("state",)))
    with pytest.raises(StoreError, match=r"no key\(s\) \['reward'\]"):
        WindowSampler({k: v for k, v in data.items() if k != "reward"}, ENDS, _cfg(critic=True))
    short = dict(data, action=data["action"][:9])
    with pytest.raises(StoreError, match=r"\{'action': 9\}.*episode_ends\[-1\] = 10"):
        WindowSampler(short, ENDS, _cfg())
    with pytest.raises(StoreError, match="no window fits.*longest has 5 steps"):
        WindowSampler(data, ENDS, _cfg(horizon=8, pad_before=0, pad_after=0))
    with pytest.raises(StoreError, match="non-decreasing"):
        WindowSampler(data, np.array([5, 3, 10]), _cfg())
    with pytest.raises(StoreError, match=r"ids in \[0, 3\)"):
        WindowSampler(data, ENDS, _cfg(), episodes=[3])
    bad_reward = dict(data, reward=np.ones((10, 2), dtype=np.float32))
    with pytest.raises(StoreError, match=r"shape \(10,\) or \(10, 1\), got \(10, 2\)"):
        WindowSampler(bad_reward, ENDS, _cfg(critic=True))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="pad_after must be in \\[0, horizon-1=3\\]"):
        _cfg(pad_after=4)
    with pytest.raises(ConfigError, match="horizon must be >= 1"):
        _cfg(horizon=0)
    with pytest.raises(ConfigError, match="sum to 1"):
        _cfg(goal_key="pos", p_current=0.5, p_future=0.6)
    with pytest.raises(ConfigError, match=r"batch key\(s\) \['valid'\] are used twice or collide"):
        _cfg(obs_keys=("valid",))
    with pytest.raises(ConfigError, match="gamma must be in"):
        _cfg(gamma=0.0)
    with pytest.raises(ConfigError, match="geometric' needs gamma < 1"):
        _cfg(goal_key="pos", future_sampling="geometric", gamma=1.0)


def test_bench_runs_on_a_tiny_store(tmp_path):
    from robopol.data.bench import bench_data

    rows = bench_data(n_steps=3000, horizon=4, batch_size=8, seconds=0.01, out_dir=tmp_path)
    cases = [r["case"] for r in rows]
    assert cases[0] == "ram imitation" and "zarr lazy per-batch reads" in cases
    assert all(r["windows_per_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "data.json").read_text())["rows"][0]["case"] == "ram imitation"
