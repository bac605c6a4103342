"""The deploy loop: policy worker -> chunk scheduler -> servo loop -> robot, with takeover and recording.

Time is the injected clock's. Every control step ``k`` (the policy's action period ``dt``) happens at
``T_k = T_0 + k * dt``: the loop reads the task observation, polls the teleoperator, and, when the policy
is in control and ``steps_per_inference`` steps have passed, starts an inference from that observation. The
chunk becomes ready ``latency`` later (measured wall time, or an injected latency model) and goes to the
scheduler then, stamped from ``T_k``; in between the servo keeps executing what is pending. Between control
steps the servo loop ticks at its own rate. Under a ``VirtualClock`` this is a lockstep simulation of the
real timeline: deterministic, and faster than real time with the stand-in robot.

An episode ends at the task's success, after ``max_steps``, when the servo holds after a fault, or when
the operator says so on the teleoperator. A planning failure (a worker crash) stops new chunks and heartbeats: the servo's command-freshness and
policy-heartbeat watchdogs bring the robot to a decelerating hold. Every control step is recorded (see
``robopol.real.record``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .driver import DriverError
from .record import FLAG_BITS, SOURCE_HUMAN, SOURCE_NONE, SOURCE_POLICY
from .scheduler import Chunk, ChunkScheduler, Trajectory
from .servo import ServoLoop, TickInfo
from .takeover import AUTONOMOUS, CORRECTING, Takeover
from .teleop import Teleop

Latency = Callable[[], float]


class PolicyWorker:
    """A ``ChunkActor`` on the deploy timeline: observes every control step, plans a chunk when asked.

    ``latency``: None uses the measured wall time of each plan as its latency; a number or a callable
    (``() -> seconds``) injects one instead (benchmarks, tests, emulating a slower GPU).
    """

    def __init__(self, actor: Any, latency: float | Latency | None = None) -> None:
        self.actor = actor
        self.latency = (lambda: float(latency)) if isinstance(latency, (int, float)) else latency
        self.latencies: list[float] = []

    @property
    def action_steps(self) -> int:
        return self.actor.action_steps

    def reset(self) -> None:
        self.actor.reset()

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self.actor.observe({k: np.asarray(v)[None] for k, v in obs.items()})

    def plan(self, shift: int | None) -> tuple[np.ndarray, float]:
        """A chunk ``(H, A)`` and its latency in seconds."""
        started = time.perf_counter()
        chunk = self.actor.plan(shift)[0]
        latency = time.perf_counter() - started if self.latency is None else self.latency()
        self.latencies.append(latency)
        return chunk, latency


@dataclass
class EpisodeReport:
    """One deployed episode."""

    seed: int
    steps: int
    success: bool
    fault: str | None
    takeovers: int
    events: list[tuple[float, str]]
    data: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    """Per-step arrays (the record)."""


class DeployLoop:
    """Runs episodes of a policy on a robot through the scheduler and the servo loop."""

    def __init__(self, robot: Any, servo: ServoLoop, scheduler: ChunkScheduler, worker: PolicyWorker,
                 dt: float, max_steps: int, steps_per_inference: int | None = None,
                 teleop: Teleop | None = None, takeover: Takeover | None = None,
                 on_step: Callable[[int], None] | None = None, gripper_dim: int | None = None,
                 gripper_close_action: float = 1.0, auto_rearm: bool = False) -> None:
        """``gripper_dim``: index of the gripper opening (1 = open) in the robot state, and
        ``gripper_close_action`` the action value that closes it: a teleoperator taking over starts with the
        hand as it is (a takeover mid-grasp must not drop the object). ``auto_rearm``: leave a watchdog hold
        at the next episode without asking (never after an e-stop, which ``rearm`` refuses)."""
        self.robot, self.servo, self.scheduler, self.worker = robot, servo, scheduler, worker
        self.clock = servo.clock
        self.dt, self.max_steps = dt, max_steps
        self.steps_per_inference = steps_per_inference or worker.action_steps
        self.teleop, self.takeover = teleop, takeover or Takeover()
        self.on_step = on_step
        self.gripper_dim, self.gripper_close_action = gripper_dim, gripper_close_action
        self.auto_rearm = auto_rearm
        self._chunk_id = 0
        self.chunks: dict[int, tuple[float, float]] = {}
        """Every planned chunk: id -> (observation time, latency)."""

    def run_episode(self, seed: int) -> EpisodeReport:
        robot, servo, scheduler, worker = self.robot, self.servo, self.scheduler, self.worker
        robot.reset(seed)
        scheduler.reset()
        worker.reset()
        self.takeover.reset()
        servo.events.clear()
        if servo.fault is not None:
            if not self.auto_rearm:
                raise DriverError(f"the robot is holding after '{servo.fault}' and auto_rearm is off: clear the "
                                  "cause, then deploy again")
            servo.rearm()
        else:
            servo.restart()
        self._in_flight: tuple[Chunk, float] | None = None
        self._worker_alive = True
        self._operator_done = False
        t0 = self.clock.now()
        last_plan: int | None = None  # control step of the latest plan
        steps: list[dict[str, Any]] = []
        success, k = False, 0
        while True:
            grid_t = t0 + k * self.dt
            while self.clock.now() < grid_t - 1e-9:
                self._deliver()
                for info in servo.step():
                    self._account(info, steps)
            if k > 0:
                reward, success = robot.task_status()
                steps[-1].update(reward=reward, terminal=success)
                if self.on_step is not None:
                    self.on_step(k)
                if success or k >= self.max_steps or servo.held or self._operator_done:
                    break
            now = self.clock.now()
            obs = robot.observe()
            obs_t = robot.obs_t  # the capture time: chunks are stamped from it
            worker.observe(obs)
            human = self._teleop(now, obs)
            if self.takeover.mode == AUTONOMOUS and self._worker_alive:
                servo.policy_heartbeat(now)
                due = last_plan is None or k - last_plan >= self.steps_per_inference
                if due and self._in_flight is None:
                    self._start_inference(obs_t, None if last_plan is None else k - last_plan)
                    last_plan = k
            elif self.takeover.mode != AUTONOMOUS:
                last_plan = None
            self._deliver()
            steps.append({"obs": obs, "human": human, "first": None, "flags": 0})
            k += 1
        servo.pause()  # hold still until the next episode starts
        return EpisodeReport(seed=seed, steps=len(steps), success=bool(success), fault=servo.fault,
                             takeovers=self.takeover.takeovers, events=list(servo.events), data=self._stack(steps))

    # ---------------------------------------------------------------------------------- parts
    def _start_inference(self, obs_t: float, shift: int | None) -> None:
        try:
            actions, latency = self.worker.plan(shift)
        except Exception as err:  # noqa: BLE001 - a crashed worker must leave the robot holding, not moving
            self._worker_alive = False
            self.servo.events.append((obs_t, f"policy_worker_error: {err}"))
            return
        self._chunk_id += 1
        self.chunks[self._chunk_id] = (obs_t, latency)
        chunk = Chunk(actions, obs_t=obs_t, chunk_id=self._chunk_id, epoch=self.scheduler.epoch)
        self._in_flight = (chunk, obs_t + latency)

    def _deliver(self) -> None:
        if self._in_flight is not None and self.clock.now() >= self._in_flight[1] - 1e-9:
            chunk, _ = self._in_flight
            self._in_flight = None
            self.servo.set_trajectory(self.scheduler.add(chunk, self.clock.now()))

    def _teleop(self, now: float, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Poll the human; returns the action they command this step (None: the policy acts)."""
        if self.teleop is None:
            return None
        cmd = self.teleop.poll(now)
        if cmd.estop:
            self.servo.estop.trigger("teleop key")
        self._operator_done = self._operator_done or cmd.done
        transition = self.takeover.update(cmd.engaged)
        if transition == "pause":
            state = self.servo.state
            if self.gripper_dim is not None and hasattr(self.teleop, "gripper") and state is not None:
                closed = state.position[self.gripper_dim] < 0.9  # a grasp leaves the hand partly open
                self.teleop.gripper = self.gripper_close_action * (1.0 if closed else -1.0)
            self.scheduler.reset()
            self.worker.reset()
            self.worker.observe(obs)
            self._in_flight = None
            self.servo.pause()
        elif transition == "release":
            self.scheduler.reset()
            self.worker.reset()
            self.worker.observe(obs)
            self.servo.resume()
        if self.takeover.mode != CORRECTING:
            return None
        if not cmd.engaged:
            self.servo.pause()
            return None
        self.servo.resume()
        self.servo.set_trajectory(Trajectory(np.array([now]), np.asarray(cmd.action, dtype=np.float64)[None],
                                             np.array([-1]), np.array([0])))
        return np.asarray(cmd.action, dtype=np.float32)

    def _account(self, info: TickInfo, steps: list[dict[str, Any]]) -> None:
        """Fold one tick into the record of the control step it belongs to."""
        if not steps:
            return
        step = steps[-1]
        for flag in info.flags:
            step["flags"] |= FLAG_BITS.get(flag.split(":")[0], 0)
        if step["first"] is None:
            step["first"] = {
                "command": info.sent if info.sent is not None else np.full(self.servo.command_dim, np.nan),
                "action": info.action, "chunk_id": info.chunk_id, "chunk_index": info.chunk_index,
            }

    def _stack(self, steps: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Per-step dicts -> the arrays of the episode record."""
        action_dim = self.scheduler.action_dim
        out: dict[str, list] = {k: [] for k in ("action", "policy_action", "command", "source", "intervention",
                                                "chunk_id", "chunk_index", "latency", "safety_flags",
                                                "reward", "terminal")}
        obs_keys = list(steps[0]["obs"]) if steps else []
        for key in obs_keys:
            out[key] = []
        for step in steps:
            first = step["first"] or {"command": np.full(self.servo.command_dim, np.nan), "action": None,
                                      "chunk_id": -1, "chunk_index": -1}
            human = step["human"]
            if human is not None:
                source, action = SOURCE_HUMAN, human
            elif first["action"] is not None and first["chunk_id"] >= 0:
                source, action = SOURCE_POLICY, first["action"]
            else:
                source, action = SOURCE_NONE, np.zeros(action_dim)
            for key in obs_keys:
                out[key].append(step["obs"][key])
            out["action"].append(np.asarray(action, dtype=np.float32))
            out["policy_action"].append(np.asarray(first["action"] if source == SOURCE_POLICY
                                                   else np.zeros(action_dim), dtype=np.float32))
            out["command"].append(np.asarray(first["command"], dtype=np.float32))
            out["source"].append(source)
            out["intervention"].append(source == SOURCE_HUMAN)
            out["chunk_id"].append(first["chunk_id"])
            out["chunk_index"].append(first["chunk_index"])
            planned = self.chunks.get(first["chunk_id"], (0.0, 0.0))
            out["latency"].append(planned[1] if source == SOURCE_POLICY else 0.0)
            out["safety_flags"].append(step["flags"])
            out["reward"].append(step.get("reward", 0.0))
            out["terminal"].append(step.get("terminal", False))
        dtypes = {"source": np.int8, "intervention": np.bool_, "chunk_id": np.int32, "chunk_index": np.int16,
                  "latency": np.float32, "safety_flags": np.uint16, "reward": np.float32, "terminal": np.bool_}
        return {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in out.items()}
