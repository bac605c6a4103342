"""The MuJoCo stand-in robot: OGBench's UR5e arm + Robotiq gripper with position actuators, behind the driver
protocol, so the whole control loop runs (and is tested) with no hardware and no downloads.

The model, its task scene (a cube, buttons, ...) and its observation are OGBench's manipulation
environment, built from the files the ``ogbench`` package ships; the stand-in only replaces OGBench's
50 ms ``step`` by the servo loop's ticks. Physics advances lazily to the injected clock's time, so the same
class is a lockstep robot under a ``VirtualClock`` (one 2 ms physics step per 500 Hz tick, faster than real
time) and a real-time robot under a ``RealClock``.

Commands are the six joint position targets (rad) and the gripper opening in [0, 1] (1 = open; OGBench's
own "gripper opening" feature counts the other way). ``EffectorDeltaMap``
turns the policy's OGBench action (end-effector delta, yaw delta, gripper delta) into such a target with
OGBench's own inverse kinematics against the state when the action comes into force, which is exactly what
the simulator the policy was trained in does.

``StandinFaults`` injects what real cells do: state latency and jitter, dropped command packets, a frozen
state stream, a dead heartbeat and a protective stop.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import mujoco
import numpy as np

from robopol.errors import ConfigError
from robopol.schemas import StandinFaults

from .clock import Clock
from .driver import ProtectiveStop, RobotState

# The Robotiq 2F-85 driver joint runs from 0 (open) to 0.8 (closed) and its actuator from 0 to 255 (closed);
# the driver protocol's gripper value is the opening, 1 = open.
GRIPPER_CTRL, GRIPPER_CLOSED_Q = 255.0, 0.8


class StandinRobot:
    """Driver-protocol robot over an OGBench manipulation scene."""

    dim = 7

    def __init__(self, clock: Clock, env_id: str = "cube-single-v0", task_id: int = 1,
                 faults: StandinFaults | None = None) -> None:
        from robopol.sim.ogbench_tasks import OGBenchSim

        self.clock = clock
        self.sim = OGBenchSim(env_id=env_id, task_id=task_id)
        self.env = self.sim.env
        self.model, self.data = self.env.model, self.env.data
        self.physics_dt = float(self.model.opt.timestep)
        self.action_dt = float(self.env._control_timestep)
        self.faults = faults or StandinFaults()
        f = self.faults
        if not 0.0 <= f.drop_rate < 1.0 or f.state_latency_s < 0 or f.jitter_s < 0:
            raise ConfigError(f"robot.faults: drop_rate must be in [0, 1) and the latencies >= 0, got drop_rate "
                              f"{f.drop_rate}, state_latency_s {f.state_latency_s}, jitter_s {f.jitter_s}")
        self._arm = np.asarray(self.env._arm_actuator_ids)
        self._gripper = int(np.asarray(self.env._gripper_actuator_ids).ravel()[0])
        self._arm_q = np.asarray(self.env._arm_joint_ids)
        self._gripper_q = int(self.env._gripper_opening_joint_id)
        self._kin = mujoco.MjData(self.model)  # scratch data for forward kinematics
        self.stopped = False
        self.reset(0)

    # ---------------------------------------------------------------------------------- episodes
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """New episode of the scene from ``seed``; physics time restarts at the clock's now."""
        obs = self.sim.reset(seed)
        self.env.pre_step()
        self._rng = np.random.default_rng(np.random.SeedSequence(self.faults.seed, spawn_key=(seed,)))
        self._t0 = self.clock.now()
        self._steps = 0
        self._seq = 0
        self._protective = False
        self._samples: deque[tuple[float, np.ndarray, np.ndarray, int]] = deque(maxlen=4096)
        self._record_sample()
        self._frozen: RobotState | None = None
        return obs

    def observe(self) -> dict[str, np.ndarray]:
        """The task observation now (OGBench's state vector), as the policy was trained on it."""
        self._advance()
        mujoco.mj_rnePostConstraint(self.model, self.data)  # contact forces: the gripper-contact feature
        self.obs_t = self.clock.now()
        return self.sim._obs(self.env.compute_observation())

    def task_status(self) -> tuple[float, bool]:
        """OGBench's reward and success at the end of a control period; call once per period, as OGBench's
        ``step`` does (button presses are detected against the state at the period's start)."""
        self._advance()
        mujoco.mj_rnePostConstraint(self.model, self.data)  # contact forces, as after OGBench's physics steps
        self.env.post_step()
        status = float(self.env.compute_reward()), bool(self.env._success)
        self.env.pre_step()  # the next period starts here
        return status

    # ---------------------------------------------------------------------------------- driver protocol
    def read_state(self) -> RobotState:
        self._advance()
        f, elapsed = self.faults, self._elapsed()
        if f.freeze_at_s is not None and elapsed >= f.freeze_at_s:
            if self._frozen is None:
                self._frozen = self._sample_at(self.clock.now())
            return self._frozen
        delay = f.state_latency_s + (self._rng.uniform(0, f.jitter_s) if f.jitter_s else 0.0)
        return self._sample_at(self.clock.now() - delay)

    def command(self, target: np.ndarray) -> None:
        if self.stopped:
            raise ProtectiveStop("stand-in robot: command after stop()")
        self._advance()
        if self._protective_stopped():
            raise ProtectiveStop(f"stand-in robot: protective stop at {self.faults.protective_stop_at_s} s")
        if self.faults.drop_rate and self._rng.random() < self.faults.drop_rate:
            return
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.dim,):
            raise ValueError(f"stand-in robot: command must have {self.dim} values, got shape {target.shape}")
        self.data.ctrl[self._arm] = target[:6]
        self.data.ctrl[self._gripper] = GRIPPER_CTRL * (1.0 - np.clip(target[6], 0.0, 1.0))

    def hold(self) -> None:
        self._advance()
        self.data.ctrl[self._arm] = self.data.qpos[self._arm_q]

    def heartbeat(self) -> bool:
        f = self.faults
        return not self.stopped and (f.heartbeat_dead_at_s is None or self._elapsed() < f.heartbeat_dead_at_s)

    def stop(self) -> None:
        if not self.stopped:
            self.hold()
            self.stopped = True

    def close(self) -> None:
        self.sim.close()

    # ---------------------------------------------------------------------------------- kinematics
    def forward_kinematics(self, target: np.ndarray) -> np.ndarray:
        """Pinch-site position (m) of the arm at joint target ``target[:6]``."""
        self._kin.qpos[:] = self.data.qpos
        self._kin.qpos[self._arm_q] = target[:6]
        mujoco.mj_kinematics(self.model, self._kin)
        return self._kin.site_xpos[self.env._pinch_site_id].copy()

    def action_map(self) -> EffectorDeltaMap:
        return EffectorDeltaMap(self)

    # ---------------------------------------------------------------------------------- internals
    def _elapsed(self) -> float:
        return self.clock.now() - self._t0

    def _protective_stopped(self) -> bool:
        at = self.faults.protective_stop_at_s
        if at is not None and self._elapsed() >= at and not self._protective:
            self._protective = True
            self.hold()
        return self._protective

    def _advance(self) -> None:
        """Step physics up to the clock's now (whole physics steps)."""
        due = int(np.floor(self._elapsed() / self.physics_dt + 1e-6))
        if due > self._steps and self._protective_stopped():
            self.data.ctrl[self._arm] = self.data.qpos[self._arm_q]
        while self._steps < due:
            mujoco.mj_step(self.model, self.data)
            self._steps += 1
            self._record_sample()

    def _record_sample(self) -> None:
        self._seq += 1
        position = np.append(self.data.qpos[self._arm_q], 1.0 - self.data.qpos[self._gripper_q] / GRIPPER_CLOSED_Q)
        velocity = np.append(self.data.qvel[self._arm_q], -self.data.qvel[self._gripper_q] / GRIPPER_CLOSED_Q)
        self._samples.append((self._t0 + self._steps * self.physics_dt, position, velocity, self._seq))

    def _sample_at(self, t: float) -> RobotState:
        """The newest sample captured at or before ``t`` (the oldest kept if none)."""
        chosen = self._samples[0]
        for sample in reversed(self._samples):
            if sample[0] <= t + 1e-9:
                chosen = sample
                break
        capture_t, position, velocity, seq = chosen
        return RobotState(t=capture_t, position=position.copy(),
                          velocity=velocity.copy(), seq=seq)


class EffectorDeltaMap:
    """OGBench's action (dx, dy, dz, dyaw, dgripper in [-1, 1]) -> joint + gripper target, via OGBench's IK
    from the arm's state when the action comes into force (the arithmetic of OGBench's ``set_control``)."""

    action_dim = 5

    def __init__(self, robot: StandinRobot) -> None:
        self.robot = robot

    def to_target(self, action: np.ndarray, state: Any) -> np.ndarray:
        env, data = self.robot.env, self.robot.data
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (5,):
            raise ValueError(f"OGBench arm action must have 5 values, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            return np.full(self.robot.dim, np.nan)  # the safety filter latches on it
        saved = data.ctrl.copy()
        try:
            env.set_control(np.clip(action, -1.0, 1.0))
            target = np.append(data.ctrl[self.robot._arm], 1.0 - data.ctrl[self.robot._gripper] / GRIPPER_CTRL)
        finally:
            data.ctrl[:] = saved
        return target
