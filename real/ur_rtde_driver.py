"""Universal Robots arm over RTDE: a thin ``RobotDriver`` on the ``ur_rtde`` package (SDU Robotics).

Written against ur_rtde 1.6's Python API (``robot`` extra: ``ur-rtde``), see
https://sdurobotics.gitlab.io/ur_rtde/api/api.html:

- ``rtde_receive.RTDEReceiveInterface(hostname, frequency)``: ``getActualQ``, ``getActualQd``,
  ``getTimestamp`` (controller time of the newest RTDE package, used to tell fresh samples from repeats),
  ``isProtectiveStopped``, ``isEmergencyStopped``, ``isConnected``, ``disconnect``;
- ``rtde_control.RTDEControlInterface(hostname, frequency)``: ``servoJ(q, speed, acceleration, time,
  lookahead_time, gain)``, ``servoStop``, ``stopScript``, ``setWatchdog(min_frequency)``, ``kickWatchdog``,
  ``isJointsWithinSafetyLimits(q)``, ``isConnected``, ``disconnect``.

Every ``command`` is one ``servoJ`` to the 6 joint targets with ``time = 1 / frequency``, so the servo loop
must run at ``frequency``; it paces the calls itself, so ur_rtde's ``initPeriod``/``waitPeriod`` are not
used. The controller-side watchdog (``setWatchdog``) stops the arm when ``heartbeat`` stops kicking it.
There is no gripper: ``dim`` is 6.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
from robopol.real.clock import Clock
from robopol.real.driver import DriverError, ProtectiveStop, RobotState

from robopol.errors import ConfigError, require_extra

log = logging.getLogger("robopol.real")

FREQUENCIES = (125.0, 500.0)
"""RTDE rates: 125 Hz on CB3 controllers, 500 Hz on e-Series."""
LOOKAHEAD_RANGE = (0.03, 0.2)
"""servoJ ``lookahead_time`` range (s) accepted by the controller."""
GAIN_RANGE = (100.0, 2000.0)
"""servoJ proportional ``gain`` range accepted by the controller."""


class URDriver:
    """A UR arm (6 joints, no gripper) streamed with ``servoJ``."""

    dim = 6

    def __init__(self, host: str, clock: Clock, *, frequency: float = 500.0, lookahead_time: float = 0.1,
                 gain: float = 300.0, receive_latency_s: float = 0.0, watchdog_hz: float = 10.0,
                 check_joint_limits: bool = True) -> None:
        """Validate the settings, then connect (receive interface first, then control).

        ``lookahead_time`` and ``gain`` are servoJ's smoothing and stiffness; ``receive_latency_s`` is the
        calibrated delay between the controller sampling a state and ``read_state`` seeing it;
        ``watchdog_hz`` is the slowest ``heartbeat`` rate before the controller stops the arm;
        ``check_joint_limits`` asks the controller (one extra round trip per command) whether each
        target is inside its safety limits before sending it.
        """
        if frequency not in FREQUENCIES:
            raise ConfigError(f"URDriver frequency={frequency!r} must be 125 (CB3) or 500 (e-Series) Hz")
        if not LOOKAHEAD_RANGE[0] <= lookahead_time <= LOOKAHEAD_RANGE[1]:
            raise ConfigError(f"URDriver lookahead_time={lookahead_time!r} s must be in "
                              f"[{LOOKAHEAD_RANGE[0]}, {LOOKAHEAD_RANGE[1]}] (ur_rtde servoJ range)")
        if not GAIN_RANGE[0] <= gain <= GAIN_RANGE[1]:
            raise ConfigError(f"URDriver gain={gain!r} must be in [{GAIN_RANGE[0]:g}, {GAIN_RANGE[1]:g}] "
                              "(ur_rtde servoJ range)")
        if not (math.isfinite(receive_latency_s) and receive_latency_s >= 0):
            raise ConfigError(f"URDriver receive_latency_s={receive_latency_s!r} must be a finite value >= 0")
        if not 0 < watchdog_hz <= frequency:
            raise ConfigError(f"URDriver watchdog_hz={watchdog_hz!r} must be in (0, frequency={frequency:g}]")
        rtde_control = require_extra("rtde_control", "robot", "the UR driver")
        rtde_receive = require_extra("rtde_receive", "robot", "the UR driver")

        self.host, self.clock = host, clock
        self.frequency, self.dt = float(frequency), 1.0 / frequency
        self.lookahead_time, self.gain = float(lookahead_time), float(gain)
        self.receive_latency_s = float(receive_latency_s)
        self.check_joint_limits = check_joint_limits
        self._seq = 0
        self._last_stamp: float | None = None
        self._sample_t = 0.0
        self._holding = False
        self._stopped = False

        try:
            self._receive = rtde_receive.RTDEReceiveInterface(host, frequency=self.frequency)
        except Exception as exc:
            raise DriverError(f"UR at {host}: cannot open the RTDE receive interface ({exc})") from exc
        try:
            self._control = rtde_control.RTDEControlInterface(host, frequency=self.frequency)
            self._control.setWatchdog(float(watchdog_hz))
        except Exception as exc:
            self._guarded("receive.disconnect", self._receive.disconnect)
            raise DriverError(f"UR at {host}: cannot start the RTDE control interface ({exc})") from exc

    def read_state(self) -> RobotState:
        if self._stopped:
            raise DriverError("URDriver.read_state after stop()")
        self._check_alive()
        try:
            stamp = float(self._receive.getTimestamp())
            q = np.asarray(self._receive.getActualQ(), dtype=np.float64)
            qd = np.asarray(self._receive.getActualQd(), dtype=np.float64)
        except Exception as exc:
            raise DriverError(f"UR at {self.host}: reading the state failed ({exc})") from exc
        # A repeated controller timestamp is the same sample: keep its seq and capture time.
        if stamp != self._last_stamp:
            self._last_stamp = stamp
            self._seq += 1
            self._sample_t = self.clock.now() - self.receive_latency_s
        return RobotState(t=self._sample_t, position=q, velocity=qd, seq=self._seq,
                          obs={"joint_pos": q.astype(np.float32), "joint_vel": qd.astype(np.float32)})

    def command(self, target: np.ndarray) -> None:
        if self._stopped:
            raise DriverError("URDriver.command after stop()")
        q = np.asarray(target, dtype=np.float64)
        if q.shape != (self.dim,) or not np.all(np.isfinite(q)):
            raise ValueError(f"URDriver.command needs {self.dim} finite joint targets, got {target!r}")
        self._check_alive()
        q_list = q.tolist()
        try:
            within = not self.check_joint_limits or self._control.isJointsWithinSafetyLimits(q_list)
            # speed and acceleration are unused by servoJ; time is one servo period.
            accepted = within and self._control.servoJ(q_list, 0.0, 0.0, self.dt, self.lookahead_time,
                                                       self.gain)
        except Exception as exc:
            self._check_alive()
            raise DriverError(f"UR at {self.host}: servoJ failed ({exc})") from exc
        if not within:
            raise DriverError(f"UR at {self.host}: target {q_list} is outside the controller's joint limits")
        if not accepted:
            self._check_alive()
            raise DriverError(f"UR at {self.host}: the controller rejected servoJ")
        self._holding = False

    def hold(self) -> None:
        # servoStop decelerates the arm; repeating it while already holding would only cost round trips.
        if self._holding or self._stopped:
            return
        try:
            stopped = self._control.servoStop()
        except Exception as exc:
            raise DriverError(f"UR at {self.host}: servoStop failed ({exc})") from exc
        if not stopped:
            raise DriverError(f"UR at {self.host}: the controller rejected servoStop")
        self._holding = True

    def heartbeat(self) -> bool:
        if self._stopped:
            return False
        try:
            kicked = self._control.kickWatchdog()
            return bool(kicked) and bool(self._control.isConnected()) and bool(self._receive.isConnected())
        except Exception as exc:
            log.warning("UR at %s: heartbeat failed: %s", self.host, exc)
            return False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Each step runs even if an earlier one failed: a dead connection must not leave the script running.
        self._guarded("servoStop", self._control.servoStop)
        self._guarded("stopScript", self._control.stopScript)
        self._guarded("control.disconnect", self._control.disconnect)
        self._guarded("receive.disconnect", self._receive.disconnect)

    def _check_alive(self) -> None:
        """Raise ``ProtectiveStop`` for a safety stop and ``DriverError`` for a lost connection."""
        try:
            connected = self._receive.isConnected() and self._control.isConnected()
            emergency = connected and self._receive.isEmergencyStopped()
            protective = connected and self._receive.isProtectiveStopped()
        except Exception as exc:
            raise DriverError(f"UR at {self.host}: status query failed ({exc})") from exc
        if not connected:
            raise DriverError(f"UR at {self.host}: RTDE connection lost")
        if emergency:
            raise ProtectiveStop(f"UR at {self.host}: emergency stop is active; release it on the pendant")
        if protective:
            raise ProtectiveStop(f"UR at {self.host}: protective stop; clear it on the pendant")

    def _guarded(self, name: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as exc:
            log.warning("UR at %s: %s failed during shutdown: %s", self.host, name, exc)
