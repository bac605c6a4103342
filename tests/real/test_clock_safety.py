"""Clocks (VirtualClock, RealClock), the safety filter (a property test of its guarantees over random limits,
states and requests, plus hand-computed single steps for every stage), SafetyLimits validation and the
latched software e-stop."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robopol.real.clock import RealClock, VirtualClock
from robopol.real.safety import EStop, FilterResult, SafetyFilter, SafetyLimits

from robopol.errors import ConfigError

# ------------------------------------------------------------------------------------------ clocks


def test_virtual_clock_moves_only_when_told():
    clock = VirtualClock(start=5.0)
    assert clock.now() == 5.0 and clock.now() == 5.0
    clock.sleep_until(5.25)
    assert clock.now() == 5.25
    clock.sleep_until(1.0)  # a past deadline returns at once, time never goes back
    assert clock.now() == 5.25
    clock.advance(0.5)
    assert clock.now() == 5.75
    clock.advance(0.0)
    assert clock.now() == 5.75


def test_virtual_clock_rejects_negative_time():
    clock = VirtualClock()
    with pytest.raises(ValueError, match=r"time cannot go backwards: advance\(-0.001\)"):
        clock.advance(-0.001)
    assert clock.now() == 0.0


def test_virtual_clock_overshoot_models_late_wakeups():
    seen = []

    def overshoot(deadline):
        seen.append(deadline)
        return 0.001 if deadline < 2 else -5.0  # a negative overshoot is no overshoot

    clock = VirtualClock(start=0.0, overshoot=overshoot)
    clock.sleep_until(1.0)
    assert clock.now() == pytest.approx(1.001)
    clock.sleep_until(3.0)
    assert clock.now() == 3.0
    assert seen == [1.0, 3.0]


def test_real_clock_is_monotonic_and_never_wakes_early():
    for spin in (0.0, 1e-3, 1.0):
        clock = RealClock(spin_s=spin)
        t0 = clock.now()
        deadline = t0 + 0.003
        clock.sleep_until(deadline)
        assert time.monotonic() >= deadline
        assert clock.now() >= deadline >= t0
        clock.sleep_until(t0 - 1.0)  # a past deadline returns at once
        assert clock.now() >= deadline


# ------------------------------------------------------------------------------------------ limits
def limits(dim: int = 2, **overrides) -> SafetyLimits:
    kw = {"lower": np.full(dim, -1.0), "upper": np.full(dim, 1.0), "max_velocity": np.full(dim, 1.0),
          "max_acceleration": np.full(dim, 1e6), "max_relative": np.full(dim, 1.0), "jump_fault": np.full(dim, 0.5)}
    kw.update(overrides)
    return SafetyLimits(**kw)


def test_limits_convert_and_derive_the_safe_range():
    lim = limits(3, lower=[-1, -2, 0], upper=[1, 2, 1], margin=0.1, margin_dims=2)
    assert lim.dim == 3
    assert lim.max_velocity.dtype == np.float64
    np.testing.assert_allclose(lim.safe_lower, [-0.9, -1.9, 0.0])  # the gripper (dim 3) gets no margin
    np.testing.assert_allclose(lim.safe_upper, [0.9, 1.9, 1.0])
    everywhere = limits(2, margin=0.25)
    np.testing.assert_allclose(everywhere.safe_lower, [-0.75, -0.75])
    tight = limits(1, lower=[0.0], upper=[1.0], margin=0.5)  # exactly no room is still a (single) position
    assert tight.safe_lower[0] == tight.safe_upper[0] == 0.5


@pytest.mark.parametrize(("overrides", "message"), [
    ({"upper": [1.0, 1.0, 1.0]}, "safety limit 'upper' must have 2 values (one per command dim), got shape (3,)"),
    ({"max_relative": [0.1]}, "safety limit 'max_relative' must have 2 values (one per command dim), got shape (1,)"),
    ({"jump_fault": [[0.5, 0.5]]}, "safety limit 'jump_fault' must have 2 values (one per command dim), "
                                   "got shape (1, 2)"),
    ({"max_velocity": [1.0, 0.0]}, "safety limit 'max_velocity' must be positive, got [1.0, 0.0]"),
    ({"max_acceleration": [-1.0, 1.0]}, "safety limit 'max_acceleration' must be positive, got [-1.0, 1.0]"),
    ({"max_relative": [0.1, -0.1]}, "safety limit 'max_relative' must be positive"),
    ({"jump_fault": [0.0, 0.0]}, "safety limit 'jump_fault' must be positive"),
    ({"margin": 1.5}, "limit_margin 1.5 leaves no room between lower [-1.0, -1.0] and upper [1.0, 1.0]"),
    ({"lower": [0.5, 0.0], "upper": [0.0, 1.0]}, "safety limits: lower > upper on dims [0] (lower [0.5], upper [0.0])"),
    ({"workspace_low": np.zeros(3)}, "give both workspace_low and workspace_high, or neither"),
    ({"workspace_high": np.zeros(3)}, "give both workspace_low and workspace_high, or neither"),
    ({"workspace_low": np.zeros(3), "workspace_high": np.ones(3)},
     "a workspace box needs the robot's forward_kinematics"),
    ({"workspace_low": np.zeros(3), "workspace_high": np.ones(2), "forward_kinematics": lambda q: q},
     "workspace_low and workspace_high must be two lists of the same length"),
    ({"workspace_low": np.ones(2), "workspace_high": np.zeros(2), "forward_kinematics": lambda q: q},
     "workspace_low must be below workspace_high on every axis"),
])
def test_limits_validation(overrides, message):
    with pytest.raises(ConfigError) as err:
        limits(2, **overrides)
    assert message in str(err.value)


def test_margin_only_on_the_leading_dims_leaves_the_gripper_its_range():
    lim = limits(2, lower=[-1.0, 0.0], upper=[1.0, 1.0], margin=0.6, margin_dims=1)
    np.testing.assert_allclose(lim.safe_lower, [-0.4, 0.0])
    with pytest.raises(ConfigError, match="leaves no room"):
        limits(2, lower=[-1.0, 0.0], upper=[1.0, 1.0], margin=0.6)


# ------------------------------------------------------------------------------------------ single steps
DT = 0.01


def step(filt: SafetyFilter, requested, measured=None) -> FilterResult:
    measured = filt.last_sent if measured is None else measured
    return filt(np.asarray(requested, dtype=np.float64), np.asarray(measured, dtype=np.float64))


def test_passes_a_request_within_every_limit():
    filt = SafetyFilter(limits(), DT)
    filt.start(np.zeros(2))
    out = step(filt, [0.005, -0.01])
    np.testing.assert_array_equal(out.sent, [0.005, -0.01])
    assert out.flags == ()
    np.testing.assert_allclose(filt.last_velocity, [0.005, -0.01])
    out.sent[:] = 7.0  # the result is a copy
    np.testing.assert_allclose(filt.last_sent, [0.005, -0.01])


def test_acceleration_stage_hand_computed():
    # max_acceleration 100 at dt 0.01: the per-tick velocity changes by at most 0.01
    filt = SafetyFilter(limits(max_velocity=np.full(2, 10.0), max_acceleration=np.full(2, 100.0)), DT)
    filt.start(np.zeros(2))
    out = step(filt, [0.05, -0.005])
    np.testing.assert_allclose(out.sent, [0.01, -0.005])
    assert out.flags == ("acceleration",)
    out = step(filt, [0.2, -0.005])  # velocity 0.01 -> 0.02 (joint 0); joint 1 may stop at once (0.005 < 0.01)
    np.testing.assert_allclose(out.sent, [0.03, -0.005])
    assert out.flags == ("acceleration",)
    out = step(filt, [0.03, -0.005])  # asked to stop dead at 0.03: braking is never limited, no overshoot
    np.testing.assert_array_equal(out.sent, [0.03, -0.005])
    assert out.flags == ()
    out = step(filt, [0.0, -0.005])  # reversing starts from rest: at most one tick's speed-up
    np.testing.assert_allclose(out.sent, [0.02, -0.005])
    assert out.flags == ("acceleration",)


def test_velocity_stage_hand_computed():
    filt = SafetyFilter(limits(), DT)  # max_velocity 1 at dt 0.01: 0.01 per tick
    filt.start(np.array([0.2, 0.2]))
    out = step(filt, [0.25, 0.195])
    np.testing.assert_allclose(out.sent, [0.21, 0.195])
    assert out.flags == ("velocity",)
    out = step(filt, [0.0, 0.195])
    np.testing.assert_allclose(out.sent, [0.2, 0.195])
    assert out.flags == ("velocity",)


def test_relative_stage_hand_computed():
    lim = limits(max_velocity=np.full(2, 5.0), max_relative=np.full(2, 0.02))  # 0.05 per tick, 0.02 from measured
    filt = SafetyFilter(lim, DT)
    filt.start(np.zeros(2))
    out = step(filt, [0.03, 0.01], measured=[-0.01, 0.0])
    np.testing.assert_allclose(out.sent, [0.01, 0.01])  # joint 0 capped at measured + 0.02
    assert out.flags == ("relative",)
    # the measured box [-0.12, -0.08] and the velocity box [0.05, 0.15] do not meet: toward measured at full speed
    filt = SafetyFilter(lim, DT)
    filt.start(np.array([0.1, 0.0]))
    out = step(filt, [0.1, 0.0], measured=[-0.1, 0.0])
    np.testing.assert_allclose(out.sent, [0.05, 0.0])
    assert out.flags == ("relative",)


def test_joint_limit_stage_hand_computed():
    lim = limits(lower=[-1.0, 0.0], upper=[1.0, 1.0], margin=0.1, margin_dims=1, max_velocity=np.full(2, 100.0),
                 max_relative=np.full(2, 5.0), jump_fault=np.full(2, 5.0))
    filt = SafetyFilter(lim, DT)
    filt.start(np.array([0.85, 0.95]))
    out = step(filt, [0.95, 1.2])
    np.testing.assert_allclose(out.sent, [0.9, 1.0])
    assert out.flags == ("joint_limit",)
    filt.start(np.array([1.0, -0.5]))  # the start is clipped into the safe range too
    np.testing.assert_allclose(filt.last_sent, [0.9, 0.0])


def test_workspace_stage_hand_computed():
    def fk(q):
        return np.array([q[0] + q[1]])

    lim = limits(workspace_low=np.array([-0.5]), workspace_high=np.array([0.5]), forward_kinematics=fk,
                 max_velocity=np.full(2, 100.0))
    filt = SafetyFilter(lim, DT)
    filt.start(np.zeros(2))
    out = step(filt, [0.3, 0.3])  # the effector would be at 0.6: keep the last safe target
    np.testing.assert_allclose(out.sent, [0.0, 0.0])
    assert out.flags == ("workspace",)
    out = step(filt, [0.2, 0.3])  # exactly on the box face is inside
    np.testing.assert_allclose(out.sent, [0.2, 0.3])
    assert out.flags == ()
    assert filt.fault is None


@pytest.mark.parametrize(("bad", "reason"), [
    ([0.6, 0.0], "jump"), ([0.0, -0.51], "jump"), ([np.nan, 0.0], "nan"), ([0.0, np.inf], "nan"),
    ([0.0, -np.inf], "nan"), ([0.0, 0.0, 0.0], "shape"), ([0.0], "shape"), ([[0.0, 0.0]], "shape"), (0.0, "shape"),
])
def test_fault_latch_holds_the_last_safe_target_until_rearm(bad, reason):
    filt = SafetyFilter(limits(), DT)
    filt.start(np.zeros(2))
    for _ in range(3):
        out = step(filt, [0.005, 0.005])
    last_safe = out.sent.copy()
    out = filt(np.asarray(bad, dtype=np.float64), last_safe)
    assert filt.fault == reason
    assert out.flags == (f"latched:{reason}",)
    np.testing.assert_array_equal(out.sent, last_safe)
    np.testing.assert_array_equal(filt.last_velocity, np.zeros(2))
    for request in ([0.02, 0.015], [np.nan, 0.0], [0.9, 0.9]):  # latched: good or bad, the first reason stays
        out = step(filt, request)
        assert out.flags == (f"latched:{reason}",) and filt.fault == reason
        np.testing.assert_array_equal(out.sent, last_safe)
    filt.rearm()
    assert filt.fault is None
    out = step(filt, last_safe + 0.005)
    np.testing.assert_allclose(out.sent, last_safe + 0.005)
    assert out.flags == ()


def test_an_unclipped_dim_passes_bit_exact_while_another_is_clipped():
    lim = limits(lower=[-5, -5], upper=[5, 5], max_velocity=[1e3, 1.0], max_relative=[10, 10], jump_fault=[10, 10])
    filt = SafetyFilter(lim, DT)
    filt.start(np.array([3.0, 0.0]))
    out = step(filt, [0.001, 0.015])  # dim 1 asks for 1.5x its max velocity
    assert out.sent[0] == 0.001  # not last + (requested - last) = 0.0009999999999998899
    assert out.sent[1] == pytest.approx(DT) and out.flags == ("velocity",)


def test_first_call_starts_from_the_measured_state():
    filt = SafetyFilter(limits(), DT)
    out = step(filt, [0.3, -0.3], measured=[0.295, -0.3])
    np.testing.assert_allclose(out.sent, [0.3, -0.3])
    assert out.flags == ()
    filt = SafetyFilter(limits(margin=0.1), DT)
    out = step(filt, [0.95, 0.0], measured=[0.95, 0.0])  # a robot outside the margin starts clipped into it
    np.testing.assert_allclose(out.sent, [0.9, 0.0])
    assert out.flags == ("velocity", "joint_limit")  # 0.9 -> 0.91 at full speed, then back to the limit


# ------------------------------------------------------------------------------------------ property
STAGES = ("acceleration", "velocity", "relative", "joint_limit", "workspace")
KINDS = ("near",) * 4 + ("uniform",) * 3 + ("nan", "inf", "huge", "shape")  # mostly requests the filter shapes


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def vec(dim, lo, hi):
    return st.lists(floats(lo, hi), min_size=dim, max_size=dim).map(np.array)


@st.composite
def scenarios(draw):
    dim = draw(st.integers(1, 4))
    lower = draw(vec(dim, -3.0, 0.0))
    width = draw(vec(dim, 0.05, 3.0))
    margin_dims = draw(st.one_of(st.none(), st.integers(0, dim)))
    margin = draw(floats(0.0, 0.49)) * float(width.min())
    kw = {"lower": lower, "upper": lower + width, "margin": margin, "margin_dims": margin_dims,
          "max_velocity": draw(vec(dim, 0.05, 20.0)), "max_acceleration": draw(vec(dim, 0.5, 1e5)),
          "max_relative": draw(vec(dim, 1e-3, 1.0)), "jump_fault": draw(vec(dim, 0.01, 5.0))}
    if draw(st.booleans()):
        centre = draw(floats(-2.0, 2.0))
        half = draw(floats(0.01, 3.0))
        kw.update(workspace_low=np.array([centre - half]), workspace_high=np.array([centre + half]),
                  forward_kinematics=lambda q: np.array([np.sum(q)]))
    lim = SafetyLimits(**kw)
    dt = draw(st.sampled_from([0.002, 0.008, 0.05]))
    start = draw(vec(dim, 0.0, 1.0))
    velocity = draw(vec(dim, -1.0, 1.0))
    ticks = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(KINDS))
        ticks.append({"measured": draw(vec(dim, 0.0, 1.0)), "kind": kind, "values": draw(vec(dim, -1.0, 1.0)),
                      "scale": draw(st.sampled_from([0.1, 1.0, 3.0])), "rearm": draw(st.integers(0, 3)) > 0})
    return lim, dt, start, velocity, ticks


def request(kind, values, scale, last, lim, rng_shape):
    if kind == "near":  # around the last target, on both sides of the jump threshold
        return last + values * scale * lim.jump_fault
    if kind == "uniform":
        return lim.lower + (values + 1) / 2 * (lim.upper - lim.lower) * (1 + scale) - scale / 2
    if kind == "nan":
        out = last.copy()
        out[rng_shape % len(out)] = np.nan
        return out
    if kind == "inf":
        out = last.copy()
        out[rng_shape % len(out)] = -np.inf if values[0] < 0 else np.inf
        return out
    if kind == "huge":
        return np.sign(values + 1e-3) * 1e300
    shapes = [(len(last) + 1,), (len(last) - 1,), (), (1, len(last)), (len(last), 1)]
    return np.zeros(shapes[rng_shape % len(shapes)])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(scenarios(), st.integers(0, 1000))
def test_the_filter_never_lets_a_command_outside_the_limits(scenario, pick):
    """Over random limits, measured states inside the safe range, previous targets and requests (NaN, inf,
    huge, wrong shape included), every sent target is inside the limits with margin (and the workspace box when
    the last one was), moves at most max_velocity * dt, and is within max_relative of the measured state or at
    least max_velocity * dt closer to it than the last one was (unless the workspace stopped it). A latched
    tick brakes the target to rest; the flags name the stages that acted."""
    lim, dt, start, velocity, ticks = scenario
    span = lim.safe_upper - lim.safe_lower
    dims = lim.dim if lim.margin_dims is None else lim.margin_dims
    margin = np.where(np.arange(lim.dim) < dims, lim.margin, 0.0)
    lo, hi = lim.lower + margin, lim.upper - margin
    step_v = lim.max_velocity * dt
    filt = SafetyFilter(lim, dt)
    filt.start(lim.safe_lower + start * span)
    filt.last_velocity = velocity * step_v  # a target already on the move
    for i, tick in enumerate(ticks):
        if tick["rearm"]:
            filt.rearm()
        last = filt.last_sent.copy()
        measured = lim.safe_lower + tick["measured"] * span
        req = request(tick["kind"], tick["values"], tick["scale"], last, lim, pick + i)
        req = np.asarray(req, dtype=np.float64)
        latched_before = filt.fault
        v_before = filt.last_velocity.copy()
        out = filt(req, measured)
        sent = out.sent
        assert sent.shape == (lim.dim,) and np.all(np.isfinite(sent))
        assert np.all(sent >= lo) and np.all(sent <= hi)
        assert np.all(np.abs(sent - last) <= step_v + 1e-9)
        if latched_before is not None:
            expected = latched_before
        elif req.shape != (lim.dim,):
            expected = "shape"
        elif not np.all(np.isfinite(req)):
            expected = "nan"
        elif np.any(np.abs(req - last) > lim.jump_fault):
            expected = "jump"
        else:
            expected = None
        assert filt.fault == expected
        if lim.workspace_low is not None and inside(lim, last):
            assert inside(lim, sent)  # the box is never left
        if expected is not None:  # latched: the request is ignored and the target brakes to rest
            assert out.flags[0] == f"latched:{expected}" and set(out.flags[1:]) <= {"workspace"}
            brake = lim.max_acceleration * dt ** 2
            assert np.all(np.abs(sent - last) <= np.maximum(np.abs(v_before) - brake, 0.0) + 1e-9)
            continue
        if "workspace" in out.flags:  # the effector stops where it is
            np.testing.assert_array_equal(sent, last)
        else:
            assert np.all(np.abs(sent - measured)
                          <= np.maximum(lim.max_relative, np.abs(last - measured) - step_v) + 1e-9)
        assert set(out.flags) <= set(STAGES)
        assert list(out.flags) == [s for s in STAGES if s in out.flags]  # in pipeline order, each once
        if not out.flags:
            np.testing.assert_allclose(sent, req, rtol=1e-5, atol=1e-8)
        if not np.allclose(sent, req):
            assert out.flags, "the request was changed without a stage saying so"


def inside(lim: SafetyLimits, target: np.ndarray) -> bool:
    point = lim.forward_kinematics(target)
    return bool(np.all(point >= lim.workspace_low) and np.all(point <= lim.workspace_high))


# ------------------------------------------------------------------------------------------ e-stop
def test_estop_latches_the_first_reason_until_rearmed():
    estop = EStop()
    assert not estop.triggered and estop.reason == ""
    estop.trigger("key")
    estop.trigger("api")
    assert estop.triggered and estop.reason == "key"
    estop.rearm()
    assert not estop.triggered and estop.reason == ""
    estop.trigger()
    assert estop.reason == "api"


@pytest.mark.parametrize("flag", [threading.Event, mp.get_context("spawn").Event])
def test_estop_shares_its_flag(flag):
    shared = flag()
    a, b = EStop(shared), EStop(shared)
    a.trigger("from a")
    assert b.triggered  # what another process's EStop on the same Event sees
    b.rearm()
    assert not a.triggered


def test_estop_on_signal():
    estop = EStop()
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        estop.on_signal(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):  # the handler runs between bytecodes of the main thread
            if estop.triggered:
                break
        assert estop.triggered and estop.reason == "signal SIGUSR1"
    finally:
        signal.signal(signal.SIGUSR1, previous)
