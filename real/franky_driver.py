"""Franka robot (Panda / FR3) with its optional hand: a thin ``RobotDriver`` on ``franky``.

Written against franky 2.0's Python API (``robot`` extra: ``franky-control``), see
https://timschneider42.github.io/franky/:

- ``franky.Robot(fci_hostname)`` with ``relative_dynamics_factor``, ``state`` (``q``, ``dq``,
  ``robot_mode``, ``time``), ``has_errors``, ``move(motion, asynchronous=True)``,
  ``join_motion(timeout)``, ``stop()`` and ``recover_from_errors()``;
- ``franky.JointMotion(target)`` and ``franky.JointStopMotion()``; ``franky.RobotMode``;
- ``franky.Gripper(fci_hostname)`` with ``width``, ``max_width`` and ``move_async(width, speed)``.

Streaming: every ``command`` sends an asynchronous ``JointMotion`` to the new joint target. franky's
Ruckig planner generates the 1 kHz trajectory within the robot's velocity, acceleration and jerk limits
(scaled by ``relative_dynamics_factor``) and each new motion preempts the previous one, so the arm never
sees a step. The gripper opening in [0, 1] maps linearly to a width in [0, ``max_width``] and is sent only
when it moved by more than ``gripper_threshold`` since the last send: a Franka hand move is slow and
blocking on the hand's side, so re-sending it every tick would only queue commands. ``read_state`` reads
the hand's width on every call (one gripper-state read), so the measured opening is never a guess.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import NoReturn

import numpy as np
from robopol.real.clock import Clock
from robopol.real.driver import DriverError, ProtectiveStop, RobotState

from robopol.errors import ConfigError, require_extra

log = logging.getLogger("robopol.real")

ARM_DOF = 7


class FrankaDriver:
    """A 7-joint Franka arm, plus the Franka hand as one opening value when ``gripper`` is True."""

    def __init__(self, host: str, clock: Clock, *, relative_dynamics_factor: float = 0.1,
                 receive_latency_s: float = 0.0, gripper: bool = True, gripper_speed: float = 0.05,
                 gripper_threshold: float = 0.05, stop_timeout_s: float = 2.0) -> None:
        """Validate the settings, then connect to the arm (and the hand).

        ``relative_dynamics_factor`` scales franky's velocity, acceleration and jerk limits (start slow);
        ``receive_latency_s`` is the calibrated delay between the robot sampling a state and
        ``read_state`` seeing it; ``gripper_speed`` is the finger speed (m/s); ``gripper_threshold`` is
        the change of opening (in [0, 1] units) that triggers a new hand command; ``stop_timeout_s``
        bounds how long ``stop`` waits for the arm to decelerate before cutting the motion.
        """
        if not 0 < relative_dynamics_factor <= 1:
            raise ConfigError(f"FrankaDriver relative_dynamics_factor={relative_dynamics_factor!r} "
                              "must be in (0, 1]")
        if not (math.isfinite(receive_latency_s) and receive_latency_s >= 0):
            raise ConfigError(f"FrankaDriver receive_latency_s={receive_latency_s!r} "
                              "must be a finite value >= 0")
        if not (math.isfinite(gripper_speed) and gripper_speed > 0):
            raise ConfigError(f"FrankaDriver gripper_speed={gripper_speed!r} m/s must be a finite value > 0")
        if not 0 <= gripper_threshold < 1:
            raise ConfigError(f"FrankaDriver gripper_threshold={gripper_threshold!r} must be in [0, 1)")
        if not (math.isfinite(stop_timeout_s) and stop_timeout_s > 0):
            raise ConfigError(f"FrankaDriver stop_timeout_s={stop_timeout_s!r} must be a finite value > 0")
        self._franky = require_extra("franky", "robot", "the Franka driver")

        self.host, self.clock = host, clock
        self.relative_dynamics_factor = float(relative_dynamics_factor)
        self.receive_latency_s = float(receive_latency_s)
        self.gripper_speed, self.gripper_threshold = float(gripper_speed), float(gripper_threshold)
        self.stop_timeout_s = float(stop_timeout_s)
        self.dim = ARM_DOF + int(gripper)
        self._seq = 0
        self._last_stamp: int | None = None
        self._sample_t = 0.0
        self._sent_opening: float | None = None
        self._holding = False
        self._stopped = False
        # Reflex: a collision or limit reflex stopped the arm; UserStopped: the external stop button.
        self._stop_modes = (self._franky.RobotMode.Reflex, self._franky.RobotMode.UserStopped)

        try:
            self._robot = self._franky.Robot(host)
            self._robot.relative_dynamics_factor = self.relative_dynamics_factor
            self._gripper = self._franky.Gripper(host) if gripper else None
            self._max_width = float(self._gripper.max_width) if self._gripper is not None else 0.0
        except Exception as exc:
            raise DriverError(f"Franka at {host}: cannot connect ({exc})") from exc
        if self._gripper is not None and not self._max_width > 0:
            raise DriverError(f"Franka at {host}: the hand reports max_width={self._max_width}; "
                              "home it first (franky.Gripper.homing())")

    def read_state(self) -> RobotState:
        if self._stopped:
            raise DriverError("FrankaDriver.read_state after stop()")
        try:
            state = self._robot.state
            has_errors = bool(self._robot.has_errors)
            stamp = int(state.time.to_msec())
            q = np.asarray(state.q, dtype=np.float64)
            dq = np.asarray(state.dq, dtype=np.float64)
            width = float(self._gripper.width) if self._gripper is not None else None
        except Exception as exc:
            raise DriverError(f"Franka at {self.host}: reading the state failed ({exc})") from exc
        if has_errors or state.robot_mode in self._stop_modes:
            raise ProtectiveStop(f"Franka at {self.host}: robot mode {state.robot_mode}, "
                                 f"has_errors={has_errors}; check the cell, then call FrankaDriver.recover()")
        # A repeated robot timestamp is the same sample: keep its seq and capture time.
        if stamp != self._last_stamp:
            self._last_stamp = stamp
            self._seq += 1
            self._sample_t = self.clock.now() - self.receive_latency_s
        obs = {"joint_pos": q.astype(np.float32), "joint_vel": dq.astype(np.float32)}
        if width is not None:
            opening = min(max(width / self._max_width, 0.0), 1.0)
            obs["gripper"] = np.array([opening], dtype=np.float32)
            # The hand reports no velocity.
            q, dq = np.append(q, opening), np.append(dq, 0.0)
        return RobotState(t=self._sample_t, position=q, velocity=dq, seq=self._seq, obs=obs)

    def command(self, target: np.ndarray) -> None:
        if self._stopped:
            raise DriverError("FrankaDriver.command after stop()")
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.dim,) or not np.all(np.isfinite(target)):
            layout = f"{ARM_DOF} joints" + (" + gripper" if self.dim > ARM_DOF else "")
            raise ValueError(f"FrankaDriver.command needs {self.dim} finite values ({layout}), "
                             f"got {target!r}")
        try:
            self._robot.move(self._franky.JointMotion(target[:ARM_DOF]), asynchronous=True)
        except Exception as exc:
            self._raise_fault("move", exc)
        self._holding = False
        if self._gripper is not None:
            self._command_gripper(float(target[ARM_DOF]))

    def hold(self) -> None:
        # One stop motion decelerates the arm on a smooth Ruckig profile; repeating it changes nothing.
        if self._holding or self._stopped:
            return
        try:
            self._robot.move(self._franky.JointStopMotion(), asynchronous=True)
        except Exception as exc:
            self._raise_fault("hold", exc)
        self._holding = True

    def heartbeat(self) -> bool:
        # libfranka has no host watchdog to kick (its 1 kHz loop is the watchdog): report whether the
        # robot answers and is free of errors.
        if self._stopped:
            return False
        try:
            return not self._robot.has_errors
        except Exception as exc:
            log.warning("Franka at %s: heartbeat failed: %s", self.host, exc)
            return False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Each step runs even if an earlier one failed: decelerate smoothly, wait, then cut any motion left.
        self._guarded("stop motion",
                      lambda: self._robot.move(self._franky.JointStopMotion(), asynchronous=True))
        self._guarded("join_motion", lambda: self._robot.join_motion(timeout=self.stop_timeout_s))
        self._guarded("stop", self._robot.stop)

    def recover(self) -> None:
        """Clear a reflex (franky's ``recover_from_errors``); only after a human has checked the cell."""
        try:
            self._robot.recover_from_errors()
        except Exception as exc:
            raise DriverError(f"Franka at {self.host}: recover_from_errors failed ({exc})") from exc

    def _command_gripper(self, opening: float) -> None:
        opening = min(max(opening, 0.0), 1.0)
        if self._sent_opening is not None and abs(opening - self._sent_opening) <= self.gripper_threshold:
            return
        try:
            # The returned future is not awaited: read_state reports the width the hand actually reached.
            self._gripper.move_async(opening * self._max_width, self.gripper_speed)
        except Exception as exc:
            raise DriverError(f"Franka at {self.host}: gripper move failed ({exc})") from exc
        self._sent_opening = opening

    def _raise_fault(self, what: str, exc: Exception) -> NoReturn:
        """Turn a franky failure into ``ProtectiveStop`` (robot in reflex/error) or ``DriverError``."""
        try:
            faulted = self._robot.has_errors or self._robot.state.robot_mode in self._stop_modes
        except Exception:
            faulted = False
        if faulted:
            raise ProtectiveStop(f"Franka at {self.host}: {what} failed, the robot is in a reflex/error "
                                 f"state ({exc}); check the cell, then call FrankaDriver.recover()") from exc
        raise DriverError(f"Franka at {self.host}: {what} failed ({exc})") from exc

    def _guarded(self, name: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as exc:
            log.warning("Franka at %s: %s failed during shutdown: %s", self.host, name, exc)
