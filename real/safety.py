"""The safety filter, the last stage before a driver, and the latched software e-stop.

The filter is independent of the policy and of the scheduler: it sees only the requested target, the
*measured* state and what it sent last tick. Stages, in order:

1. fault latch: once latched, the request is ignored and the target decelerates to rest from its current
   motion (at the acceleration limit), until ``rearm()``;
2. shape / NaN check -> latch;
3. jump fault: a request further than ``jump_fault`` from the last sent target (RL-100's 50 mm / 45 deg
   guard) -> latch;
4. acceleration (soft): the per-tick motion may speed up by at most ``max_acceleration * dt**2``; slowing
   down is never limited, so the command never overshoots the request;
5. velocity (hard): ``|sent - last_sent| <= max_velocity * dt``;
6. measured-relative cap (LeRobot's ``max_relative_target``): ``|sent - measured| <= max_relative``,
   intersected with the velocity box (when they do not meet, the target moves toward the measured state at
   full speed);
7. joint limits with margin (hard);
8. workspace box on the forward kinematics of the final target (when the profile gives one): a target that
   would leave it keeps the last safe target, so the effector stops at the boundary.

Guarantees (property-tested): the sent target is inside the limits with margin (and inside the workspace box
whenever the previous one was) and moves at most ``max_velocity * dt`` per tick; unless the filter is
latched, it is also within ``max_relative`` of the measured state or closer to it than the last sent target
was. Dimensions no stage touched pass through bit for bit. The filter returns what it actually sent and the
names of the stages that acted.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from robopol.errors import ConfigError


@dataclass
class SafetyLimits:
    """Per-dimension limits of a command (joints, then gripper)."""

    lower: np.ndarray
    """Lower position limits."""
    upper: np.ndarray
    """Upper position limits."""
    max_velocity: np.ndarray
    """Largest speed of the target (units/s)."""
    max_acceleration: np.ndarray
    """Largest acceleration of the target (units/s^2); soft, applied before the hard limits."""
    max_relative: np.ndarray
    """Largest distance between the sent target and the measured position."""
    jump_fault: np.ndarray
    """A request this far from the last sent target latches a fault."""
    margin: float = 0.0
    """Kept inside ``lower`` / ``upper`` on joints (not on the gripper, whose range is [0, 1])."""
    workspace_low: np.ndarray | None = None
    """Lower corner of the effector box (m), checked through ``forward_kinematics``."""
    workspace_high: np.ndarray | None = None
    """Upper corner of the effector box (m)."""
    forward_kinematics: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    """Target -> effector position, for the workspace box."""
    margin_dims: int | None = None
    """How many leading dims (the joints) get the margin; None: all."""

    def __post_init__(self) -> None:
        arrays = ("lower", "upper", "max_velocity", "max_acceleration", "max_relative", "jump_fault")
        for name in arrays:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        dim = len(self.lower)
        for name in arrays:
            if getattr(self, name).shape != (dim,):
                raise ConfigError(f"safety limit '{name}' must have {dim} values (one per command dim), "
                                  f"got shape {getattr(self, name).shape}")
        for name in arrays[2:]:
            if np.any(getattr(self, name) <= 0):
                raise ConfigError(f"safety limit '{name}' must be positive, got {getattr(self, name).tolist()}")
        crossed = np.flatnonzero(self.lower > self.upper)
        if len(crossed):
            raise ConfigError(f"safety limits: lower > upper on dims {crossed.tolist()} (lower "
                              f"{self.lower[crossed].tolist()}, upper {self.upper[crossed].tolist()})")
        margin = np.zeros(dim)
        margin[: dim if self.margin_dims is None else self.margin_dims] = self.margin
        self.safe_lower, self.safe_upper = self.lower + margin, self.upper - margin
        if np.any(self.safe_lower > self.safe_upper):
            raise ConfigError(f"limit_margin {self.margin} leaves no room between lower {self.lower.tolist()} and "
                              f"upper {self.upper.tolist()}")
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ConfigError("give both workspace_low and workspace_high, or neither")
        if self.workspace_low is not None:
            if self.forward_kinematics is None:
                raise ConfigError("a workspace box needs the robot's forward_kinematics")
            self.workspace_low = np.asarray(self.workspace_low, dtype=np.float64)
            self.workspace_high = np.asarray(self.workspace_high, dtype=np.float64)
            if self.workspace_low.ndim != 1 or self.workspace_low.shape != self.workspace_high.shape:
                raise ConfigError(f"workspace_low and workspace_high must be two lists of the same length (x, y, z "
                                  f"in m), got {self.workspace_low.tolist()} and {self.workspace_high.tolist()}")
            if np.any(self.workspace_low >= self.workspace_high):
                raise ConfigError(f"workspace_low must be below workspace_high on every axis, got "
                                  f"{self.workspace_low.tolist()} and {self.workspace_high.tolist()}")

    @property
    def dim(self) -> int:
        return len(self.lower)


@dataclass
class FilterResult:
    """What the filter sent and why."""

    sent: np.ndarray
    flags: tuple[str, ...]


class SafetyFilter:
    """Stateful filter over one command stream at a fixed tick ``dt``."""

    def __init__(self, limits: SafetyLimits, dt: float) -> None:
        self.limits, self.dt = limits, dt
        self.fault: str | None = None
        self.last_sent: np.ndarray | None = None
        self.last_velocity = np.zeros(limits.dim)  # per tick

    def start(self, measured: np.ndarray) -> None:
        """Begin from the measured position (clipped into the limits): the first target is where the robot is."""
        self.last_sent = np.clip(np.asarray(measured, dtype=np.float64), self.limits.safe_lower,
                                 self.limits.safe_upper)
        self.last_velocity = np.zeros(self.limits.dim)

    def rearm(self) -> None:
        """Clear a latched fault (a human decided it is safe to continue)."""
        self.fault = None

    def latch(self, reason: str) -> None:
        if self.fault is None:
            self.fault = reason

    def __call__(self, requested: np.ndarray, measured: np.ndarray) -> FilterResult:
        lim = self.limits
        measured = np.asarray(measured, dtype=np.float64)
        if self.last_sent is None:
            self.start(measured)
        last = self.last_sent
        requested = np.asarray(requested, dtype=np.float64)
        flags: list[str] = []
        if self.fault is None:
            if requested.shape != (lim.dim,):
                self.latch("shape")
            elif not np.all(np.isfinite(requested)):
                self.latch("nan")
            elif np.any(np.abs(requested - last) > lim.jump_fault):
                self.latch("jump")
        if self.fault is not None:
            return self._finish(self.braked(), ["latched:" + self.fault])
        step_v = lim.max_velocity * self.dt
        step = requested - last
        limited = self._accelerate(step)
        if not np.array_equal(limited, step):
            flags.append("acceleration")
        clipped = np.clip(limited, -step_v, step_v)
        if not np.array_equal(clipped, limited):
            flags.append("velocity")
        target = np.where(clipped == step, requested, last + clipped)  # untouched dims pass through bit-exact
        # the measured-relative box, intersected with what this tick's velocity allows
        low = np.maximum(measured - lim.max_relative, last - step_v)
        high = np.minimum(measured + lim.max_relative, last + step_v)
        toward = last + np.clip(measured - last, -step_v, step_v)
        relative = np.where(low <= high, np.clip(target, low, high), toward)
        if not np.allclose(relative, target):
            flags.append("relative")
        bounded = np.clip(relative, lim.safe_lower, lim.safe_upper)
        if not np.allclose(bounded, relative):
            flags.append("joint_limit")
        return self._finish(bounded, flags)

    def braked(self) -> np.ndarray:
        """The next target of a decelerating stop: the current per-tick motion, slowed by the acceleration
        limit, inside the joint limits."""
        brake = self.limits.max_acceleration * self.dt ** 2
        v = self.last_velocity
        slower = np.sign(v) * np.maximum(np.abs(v) - brake, 0.0)
        return np.clip(self.last_sent + slower, self.limits.safe_lower, self.limits.safe_upper)

    def _accelerate(self, step: np.ndarray) -> np.ndarray:
        """Limit how fast the per-tick motion speeds up; slowing down (and stopping on the target) is never
        limited, so the command never overshoots what was asked."""
        speed_up = self.limits.max_acceleration * self.dt ** 2
        v = self.last_velocity
        same_way = np.sign(step) == np.sign(v)
        allowed = np.where(same_way, np.abs(v) + speed_up, speed_up)
        return np.sign(step) * np.minimum(np.abs(step), allowed)

    def _finish(self, target: np.ndarray, flags: list[str]) -> FilterResult:
        """The workspace box on the final target: one that would leave it keeps the last safe target."""
        lim = self.limits
        if lim.workspace_low is not None and not _inside(lim.forward_kinematics(target), lim.workspace_low,
                                                          lim.workspace_high):
            target = self.last_sent.copy()
            flags.append("workspace")
        return self._send(target, flags)

    def _send(self, sent: np.ndarray, flags: list[str]) -> FilterResult:
        self.last_velocity = sent - self.last_sent
        self.last_sent = sent
        return FilterResult(sent.copy(), tuple(flags))


def _inside(point: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    return bool(np.all(point >= low) and np.all(point <= high))


class EStop:
    """A latched software e-stop: ``trigger`` from a key, a signal or the API; only ``rearm`` clears it.

    The flag is a ``threading.Event`` by default; pass a ``multiprocessing`` Event to share it with the servo
    process. A hardware e-stop within reach is still required: this one cannot stop a robot whose software
    has hung.
    """

    def __init__(self, flag: threading.Event | None = None) -> None:
        self.flag = flag if flag is not None else threading.Event()
        self.reason = ""

    @property
    def triggered(self) -> bool:
        return self.flag.is_set()

    def trigger(self, reason: str = "api") -> None:
        if not self.flag.is_set():
            self.reason = reason
        self.flag.set()

    def rearm(self) -> None:
        """Explicitly release the e-stop; the loop still has to be re-armed before it moves."""
        self.flag.clear()
        self.reason = ""

    def on_signal(self, signum: int = signal.SIGUSR1) -> None:
        """Trigger on ``signum`` (``kill -USR1 <pid>`` from another terminal); main thread only."""
        signal.signal(signum, lambda *_: self.trigger(f"signal {signal.Signals(signum).name}"))
