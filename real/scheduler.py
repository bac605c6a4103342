"""Chunk scheduling: timestamped policy chunks -> one pending trajectory of action waypoints.

A chunk planned from an observation captured at ``obs_t`` is stamped from that time, not from when
inference finished: action ``i`` is due at ``obs_t + (i + action_offset) * dt`` (diffusion_policy's rule), so
inference latency shows up as actions that are already due. Those are dropped when due before
``now + exec_latency``; when nothing is left the chunk is *over budget* and its last action is scheduled at
the next grid slot (also diffusion_policy's rule). Both are counted.

What survives is merged with the pending trajectory by a strategy:

- ``replace`` (diffusion_policy / UMI): the new chunk replaces the pending future from its first action on;
- ``queue_merge`` (LeRobot's async client): where old and new overlap, ``merge_weight * new + (1 -
  merge_weight) * old`` (0.7 / 0.3), new steps past the old end are appended;
- ``temporal_ensemble`` (ACT): every future step is the average of all still-pending predictions for it,
  weighted ``exp(-ensemble_decay * i)`` with ``i = 0`` for the oldest, so older commitments dominate;
- ``rti``: ``replace``, for an RTI policy; the deploy loop passes it the number of control steps since its
  previous plan, which is how far its warm start must shift (assuming ``action_steps`` breaks as soon as
  latency makes the scheduler drop actions).

A reset epoch rejects chunks planned before a reset, a pause or a human takeover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robopol.errors import ConfigError

STRATEGIES = ("replace", "queue_merge", "temporal_ensemble", "rti")
TIME_TOLERANCE = 1e-6  # s


@dataclass
class Chunk:
    """A policy's prediction: ``actions[i]`` for the step ``i`` after the observation."""

    actions: np.ndarray
    """(H, A) raw actions."""
    obs_t: float
    """Capture time of the (newest) observation it was planned from."""
    chunk_id: int
    """Increasing id, recorded with every step it produced."""
    epoch: int = 0
    """The scheduler epoch it was planned in."""


@dataclass
class Trajectory:
    """Action waypoints: ``actions[k]`` is executed from ``times[k]`` until ``times[k + 1]``."""

    times: np.ndarray
    actions: np.ndarray
    chunk_ids: np.ndarray
    indices: np.ndarray

    @classmethod
    def empty(cls, action_dim: int) -> Trajectory:
        return cls(np.zeros(0), np.zeros((0, action_dim)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.times)

    def active(self, t: float) -> int | None:
        """Index of the waypoint in force at ``t`` (the last one due), None before the first. A waypoint due
        within ``TIME_TOLERANCE`` of ``t`` counts as due: ticks and waypoints sit on grids built by repeated
        float addition."""
        k = int(np.searchsorted(self.times, t + TIME_TOLERANCE, side="right")) - 1
        return k if k >= 0 else None

    @property
    def end_time(self) -> float:
        """When the last waypoint is due (-inf when empty)."""
        return float(self.times[-1]) if len(self) else -math.inf

    def select(self, mask: np.ndarray) -> Trajectory:
        return Trajectory(self.times[mask], self.actions[mask], self.chunk_ids[mask], self.indices[mask])

    @staticmethod
    def concat(a: Trajectory, b: Trajectory) -> Trajectory:
        return Trajectory(np.concatenate([a.times, b.times]), np.concatenate([a.actions, b.actions]),
                          np.concatenate([a.chunk_ids, b.chunk_ids]), np.concatenate([a.indices, b.indices]))


def check_rti_bounds(delay_steps: int, execute_steps: int, horizon: int) -> None:
    """RTC / RTI hand-off needs ``d <= s <= H - d``: the next chunk must arrive before the current one is
    used up, and must not be asked to start later than it is long."""
    if not delay_steps <= execute_steps <= horizon - delay_steps:
        raise ConfigError(f"the chunk hand-off needs delay <= execute <= horizon - delay, got delay {delay_steps} "
                          f"steps, execute {execute_steps}, horizon {horizon}: lower the inference latency or "
                          "policy.action_steps, or use a longer horizon")


class ChunkScheduler:
    """Stamps chunks, drops what is stale and merges the rest into the pending trajectory."""

    def __init__(self, dt: float, action_dim: int, strategy: str = "replace", exec_latency: float = 0.01,
                 action_offset: int = 0, merge_weight: float = 0.7, ensemble_decay: float = 0.01) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"merge strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
        if dt <= 0 or exec_latency < 0 or not 0.0 <= merge_weight <= 1.0:
            raise ConfigError(f"need dt > 0, exec_latency >= 0 and merge_weight in [0, 1], got {dt}, "
                              f"{exec_latency}, {merge_weight}")
        self.dt, self.action_dim, self.strategy = dt, action_dim, strategy
        self.exec_latency, self.action_offset = exec_latency, action_offset
        self.merge_weight, self.ensemble_decay = merge_weight, ensemble_decay
        self.epoch = 0
        self.dropped = self.over_budget = self.rejected = self.chunks = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything pending and start a new epoch (episode start, pause, takeover)."""
        self.epoch += 1
        self.pending = Trajectory.empty(self.action_dim)
        self._ensemble: list[Trajectory] = []  # every chunk still covering the future, oldest first

    def add(self, chunk: Chunk, now: float) -> Trajectory:
        """Merge ``chunk`` that became ready at ``now``; returns the new pending trajectory."""
        if chunk.epoch != self.epoch:
            self.rejected += 1
            return self.pending
        actions = np.asarray(chunk.actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"chunk {chunk.chunk_id}: actions must be (H, {self.action_dim}), got {actions.shape}")
        self.chunks += 1
        steps = np.arange(len(actions)) + self.action_offset
        times = chunk.obs_t + steps * self.dt
        keep = times >= now + self.exec_latency - 1e-9
        self.dropped += int((~keep).sum())
        if keep.any():
            new = Trajectory(times[keep], actions[keep], np.full(keep.sum(), chunk.chunk_id), np.flatnonzero(keep))
        else:
            self.over_budget += 1
            slot = math.ceil((now + self.exec_latency - chunk.obs_t) / self.dt - 1e-9)
            new = Trajectory(np.array([chunk.obs_t + slot * self.dt]), actions[-1:], np.array([chunk.chunk_id]),
                             np.array([len(actions) - 1]))
        self.pending = self._merge(self._trim(now), new)
        return self.pending

    def _trim(self, now: float) -> Trajectory:
        """The pending trajectory from the waypoint in force at ``now`` on."""
        k = self.pending.active(now)
        return self.pending if k is None else self.pending.select(np.arange(len(self.pending)) >= k)

    def _merge(self, old: Trajectory, new: Trajectory) -> Trajectory:
        start = new.times[0] - self.dt / 4
        if self.strategy in ("replace", "rti"):
            return Trajectory.concat(old.select(old.times < start), new)
        if self.strategy == "queue_merge":
            merged = new.actions.copy()
            for i, t in enumerate(new.times):
                match = np.flatnonzero(np.abs(old.times - t) < self.dt / 4)
                if len(match):
                    merged[i] = self.merge_weight * new.actions[i] + (1 - self.merge_weight) * old.actions[match[0]]
            blended = Trajectory(new.times, merged, new.chunk_ids, new.indices)
            return Trajectory.concat(old.select(old.times < start), blended)
        # temporal ensemble over every chunk that still has future steps
        self._ensemble = [c.select(c.times >= start) for c in self._ensemble] + [new]
        self._ensemble = [c for c in self._ensemble if len(c)]
        actions = new.actions.copy()
        for i, t in enumerate(new.times):
            preds = [c.actions[np.abs(c.times - t) < self.dt / 4] for c in self._ensemble]
            preds = [p[0] for p in preds if len(p)]
            weights = np.exp(-self.ensemble_decay * np.arange(len(preds)))
            actions[i] = np.tensordot(weights / weights.sum(), np.stack(preds), axes=1)
        return Trajectory.concat(old.select(old.times < start),
                                 Trajectory(new.times, actions, new.chunk_ids, new.indices))
