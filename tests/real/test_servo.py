"""ServoLoop on a VirtualClock and the IdealMockDriver: pacing and overruns, tracking, every watchdog ending
in a decelerating hold, the e-stop and safety latches with re-arm, driver and action-map failures, config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from robopol.real.clock import VirtualClock
from robopol.real.driver import DriverError, IdealMockDriver, RobotState
from robopol.real.safety import EStop, SafetyFilter, SafetyLimits
from robopol.real.scheduler import Trajectory
from robopol.real.servo import JointPositionMap, ServoConfig, ServoLoop

from robopol.errors import ConfigError

RATE = 500.0
DT = 1.0 / RATE
VMAX = 1.0  # rad/s: at most 2 mrad per tick
AMAX = 50.0  # rad/s^2: the per-tick velocity changes by at most 0.2 mrad, so 10 ticks from rest to full speed
GOAL = np.array([0.5, -0.3])  # far enough that the target is still moving when a watchdog trips
QUIET = {"command_timeout_s": 10.0, "policy_timeout_s": 10.0, "stale_state_s": 10.0, "driver_timeout_s": 10.0,
         "overrun_streak": 1000}


def make_limits(dim: int = 2, **overrides) -> SafetyLimits:
    kw = {"lower": np.full(dim, -2.0), "upper": np.full(dim, 2.0), "max_velocity": np.full(dim, VMAX),
          "max_acceleration": np.full(dim, AMAX), "max_relative": np.full(dim, 0.5),
          "jump_fault": np.full(dim, 1.0)}
    kw.update(overrides)
    return SafetyLimits(**kw)


def make_servo(dim: int = 2, clock: VirtualClock | None = None, driver: IdealMockDriver | None = None,
               estop: EStop | None = None, action_map=None, limits: SafetyLimits | None = None, **config):
    clock = clock if clock is not None else VirtualClock()
    driver = driver if driver is not None else IdealMockDriver(np.zeros(dim), clock)
    cfg = ServoConfig(rate_hz=RATE, **config)
    servo = ServoLoop(driver, clock, SafetyFilter(limits or make_limits(dim), DT), action_map or JointPositionMap(dim),
                      cfg, estop)
    return servo, driver, clock


def trajectory(times, actions, chunk_id: int = 1) -> Trajectory:
    actions = np.atleast_2d(np.asarray(actions, dtype=np.float64))
    return Trajectory(np.asarray(times, dtype=np.float64), actions, np.full(len(actions), chunk_id),
                      np.arange(len(actions)))


class SlowDriver(IdealMockDriver):
    """``read_state`` takes ``extra`` seconds of clock time from the ``slow_from``-th read on."""

    def __init__(self, *args, extra: float = 0.0, slow_from: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.extra, self.slow_from = extra, slow_from

    def read_state(self) -> RobotState:
        if self.reads + 1 >= self.slow_from:
            self.clock.advance(self.extra)
        return super().read_state()


@dataclass
class Tick:
    t: float
    sent: np.ndarray | None
    flags: tuple[str, ...]
    fault: str | None
    held: bool
    commands: int
    holds: int


def simulate(servo: ServoLoop, n: int, before=None) -> list[Tick]:
    """``n`` paced ticks; ``before(servo, t)`` runs ahead of each (inputs from the policy side)."""
    record = []
    for _ in range(n):
        t = servo.clock.now()
        if before is not None:
            before(servo, t)
        info = servo.tick()
        record.append(Tick(t, info.sent, info.flags, servo.fault, servo.held, len(servo.driver.commands),
                           servo.driver.holds))
        servo.pace()
    return record


def trip_index(record: list[Tick]) -> int:
    return next(i for i, r in enumerate(record) if r.fault is not None)


def assert_decelerating_hold(servo: ServoLoop, record: list[Tick], from_tick: int) -> None:
    """From ``from_tick`` on (the first tick commanding a hold) the per-tick steps of the sent target shrink
    monotonically from the speed it had (same sign, magnitude non-increasing, at most max_velocity * dt, braking at
    the acceleration limit) to rest; then ``hold()`` is called exactly once and no command is sent again."""
    driver = servo.driver
    held_at = next(i for i, r in enumerate(record) if r.held)
    assert held_at >= from_tick
    targets = np.stack([r.sent for r in record[from_tick - 2: held_at + 1]])  # steps[0]: the speed before
    steps = np.diff(targets, axis=0)
    vmax_step = servo.safety.limits.max_velocity * DT
    assert np.all(np.abs(steps) <= vmax_step + 1e-12)
    assert np.all(np.abs(steps[1:]) <= np.abs(steps[:-1]) + 1e-12), "the hold must never speed up"
    assert np.all(steps[1:] * steps[:-1] >= -1e-18), "the hold must never reverse"
    assert np.all(np.abs(steps[-1]) < 1e-9), "the hold ends at rest"
    assert np.max(np.abs(steps[0])) > 0.5 * vmax_step.max(), "the target was moving when the watchdog tripped"
    # braking at the acceleration limit: the per-tick speed falls by max_acceleration * dt**2 per tick
    brake = servo.safety.limits.max_acceleration * DT ** 2
    np.testing.assert_allclose(np.abs(steps[1:]), np.maximum(np.abs(steps[:-1]) - brake, 0.0), atol=1e-12)
    assert record[held_at].holds == 1 and driver.holds == 1
    assert all(r.sent is None and r.flags == ("held",) for r in record[held_at + 1:])
    assert all(r.commands == record[held_at].commands for r in record[held_at:])
    assert servo.held and servo.fault is not None
    # more ticks: still held, still no command, still one hold()
    n_commands = len(driver.commands)
    for r in simulate(servo, 20):
        assert r.sent is None and r.held
    assert len(driver.commands) == n_commands and driver.holds == 1


# ------------------------------------------------------------------------------------------ pacing
@pytest.mark.parametrize("start", [0.0, 123.456, 1e4 + 0.3])
@pytest.mark.parametrize("n", [1, 8, 500, 1009, 2500])
def test_run_ticks_exactly_n_times_on_the_grid(start, n):
    servo, driver, clock = make_servo(clock=VirtualClock(start))
    servo.run(n * servo.period)
    assert servo.stats.ticks == n
    assert servo.stats.overruns == 0
    assert servo.stats.lateness == [0.0] * n
    assert driver.reads == n and len(driver.commands) == n
    assert clock.now() == pytest.approx(start + n * DT, abs=1e-9)


def test_repeated_runs_continue_the_grid_exactly():
    """run(n * period) again and again, at various rates and start times: exactly n ticks each time."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        start, rate = float(rng.uniform(0, 1e4)), float(rng.choice([125.0, 333.0, 500.0, 1000.0]))
        clock = VirtualClock(start)
        driver = IdealMockDriver(np.zeros(2), clock)
        servo = ServoLoop(driver, clock, SafetyFilter(make_limits(), 1 / rate), JointPositionMap(2),
                          ServoConfig(rate_hz=rate))
        total = 0
        for _ in range(4):
            n = int(rng.integers(1, 100))
            servo.run(n * servo.period)
            total += n
            assert servo.stats.ticks == total
        assert servo.stats.overruns == 0
        assert clock.now() == pytest.approx(start + total / rate, abs=1e-9)


def test_overshoot_is_the_lateness_and_no_overrun():
    overshoot = 0.3 * DT
    clock = VirtualClock(overshoot=lambda deadline: overshoot)
    servo, driver, _ = make_servo(clock=clock)
    servo.run(100 * DT)
    assert servo.stats.ticks == 100 and servo.stats.overruns == 0
    # the first tick defines the grid; every later one wakes up `overshoot` late, never later
    assert servo.stats.lateness[0] == 0.0
    np.testing.assert_allclose(servo.stats.lateness[1:], overshoot, atol=1e-12)


def test_late_ticks_never_shift_the_grid():
    """Varying wake-up jitter under a period: deadlines stay at t0 + k * period."""
    jitter = iter(np.random.default_rng(0).uniform(0, 0.9 * DT, 1000))
    clock = VirtualClock(start=2.0, overshoot=lambda deadline: next(jitter))
    servo, _, _ = make_servo(clock=clock)
    deadlines = []
    for _ in range(300):
        servo.tick()
        deadlines.append(servo.next_deadline)
        servo.pace()
    np.testing.assert_allclose(deadlines, 2.0 + DT * np.arange(1, 301), atol=1e-12)
    assert servo.stats.overruns == 0 and max(servo.stats.lateness) < 0.9 * DT


def test_overshoot_of_more_than_a_period_is_an_overrun_every_tick():
    clock = VirtualClock(overshoot=lambda deadline: 1.2 * DT)
    servo, _, _ = make_servo(clock=clock)
    for _ in range(10):
        servo.tick()
        servo.pace()
    assert servo.stats.overruns == 9  # every tick but the first starts 1.2 periods late
    np.testing.assert_allclose(servo.stats.lateness[1:], 1.2 * DT, atol=1e-12)
    # each overrun skips exactly the one missed slot: the deadlines go 0, 1, 3, 5 ... 19 periods
    assert servo.next_deadline == pytest.approx(DT * (1 + 2 * 9), abs=1e-12)


def test_slow_ticks_count_overruns_and_skip_missed_slots():
    """read_state takes 2.5 periods: ticks start at 0, 2.5, 5, 7.5 ... periods; each serves the next grid
    slot, skipping the ones it missed (deadlines 0, 1, 3, 6, 8, 11, 13, 16 ... periods)."""
    clock = VirtualClock()
    driver = SlowDriver(np.zeros(2), clock, extra=2.5 * DT)
    servo, _, _ = make_servo(clock=clock, driver=driver, overrun_streak=1000)
    starts, deadlines = [], []
    for _ in range(8):
        starts.append(clock.now())
        servo.tick()
        deadlines.append(servo.next_deadline)
        servo.pace()
    np.testing.assert_allclose(np.array(starts) / DT, [0, 2.5, 5, 7.5, 10, 12.5, 15, 17.5], atol=1e-9)
    np.testing.assert_allclose(np.array(servo.stats.lateness) / DT, [0, 1.5, 2, 1.5, 2, 1.5, 2, 1.5], atol=1e-9)
    np.testing.assert_allclose(np.array(deadlines) / DT, [1, 3, 6, 8, 11, 13, 16, 18], atol=1e-9)
    assert servo.stats.overruns == 7
    assert servo.fault is None


def test_an_isolated_overrun_resets_the_streak():
    class Hiccup(IdealMockDriver):
        def read_state(self):
            if self.reads + 1 in (5, 9, 10):
                self.clock.advance(2.5 * DT)
            return super().read_state()

    clock = VirtualClock()
    servo, _, _ = make_servo(clock=clock, driver=Hiccup(np.zeros(2), clock), overrun_streak=2)
    for _ in range(8):
        servo.tick()
        servo.pace()
    assert servo.stats.overruns == 1 and servo.fault is None  # tick 6 was late, tick 7 on time again
    for _ in range(4):
        servo.tick()
        servo.pace()
    assert servo.stats.overruns == 3
    assert servo.fault == "overrun_streak: 2 ticks"


# ------------------------------------------------------------------------------------------ tracking
def test_step_interpolation_tracks_within_the_filter_limits_and_reaches_the_goal():
    servo, driver, clock = make_servo(**QUIET)
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    record = simulate(servo, 400)
    sent = np.stack([r.sent for r in record])
    steps = np.diff(np.vstack([np.zeros(2), sent]), axis=0)
    assert np.all(np.abs(steps) <= VMAX * DT + 1e-12)
    # speeding up is limited by the acceleration; stopping on the goal is not, and the goal is never passed
    assert np.all(np.diff(np.abs(steps), axis=0) <= AMAX * DT ** 2 + 1e-12)
    assert np.all(np.abs(sent) <= np.abs(GOAL) + 1e-12) and np.all(steps * np.sign(GOAL) >= 0)
    np.testing.assert_allclose(sent[-1], GOAL, atol=1e-12)
    np.testing.assert_allclose(driver.position, GOAL, atol=1e-12)
    assert servo.fault is None and not servo.held and driver.holds == 0


def test_waypoint_activation_and_tick_info():
    servo, driver, clock = make_servo(limits=make_limits(max_velocity=np.full(2, 1e3),
                                                         max_acceleration=np.full(2, 1e9)))
    servo.set_trajectory(trajectory([2 * DT, 4 * DT], [[0.1, 0.0], [0.2, 0.0]]))
    infos = []
    for _ in range(6):
        infos.append(servo.tick())
        servo.pace()
    assert [i.waypoint for i in infos] == [None, None, 0, 0, 1, 1]
    assert [i.activated for i in infos] == [False, False, True, False, True, False]
    np.testing.assert_allclose([i.sent[0] for i in infos], [0, 0, 0.1, 0.1, 0.2, 0.2], atol=1e-12)
    assert infos[0].state.seq == 1 and infos[0].t == 0.0


def test_linear_interpolation_passes_through_every_waypoint_at_its_time():
    servo, driver, clock = make_servo(limits=make_limits(max_velocity=np.full(2, 1e3),
                                                         max_acceleration=np.full(2, 1e9)),
                                      interpolation="linear")
    servo.set_trajectory(trajectory([2 * DT, 6 * DT], [[0.4, 0.0], [0.5, -0.1]]))
    sent = [r.sent for r in simulate(servo, 9)]
    # from where the target is (0) to waypoint 0 at its time, on to waypoint 1 at its time, then stay
    np.testing.assert_allclose(np.stack(sent), [[0, 0], [0.2, 0], [0.4, 0], [0.425, -0.025], [0.45, -0.05],
                                                [0.475, -0.075], [0.5, -0.1], [0.5, -0.1], [0.5, -0.1]], atol=1e-12)


def test_action_map_sees_the_state_when_the_waypoint_comes_into_force():
    class DeltaMap:
        action_dim = 2

        def __init__(self):
            self.calls = []

        def to_target(self, action, state):
            self.calls.append(state.seq)
            return state.position + action

    amap = DeltaMap()
    servo, driver, _ = make_servo(action_map=amap, limits=make_limits(max_velocity=np.full(2, 1e3),
                                                                      max_acceleration=np.full(2, 1e9)))
    servo.set_trajectory(trajectory([0.0, 3 * DT], [[0.1, 0.0], [0.1, 0.2]]))
    simulate(servo, 5)
    assert amap.calls == [1, 4]  # once per waypoint, with the state read on its activation tick
    np.testing.assert_allclose(driver.position, [0.2, 0.2], atol=1e-12)


def test_joint_position_map():
    amap = JointPositionMap(3)
    assert amap.action_dim == 3
    state = RobotState(0.0, np.ones(3), np.zeros(3), 1)
    out = amap.to_target(np.array([1, 2, 3], dtype=np.int32), state)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])


def test_pause_holds_without_a_fault_and_resume_tracks_again():
    servo, driver, clock = make_servo()
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    simulate(servo, 30)
    servo.pause()
    assert len(servo.trajectory) == 0
    record = simulate(servo, 40)
    sent = np.stack([r.sent for r in record])
    steps = np.diff(sent, axis=0)
    assert np.all(np.abs(steps[1:]) <= np.abs(steps[:-1]) + 1e-12)
    assert np.all(np.abs(steps[-5:]) < 1e-12)  # came to rest through the filter's acceleration limit
    assert servo.fault is None and not servo.held and driver.holds == 0
    rest = sent[-1].copy()
    servo.resume()
    servo.set_trajectory(trajectory([clock.now()], [[0.0, 0.0]]))
    simulate(servo, 200)
    assert np.all(np.abs(driver.position) < np.abs(rest))


def test_ticks_without_any_state_send_nothing():
    class Dead(IdealMockDriver):
        def read_state(self):
            raise DriverError("no connection")

    clock = VirtualClock()
    servo, driver, _ = make_servo(clock=clock, driver=Dead(np.zeros(2), clock))
    info = servo.tick()
    assert info.flags == ("no_state",) and info.sent is None and info.state is None
    assert servo.fault.startswith("driver_error: no connection")
    assert driver.commands == []


def test_restart_refuses_while_holding():
    servo, driver, _ = make_servo()
    servo.trip("test")
    with pytest.raises(RuntimeError, match="holding after 'test': rearm"):
        servo.restart()


# ------------------------------------------------------------------------------------------ watchdogs
def test_command_timeout_trips_within_bound_and_decelerates_to_a_hold():
    servo, driver, clock = make_servo(**{**QUIET, "command_timeout_s": 0.1})
    servo.set_trajectory(trajectory([0.0], [GOAL]))  # the last waypoint is due at 0
    record = simulate(servo, 150)
    j = trip_index(record)
    t_trip, reason = servo.events[0]
    assert reason.startswith("command_timeout")
    assert t_trip == record[j].t
    assert 0.0 + 0.1 < t_trip <= 0.0 + 0.1 + DT + 1e-12
    assert_decelerating_hold(servo, record, j)


def test_policy_heartbeat_trips_within_bound():
    last_beat = 0.03

    def beat(servo, t):
        if t <= last_beat + 1e-12:
            servo.policy_heartbeat(t)

    servo, driver, clock = make_servo(**{**QUIET, "policy_timeout_s": 0.05})
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    record = simulate(servo, 150, before=beat)
    j = trip_index(record)
    t_trip, reason = servo.events[0]
    assert reason.startswith("policy_heartbeat")
    assert last_beat + 0.05 < t_trip <= last_beat + 0.05 + DT + 1e-12
    assert_decelerating_hold(servo, record, j)


def test_no_policy_heartbeat_before_the_first_report():
    servo, driver, clock = make_servo(**{**QUIET, "policy_timeout_s": 0.01})
    simulate(servo, 50)
    assert servo.fault is None


def test_stale_state_trips_within_bound():
    clock = VirtualClock()
    driver = IdealMockDriver(np.zeros(2), clock, frozen_after=11)  # the 11th sample (t = 10 periods) repeats
    servo, _, _ = make_servo(clock=clock, driver=driver, **{**QUIET, "stale_state_s": 0.05})
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    record = simulate(servo, 150)
    j = trip_index(record)
    t_trip, reason = servo.events[0]
    frozen_since = 10 * DT
    assert reason.startswith("stale_state: seq 11")
    assert frozen_since + 0.05 < t_trip <= frozen_since + 0.05 + DT + 1e-12
    assert_decelerating_hold(servo, record, j)


def test_driver_heartbeat_trips_within_bound():
    clock = VirtualClock()
    driver = IdealMockDriver(np.zeros(2), clock, dead_after=20)  # the 20th heartbeat (t = 19 periods) is dead
    servo, _, _ = make_servo(clock=clock, driver=driver, **{**QUIET, "driver_timeout_s": 0.02})
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    record = simulate(servo, 150)
    j = trip_index(record)
    t_trip, reason = servo.events[0]
    last_alive, first_dead = 18 * DT, 19 * DT
    assert reason.startswith("driver_heartbeat")
    assert last_alive + 0.02 < t_trip <= last_alive + 0.02 + DT + 1e-12
    assert t_trip <= first_dead + 0.02 + 1e-12
    assert_decelerating_hold(servo, record, j)


def test_a_raising_heartbeat_counts_as_dead():
    class Raising(IdealMockDriver):
        def heartbeat(self):
            super().heartbeat()
            raise DriverError("gone")

    clock = VirtualClock()
    servo, driver, _ = make_servo(clock=clock, driver=Raising(np.zeros(2), clock),
                                  **{**QUIET, "driver_timeout_s": 0.02})
    simulate(servo, 30)
    assert servo.fault.startswith("driver_heartbeat")
    assert 0.02 < servo.events[0][0] <= 0.02 + DT + 1e-12


def test_overrun_streak_trips_after_exactly_that_many_overruns():
    clock = VirtualClock()
    driver = SlowDriver(np.zeros(2), clock, extra=2.5 * DT, slow_from=31)
    servo, _, _ = make_servo(clock=clock, driver=driver, **{**QUIET, "overrun_streak": 5})
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    record = simulate(servo, 80)
    j = trip_index(record)
    assert servo.events[0][1] == "overrun_streak: 5 ticks"
    assert j == 30 + 5  # tick 30 is slow but starts on time; ticks 31..35 start late
    assert servo.stats.overruns >= 5
    assert_decelerating_hold(servo, record, j)


def test_estop_trips_on_the_next_tick_and_needs_rearm():
    estop = EStop()
    trigger_at = 0.05

    def press(servo, t):
        if t >= trigger_at - 1e-12 and not estop.triggered and servo.fault is None:
            estop.trigger("test button")

    servo, driver, clock = make_servo(estop=estop, **QUIET)
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    record = simulate(servo, 100, before=press)
    j = trip_index(record)
    t_trip, reason = servo.events[0]
    assert reason == "estop: test button"
    assert trigger_at - 1e-12 <= t_trip <= trigger_at + DT
    assert_decelerating_hold(servo, record, j)
    # latched: the loop refuses to re-arm while the e-stop is pressed
    with pytest.raises(RuntimeError, match=r"e-stop \(test button\) is still triggered"):
        servo.rearm()
    assert servo.held and servo.fault == reason
    simulate(servo, 10)
    assert driver.holds == 1
    # releasing the e-stop alone does not move the robot either
    estop.rearm()
    assert not estop.triggered and estop.reason == ""
    n = len(driver.commands)
    simulate(servo, 10)
    assert len(driver.commands) == n and servo.held
    # re-arming the loop does, from where the robot is
    rest = driver.position.copy()
    servo.rearm()
    assert servo.fault is None and not servo.held
    np.testing.assert_array_equal(servo.safety.last_sent, rest)
    servo.set_trajectory(trajectory([clock.now()], [GOAL]))
    record = simulate(servo, 400)
    assert all(r.sent is not None for r in record) and servo.fault is None
    np.testing.assert_allclose(driver.position, GOAL, atol=1e-12)


def test_estop_while_paused_still_holds():
    estop = EStop()
    servo, driver, _ = make_servo(estop=estop, **QUIET)
    servo.pause()
    simulate(servo, 5)
    estop.trigger()
    simulate(servo, 5)
    assert servo.fault == "estop: api" and servo.held and driver.holds == 1


def test_safety_latch_holds_the_last_safe_target_until_rearm():
    servo, driver, clock = make_servo(**QUIET)
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    simulate(servo, 30)
    last_safe = servo.safety.last_sent.copy()
    servo.set_trajectory(trajectory([clock.now()], [[np.nan, 0.0]], chunk_id=2))
    record = simulate(servo, 40)
    assert servo.fault == "safety: nan" and servo.safety.fault == "nan"
    assert record[0].flags == ("latched:nan",)  # the NaN request is never followed: the target brakes to rest
    sent = np.stack([last_safe] + [r.sent for r in record if r.sent is not None])
    steps = np.abs(np.diff(sent, axis=0))
    assert np.all(np.diff(steps, axis=0) <= 1e-12) and np.all(steps[-1] < 1e-12)
    assert servo.held and driver.holds == 1
    np.testing.assert_array_equal(driver.position, sent[-1])
    last_safe = sent[-1]
    servo.rearm()
    assert servo.safety.fault is None and servo.fault is None
    servo.set_trajectory(trajectory([clock.now()], [[0.0, 0.0]], chunk_id=3))
    record = simulate(servo, 300)
    assert servo.fault is None
    np.testing.assert_allclose(driver.position, 0.0, atol=1e-12)


def test_jump_request_latches_through_the_servo():
    servo, driver, clock = make_servo(**QUIET)
    servo.set_trajectory(trajectory([DT], [[1.5, 0.0]]))  # 1.5 rad from the target: over jump_fault (1.0)
    simulate(servo, 5)
    assert servo.fault == "safety: jump" and servo.held
    np.testing.assert_array_equal(driver.position, np.zeros(2))


# ------------------------------------------------------------------------------------------ failures
def test_driver_command_failure_leaves_the_robot_holding_not_moving():
    clock = VirtualClock()
    driver = IdealMockDriver(np.zeros(2), clock, fail_after=40)
    servo, _, _ = make_servo(clock=clock, driver=driver, **QUIET)
    servo.set_trajectory(trajectory([0.0], [GOAL]))
    positions = []

    def watch(servo, t):
        positions.append(driver.position.copy())

    record = simulate(servo, 100, before=watch)
    j = trip_index(record)
    assert j == 39 and servo.fault == "driver_error: injected failure on command 40"
    last_safe = driver.commands[38]  # the last command the robot took
    # the robot never moved after the failure, and every later target only continued the braking
    assert all(np.array_equal(p, last_safe) for p in positions[40:])
    assert_decelerating_hold(servo, record, j + 1)
    # beyond the last safe target the targets travel at most the braking distance from the failing command's speed
    targets = np.stack(driver.commands[38:])
    v0, brake = np.abs(targets[1] - targets[0]), AMAX * DT ** 2
    braking = sum(np.maximum(v0 - k * brake, 0.0) for k in range(100))
    assert np.all(np.abs(targets - last_safe) <= braking + 1e-12)
    np.testing.assert_allclose(np.abs(targets[-1] - last_safe), braking, atol=1e-12)


def test_action_map_failure_trips_and_holds():
    class Picky:
        action_dim = 2

        def to_target(self, action, state):
            if action[0] > 0.25:
                raise ValueError("unreachable")
            return np.asarray(action, dtype=np.float64)

    servo, driver, clock = make_servo(action_map=Picky(), **QUIET)
    servo.set_trajectory(trajectory([0.0, 0.05], [[0.2, -0.9], [0.3, -0.9]]))  # still moving at 0.05 s
    record = simulate(servo, 100)
    j = trip_index(record)
    assert servo.fault == "action_map: unreachable"
    assert record[j].t == pytest.approx(0.05, abs=1e-12)
    assert_decelerating_hold(servo, record, j)


def test_a_failing_hold_is_recorded_not_raised():
    class BadHold(IdealMockDriver):
        def hold(self):
            super().hold()
            raise DriverError("brake")

    clock = VirtualClock()
    servo, driver, _ = make_servo(clock=clock, driver=BadHold(np.zeros(2), clock))
    servo.trip("test")
    simulate(servo, 3)
    assert servo.held and driver.holds == 1
    assert [e for _, e in servo.events] == ["test", "driver_hold_error: brake"]


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"interpolation": "cubic"}, "servo interpolation must be one of step, linear, got 'cubic'"),
    ({"rate_hz": 0.0}, "servo rate_hz must be > 0 and overrun_streak >= 1, got 0.0, 20"),
    ({"rate_hz": -5.0}, "got -5.0, 20"),
    ({"overrun_streak": 0}, "servo rate_hz must be > 0 and overrun_streak >= 1, got 500.0, 0"),
])
def test_servo_config_validation(kwargs, message):
    with pytest.raises(ConfigError) as err:
        ServoConfig(**kwargs)
    assert message in str(err.value)


def test_servo_config_defaults():
    cfg = ServoConfig()
    assert (cfg.rate_hz, cfg.interpolation, cfg.command_timeout_s, cfg.policy_timeout_s, cfg.stale_state_s,
            cfg.driver_timeout_s, cfg.overrun_streak) == (500.0, "step", 0.1, 1.0, 0.05, 0.02, 20)
    servo, _, _ = make_servo()
    assert servo.period == DT
