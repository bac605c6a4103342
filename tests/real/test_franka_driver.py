"""FrankaDriver against a fake franky: settings, JointMotion streaming, gripper mapping, reflexes, stop."""

from __future__ import annotations

import enum
import sys
import types

import numpy as np
import pytest
from conftest import CallLog
from robopol.real.clock import VirtualClock
from robopol.real.driver import DriverError, ProtectiveStop
from robopol.real.franky_driver import FrankaDriver

from robopol.errors import ConfigError, MissingExtraError

Q = [0.0, -0.6, 0.0, -2.2, 0.0, 1.7, 0.7]
MAX_WIDTH = 0.08


class RobotMode(enum.Enum):
    Idle = 1
    Move = 2
    Reflex = 3
    UserStopped = 4


class ControlException(Exception):
    pass


class FakeFranka(CallLog):
    """The arm and hand behind the fake franky module; ``calls`` logs commands in order."""

    def __init__(self):
        super().__init__()
        self.q, self.dq, self.msec = list(Q), [0.05] * 7, 1000
        self.mode, self.has_errors = RobotMode.Move, False
        self.width, self.max_width = 0.04, MAX_WIDTH
        self.robot_host = self.gripper_host = None
        self.dynamics_factor = None


@pytest.fixture
def franka(monkeypatch) -> FakeFranka:
    """Inject a fake ``franky`` module backed by one FakeFranka."""
    arm = FakeFranka()

    class Duration:
        def __init__(self, msec):
            self.msec = msec

        def to_msec(self):
            return self.msec

    class JointMotion:
        def __init__(self, target):
            self.target = np.array(target)

    class JointStopMotion:
        pass

    class Robot:
        def __init__(self, fci_hostname):
            arm.robot_host = fci_hostname
            arm.record("Robot")

        @property
        def relative_dynamics_factor(self):
            return arm.dynamics_factor

        @relative_dynamics_factor.setter
        def relative_dynamics_factor(self, value):
            arm.dynamics_factor = value

        @property
        def state(self):
            return types.SimpleNamespace(q=np.array(arm.q), dq=np.array(arm.dq), robot_mode=arm.mode,
                                         time=Duration(arm.msec))

        @property
        def has_errors(self):
            if "has_errors" in arm.fail:
                raise arm.fail["has_errors"]
            return arm.has_errors

        def move(self, motion, asynchronous=False):
            arm.record("move", motion, asynchronous)

        def join_motion(self, timeout=None):
            arm.record("join_motion", timeout)

        def stop(self):
            arm.record("stop")

        def recover_from_errors(self):
            arm.record("recover_from_errors")
            arm.mode, arm.has_errors = RobotMode.Idle, False

    class Gripper:
        def __init__(self, fci_hostname):
            arm.gripper_host = fci_hostname

        @property
        def width(self):
            return arm.width

        @property
        def max_width(self):
            return arm.max_width

        def move_async(self, width, speed):
            arm.record("move_async", width, speed)

    module = types.ModuleType("franky")
    for cls in (Robot, Gripper, JointMotion, JointStopMotion, RobotMode, ControlException):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "franky", module)
    return arm


def make(clock=None, **kwargs) -> FrankaDriver:
    return FrankaDriver("172.16.0.2", clock or VirtualClock(), **kwargs)


def moves(arm: FakeFranka) -> list:
    return [c[1] for c in arm.calls if c[0] == "move"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"relative_dynamics_factor": 0.0}, "relative_dynamics_factor=0.0 must be in (0, 1]"),
    ({"relative_dynamics_factor": 1.5}, "relative_dynamics_factor=1.5 must be in (0, 1]"),
    ({"receive_latency_s": float("nan")}, "receive_latency_s=nan must be a finite value >= 0"),
    ({"gripper_speed": 0.0}, "gripper_speed=0.0 m/s must be a finite value > 0"),
    ({"gripper_threshold": 1.0}, "gripper_threshold=1.0 must be in [0, 1)"),
    ({"stop_timeout_s": 0}, "stop_timeout_s=0 must be a finite value > 0"),
])
def test_invalid_settings_raise_config_error_before_connecting(franka, kwargs, message):
    with pytest.raises(ConfigError) as err:
        make(**kwargs)
    assert message in str(err.value)
    assert franka.calls == []


def test_connects_arm_and_hand_and_sets_the_dynamics_factor(franka):
    driver = make(relative_dynamics_factor=0.2)
    assert franka.robot_host == franka.gripper_host == "172.16.0.2"
    assert franka.dynamics_factor == 0.2
    assert driver.dim == 8
    assert make(gripper=False).dim == 7


def test_unhomed_hand_is_refused(franka):
    franka.max_width = 0.0
    with pytest.raises(DriverError, match="home it first"):
        make()


def test_command_streams_an_asynchronous_joint_motion(franka):
    driver = make(gripper=False)
    target = np.array(Q) + 0.01
    driver.command(target)
    driver.command(target + 0.01)
    sent = [c for c in franka.calls if c[0] == "move"]
    assert len(sent) == 2 and all(asynchronous for _, _, asynchronous in sent)
    np.testing.assert_allclose(sent[0][1].target, target)
    np.testing.assert_allclose(sent[1][1].target, target + 0.01)


@pytest.mark.parametrize("target", [np.zeros(7), np.zeros(9), np.array([*Q, np.inf])])
def test_command_rejects_malformed_targets(franka, target):
    driver = make()
    with pytest.raises(ValueError, match="8 finite values"):
        driver.command(target)
    assert "move" not in franka.names()


def test_gripper_opening_maps_to_width_and_is_sent_only_on_real_changes(franka):
    driver = make(gripper_speed=0.1, gripper_threshold=0.05)
    for opening in (0.5, 0.52, 0.56, 1.3, -0.2):
        driver.command(np.array([*Q, opening]))
    sent = [c[1:] for c in franka.calls if c[0] == "move_async"]
    # 0.52 is within the threshold of 0.5; 1.3 and -0.2 clip to fully open and closed.
    assert [width for width, _ in sent] == pytest.approx([0.04, 0.0448, MAX_WIDTH, 0.0])
    assert {speed for _, speed in sent} == {0.1}


def test_read_state_subtracts_latency_counts_fresh_samples_and_reports_the_hand(franka):
    clock = VirtualClock(start=5.0)
    driver = make(clock, receive_latency_s=0.003)
    s1 = driver.read_state()
    assert s1.seq == 1 and s1.t == pytest.approx(5.0 - 0.003)
    np.testing.assert_allclose(s1.position, [*Q, 0.5])
    np.testing.assert_allclose(s1.velocity, [0.05] * 7 + [0.0])
    assert set(s1.obs) == {"joint_pos", "joint_vel", "gripper"}
    assert all(v.dtype == np.float32 for v in s1.obs.values())
    np.testing.assert_allclose(s1.obs["gripper"], [0.5])

    clock.advance(0.01)  # same robot timestamp: the same sample
    s2 = driver.read_state()
    assert (s2.seq, s2.t) == (1, s1.t)

    franka.msec += 1
    s3 = driver.read_state()
    assert s3.seq == 2 and s3.t == pytest.approx(5.01 - 0.003)


def test_arm_only_state_has_no_gripper_entry(franka):
    s = make(gripper=False).read_state()
    assert s.position.shape == (7,) and "gripper" not in s.obs


@pytest.mark.parametrize(("mode", "errors"), [(RobotMode.Reflex, True), (RobotMode.UserStopped, False),
                                              (RobotMode.Idle, True)])
def test_reflex_or_error_state_raises_protective_stop(franka, mode, errors):
    driver = make()
    franka.mode, franka.has_errors = mode, errors
    with pytest.raises(ProtectiveStop, match="recover"):
        driver.read_state()
    assert driver.heartbeat() is (not errors)


def test_move_failure_in_reflex_is_a_protective_stop(franka):
    driver = make()
    franka.fail["move"] = ControlException("cartesian_reflex")
    franka.mode, franka.has_errors = RobotMode.Reflex, True
    with pytest.raises(ProtectiveStop) as err:
        driver.command(np.array([*Q, 0.5]))
    assert isinstance(err.value.__cause__, ControlException)
    driver.recover()
    assert franka.names()[-1] == "recover_from_errors"


def test_move_failure_without_reflex_is_a_driver_error(franka):
    driver = make()
    franka.fail["move"] = ControlException("communication_constraints_violation")
    with pytest.raises(DriverError, match="move failed") as err:
        driver.command(np.array([*Q, 0.5]))
    assert not isinstance(err.value, ProtectiveStop)
    assert "move_async" not in franka.names()


def test_hold_sends_one_stop_motion_until_the_next_command(franka):
    driver = make(gripper=False)
    driver.hold()
    driver.hold()
    assert [type(m).__name__ for m in moves(franka)] == ["JointStopMotion"]
    driver.command(np.array(Q))
    driver.hold()
    assert [type(m).__name__ for m in moves(franka)] == ["JointStopMotion", "JointMotion", "JointStopMotion"]


def test_stop_runs_every_step_even_if_one_fails_and_is_idempotent(franka):
    driver = make(stop_timeout_s=1.5)
    franka.calls.clear()
    franka.fail["move"] = ControlException("no motion generator")
    driver.stop()
    assert franka.names() == ["move", "join_motion", "stop"]
    assert franka.calls[1] == ("join_motion", 1.5)
    driver.stop()
    assert franka.names() == ["move", "join_motion", "stop"]
    with pytest.raises(DriverError, match="after stop"):
        driver.command(np.array([*Q, 0.5]))
    assert driver.heartbeat() is False


def test_heartbeat_is_false_when_the_robot_does_not_answer(franka):
    driver = make()
    assert driver.heartbeat() is True
    franka.fail["has_errors"] = ControlException("network timeout")
    assert driver.heartbeat() is False


def test_missing_franky_names_the_robot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)  # makes the import fail even where installed
    with pytest.raises(MissingExtraError, match=r"'franky' package from the 'robot' extra") as err:
        make()
    assert "the Franka driver" in str(err.value)
