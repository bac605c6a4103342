"""Human input devices: a terminal keyboard and a 3Dconnexion SpaceMouse (``Teleop`` implementations).

Both default to the OGBench arm's 5-d end-effector delta action ``(dx, dy, dz, dyaw, dgripper)`` and follow
HIL-SERL's takeover rule (``robopol.real.teleop.engaged``): the human acts while an axis is outside the dead
band or a button is held. Idle polls return a zero action with ``engaged=False``.

The gripper is a latched toggle: each press of space (keyboard) or the left button (SpaceMouse) flips
``gripper`` between +1 and -1, and engaged polls carry it on the gripper dim (which sign closes the hand is
the action space's convention: in OGBench's, +1 closes). It starts at +1; the deploy loop sets it from the
measured hand when a takeover starts (``robot.gripper_close_action``), so taking over a grasp keeps it.

Keyboard timing: a terminal reports key *presses*, never key holds, so a press drives its axis at full
``step`` for ``hold_s`` seconds of loop time (the ``t`` given to ``poll``) and the axis then drops back to
zero. Holding a key down works through the terminal's auto-repeat, which re-presses it about 30 times a
second after an initial delay of 250-600 ms; with the default ``hold_s=0.15`` the arm therefore moves one
short burst, pauses until the repeat starts, then moves continuously until the key is released.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import termios
import tty
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
from robopol.real.teleop import TeleopInput, engaged

from robopol.errors import ConfigError, require_extra

Command = Literal["gripper", "estop", "done"]
Binding = tuple[int, float] | Command
"""A key's meaning: ``(action dim, direction)`` for a motion key, or one of the commands."""

COMMANDS: tuple[Command, ...] = ("gripper", "estop", "done")

EE_KEYS: dict[str, Binding] = {
    "w": (0, 1.0), "s": (0, -1.0),  # x
    "a": (1, 1.0), "d": (1, -1.0),  # y
    "r": (2, 1.0), "f": (2, -1.0),  # z
    "q": (3, 1.0), "e": (3, -1.0),  # yaw
    " ": "gripper",
    "x": "estop", "X": "estop",  # caps lock must not disarm the e-stop
    "\r": "done", "\n": "done",  # enter is \r or \n depending on the terminal's ICRNL flag
}
"""Default key bindings for the 5-d end-effector delta layout."""

SPACEMOUSE_AXES = ("x", "y", "z", "roll", "pitch", "yaw")
EE_AXES: dict[str, int] = {"x": 0, "y": 1, "z": 2, "yaw": 3}
"""Default SpaceMouse axis -> action dim map for the 5-d end-effector delta layout."""

EE_GRIPPER_DIM = 4
MAX_DRAIN = 64
"""Most HID reports consumed per SpaceMouse poll (one read returns one report; see ``_newest_state``)."""


def _check_layout(who: str, action_dim: int, dims: Iterable[int], gripper_dim: int | None) -> None:
    """Every mapped dim must exist in the action, and the gripper dim must not also be a motion dim."""
    dims = set(dims)
    used = dims | ({gripper_dim} if gripper_dim is not None else set())
    outside = sorted(d for d in used if not 0 <= d < action_dim)
    if outside:
        raise ConfigError(f"{who}: action dims {outside} do not exist in a {action_dim}-d action; "
                          "pass bindings / axes_map and gripper_dim that fit the policy's action layout")
    if gripper_dim in dims:
        raise ConfigError(f"{who}: gripper_dim={gripper_dim} is also a motion dim; pick a separate dim")


class KeyboardTeleop:
    """Terminal keys -> actions: stdin in cbreak mode, read without blocking on every poll.

    ``stream``: a callable returning the characters typed since its last call ("" when none), used instead
    of stdin (tests, or keys arriving over another channel). ``gripper_dim`` defaults to 4 with the default
    bindings and to no gripper with custom ones. ``x`` latches the e-stop (``estop`` stays True), enter
    reports ``done`` on that poll only. Ctrl-C still raises ``KeyboardInterrupt`` (cbreak keeps signals);
    call ``close()`` in a ``finally`` so the terminal gets its echo and line editing back.
    """

    def __init__(self, action_dim: int, bindings: Mapping[str, Binding] | None = None, step: float = 1.0,
                 gripper_dim: int | None = None, stream: Callable[[], str] | None = None,
                 hold_s: float = 0.15) -> None:
        self.bindings: dict[str, Binding] = dict(EE_KEYS if bindings is None else bindings)
        if gripper_dim is None and bindings is None:
            gripper_dim = EE_GRIPPER_DIM
        unknown = sorted(repr(k) for k, b in self.bindings.items() if isinstance(b, str) and b not in COMMANDS)
        if unknown:
            raise ConfigError(f"KeyboardTeleop: keys {', '.join(unknown)} are bound to unknown commands; "
                              f"use (dim, direction) or one of {COMMANDS}")
        if gripper_dim is None and "gripper" in self.bindings.values():
            raise ConfigError("KeyboardTeleop: a key is bound to 'gripper' but gripper_dim is not set")
        _check_layout("KeyboardTeleop", action_dim,
                      (b[0] for b in self.bindings.values() if not isinstance(b, str)), gripper_dim)
        if step <= 0 or hold_s <= 0:
            raise ConfigError(f"KeyboardTeleop: step ({step}) and hold_s ({hold_s}) must be positive")
        self.action_dim, self.gripper_dim, self.step, self.hold_s = action_dim, gripper_dim, step, hold_s
        self.gripper = 1.0
        self._pressed: dict[int, tuple[float, float]] = {}  # dim -> (direction, t of the last press)
        self._gripper_t = -np.inf
        self._estop = False
        self._fd: int | None = None
        self._saved_mode: list[Any] | None = None
        self._read = stream if stream is not None else self._open_terminal()

    def _open_terminal(self) -> Callable[[], str]:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # stdin replaced or closed (daemons, pytest, StringIO)
            fd = -1
        if fd < 0 or not os.isatty(fd):
            raise ConfigError("KeyboardTeleop reads keys from a terminal, but stdin is not a TTY (piped, "
                              "redirected or run in the background); run it in an interactive terminal, or "
                              "pass stream= to feed keys another way")
        self._saved_mode = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._fd = fd
        atexit.register(self.close)  # an exit that skips close() must not leave the shell without echo
        return self._read_terminal

    def _read_terminal(self) -> str:
        if self._fd is None:
            raise RuntimeError("KeyboardTeleop.poll after close()")
        ready, _, _ = select.select([self._fd], [], [], 0)
        return os.read(self._fd, 1024).decode(errors="ignore") if ready else ""

    def poll(self, t: float) -> TeleopInput:
        try:
            keys = self._read()
        except BaseException:
            self.close()
            raise
        done = False
        for key in keys:
            binding = self.bindings.get(key)
            if binding == "estop":
                self._estop = True
            elif binding == "done":
                done = True
            elif binding == "gripper":
                self.gripper = -self.gripper
                self._gripper_t = t
            elif binding is not None:
                dim, direction = binding
                self._pressed[dim] = (direction, t)
        action = np.zeros(self.action_dim, dtype=np.float32)
        for dim, (direction, pressed_t) in self._pressed.items():
            if t - pressed_t < self.hold_s:
                action[dim] = direction * self.step
        active = engaged(action, t - self._gripper_t < self.hold_s, 0.0)
        if active and self.gripper_dim is not None:
            action[self.gripper_dim] = self.gripper
        return TeleopInput(action, engaged=active, estop=self._estop, done=done)

    def close(self) -> None:
        """Give the terminal its saved mode back; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is not None:
            atexit.unregister(self.close)
            # TCSAFLUSH drops unread keys so they do not spill into the shell as a command.
            termios.tcsetattr(fd, termios.TCSAFLUSH, self._saved_mode)


class SpaceMouseTeleop:
    """A 3Dconnexion SpaceMouse through ``pyspacemouse`` (the ``robot`` extra), read over raw HID.

    ``axes_map``: SpaceMouse axis (x, y, z, roll, pitch, yaw; each in [-1, 1]) -> action dim. ``scale``: one
    factor for all axes, or one per axis name (a negative factor flips an axis into the robot's frame).
    Axes within ``deadband`` read zero, so a cap resting slightly off centre does not take over the robot.
    ``gripper_button`` (left) toggles the gripper, ``done_button`` (right) reports ``done`` once per press;
    holding any button engages. The SpaceMouse has no e-stop: keep the hardware e-stop within reach.
    ``device``: a pyspacemouse device name (e.g. "SpaceMouse Compact"); None opens the first one found.
    Reads go through the object ``pyspacemouse.open`` returns, which 1.x and 2.x both provide (2.x dropped
    the module-level ``read``/``close``).
    """

    def __init__(self, action_dim: int, axes_map: Mapping[str, int] | None = None,
                 scale: float | Mapping[str, float] = 1.0, deadband: float = 0.05, device: str | None = None,
                 gripper_dim: int | None = None, gripper_button: int = 0, done_button: int = 1) -> None:
        self.axes_map = dict(EE_AXES if axes_map is None else axes_map)
        if gripper_dim is None and axes_map is None:
            gripper_dim = EE_GRIPPER_DIM
        scales = dict(scale) if isinstance(scale, Mapping) else dict.fromkeys(self.axes_map, float(scale))
        unknown = sorted((set(self.axes_map) | set(scales)) - set(SPACEMOUSE_AXES))
        if unknown:
            raise ConfigError(f"SpaceMouseTeleop: unknown axes {unknown}; the SpaceMouse has {SPACEMOUSE_AXES}")
        dims = list(self.axes_map.values())
        if len(set(dims)) < len(dims):
            raise ConfigError(f"SpaceMouseTeleop: axes_map {self.axes_map} sends two axes to one action dim")
        _check_layout("SpaceMouseTeleop", action_dim, dims, gripper_dim)
        if not 0 <= deadband < 1:
            raise ConfigError(f"SpaceMouseTeleop: deadband must be in [0, 1), got {deadband}")
        self.action_dim, self.gripper_dim, self.deadband = action_dim, gripper_dim, deadband
        self.gripper_button, self.done_button = gripper_button, done_button
        self._dims = np.array(dims, dtype=np.intp)
        self._scale = np.array([scales.get(axis, 1.0) for axis in self.axes_map])
        self.gripper = 1.0
        self._pressed = (False, False)  # gripper and done buttons at the previous poll, for press edges

        pyspacemouse = require_extra("pyspacemouse", "robot", "SpaceMouse teleoperation")
        which = repr(device) if device else "the first connected SpaceMouse"
        try:
            self._device = pyspacemouse.open(device=device)
            failure = "" if self._device else "no device found"
        except Exception as exc:  # pyspacemouse raises bare Exception, RuntimeError or ValueError
            failure = str(exc)
        if failure:
            raise ConfigError(f"SpaceMouseTeleop: could not open {which} ({failure}); check that it is plugged "
                              "in, that this user may read its /dev/hidraw* node (udev rule), and that no "
                              "driver (3DxWare, spacenavd) holds it")

    def _newest_state(self) -> Any:
        """Each ``read()`` consumes one HID report, so a loop slower than the device's report rate would lag
        ever further behind the hand; read until the timestamp stops changing (no report pending)."""
        state = self._device.read()
        for _ in range(MAX_DRAIN):
            previous_t = state.t
            state = self._device.read()
            if state.t == previous_t:
                break
        return state

    def poll(self, t: float) -> TeleopInput:
        state = self._newest_state()
        axes = np.array([float(getattr(state, axis)) for axis in self.axes_map])
        axes[np.abs(axes) <= self.deadband] = 0.0
        buttons = list(state.buttons)
        pressed = tuple(i < len(buttons) and bool(buttons[i]) for i in (self.gripper_button, self.done_button))
        if pressed[0] and not self._pressed[0]:
            self.gripper = -self.gripper
        done = pressed[1] and not self._pressed[1]
        self._pressed = pressed
        active = engaged(axes, any(buttons), self.deadband)
        action = np.zeros(self.action_dim, dtype=np.float32)
        if active:
            action[self._dims] = axes * self._scale
            if self.gripper_dim is not None:
                action[self.gripper_dim] = self.gripper
        return TeleopInput(action, engaged=active, done=done)

    def close(self) -> None:
        """Release the HID device; safe to call more than once."""
        device, self._device = self._device, None
        if device is not None:
            device.close()
