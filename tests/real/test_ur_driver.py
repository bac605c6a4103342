"""URDriver against a fake ur_rtde: settings, servoJ streaming, state freshness, safety stops, shutdown."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from conftest import CallLog
from robopol.real.clock import VirtualClock
from robopol.real.driver import DriverError, ProtectiveStop
from robopol.real.ur_rtde_driver import URDriver

from robopol.errors import ConfigError, MissingExtraError

Q = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0]


class FakeUR(CallLog):
    """The controller both fake interfaces talk to; ``calls`` logs every control-side call in order."""

    def __init__(self):
        super().__init__()
        self.q, self.qd, self.stamp = list(Q), [0.1] * 6, 1.0
        self.connected = True
        self.protective = self.emergency = False
        self.within_limits = True
        self.receive_args = self.control_args = None
        self.receive_disconnected = False


@pytest.fixture
def ur(monkeypatch) -> FakeUR:
    """Inject fake ``rtde_control`` / ``rtde_receive`` modules backed by one FakeUR."""
    robot = FakeUR()

    class RTDEReceiveInterface:
        def __init__(self, hostname, frequency=-1.0):
            robot.receive_args = (hostname, frequency)

        def getActualQ(self):
            return list(robot.q)

        def getActualQd(self):
            return list(robot.qd)

        def getTimestamp(self):
            return robot.stamp

        def isConnected(self):
            return robot.connected

        def isProtectiveStopped(self):
            return robot.protective

        def isEmergencyStopped(self):
            return robot.emergency

        def disconnect(self):
            robot.receive_disconnected = True

    class RTDEControlInterface:
        def __init__(self, hostname, frequency=-1.0):
            robot.control_args = (hostname, frequency)
            robot.record("__init__")

        def setWatchdog(self, min_frequency=10.0):
            robot.record("setWatchdog", min_frequency)

        def kickWatchdog(self):
            robot.record("kickWatchdog")
            return True

        def isConnected(self):
            return robot.connected

        def isJointsWithinSafetyLimits(self, q):
            robot.record("isJointsWithinSafetyLimits", q)
            return robot.within_limits

        def servoJ(self, q, speed, acceleration, time, lookahead_time, gain):
            robot.record("servoJ", q, speed, acceleration, time, lookahead_time, gain)
            return True

        def servoStop(self, a=10.0):
            robot.record("servoStop")
            return True

        def stopScript(self):
            robot.record("stopScript")

        def disconnect(self):
            robot.record("disconnect")

    control = types.ModuleType("rtde_control")
    control.RTDEControlInterface = RTDEControlInterface
    receive = types.ModuleType("rtde_receive")
    receive.RTDEReceiveInterface = RTDEReceiveInterface
    monkeypatch.setitem(sys.modules, "rtde_control", control)
    monkeypatch.setitem(sys.modules, "rtde_receive", receive)
    return robot


def make(clock=None, **kwargs) -> URDriver:
    return URDriver("10.0.0.2", clock or VirtualClock(), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frequency": 250}, "frequency=250 must be 125 (CB3) or 500 (e-Series) Hz"),
    ({"lookahead_time": 0.01}, r"lookahead_time=0.01 s must be in [0.03, 0.2]"),
    ({"lookahead_time": 0.5}, r"lookahead_time=0.5 s must be in [0.03, 0.2]"),
    ({"gain": 50}, r"gain=50 must be in [100, 2000]"),
    ({"gain": 2500}, r"gain=2500 must be in [100, 2000]"),
    ({"receive_latency_s": -0.001}, "receive_latency_s=-0.001 must be a finite value >= 0"),
    ({"watchdog_hz": 0}, "watchdog_hz=0 must be in (0, frequency=500]"),
])
def test_invalid_settings_raise_config_error_before_connecting(ur, kwargs, message):
    with pytest.raises(ConfigError) as err:
        make(**kwargs)
    assert message in str(err.value)
    assert ur.calls == [] and ur.receive_args is None


def test_connects_at_the_configured_rate_and_arms_the_watchdog(ur):
    driver = make(frequency=125, watchdog_hz=20.0)
    assert ur.receive_args == ("10.0.0.2", 125.0) and ur.control_args == ("10.0.0.2", 125.0)
    assert ur.calls == [("__init__",), ("setWatchdog", 20.0)]
    assert driver.dim == 6 and driver.dt == pytest.approx(1 / 125)


def test_command_checks_limits_then_sends_one_servoj(ur):
    driver = make(frequency=500, lookahead_time=0.05, gain=600)
    ur.calls.clear()
    target = np.array(Q) + 0.01
    driver.command(target)
    assert ur.calls == [("isJointsWithinSafetyLimits", target.tolist()),
                        ("servoJ", target.tolist(), 0.0, 0.0, 0.002, 0.05, 600.0)]


def test_command_outside_joint_limits_is_not_sent(ur):
    driver = make()
    ur.within_limits = False
    with pytest.raises(DriverError, match="outside the controller's joint limits"):
        driver.command(np.array(Q))
    assert "servoJ" not in ur.names()


def test_command_can_skip_the_limit_round_trip(ur):
    driver = make(check_joint_limits=False)
    driver.command(np.array(Q))
    assert "isJointsWithinSafetyLimits" not in ur.names() and "servoJ" in ur.names()


@pytest.mark.parametrize("target", [np.zeros(5), np.zeros(7), np.array(Q[:5] + [np.nan])])
def test_command_rejects_malformed_targets(ur, target):
    driver = make()
    with pytest.raises(ValueError, match="6 finite joint targets"):
        driver.command(target)
    assert "servoJ" not in ur.names()


def test_servoj_exception_becomes_driver_error(ur):
    driver = make()
    ur.fail["servoJ"] = RuntimeError("RTDE control script is not running")
    with pytest.raises(DriverError, match="servoJ failed") as err:
        driver.command(np.array(Q))
    assert isinstance(err.value.__cause__, RuntimeError)


def test_read_state_subtracts_latency_and_counts_fresh_samples(ur):
    clock = VirtualClock(start=10.0)
    driver = make(clock, receive_latency_s=0.004)
    s1 = driver.read_state()
    assert s1.seq == 1 and s1.t == pytest.approx(10.0 - 0.004)
    np.testing.assert_allclose(s1.position, Q)
    np.testing.assert_allclose(s1.velocity, [0.1] * 6)
    assert set(s1.obs) == {"joint_pos", "joint_vel"}
    assert all(v.dtype == np.float32 and v.shape == (6,) for v in s1.obs.values())

    clock.advance(0.002)  # the controller has not published a new package yet
    s2 = driver.read_state()
    assert (s2.seq, s2.t) == (s1.seq, s1.t)

    ur.stamp += 0.002
    clock.advance(0.001)
    s3 = driver.read_state()
    assert s3.seq == 2 and s3.t == pytest.approx(10.003 - 0.004)


@pytest.mark.parametrize("flag", ["protective", "emergency"])
def test_safety_stops_raise_protective_stop(ur, flag):
    driver = make()
    setattr(ur, flag, True)
    with pytest.raises(ProtectiveStop):
        driver.read_state()
    with pytest.raises(ProtectiveStop):
        driver.command(np.array(Q))
    assert "servoJ" not in ur.names()


def test_protective_stop_during_servoj_is_reported_as_such(ur):
    driver = make(check_joint_limits=False)
    record = ur.record

    def protective_stop_on_servoj(name, *args):
        ur.protective = name == "servoJ"
        record(name, *args)

    ur.record = protective_stop_on_servoj
    ur.fail["servoJ"] = RuntimeError("RTDE control script stopped")
    with pytest.raises(ProtectiveStop):
        driver.command(np.array(Q))


def test_lost_connection_raises_driver_error(ur):
    driver = make()
    ur.connected = False
    with pytest.raises(DriverError, match="connection lost") as err:
        driver.read_state()
    assert not isinstance(err.value, ProtectiveStop)
    with pytest.raises(DriverError, match="connection lost"):
        driver.command(np.array(Q))
    assert driver.heartbeat() is False


def test_hold_calls_servostop_once_until_the_next_command(ur):
    driver = make()
    ur.calls.clear()
    driver.hold()
    driver.hold()
    assert ur.names() == ["servoStop"]
    driver.command(np.array(Q))
    driver.hold()
    assert ur.names().count("servoStop") == 2


def test_heartbeat_kicks_the_watchdog_every_call(ur):
    driver = make()
    ur.calls.clear()
    assert driver.heartbeat() is True and driver.heartbeat() is True
    assert ur.names() == ["kickWatchdog", "kickWatchdog"]
    ur.fail["kickWatchdog"] = RuntimeError("socket closed")
    assert driver.heartbeat() is False


def test_stop_runs_every_cleanup_step_even_if_one_fails_and_is_idempotent(ur):
    driver = make()
    ur.calls.clear()
    ur.fail["servoStop"] = RuntimeError("no control script")
    driver.stop()
    assert ur.names() == ["servoStop", "stopScript", "disconnect"]
    assert ur.receive_disconnected
    driver.stop()
    assert ur.names() == ["servoStop", "stopScript", "disconnect"]
    with pytest.raises(DriverError, match="after stop"):
        driver.command(np.array(Q))
    assert driver.heartbeat() is False


def test_failed_control_connection_releases_the_receive_side(ur):
    ur.fail["__init__"] = RuntimeError("ur_rtde: Failed to start control script")
    with pytest.raises(DriverError, match="cannot start the RTDE control interface"):
        make()
    assert ur.receive_disconnected


def test_missing_ur_rtde_names_the_robot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtde_control", None)  # makes the import fail even where installed
    with pytest.raises(MissingExtraError, match=r"'rtde_control' package from the 'robot' extra") as err:
        make()
    assert "the UR driver" in str(err.value)
