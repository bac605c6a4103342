"""ChunkScheduler: stamping from the observation time, stale-action dropping and over-budget chunks, reset
epochs, every merge strategy hand-computed, RTI grid shifts and hand-off bounds, and the continuity of the
pending trajectory fed from a smooth reference (with a mode switch that only the blending strategies soften)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robopol.real.scheduler import STRATEGIES, Chunk, ChunkScheduler, Trajectory, check_rti_bounds

from robopol.errors import ConfigError

DT = 0.1
LAT = 0.05


def scheduler(strategy: str = "replace", **kw) -> ChunkScheduler:
    kw = {"exec_latency": LAT, **kw}
    return ChunkScheduler(DT, 1, strategy=strategy, **kw)


def column(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[:, None]


def assert_traj(traj: Trajectory, times, actions, chunk_ids=None, indices=None) -> None:
    np.testing.assert_allclose(traj.times, times, atol=1e-12)
    np.testing.assert_allclose(traj.actions[:, 0], actions, atol=1e-9)
    if chunk_ids is not None:
        np.testing.assert_array_equal(traj.chunk_ids, chunk_ids)
    if indices is not None:
        np.testing.assert_array_equal(traj.indices, indices)


# ------------------------------------------------------------------------------------------ stamping
def test_actions_are_stamped_from_the_observation_and_stale_ones_dropped():
    s = ChunkScheduler(DT, 2, exec_latency=LAT)
    actions = np.arange(10.0).reshape(5, 2)
    # planned from an observation at 1.0, ready at 1.12: actions due before 1.17 (at 1.0 and 1.1) are stale
    pending = s.add(Chunk(actions, obs_t=1.0, chunk_id=7, epoch=s.epoch), now=1.12)
    np.testing.assert_allclose(pending.times, [1.2, 1.3, 1.4], atol=1e-12)
    np.testing.assert_array_equal(pending.actions, actions[2:])
    np.testing.assert_array_equal(pending.chunk_ids, [7, 7, 7])
    np.testing.assert_array_equal(pending.indices, [2, 3, 4])
    assert (s.dropped, s.over_budget, s.rejected, s.chunks) == (2, 0, 0, 1)
    assert pending.end_time == pytest.approx(1.4)


def test_an_action_due_exactly_at_now_plus_exec_latency_is_kept():
    s = scheduler()
    pending = s.add(Chunk(column([0, 1, 2]), obs_t=1.0, chunk_id=1, epoch=s.epoch), now=1.05)
    assert_traj(pending, [1.1, 1.2], [1, 2], indices=[1, 2])
    assert s.dropped == 1


def test_zero_latency_keeps_the_current_action_and_offset_shifts_the_stamps():
    s = scheduler(exec_latency=0.0)
    assert_traj(s.add(Chunk(column([0, 1, 2]), 1.0, 1, s.epoch), now=1.0), [1.0, 1.1, 1.2], [0, 1, 2])
    s = scheduler(action_offset=1)
    # action i is due at obs_t + (i + 1) * dt: none is stale at now + latency = 1.05
    assert_traj(s.add(Chunk(column([0, 1, 2]), 1.0, 1, s.epoch), now=1.0), [1.1, 1.2, 1.3], [0, 1, 2],
                indices=[0, 1, 2])
    assert s.dropped == 0


def test_all_stale_is_over_budget_and_the_last_action_takes_the_next_grid_slot():
    s = scheduler()
    # due at 1.0, 1.1, 1.2; ready at 1.3: the first slot not before 1.35 is 1.4
    pending = s.add(Chunk(column([5, 6, 7]), obs_t=1.0, chunk_id=3, epoch=s.epoch), now=1.3)
    assert_traj(pending, [1.4], [7], chunk_ids=[3], indices=[2])
    assert (s.dropped, s.over_budget) == (3, 1)
    # exactly on a slot: ready at 1.25, so 1.3 is still executable
    s = scheduler()
    pending = s.add(Chunk(column([5, 6, 7]), obs_t=1.0, chunk_id=4, epoch=s.epoch), now=1.25)
    assert_traj(pending, [1.3], [7], indices=[2])
    assert (s.dropped, s.over_budget) == (3, 1)


def test_over_budget_chunk_replaces_the_pending_future():
    s = scheduler()
    s.add(Chunk(column(np.arange(10)), obs_t=0.0, chunk_id=1, epoch=s.epoch), now=0.0)
    pending = s.add(Chunk(column([50, 51]), obs_t=0.2, chunk_id=2, epoch=s.epoch), now=0.42)
    # in force at 0.42: action 4 (due 0.4); the late chunk's last action goes to slot 0.2 + 3 * 0.1 = 0.5
    assert_traj(pending, [0.4, 0.5], [4, 51], chunk_ids=[1, 2], indices=[4, 1])
    assert s.over_budget == 1 and s.dropped == 1 + 2


def test_reset_starts_a_new_epoch_and_rejects_old_chunks():
    s = scheduler()
    old_epoch = s.epoch
    s.add(Chunk(column([1, 2, 3]), obs_t=0.0, chunk_id=1, epoch=old_epoch), now=0.0)
    assert len(s.pending) == 2
    s.reset()
    assert s.epoch == old_epoch + 1 and len(s.pending) == 0
    pending = s.add(Chunk(column([1, 2, 3]), obs_t=0.1, chunk_id=2, epoch=old_epoch), now=0.1)
    assert len(pending) == 0
    assert (s.rejected, s.chunks, s.dropped) == (1, 1, 1)
    s.add(Chunk(column([1, 2, 3]), obs_t=0.1, chunk_id=3, epoch=old_epoch + 5), now=0.1)
    assert s.rejected == 2
    pending = s.add(Chunk(column([1, 2, 3]), obs_t=0.1, chunk_id=4, epoch=s.epoch), now=0.1)
    assert_traj(pending, [0.2, 0.3], [2, 3], chunk_ids=[4, 4])
    assert s.chunks == 2


def test_bad_chunks_and_bad_settings():
    s = ChunkScheduler(DT, 2)
    with pytest.raises(ValueError, match=r"chunk 9: actions must be \(H, 2\), got \(5,\)"):
        s.add(Chunk(np.zeros(5), 0.0, 9, s.epoch), now=0.0)
    with pytest.raises(ValueError, match=r"got \(5, 3\)"):
        s.add(Chunk(np.zeros((5, 3)), 0.0, 9, s.epoch), now=0.0)
    with pytest.raises(ConfigError, match="merge strategy must be one of replace, queue_merge, temporal_ensemble, "
                                          "rti, got 'average'"):
        ChunkScheduler(DT, 2, strategy="average")
    for kw in ({"dt": 0.0}, {"dt": -0.1}, {"exec_latency": -0.01}, {"merge_weight": 1.5}, {"merge_weight": -0.1}):
        args = {"dt": DT, "action_dim": 2, **kw}
        with pytest.raises(ConfigError, match="need dt > 0, exec_latency >= 0 and merge_weight in"):
            ChunkScheduler(**args)


def test_trajectory_helpers():
    empty = Trajectory.empty(3)
    assert len(empty) == 0 and empty.actions.shape == (0, 3) and empty.end_time == -math.inf
    assert empty.active(5.0) is None
    t = Trajectory(np.array([1.0, 2.0, 3.0]), column([10, 20, 30]), np.array([1, 1, 2]), np.array([0, 1, 0]))
    assert [t.active(x) for x in (0.5, 1.0, 1.5, 2.0, 2.999, 3.0, 9.0)] == [None, 0, 0, 1, 1, 2, 2]
    assert t.end_time == 3.0
    tail = t.select(t.times > 1.5)
    assert_traj(tail, [2.0, 3.0], [20, 30], chunk_ids=[1, 2], indices=[1, 0])
    both = Trajectory.concat(t.select(t.times < 1.5), tail)
    assert_traj(both, [1.0, 2.0, 3.0], [10, 20, 30], chunk_ids=[1, 1, 2])


# ------------------------------------------------------------------------------------------ strategies
# Chunk A (obs 0.0, ready 0.0): A_i = i at 0.0 ... 0.9, A_0 stale; chunk B (obs 0.3, ready 0.35): B_j = 100 + j at
# 0.3 ... 1.2, B_0 stale; chunk C (obs 0.5, ready 0.55): C_j = 200 + j at 0.5 ... 1.4, C_0 stale.
A = Chunk(column(np.arange(10)), obs_t=0.0, chunk_id=1)
B = Chunk(column(100 + np.arange(10)), obs_t=0.3, chunk_id=2)
C = Chunk(column(200 + np.arange(10)), obs_t=0.5, chunk_id=3)


def feed(s: ChunkScheduler, *chunks_and_times) -> list[Trajectory]:
    return [s.add(dataclasses.replace(chunk, epoch=s.epoch), now) for chunk, now in chunks_and_times]


@pytest.mark.parametrize("strategy", ["replace", "rti"])
def test_replace_keeps_the_past_and_replaces_the_future(strategy):
    s = scheduler(strategy)
    first, second, third = feed(s, (A, 0.0), (B, 0.35), (C, 0.55))
    assert_traj(first, np.arange(1, 10) / 10, np.arange(1, 10))
    # in force at 0.35: A_3 (due 0.3); B takes over from its first fresh action at 0.4
    assert_traj(second, np.arange(3, 13) / 10, [3, *range(101, 110)], chunk_ids=[1] + [2] * 9,
                indices=[3, *range(1, 10)])
    # in force at 0.55: B_2 (due 0.5); C from 0.6
    assert_traj(third, np.arange(5, 15) / 10, [102, *range(201, 210)], chunk_ids=[2] + [3] * 9)
    assert s.dropped == 3


def test_queue_merge_blends_the_overlap_and_appends_the_rest():
    s = scheduler("queue_merge")
    first, second, third = feed(s, (A, 0.0), (B, 0.35), (C, 0.55))
    assert_traj(first, np.arange(1, 10) / 10, np.arange(1, 10))
    # 0.4 ... 0.9 overlap: 0.7 * B + 0.3 * A; 1.0 ... 1.2 only B
    assert_traj(second, np.arange(3, 13) / 10,
                [3, 71.9, 72.9, 73.9, 74.9, 75.9, 76.9, 107, 108, 109], chunk_ids=[1] + [2] * 9)
    # C blends with what is pending (already blended): 0.6: 0.7 * 201 + 0.3 * 73.9 = 162.87 ...
    assert_traj(third, np.arange(5, 15) / 10,
                [72.9, 162.87, 163.87, 164.87, 165.87, 175.6, 176.6, 177.6, 208, 209], chunk_ids=[2] + [3] * 9)


def test_queue_merge_weight_is_configurable():
    s = scheduler("queue_merge", merge_weight=0.25)
    _, second = feed(s, (A, 0.0), (B, 0.35))
    np.testing.assert_allclose(second.actions[1:4, 0], [0.25 * 101 + 0.75 * 4, 0.25 * 102 + 0.75 * 5,
                                                        0.25 * 103 + 0.75 * 6])


def test_temporal_ensemble_weights_oldest_first():
    s = scheduler("temporal_ensemble", ensemble_decay=math.log(2.0))  # weights 1, 1/2, 1/4, oldest first
    first, second, third = feed(s, (A, 0.0), (B, 0.35), (C, 0.55))
    assert_traj(first, np.arange(1, 10) / 10, np.arange(1, 10))
    # two predictions for 0.4 ... 0.9: (A + B / 2) / 1.5; then B alone
    assert_traj(second, np.arange(3, 13) / 10,
                [3, 54.5 / 1.5, 56 / 1.5, 57.5 / 1.5, 59 / 1.5, 60.5 / 1.5, 62 / 1.5, 107, 108, 109])
    # three for 0.6 ... 0.9: (A + B / 2 + C / 4) / 1.75 from the raw predictions; two (B, C) for 1.0 ... 1.2
    assert_traj(third, np.arange(5, 15) / 10,
                [56 / 1.5, 107.75 / 1.75, 109.5 / 1.75, 111.25 / 1.75, 113 / 1.75,
                 209.5 / 1.5, 211 / 1.5, 212.5 / 1.5, 208, 209], chunk_ids=[2] + [3] * 9)


def test_temporal_ensemble_default_decay_is_nearly_uniform_and_reset_forgets():
    s = scheduler("temporal_ensemble")
    _, second = feed(s, (A, 0.0), (B, 0.35))
    w = np.exp(-0.01)
    assert second.actions[1, 0] == pytest.approx((4 + w * 101) / (1 + w))
    s.reset()
    (after,) = feed(s, (B, 0.35))
    assert_traj(after, np.arange(4, 13) / 10, range(101, 110))  # no memory of A


def test_rti_pending_equals_replace():
    chunks = [(Chunk(column(np.sin(np.arange(8) + k)), obs_t=0.2 * k, chunk_id=k + 1), 0.2 * k + 0.03 * (k % 3))
              for k in range(6)]
    a, b = scheduler("rti"), scheduler("replace")
    for chunk, now in chunks:
        chunk.epoch = a.epoch
        pa, pb = a.add(chunk, now), b.add(chunk, now)
        for f in ("times", "actions", "chunk_ids", "indices"):
            np.testing.assert_array_equal(getattr(pa, f), getattr(pb, f))


@pytest.mark.parametrize(("d", "s", "h"), [(0, 0, 0), (2, 2, 4), (2, 4, 8), (3, 5, 8), (1, 7, 8)])
def test_check_rti_bounds_accepts(d, s, h):
    check_rti_bounds(d, s, h)


@pytest.mark.parametrize(("d", "s", "h"), [(3, 2, 8), (2, 7, 8), (5, 5, 8), (1, 0, 8)])
def test_check_rti_bounds_rejects(d, s, h):
    with pytest.raises(ConfigError) as err:
        check_rti_bounds(d, s, h)
    assert str(err.value) == (f"the chunk hand-off needs delay <= execute <= horizon - delay, got delay {d} steps, "
                              f"execute {s}, horizon {h}: lower the inference latency or policy.action_steps, "
                              "or use a longer horizon")


# ------------------------------------------------------------------------------------------ continuity
H, EVERY, W = 16, 4, 2.0  # horizon, plan every 4 steps, reference angular speed (rad/s)
N_CHUNKS = 12


def reference(t: np.ndarray, phase: float) -> np.ndarray:
    return np.stack([np.sin(W * t + phase), np.cos(W * t)], axis=-1)


def executed(strategy: str, chunks: list[tuple[Chunk, float]], **kw):
    """Deliver chunks at their ready times; returns every pending trajectory and the action in force at each
    tick of a 4x finer grid (what a servo would track)."""
    s = ChunkScheduler(DT, 2, strategy=strategy, exec_latency=0.02, **kw)
    pendings, stream = [], []
    queue = list(chunks)
    end = chunks[-1][0].obs_t + H * DT
    for tau in np.arange(0.0, end, DT / 4) + DT / 8:
        while queue and queue[0][1] <= tau:
            chunk, now = queue.pop(0)
            chunk.epoch = s.epoch
            pendings.append(s.add(chunk, now))
        k = s.pending.active(tau)
        if k is not None:
            stream.append(s.pending.actions[k].copy())
    return s, pendings, np.stack(stream)


def max_jump(actions: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(actions, axis=0)).max(axis=0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(strategy=st.sampled_from(STRATEGIES),
       delays=st.lists(st.floats(0.0, 3.5 * DT), min_size=N_CHUNKS, max_size=N_CHUNKS),
       error=st.floats(0.0, 0.1), phase=st.floats(0.0, 2 * math.pi), seed=st.integers(0, 2 ** 16))
def test_smooth_reference_gives_a_continuous_trajectory(strategy, delays, error, phase, seed):
    """Chunk k is planned at k * 4 * dt, ready after a random delay under 3.5 dt, and predicts the reference
    with an error of at most ``error`` per value. Every pending value is the reference plus a convex
    combination of prediction errors (replace: one; queue_merge: 0.7 new + 0.3 pending; ensemble: a weighted
    mean), and consecutive waypoints are one grid step apart, so consecutive actions differ by at most
    W * dt (the reference's Lipschitz bound) + 2 * error, the executed stream included."""
    rng = np.random.default_rng(seed)
    chunks = []
    for k in range(N_CHUNKS):
        obs_t = k * EVERY * DT
        predicted = reference(obs_t + np.arange(H) * DT, phase) + rng.uniform(-error, error, (H, 2))
        chunks.append((Chunk(predicted, obs_t=obs_t, chunk_id=k + 1), obs_t + delays[k]))
    s, pendings, stream = executed(strategy, chunks)
    bound = W * DT + 2 * error + 1e-9
    for pending in pendings:
        np.testing.assert_allclose(np.diff(pending.times), DT, atol=1e-9)  # no gaps, no duplicates
        assert np.all(max_jump(pending.actions) <= bound)
        truth = reference(pending.times, phase)
        assert np.all(np.abs(pending.actions - truth) <= error + 1e-9)
    assert np.all(max_jump(stream) <= bound)
    assert s.over_budget == 0 and s.rejected == 0


def test_mode_switch_jumps_under_replace_and_is_softened_by_blending():
    """Predictions switch from 0 to 1 for every chunk planned from 1.0 s on. Replace switches in one step (a
    jump of the whole gap); queue_merge's first blended step moves 0.7 of it; the ensemble averages the new
    chunk with the older ones still covering each step."""
    def chunks():
        out = []
        for k in range(N_CHUNKS):
            obs_t = k * EVERY * DT
            value = 1.0 if obs_t >= 1.0 - 1e-9 else 0.0
            out.append((Chunk(np.full((H, 2), value), obs_t=obs_t, chunk_id=k + 1), obs_t + 0.15))
        return out

    jumps = {strategy: max_jump(executed(strategy, chunks())[2]).max() for strategy in STRATEGIES}
    assert jumps["replace"] == pytest.approx(1.0) and jumps["rti"] == pytest.approx(1.0)
    assert jumps["queue_merge"] == pytest.approx(0.7)
    assert jumps["temporal_ensemble"] < 0.3  # four chunks cover each step: about a quarter per switch
    assert jumps["queue_merge"] < jumps["replace"] and jumps["temporal_ensemble"] < jumps["replace"]
    for strategy in STRATEGIES:  # every strategy ends in the new mode
        assert executed(strategy, chunks())[2][-1] == pytest.approx([1.0, 1.0])
