"""The servo loop: fixed-rate tracking of the pending trajectory, safety filter last, watchdogs, holds.

One ``tick()``:

1. read the robot state (a driver exception is a fault);
2. run the watchdogs, each of which ends in a decelerating hold: command freshness (now past the last
   waypoint + ``command_timeout_s``), policy heartbeat, servo overrun streak, stale state (``seq`` frozen
   for ``stale_state_s``), driver heartbeat, the e-stop and the safety filter's fault latch;
3. the target: waypoints are turned into command targets by the action map against the measured state
   (relative actions such as OGBench's end-effector deltas need that) and followed with ``interpolation``:
   ``step`` (each target resolved when its waypoint comes into force and requested at once, as the
   simulator the policy was trained in does; the safety filter still shapes it) or ``linear`` (through every
   waypoint's target at its time, linearly in between);
4. the safety filter, then ``driver.command`` with what it let through;
5. pacing against absolute deadlines (``t0 + k * period``): a late tick never shifts later ones; a tick
   that starts a whole period late counts as an overrun and the missed slots are skipped.

Holding: the target keeps its last per-tick velocity and decelerates at the acceleration limit to rest,
then ``driver.hold()`` is called once and commands stop. A hold is latched until ``rearm()``, which needs
the e-stop released. ``pause()`` (a human is about to take over) holds the current target without a fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .clock import Clock
from .driver import RobotDriver, RobotState
from .safety import EStop, SafetyFilter
from .scheduler import Trajectory

INTERPOLATIONS = ("step", "linear")


class ActionMap(Protocol):
    """Policy action -> command target (joints, then gripper)."""

    action_dim: int

    def to_target(self, action: np.ndarray, state: RobotState) -> np.ndarray:
        """The target for ``action`` coming into force now, given the measured state."""


class JointPositionMap:
    """The action *is* the command target (absolute joint positions, then gripper)."""

    def __init__(self, dim: int) -> None:
        self.action_dim = dim

    def to_target(self, action: np.ndarray, state: RobotState) -> np.ndarray:
        return np.asarray(action, dtype=np.float64)


@dataclass
class ServoConfig:
    """Rates and watchdog bounds of the servo loop."""

    rate_hz: float = 500.0
    """Servo rate (UR e-Series and the stand-in 500 Hz, UR CB3 125 Hz)."""
    interpolation: str = "step"
    """How a new waypoint's target is approached: step | linear."""
    command_timeout_s: float = 0.1
    """Hold when this long has passed since the last waypoint came into force (ros2 JTC's cmd_timeout)."""
    policy_timeout_s: float = 1.0
    """Hold when the policy worker has not reported for this long (after its first report)."""
    stale_state_s: float = 0.05
    """Hold when the state sample counter has not moved for this long."""
    driver_timeout_s: float = 0.02
    """Hold when the driver heartbeat has reported dead for this long."""
    overrun_streak: int = 20
    """Hold after this many consecutive overrun ticks (libfranka stops after 20 missed packets)."""

    def __post_init__(self) -> None:
        from robopol.errors import ConfigError

        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"servo interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"got '{self.interpolation}'")
        if self.rate_hz <= 0 or self.overrun_streak < 1:
            raise ConfigError(f"servo rate_hz must be > 0 and overrun_streak >= 1, got {self.rate_hz}, "
                              f"{self.overrun_streak}")


@dataclass
class TickInfo:
    """What one tick did."""

    t: float
    state: RobotState | None
    sent: np.ndarray | None
    flags: tuple[str, ...]
    waypoint: int | None
    """Index into the trajectory of the waypoint in force (None: none, paused or holding)."""
    activated: bool
    """The waypoint came into force on this tick."""
    action: np.ndarray | None = None
    """The waypoint's action (policy space)."""
    chunk_id: int = -1
    """The waypoint's chunk (-1: none)."""
    chunk_index: int = -1
    """The waypoint's index in its chunk."""
    requested: np.ndarray | None = None
    """The target asked of the safety filter (before its limits)."""


@dataclass
class ServoStats:
    """Cycle accounting."""

    ticks: int = 0
    overruns: int = 0
    lateness: list[float] = field(default_factory=list)


class ServoLoop:
    """Tracks a trajectory on a driver at a fixed rate."""

    def __init__(self, driver: RobotDriver, clock: Clock, safety: SafetyFilter, action_map: ActionMap,
                 config: ServoConfig | None = None, estop: EStop | None = None) -> None:
        self.driver, self.clock, self.safety, self.action_map = driver, clock, safety, action_map
        self.config = config or ServoConfig()
        self.period = 1.0 / self.config.rate_hz
        self.estop = estop or EStop()
        self.stats = ServoStats()
        self.events: list[tuple[float, str]] = []
        self.trajectory = Trajectory.empty(action_map.action_dim)
        self.state: RobotState | None = None
        self.fault: str | None = None
        self.held = False
        self.paused = False
        self.next_deadline: float | None = None
        self._grid: tuple[float, int] | None = None  # (t0, k): the next deadline is t0 + k * period
        self._policy_seen: float | None = None
        self._active: tuple[float, int, int] | None = None  # (time, chunk id, index) of the waypoint in force
        self._goals: dict[tuple[float, int, int], np.ndarray] = {}  # resolved targets of the current waypoints
        self._approach: tuple[np.ndarray, float] | None = None  # linear, before the first waypoint: start, t
        self._seq_since: tuple[int, float] | None = None
        self._driver_alive_t: float | None = None
        self._streak = 0

    # ---------------------------------------------------------------------------------- inputs
    def set_trajectory(self, trajectory: Trajectory) -> None:
        """The scheduler's new pending trajectory (targets already resolved for its waypoints are kept)."""
        self.trajectory = trajectory
        keys = set(zip(trajectory.times.tolist(), trajectory.chunk_ids.tolist(), trajectory.indices.tolist(),
                       strict=True))
        self._goals = {key: goal for key, goal in self._goals.items() if key in keys}
        self._approach = None

    def policy_heartbeat(self, t: float) -> None:
        """The policy worker is alive at ``t``."""
        self._policy_seen = t

    def pause(self) -> None:
        """Hold the current target without a fault (before a human takes over); clears the trajectory."""
        self.paused = True
        self.trajectory = Trajectory.empty(self.action_map.action_dim)
        self._forget_waypoints()

    def resume(self) -> None:
        self.paused = False
        self._policy_seen = None

    def restart(self) -> None:
        """Start an episode from where the robot is: no trajectory, the filter starting at the measured state."""
        if self.fault is not None:
            raise RuntimeError(f"the servo is holding after '{self.fault}': rearm() first")
        self.trajectory = Trajectory.empty(self.action_map.action_dim)
        self._forget_waypoints()
        self._policy_seen = None
        self.paused = False
        self.state = self.driver.read_state()
        self.safety.start(self.state.position)

    def rearm(self) -> None:
        """Leave a latched hold; refused while the e-stop is still triggered."""
        if self.estop.triggered:
            raise RuntimeError(f"e-stop ({self.estop.reason}) is still triggered: release it first")
        self.safety.rearm()
        self.fault, self.held = None, False
        self._streak = 0
        self.restart()

    def trip(self, reason: str) -> None:
        """Start a decelerating hold (latched) unless one is already in progress."""
        if self.fault is None:
            self.fault = reason
            self.events.append((self.clock.now(), reason))

    # ---------------------------------------------------------------------------------- the tick
    def tick(self) -> TickInfo:
        now = self.clock.now()
        self._pace_accounting(now)
        try:
            state = self.driver.read_state()
            self.state = state
        except Exception as err:  # noqa: BLE001 - any driver failure must end in a hold, not a crash
            self.trip(f"driver_error: {err}")
            state = self.state
        if state is None:  # nothing ever read: there is no safe target to send
            return TickInfo(now, None, None, ("no_state",), None, False)
        self._watchdogs(now, state)
        waypoint, activated = None, False
        if self.fault is not None:
            requested = self.safety.braked() if self.safety.last_sent is not None else state.position
        elif self.paused:  # come to rest where the target is, as gently as a hold
            requested = self.safety.braked() if self.safety.last_sent is not None else state.position
        else:
            waypoint, activated, requested = self._track(now, state)
        if self.held:
            return TickInfo(now, state, None, ("held",), None, False)
        result = self.safety(requested, state.position)
        if self.safety.fault is not None and self.fault is None:
            self.trip(f"safety: {self.safety.fault}")
        try:
            self.driver.command(result.sent)
        except Exception as err:  # noqa: BLE001
            self.trip(f"driver_error: {err}")
        if self.fault is not None and np.all(np.abs(self.safety.last_velocity) < 1e-9):
            self._hold_driver()
        if waypoint is None:
            return TickInfo(now, state, result.sent, result.flags, None, activated, requested=requested)
        traj = self.trajectory
        return TickInfo(now, state, result.sent, result.flags, waypoint, activated, traj.actions[waypoint].copy(),
                        int(traj.chunk_ids[waypoint]), int(traj.indices[waypoint]), requested)

    def step(self) -> list[TickInfo]:
        """One tick, then sleep to the next deadline (the deploy loop's view of a servo, local or remote)."""
        info = self.tick()
        self.pace()
        return [info]

    @property
    def command_dim(self) -> int:
        return self.safety.limits.dim

    def pace(self) -> None:
        """Sleep until the next tick's deadline."""
        if self.next_deadline is not None:
            self.clock.sleep_until(self.next_deadline)

    def run(self, duration: float) -> None:
        """Tick at the configured rate for ``duration`` seconds of clock time."""
        end = self.clock.now() + duration - 1e-9  # a deadline round-off short of the end is the end
        while self.clock.now() < end:
            self.tick()
            self.pace()

    # ---------------------------------------------------------------------------------- parts
    def _pace_accounting(self, now: float) -> None:
        if self.next_deadline is None or self._grid is None:
            self.next_deadline, self._grid = now, (now, 0)
        lateness = now - self.next_deadline
        self.stats.ticks += 1
        self.stats.lateness.append(max(lateness, 0.0))
        missed = math.floor(lateness / self.period + 1e-9) if lateness > 0 else 0
        if missed >= 1:
            self.stats.overruns += 1
            self._streak += 1
        else:
            self._streak = 0
        t0, k = self._grid
        self._grid = (t0, k + missed + 1)
        self.next_deadline = t0 + (k + missed + 1) * self.period  # absolute: no round-off creeps in

    def _watchdogs(self, now: float, state: RobotState) -> None:
        cfg = self.config
        if self.estop.triggered:
            self.trip(f"estop: {self.estop.reason}")
        if self._streak >= cfg.overrun_streak:
            self.trip(f"overrun_streak: {self._streak} ticks")
        if self._seq_since is None or state.seq != self._seq_since[0]:
            self._seq_since = (state.seq, now)
        elif now - self._seq_since[1] > cfg.stale_state_s:
            self.trip(f"stale_state: seq {state.seq} for {now - self._seq_since[1]:.3f} s")
        try:
            alive = self.driver.heartbeat()
        except Exception:  # noqa: BLE001
            alive = False
        if alive or self._driver_alive_t is None:
            self._driver_alive_t = now
        if not alive and now - self._driver_alive_t > cfg.driver_timeout_s:
            self.trip(f"driver_heartbeat: dead for {now - self._driver_alive_t:.3f} s")
        if self.paused or self.fault is not None:
            return
        if self._policy_seen is not None and now - self._policy_seen > cfg.policy_timeout_s:
            self.trip(f"policy_heartbeat: silent for {now - self._policy_seen:.3f} s")
        if len(self.trajectory) and now > self.trajectory.end_time + cfg.command_timeout_s:
            self.trip(f"command_timeout: last waypoint at {self.trajectory.end_time:.3f} s")

    def _forget_waypoints(self) -> None:
        self._active, self._goals, self._approach = None, {}, None

    def _goal(self, k: int, state: RobotState) -> np.ndarray:
        """Waypoint ``k``'s command target, resolved by the action map the first time it is needed."""
        traj = self.trajectory
        key = (float(traj.times[k]), int(traj.chunk_ids[k]), int(traj.indices[k]))
        if key not in self._goals:
            self._goals[key] = np.asarray(self.action_map.to_target(traj.actions[k], state), dtype=np.float64)
        return self._goals[key]

    def _track(self, now: float, state: RobotState) -> tuple[int | None, bool, np.ndarray]:
        """The waypoint in force (for the record), whether it came into force now, and this tick's target.

        ``step``: a waypoint's target is resolved when it comes into force and requested at once. ``linear``:
        the target passes through each waypoint's target at its time and moves linearly in between
        (diffusion_policy's interpolation); the next waypoint is resolved when it becomes the next one, so a
        relative action is resolved one action period early."""
        traj = self.trajectory
        k = traj.active(now)
        here = self.safety.braked() if self.safety.last_sent is not None else state.position
        activated = False
        if k is not None:
            key = (float(traj.times[k]), int(traj.chunk_ids[k]), int(traj.indices[k]))
            activated, self._active = key != self._active, key
        nxt = 0 if k is None else k + 1
        try:
            if self.config.interpolation == "step" or nxt >= len(traj):
                return k, activated, here if k is None else self._goal(k, state)
            goal = self._goal(nxt, state)
            t1 = float(traj.times[nxt])
            if k is None:  # approaching the first waypoint from wherever the target is
                if self._approach is None:
                    self._approach = (here.copy(), now)
                start, t0 = self._approach
            else:
                start, t0 = self._goal(k, state), float(traj.times[k])
        except Exception as err:  # noqa: BLE001 - a bad action must end in a hold, not a crash
            self.trip(f"action_map: {err}")
            return k, activated, self.safety.braked()
        alpha = 1.0 if t1 <= t0 else min(1.0, max(0.0, (now - t0) / (t1 - t0)))
        return k, activated, start + alpha * (goal - start)

    def _hold_driver(self) -> None:
        if not self.held:
            self.held = True
            try:
                self.driver.hold()
            except Exception as err:  # noqa: BLE001
                self.events.append((self.clock.now(), f"driver_hold_error: {err}"))
