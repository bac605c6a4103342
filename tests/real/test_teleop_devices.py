"""Keyboard and SpaceMouse teleoperators against fakes: key and axis mapping, hold timing, toggles, terminal care."""

from __future__ import annotations

import io
import os
import select
import sys
import termios
import tty
import types
from dataclasses import dataclass, field

import numpy as np
import pytest
from robopol.real.teleop_devices import KeyboardTeleop, SpaceMouseTeleop

from robopol.errors import ConfigError, MissingExtraError


class Keys:
    """A ``stream`` for KeyboardTeleop: characters typed since the last poll."""

    def __init__(self) -> None:
        self.pending = ""

    def type(self, keys: str) -> None:
        self.pending += keys

    def __call__(self) -> str:
        keys, self.pending = self.pending, ""
        return keys


@pytest.fixture
def keys() -> Keys:
    return Keys()


def press(teleop: KeyboardTeleop, keys: Keys, typed: str, t: float):
    keys.type(typed)
    return teleop.poll(t)


# --- keyboard: mapping and timing ---------------------------------------------------------------------------


@pytest.mark.parametrize("key, dim, value", [("w", 0, 1), ("s", 0, -1), ("a", 1, 1), ("d", 1, -1),
                                             ("r", 2, 1), ("f", 2, -1), ("q", 3, 1), ("e", 3, -1)])
def test_keyboard_default_bindings(keys, key, dim, value):
    teleop = KeyboardTeleop(5, stream=keys, step=0.5)
    got = press(teleop, keys, key, 0.0)
    expected = np.zeros(5, dtype=np.float32)
    expected[dim] = 0.5 * value
    expected[4] = 1.0  # engaged polls carry the (open) gripper
    np.testing.assert_array_equal(got.action, expected)
    assert got.action.dtype == np.float32
    assert got.engaged and not got.estop and not got.done


def test_keyboard_idle_is_zero_and_disengaged(keys):
    got = KeyboardTeleop(5, stream=keys).poll(0.0)
    np.testing.assert_array_equal(got.action, np.zeros(5))
    assert not got.engaged


def test_keyboard_press_holds_for_hold_s_then_drops(keys):
    teleop = KeyboardTeleop(5, stream=keys, hold_s=0.15)
    assert press(teleop, keys, "w", 1.0).action[0] == 1.0
    held = teleop.poll(1.1)
    assert held.engaged and held.action[0] == 1.0
    dropped = teleop.poll(1.2)
    assert not dropped.engaged
    np.testing.assert_array_equal(dropped.action, np.zeros(5))


def test_keyboard_repeat_extends_and_opposite_key_overrides(keys):
    teleop = KeyboardTeleop(5, stream=keys, hold_s=0.15)
    press(teleop, keys, "w", 0.0)
    press(teleop, keys, "w", 0.1)  # terminal auto-repeat
    assert teleop.poll(0.2).action[0] == 1.0
    assert press(teleop, keys, "s", 0.2).action[0] == -1.0
    both = press(teleop, keys, "wa", 0.3)
    np.testing.assert_array_equal(both.action[:4], [1, 1, 0, 0])


def test_keyboard_custom_hold_s(keys):
    teleop = KeyboardTeleop(5, stream=keys, hold_s=0.5)
    press(teleop, keys, "r", 0.0)
    assert teleop.poll(0.45).action[2] == 1.0
    assert teleop.poll(0.55).action[2] == 0.0


def test_keyboard_ignores_unbound_keys_and_arrow_escapes(keys):
    got = press(KeyboardTeleop(5, stream=keys), keys, "zZ\x1b[A\x1b[B\x1b[C\x1b[D", 0.0)
    assert not got.engaged and not got.estop and not got.done


def test_keyboard_gripper_toggle_latches(keys):
    teleop = KeyboardTeleop(5, stream=keys)
    toggled = press(teleop, keys, " ", 0.0)
    assert toggled.engaged  # the toggle alone takes over, so the new gripper command reaches the robot
    np.testing.assert_array_equal(toggled.action, [0, 0, 0, 0, -1])
    assert not teleop.poll(0.2).engaged
    assert press(teleop, keys, "w", 0.3).action[4] == -1.0  # still closed on the next motion
    assert press(teleop, keys, " ", 0.4).action[4] == 1.0


def test_keyboard_estop_latches_and_done_fires_once(keys):
    teleop = KeyboardTeleop(5, stream=keys)
    assert not teleop.poll(0.0).estop
    assert press(teleop, keys, "x", 0.1).estop
    assert teleop.poll(5.0).estop
    caps = KeyboardTeleop(5, stream=keys)
    assert press(caps, keys, "X", 0.0).estop
    for enter in ("\r", "\n"):
        assert press(caps, keys, enter, 1.0).done
        assert not caps.poll(1.01).done


def test_keyboard_custom_bindings_for_a_4d_gripper_layout(keys):
    teleop = KeyboardTeleop(4, bindings={"i": (0, 1.0), "k": (0, -1.0), "g": "gripper", "p": "estop"},
                            gripper_dim=3, stream=keys)
    np.testing.assert_array_equal(press(teleop, keys, "k", 0.0).action, [-1, 0, 0, 1])
    np.testing.assert_array_equal(press(teleop, keys, "g", 1.0).action, [0, 0, 0, -1])
    assert press(teleop, keys, "p", 2.0).estop
    assert not press(teleop, keys, "w", 3.0).engaged  # the default bindings are gone


@pytest.mark.parametrize("kwargs, match", [
    ({"action_dim": 4}, r"dims \[4\] do not exist in a 4-d action"),
    ({"action_dim": 5, "gripper_dim": 2}, "gripper_dim=2 is also a motion dim"),
    ({"action_dim": 5, "bindings": {"k": "jump"}}, "unknown commands"),
    ({"action_dim": 5, "bindings": {" ": "gripper"}}, "gripper_dim is not set"),
    ({"action_dim": 5, "hold_s": 0.0}, "must be positive"),
])
def test_keyboard_rejects_bad_layouts(keys, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        KeyboardTeleop(stream=keys, **kwargs)


# --- keyboard: the terminal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", ["stringio", "file"])
def test_keyboard_refuses_a_non_tty_stdin(monkeypatch, tmp_path, stdin):
    if stdin == "stringio":
        monkeypatch.setattr(sys, "stdin", io.StringIO("wasd"))
    else:
        monkeypatch.setattr(sys, "stdin", (tmp_path / "keys.txt").open("w+"))
    with pytest.raises(ConfigError, match="stdin is not a TTY.*interactive terminal.*stream="):
        KeyboardTeleop(5)


class FakeTerminal:
    """Stands in for stdin on fd 7 and the termios/tty/select/os calls that touch it."""

    FD = 7

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple] = []
        self.pending: list[bytes] = []
        self.select_error: Exception | None = None
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(fileno=lambda: self.FD))
        monkeypatch.setattr(os, "isatty", lambda fd: fd == self.FD)
        monkeypatch.setattr(termios, "tcgetattr", lambda fd: ["saved mode", fd])
        monkeypatch.setattr(termios, "tcsetattr", lambda fd, when, mode: self.calls.append(("set", fd, when, mode)))
        monkeypatch.setattr(tty, "setcbreak", lambda fd: self.calls.append(("cbreak", fd)))
        monkeypatch.setattr(select, "select", self.select)
        monkeypatch.setattr(os, "read", lambda fd, n: self.pending.pop(0))

    def select(self, rlist, wlist, xlist, timeout):
        assert timeout == 0  # never blocks the control loop
        if self.select_error is not None:
            raise self.select_error
        return (rlist if self.pending else []), [], []

    @property
    def restores(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "set"]


def test_keyboard_cbreak_reads_and_restores_on_close(monkeypatch):
    term = FakeTerminal(monkeypatch)
    teleop = KeyboardTeleop(5)
    assert term.calls == [("cbreak", 7)]
    assert not teleop.poll(0.0).engaged
    term.pending.append(b"d")
    assert teleop.poll(0.1).action[1] == -1.0
    teleop.close()
    teleop.close()
    assert term.restores == [("set", 7, termios.TCSAFLUSH, ["saved mode", 7])]
    with pytest.raises(RuntimeError, match="after close"):
        teleop.poll(0.2)


def test_keyboard_restores_the_terminal_when_poll_raises(monkeypatch):
    term = FakeTerminal(monkeypatch)
    teleop = KeyboardTeleop(5)
    term.select_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        teleop.poll(0.0)
    assert term.restores == [("set", 7, termios.TCSAFLUSH, ["saved mode", 7])]
    teleop.close()
    assert len(term.restores) == 1


def test_keyboard_on_a_real_pseudo_terminal(monkeypatch):
    try:
        master, slave = os.openpty()
    except OSError:
        pytest.skip("no pseudo-terminals here")
    try:
        with os.fdopen(slave, "r") as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            before = termios.tcgetattr(slave)
            teleop = KeyboardTeleop(5)
            try:
                assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO)
                os.write(master, b"q")
                assert teleop.poll(0.0).action[3] == 1.0
                assert not teleop.poll(0.01).done
            finally:
                teleop.close()
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)


# --- SpaceMouse -----------------------------------------------------------------------------------------------


@dataclass
class FakeState:
    t: float = -1.0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    buttons: list[int] = field(default_factory=lambda: [0, 0])


class FakeMouse:
    """pyspacemouse's device: each read() consumes one queued HID report and returns the (mutable) state."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.reports: list[dict] = []
        self.closed = 0

    def report(self, **fields) -> None:
        self.reports.append(fields)

    def read(self) -> FakeState:
        if self.reports:
            for name, value in self.reports.pop(0).items():
                setattr(self.state, name, value)
            self.state.t += 1.0
        return self.state

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def mouse(monkeypatch) -> FakeMouse:
    fake = FakeMouse()
    module = types.ModuleType("pyspacemouse")
    module.opened = []

    def open(device=None):
        module.opened.append(device)
        return fake

    module.open = open
    monkeypatch.setitem(sys.modules, "pyspacemouse", module)
    return fake


def test_spacemouse_maps_axes_to_the_ee_layout(mouse):
    teleop = SpaceMouseTeleop(5)
    assert sys.modules["pyspacemouse"].opened == [None]
    mouse.report(x=0.5, y=-0.3, z=0.2, roll=0.9, pitch=-0.9, yaw=0.4)
    got = teleop.poll(0.0)
    np.testing.assert_allclose(got.action, [0.5, -0.3, 0.2, 0.4, 1.0], rtol=1e-6)
    assert got.action.dtype == np.float32
    assert got.engaged and not got.estop and not got.done


def test_spacemouse_custom_map_and_per_axis_scale(mouse):
    teleop = SpaceMouseTeleop(3, axes_map={"y": 0, "roll": 2}, scale={"y": -2.0}, device="SpaceMouse Compact")
    assert sys.modules["pyspacemouse"].opened == ["SpaceMouse Compact"]
    mouse.report(x=0.7, y=0.25, roll=0.5)
    np.testing.assert_allclose(teleop.poll(0.0).action, [-0.5, 0.0, 0.5])
    uniform = SpaceMouseTeleop(5, scale=0.1)
    np.testing.assert_allclose(uniform.poll(0.1).action, [0.07, 0.025, 0.0, 0.0, 1.0], rtol=1e-6)


def test_spacemouse_dead_band_reads_zero(mouse):
    teleop = SpaceMouseTeleop(5, deadband=0.05)
    mouse.report(x=0.04, y=-0.05, yaw=0.03)
    rest = teleop.poll(0.0)
    assert not rest.engaged
    np.testing.assert_array_equal(rest.action, np.zeros(5))
    mouse.report(x=0.06)
    moved = teleop.poll(0.1)
    assert moved.engaged
    np.testing.assert_allclose(moved.action, [0.06, 0.0, 0.0, 0.0, 1.0], rtol=1e-6)


def test_spacemouse_buttons_toggle_gripper_and_end_the_episode(mouse):
    teleop = SpaceMouseTeleop(5)
    mouse.report(buttons=[1, 0])
    held = teleop.poll(0.0)
    assert held.engaged  # a held button takes over even with the cap at rest
    np.testing.assert_array_equal(held.action, [0, 0, 0, 0, -1])
    assert teleop.poll(0.1).action[4] == -1.0  # still held: no second toggle
    mouse.report(buttons=[0, 0])
    assert not teleop.poll(0.2).engaged
    mouse.report(buttons=[1, 0])
    assert teleop.poll(0.3).action[4] == 1.0
    mouse.report(buttons=[0, 1])
    assert teleop.poll(0.4).done
    assert not teleop.poll(0.5).done  # once per press


def test_spacemouse_reads_the_newest_report(mouse):
    teleop = SpaceMouseTeleop(5)
    for x in (0.2, 0.4, 0.6):
        mouse.report(x=x)
    assert teleop.poll(0.0).action[0] == pytest.approx(0.6)
    assert not mouse.reports


def test_spacemouse_close_releases_the_device_once(mouse):
    teleop = SpaceMouseTeleop(5)
    teleop.close()
    teleop.close()
    assert mouse.closed == 1


@pytest.mark.parametrize("outcome, match", [
    (RuntimeError("No connected or supported devices found."),
     r"could not open the first connected SpaceMouse \(No connected or supported devices found\.\).*udev"),
    (None, r"could not open 'SpaceMouse Pro' \(no device found\)"),
])
def test_spacemouse_open_failure_is_explained(monkeypatch, outcome, match):
    module = types.ModuleType("pyspacemouse")

    def open(**kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    module.open = open
    monkeypatch.setitem(sys.modules, "pyspacemouse", module)
    device = None if isinstance(outcome, Exception) else "SpaceMouse Pro"
    with pytest.raises(ConfigError, match=match):
        SpaceMouseTeleop(5, device=device)


def test_spacemouse_without_the_robot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspacemouse", None)  # makes the import fail even where it is installed
    with pytest.raises(MissingExtraError, match=r"SpaceMouse teleoperation.*pip install 'robopol\[robot\]'"):
        SpaceMouseTeleop(5)


@pytest.mark.parametrize("kwargs, match", [
    ({"axes_map": {"twist": 0}}, r"unknown axes \['twist'\]"),
    ({"axes_map": {"x": 0, "y": 0}}, "two axes to one action dim"),
    ({"action_dim": 4}, r"dims \[4\] do not exist"),
    ({"deadband": 1.0}, r"deadband must be in \[0, 1\)"),
])
def test_spacemouse_rejects_bad_layouts(mouse, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SpaceMouseTeleop(**{"action_dim": 5, **kwargs})
