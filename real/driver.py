"""The robot driver protocol: the only layer that talks to hardware.

A driver commands *position targets*: one value per joint, then the gripper opening in [0, 1] if the robot
has one. The servo loop calls ``command`` once per tick with what the safety filter let through, ``hold``
when it has decelerated to a stop after a fault, ``heartbeat`` every tick (forwarded to hardware watchdogs
such as ur_rtde's ``kickWatchdog``) and ``stop`` exactly once, in a ``finally``, whatever happened.

``RobotState.t`` is the capture time on the loop's monotonic clock, already corrected by the driver's
calibrated receive latency (``t = receive_t - latency``); ``seq`` increases with every fresh sample, so a
frozen state stream is detectable. ``obs`` carries the task observation the policy reads (proprioception and
object state on the stand-in; camera features on a real cell).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from robopol.errors import RobopolError


class DriverError(RobopolError):
    """The robot or its connection failed; the servo loop answers by holding."""


class ProtectiveStop(DriverError):
    """The robot controller stopped the arm itself (collision, limit); it needs a human to clear it."""


@dataclass
class RobotState:
    """One sample of the robot."""

    t: float
    """Capture time on the loop clock (s), receive latency subtracted."""
    position: np.ndarray
    """Measured joint positions (rad), then gripper opening in [0, 1] when there is a gripper."""
    velocity: np.ndarray
    """Measured joint velocities, same layout as ``position``."""
    seq: int
    """Sample counter; it increases with every fresh sample."""
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    """Task observation for the policy (e.g. ``observation``)."""


class RobotDriver(Protocol):
    """What the servo loop needs from a robot."""

    dim: int
    """Length of a command: joints, then the gripper if any."""

    def read_state(self) -> RobotState:
        """The newest sample."""

    def command(self, target: np.ndarray) -> None:
        """Track ``target`` (joint positions + gripper opening) until the next command."""

    def hold(self) -> None:
        """Stop tracking commands and hold the current position."""

    def heartbeat(self) -> bool:
        """Kick the hardware watchdog; False when the robot side reports it is not alive."""

    def stop(self) -> None:
        """End control and release the connection (idempotent)."""


class IdealMockDriver:
    """Commands mirror the state one call later, like ros2_control's ``GenericSystem``: the unit-test robot.

    ``fail_after`` makes the ``n``-th ``command`` raise ``DriverError``; ``dead_after`` makes ``heartbeat``
    report dead from the ``n``-th call; ``frozen_after`` stops ``seq`` and ``t`` advancing after ``n`` reads.
    """

    def __init__(self, start: np.ndarray, clock, fail_after: int | None = None, dead_after: int | None = None,
                 frozen_after: int | None = None) -> None:
        self.position = np.asarray(start, dtype=np.float64).copy()
        self.velocity = np.zeros_like(self.position)
        self.dim = len(self.position)
        self.clock = clock
        self.fail_after, self.dead_after, self.frozen_after = fail_after, dead_after, frozen_after
        self.commands: list[np.ndarray] = []
        self.holds = self.heartbeats = self.reads = 0
        self.stopped = False
        self._last_t = clock.now()
        self._frozen: RobotState | None = None

    def read_state(self) -> RobotState:
        self.reads += 1
        if self._frozen is not None:
            return self._frozen
        state = RobotState(t=self.clock.now(), position=self.position.copy(), velocity=self.velocity.copy(),
                           seq=self.reads, obs={"observation": self.position.astype(np.float32)})
        if self.frozen_after is not None and self.reads >= self.frozen_after:
            self._frozen = state
        return state

    def command(self, target: np.ndarray) -> None:
        if self.stopped:
            raise DriverError("command after stop()")
        self.commands.append(np.array(target, dtype=np.float64))
        if self.fail_after is not None and len(self.commands) >= self.fail_after:
            raise DriverError(f"injected failure on command {len(self.commands)}")
        now = self.clock.now()
        dt = now - self._last_t
        self.velocity = (self.commands[-1] - self.position) / dt if dt > 0 else np.zeros_like(self.position)
        self.position = self.commands[-1].copy()
        self._last_t = now

    def hold(self) -> None:
        self.holds += 1
        self.velocity = np.zeros_like(self.position)

    def heartbeat(self) -> bool:
        self.heartbeats += 1
        return self.dead_after is None or self.heartbeats < self.dead_after

    def stop(self) -> None:
        self.stopped = True
