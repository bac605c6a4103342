"""The servo loop in its own process, talking to the policy process through shared memory.

The servo process owns the driver (the stand-in's physics lives there too) and runs ``ServoLoop`` on a
``RealClock`` with sleep-then-spin pacing, so the GIL of the policy process never delays a tick. Hot-path
traffic goes through two ``SharedRingBuffer`` segments, both created (and always unlinked) by the policy
process:

- ``state`` (servo -> policy), one record per tick: time, measured position / velocity, sample counter, the
  command sent and the safety flags, the waypoint in force (action, chunk id and index), fault / held /
  overrun accounting and, when the driver has a task observation (the stand-in), that observation with the
  task's reward and success. Sized with diffusion_policy's rule for a reader that may be blocked by
  inference for up to ``read_budget_s``.
- ``plan`` (policy -> servo), latest wins: the pending trajectory (up to ``max_waypoints``), paused or not,
  and the policy heartbeat time. The servo reads it at most once per tick.

Rare requests (episode reset, re-arm, stop) and the servo's fault reasons travel through small
``multiprocessing`` queues; the e-stop is a shared ``multiprocessing.Event``. ``RemoteServo`` and
``RemoteRobot`` give the deploy loop the same view as a local ``ServoLoop`` and robot.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import uuid
from typing import Any

import numpy as np

from .clock import RealClock
from .driver import DriverError, RobotState
from .record import FLAG_BITS
from .safety import EStop
from .scheduler import Trajectory
from .servo import ServoStats, TickInfo
from .shm import SharedRingBuffer, ring_capacity

MAX_WAYPOINTS = 64


def state_spec(dim: int, action_dim: int, obs_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    spec: dict[str, tuple] = {
        "tick": ((), np.int64), "t": ((), np.float64), "state_t": ((), np.float64), "lateness": ((), np.float64), "overruns": ((), np.int64),
        "position": ((dim,), np.float64), "velocity": ((dim,), np.float64), "seq": ((), np.int64),
        "sent": ((dim,), np.float64), "has_sent": ((), np.bool_), "flags": ((), np.uint16),
        "action": ((action_dim,), np.float64), "has_action": ((), np.bool_), "chunk_id": ((), np.int64),
        "chunk_index": ((), np.int64),
        "fault": ((), np.bool_), "held": ((), np.bool_), "episode": ((), np.int64),
        "reward": ((), np.float64), "success": ((), np.bool_),
    }
    for key, shape in obs_shapes.items():
        spec[f"obs/{key}"] = (tuple(shape), np.float32)
    return spec


def plan_spec(action_dim: int) -> dict[str, tuple]:
    return {"n": ((), np.int64), "times": ((MAX_WAYPOINTS,), np.float64),
            "actions": ((MAX_WAYPOINTS, action_dim), np.float64), "chunk_ids": ((MAX_WAYPOINTS,), np.int64),
            "indices": ((MAX_WAYPOINTS,), np.int64), "paused": ((), np.bool_), "heartbeat": ((), np.float64)}


def servo_main(robot_cfg: dict, task: dict | None, dt: float, state_name: str, plan_name: str, requests: Any,
               replies: Any, estop_flag: Any) -> None:
    """Entry point of the servo process; ``dt`` is the policy's control period (the task's reward and success
    are evaluated once per period, as the simulator does)."""
    from omegaconf import OmegaConf

    from .deploy import make_robot, make_servo

    cfg = OmegaConf.create(robot_cfg)
    clock = RealClock()
    robot = state_ring = plan_ring = None
    try:
        robot = make_robot(cfg, clock, OmegaConf.create(task) if task else None)
        state_ring, plan_ring = SharedRingBuffer.attach(state_name), SharedRingBuffer.attach(plan_name)
        servo = make_servo(cfg, robot, clock, EStop(estop_flag))
        obs_keys = [k[4:] for k in state_ring.spec if k.startswith("obs/")]
        has_task = hasattr(robot, "observe") and hasattr(robot, "task_status")
        missing = [] if has_task else [k for k in obs_keys if k not in robot.read_state().obs]
        if missing:
            raise KeyError(f"the policy observes {missing} but robot '{cfg.name}' provides "
                           f"{sorted(robot.read_state().obs)}")
    except Exception as err:  # noqa: BLE001 - the policy process reports it; nothing may stay connected
        replies.put(("ready", f"{type(err).__name__}: {err}"))
        for thing in (robot, state_ring, plan_ring):
            if thing is not None:
                getattr(thing, "stop", getattr(thing, "close", None))()
        return
    action_dim = servo.action_map.action_dim
    plan_seen, episode, reported, ticks = 0, 0, 0, 0
    reward, success, next_status = 0.0, False, clock.now() + dt
    try:
        replies.put(("ready", None))
        while True:
            try:
                request, arg = requests.get_nowait()
            except queue.Empty:
                request = None
            if request == "stop":
                break
            if request is not None:
                try:
                    if request == "reset":
                        if hasattr(robot, "reset"):  # hardware: the operator resets the scene
                            robot.reset(int(arg))
                        episode += 1
                        reward, success, next_status = 0.0, False, clock.now() + dt
                    elif request == "rearm":
                        servo.rearm()
                    elif request == "restart":
                        servo.restart()
                    replies.put((request, None))
                except Exception as err:  # noqa: BLE001 - the policy process decides what to do
                    replies.put((request, f"{type(err).__name__}: {err}"))
            if plan_ring.count > plan_seen:
                plan, plan_seen = plan_ring.get_latest()
                n = int(plan["n"])
                if plan["paused"]:
                    if not servo.paused:
                        servo.pause()
                else:
                    if servo.paused:
                        servo.resume()
                    servo.set_trajectory(Trajectory(plan["times"][:n], plan["actions"][:n], plan["chunk_ids"][:n],
                                                    plan["indices"][:n]))
                if plan["heartbeat"] > 0:
                    servo.policy_heartbeat(float(plan["heartbeat"]))
            info = servo.tick()
            ticks += 1
            for event in servo.events[reported:]:  # before the record that shows the fault
                replies.put(("event", event))
            reported = len(servo.events)
            record = {"tick": ticks, "t": info.t, "lateness": servo.stats.lateness[-1],
                      "overruns": servo.stats.overruns, "fault": servo.fault is not None, "held": servo.held,
                      "episode": episode, "flags": np.uint16(_flag_bits(info.flags)), "has_sent": info.sent is not None,
                      "sent": info.sent if info.sent is not None else np.zeros(robot.dim),
                      "action": info.action if info.action is not None else np.zeros(action_dim),
                      "has_action": info.action is not None, "chunk_id": info.chunk_id,
                      "chunk_index": info.chunk_index}
            state = info.state
            record.update(state_t=state.t if state else info.t,
                          position=state.position if state else np.zeros(robot.dim),
                          velocity=state.velocity if state else np.zeros(robot.dim), seq=state.seq if state else 0)
            if has_task:
                if info.t >= next_status:
                    reward, success = robot.task_status()
                    next_status += dt
                if obs_keys:
                    obs = robot.observe()
                    record.update({f"obs/{k}": obs[k] for k in obs_keys})
            elif obs_keys and state is not None:
                record.update({f"obs/{k}": state.obs[k] for k in obs_keys})
            record.update(reward=reward, success=success)
            state_ring.put(record)
            servo.stats.lateness.clear()  # the policy process keeps the history
            servo.pace()
    finally:
        robot.stop()
        state_ring.close()
        plan_ring.close()


def _flag_bits(flags: tuple[str, ...]) -> int:
    return sum({FLAG_BITS.get(f.split(":")[0], 0) for f in flags})


class RemoteServo:
    """The policy process's handle on the servo process (the deploy loop's ``servo``)."""

    def __init__(self, robot_cfg: dict, task: dict | None, dt: float, command_dim: int, action_dim: int,
                 obs_shapes: dict[str, tuple[int, ...]], read_budget_s: float = 1.0, start_timeout_s: float = 60.0):
        """``dt``: the policy's control period; ``read_budget_s``: how long the policy process may go without
        reading the state ring (an inference) before ticks are lost from its statistics."""
        rate = float(robot_cfg["control_rate_hz"])
        self.clock = RealClock(spin_s=0.0)  # the policy process need not spin
        self.period = 1.0 / rate
        self.command_dim, self.action_dim = command_dim, action_dim
        self.max_read = ring_capacity(rate, read_budget_s, 1)
        suffix = uuid.uuid4().hex[:10]
        self.state_ring = SharedRingBuffer.create(state_spec(command_dim, action_dim, obs_shapes),
                                                  self.max_read + 17, name=f"rp_state_{suffix}")
        self.plan_ring = SharedRingBuffer.create(plan_spec(action_dim), 8, name=f"rp_plan_{suffix}")
        ctx = mp.get_context("spawn")
        self.requests, self.replies = ctx.Queue(), ctx.Queue()
        self.estop = EStop(ctx.Event())
        self.process = ctx.Process(target=servo_main, name="robopol-servo", daemon=True,
                                   args=(robot_cfg, task, dt, self.state_ring.name, self.plan_ring.name,
                                         self.requests, self.replies, self.estop.flag))
        self.stats = ServoStats()
        self.events: list[tuple[float, str]] = []
        self.fault: str | None = None
        self.held = False
        self.paused = False
        self.latest: dict[str, np.ndarray] | None = None
        self._trajectory = Trajectory.empty(action_dim)
        self._heartbeat = 0.0
        self._last_tick = 0
        self._infos: list[TickInfo] = []
        self._stopped = False
        try:
            self.process.start()
            self._await("ready", start_timeout_s)
        except BaseException:
            self.stop()
            raise

    # ---------------------------------------------------------------------------------- the servo view
    def set_trajectory(self, trajectory: Trajectory) -> None:
        if len(trajectory) > MAX_WAYPOINTS:  # the scheduler trims to the waypoint in force: keep the nearest
            trajectory = trajectory.select(np.arange(len(trajectory)) < MAX_WAYPOINTS)
        self._trajectory, self.paused = trajectory, False
        self._publish()

    def policy_heartbeat(self, t: float) -> None:
        self._heartbeat = t
        self._publish()

    def pause(self) -> None:
        self.paused = True
        self._trajectory = Trajectory.empty(self.action_dim)
        self._heartbeat = 0.0  # the servo ignores the heartbeat while paused; resume() restarts it
        self._publish()

    def resume(self) -> None:
        self.paused = False
        self._publish()

    def restart(self) -> None:
        self._forget_plan()
        self._request("restart")
        self._skip_published()

    def rearm(self) -> None:
        self._forget_plan()
        self._request("rearm")
        self._skip_published()
        self.fault, self.held = None, False

    def _skip_published(self) -> None:
        """Ignore ticks published before the servo answered: they show the state before the request."""
        self._last_tick = max(self._last_tick, self.state_ring.count)

    def _forget_plan(self) -> None:
        """An empty, unpaused plan without heartbeat, so nothing of the last episode is ever re-sent."""
        self._trajectory, self._heartbeat, self.paused = Trajectory.empty(self.action_dim), 0.0, False
        self._publish()

    def step(self) -> list[TickInfo]:
        """Sleep about one servo period, then fold in every tick the servo process made since the last call."""
        self.clock.sleep_until(self.clock.now() + self.period)
        self._drain()
        infos, self._infos = self._infos, []
        return infos

    def stop(self) -> None:
        """Stop the servo process (it stops the driver in its ``finally``) and free the shared memory."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.process.pid is not None:  # started
                self.requests.put(("stop", None))
                self.process.join(timeout=10.0)
                if self.process.is_alive():
                    self.process.terminate()
                    self.process.join(timeout=5.0)
        finally:
            for ring in (self.state_ring, self.plan_ring):
                ring.close()
                ring.unlink()

    @property
    def state(self) -> RobotState | None:
        """The newest robot state the servo process published."""
        rec = self.latest
        if rec is None:
            return None
        return RobotState(float(rec["t"]), rec["position"], rec["velocity"], int(rec["seq"]))

    @property
    def driver(self) -> RemoteServo:
        """``stop()`` here stops the remote driver (the deploy loop's ``finally`` calls it)."""
        return self

    # ---------------------------------------------------------------------------------- internals
    def _publish(self) -> None:
        traj = self._trajectory
        n = len(traj)
        times, actions = np.zeros(MAX_WAYPOINTS), np.zeros((MAX_WAYPOINTS, self.action_dim))
        ids, indices = np.zeros(MAX_WAYPOINTS, dtype=np.int64), np.zeros(MAX_WAYPOINTS, dtype=np.int64)
        times[:n], actions[:n], ids[:n], indices[:n] = traj.times, traj.actions, traj.chunk_ids, traj.indices
        self.plan_ring.put({"n": n, "times": times, "actions": actions, "chunk_ids": ids,
                            "indices": indices, "paused": self.paused, "heartbeat": self._heartbeat})

    def _drain(self) -> None:
        """Read the ticks the servo made since the last read into the pending infos and the statistics."""
        self._collect_replies()
        count = self.state_ring.count
        new = min(count - self._last_tick, self.max_read)
        if new <= 0:
            return
        # a few more than counted: ticks written meanwhile must not push the oldest unread ones out of the read
        records = self.state_ring.get_last_k(min(new + 16, count, self.state_ring.capacity - 1))
        for i in np.flatnonzero(records["tick"] > self._last_tick):
            rec = {k: v[i] for k, v in records.items()}
            self.stats.ticks += 1
            self.stats.lateness.append(float(rec["lateness"]))
            self.stats.overruns = int(rec["overruns"])
            flags = tuple(name for name, bit in FLAG_BITS.items() if int(rec["flags"]) & bit)
            chunk_id = int(rec["chunk_id"])
            self._infos.append(TickInfo(float(rec["t"]), None, rec["sent"] if rec["has_sent"] else None, flags, None,
                                  False, rec["action"] if rec["has_action"] else None, chunk_id,
                                  int(rec["chunk_index"])))
            self.latest = rec
        self._last_tick = int(records["tick"][-1])
        self.held = bool(self.latest["held"])
        if self.latest["fault"]:  # the servo's trip is its newest event (queued before the record)
            self.fault = self.events[-1][1] if self.events else "fault"

    def _collect_replies(self) -> list[tuple[str, Any]]:
        replies = []
        while True:
            try:
                kind, arg = self.replies.get_nowait()
            except queue.Empty:
                return replies
            if kind == "event":
                self.events.append(arg)
            else:
                replies.append((kind, arg))

    def _await(self, kind: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for got, error in self._collect_replies():
                if got == kind:
                    if error:
                        raise DriverError(f"servo process: {kind} failed: {error}")
                    return
            if not self.process.is_alive():
                raise DriverError(f"the servo process exited (code {self.process.exitcode}) before '{kind}'")
            time.sleep(0.002)
        raise TimeoutError(f"the servo process did not answer '{kind}' within {timeout_s} s")

    def _request(self, kind: str, arg: Any = None) -> None:
        self.requests.put((kind, arg))
        self._await(kind, 30.0)


class RemoteRobot:
    """The task side of the stand-in in the servo process: reset, observation, reward and success."""

    def __init__(self, servo: RemoteServo, obs_keys: list[str]) -> None:
        self.servo, self.obs_keys = servo, obs_keys
        self.episode = 0

    def reset(self, seed: int) -> None:
        self.servo._request("reset", seed)
        self.episode += 1
        self._fresh()

    def observe(self) -> dict[str, np.ndarray]:
        rec = self._fresh()
        self.obs_t = float(rec["state_t"])
        return {k: np.asarray(rec[f"obs/{k}"]) for k in self.obs_keys}

    def task_status(self) -> tuple[float, bool]:
        rec = self.servo.latest if self.servo.latest is not None else self._fresh()
        return float(rec["reward"]), bool(rec["success"])

    def _fresh(self) -> dict[str, np.ndarray]:
        """A record from this episode taken no earlier than now (waits at most a few servo periods)."""
        now = self.servo.clock.now()
        deadline = now + 1.0
        while True:
            self.servo._drain()
            rec = self.servo.latest
            if rec is not None and int(rec["episode"]) >= self.episode and float(rec["t"]) >= now - self.servo.period:
                return rec
            if self.servo.clock.now() > deadline:
                raise TimeoutError("no fresh state from the servo process within 1 s")
            self.servo.clock.sleep_until(self.servo.clock.now() + self.servo.period / 2)
