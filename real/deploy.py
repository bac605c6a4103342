"""``robopol deploy robot=<profile> ckpt=<run>``: build the control loop from a robot profile and a policy
checkpoint, run episodes with a live cycle report, and optionally record them.

Lockstep (default): one process on a ``VirtualClock``; the stand-in robot's physics follows it, so episodes
run faster than real time and are reproducible, while inference latency is the measured one (or injected).
``realtime=true``: the servo loop runs in its own process against the wall clock (``robopol.real.process``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from functools import partial
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from tqdm import tqdm

from robopol.errors import ConfigError
from robopol.schemas import StandinFaults

from .clock import Clock, VirtualClock
from .loop import DeployLoop, EpisodeReport, PolicyWorker
from .record import FLAG_BITS, EpisodeRecorder
from .safety import EStop, SafetyFilter, SafetyLimits
from .scheduler import ChunkScheduler, check_rti_bounds
from .servo import JointPositionMap, ServoConfig, ServoLoop
from .standin import EffectorDeltaMap, StandinRobot

console = Console(soft_wrap=True)


def servo_config(robot: DictConfig) -> ServoConfig:
    """The profile's servo settings: the same names, except that the rate is ``control_rate_hz``."""
    same = {f.name: robot[f.name] for f in fields(ServoConfig) if f.name != "rate_hz"}
    return ServoConfig(rate_hz=robot.control_rate_hz, **same)


def safety_limits(robot: DictConfig, driver: Any = None) -> SafetyLimits:
    """The profile's limits as per-dimension arrays (joints, then the gripper when the profile has one)."""
    if robot.control_rate_hz <= 0:
        raise ConfigError(f"robot profile '{robot.name}': control_rate_hz must be positive, got {robot.control_rate_hz}")
    joints = len(robot.joint_lower)
    named = ["joint_names"] if robot.joint_names else []
    for key in ["joint_upper", "max_joint_velocity", "max_joint_acceleration", *named]:
        if len(robot[key]) != joints:
            raise ConfigError(f"robot profile '{robot.name}': {key} has {len(robot[key])} values but joint_lower "
                              f"has {joints}")
    lower, upper = list(robot.joint_lower), list(robot.joint_upper)
    velocity, acceleration = list(robot.max_joint_velocity), list(robot.max_joint_acceleration)
    relative, jump = [robot.max_relative] * joints, [robot.jump_fault] * joints
    if robot.gripper:
        lower, upper = lower + [0.0], upper + [1.0]
        velocity += [robot.gripper_max_velocity]
        acceleration += [robot.gripper_max_velocity * robot.control_rate_hz]  # the gripper may start at once
        relative, jump = relative + [2.0], jump + [2.0]  # any opening is reachable: the range is only [0, 1]
    box = {}
    if robot.workspace_low:
        if driver is None or not hasattr(driver, "forward_kinematics"):
            raise ConfigError(f"robot profile '{robot.name}' has a workspace box but its driver has no "
                              "forward_kinematics: remove workspace_low/high or use a driver that has one")
        box = {"workspace_low": np.asarray(robot.workspace_low), "workspace_high": np.asarray(robot.workspace_high),
               "forward_kinematics": driver.forward_kinematics}
    return SafetyLimits(lower=lower, upper=upper, max_velocity=velocity, max_acceleration=acceleration,
                        max_relative=relative, jump_fault=jump, margin=robot.limit_margin, margin_dims=joints,
                        **box)


def state_latency(robot: DictConfig) -> float:
    """The cell's state latency (s): the driver's calibrated receive latency, or the stand-in's injected one."""
    return float(robot.driver_args.get("receive_latency_s", robot.faults.state_latency_s))


def check_standin_task(task: DictConfig | None) -> None:
    if task is None or "env_id" not in task:
        raise ConfigError("the stand-in robot is OGBench's arm: deploy a checkpoint trained on an OGBench "
                          f"manipulation task (cube_single, ...), got task {task.name if task else None}")


def make_robot(robot: DictConfig, clock: Clock, task: DictConfig | None) -> Any:
    """The profile's driver; the stand-in gets the checkpoint's OGBench scene."""
    cls = get_class(robot.driver)
    if cls is StandinRobot:
        check_standin_task(task)
        return StandinRobot(clock, env_id=task.env_id, task_id=task.get("task_id", 0),
                            faults=StandinFaults(**OmegaConf.to_container(robot.faults)))
    if OmegaConf.to_container(robot.faults) != asdict(StandinFaults()):
        raise ConfigError(f"robot.faults is for the stand-in robot; '{robot.name}' is real hardware")
    return cls(clock=clock, **OmegaConf.to_container(robot.driver_args))


def make_servo(robot_cfg: DictConfig, robot: Any, clock: Clock, estop: EStop | None = None) -> ServoLoop:
    """The servo loop of a profile around a constructed driver."""
    action_map = robot.action_map() if hasattr(robot, "action_map") else JointPositionMap(robot.dim)
    limits = safety_limits(robot_cfg, robot)
    return ServoLoop(robot, clock, SafetyFilter(limits, 1.0 / robot_cfg.control_rate_hz), action_map,
                     servo_config(robot_cfg), estop or EStop())


def deploy(cfg: DictConfig) -> list[EpisodeReport]:
    from robopol.runtime import load_actor

    if not cfg.ckpt:
        raise ConfigError("robopol deploy needs ckpt=<run dir or checkpoint dir>, e.g. the output of robopol demo")
    for key, low in (("episodes", 1), ("policy_threads", 1), ("max_steps", 0), ("steps_per_inference", 0),
                     ("dt", 0.0), ("exec_latency_s", 0.0)):
        if cfg[key] < low:
            raise ConfigError(f"{key} must be at least {low}, got {cfg[key]}")
    if cfg.teleop != "none" and not cfg.realtime:
        raise ConfigError(f"teleop={cfg.teleop} puts a human in the loop: pass realtime=true (lockstep runs on a "
                          "virtual clock, several times faster than real time)")
    torch.set_num_threads(cfg.policy_threads)
    actor, ckpt = load_actor(cfg.ckpt, cfg.device, sampler=cfg.sampler or None, seed=cfg.seed)
    if cfg.strategy == "rti" and actor.rti is None:
        raise ConfigError("strategy=rti hands RTI's warm start over between chunks: pass sampler=rti too")
    if actor.rti is not None and cfg.strategy not in ("rti", "replace"):
        raise ConfigError(f"sampler=rti warm-starts from the chunk the robot executed, which strategy={cfg.strategy} "
                          "blends away: use strategy=rti")
    manifest, task = ckpt.manifest, ckpt.config.get("task")
    action_dim, robot_cfg = int(manifest["action_dim"]), cfg.robot
    command_dim = len(robot_cfg.joint_lower) + int(robot_cfg.gripper)
    takes = EffectorDeltaMap.action_dim if get_class(robot_cfg.driver) is StandinRobot else command_dim
    if action_dim != takes:
        raise ConfigError(f"{ckpt.path}: the policy's actions have {action_dim} dims but robot '{robot_cfg.name}' "
                          f"takes {takes}")
    dt = cfg.dt or manifest["env_spec"].get("dt") or 0.0
    standin = get_class(robot_cfg.driver) is StandinRobot
    if not cfg.realtime and not standin:
        raise ConfigError(f"robot '{robot_cfg.name}' is hardware and runs on the wall clock: pass realtime=true "
                          "(lockstep on a virtual clock is for the stand-in robot)")
    if cfg.teleop != "none" and not standin:
        raise ConfigError(f"teleop={cfg.teleop} sends end-effector deltas (OGBench's action layout) but robot "
                          f"'{robot_cfg.name}' takes joint positions")
    if standin:
        check_standin_task(task)
    elif robot_cfg.auto_rearm:
        raise ConfigError(f"robot '{robot_cfg.name}': auto_rearm is for the stand-in robot; a person re-arms hardware")
    if cfg.realtime:
        from .process import RemoteRobot, RemoteServo

        if dt <= 0:
            raise ConfigError(f"{ckpt.path} does not record the policy's control period: pass dt=<seconds per "
                              "action>")
        obs_shapes = {k: tuple(manifest["env_spec"]["observation"][k]) for k in manifest["obs_keys"]}
        servo = RemoteServo(OmegaConf.to_container(robot_cfg, resolve=True),
                            OmegaConf.to_container(task, resolve=True) if task is not None else None, dt,
                            command_dim, action_dim, obs_shapes)
        robot: Any = RemoteRobot(servo, list(manifest["obs_keys"]))
    else:
        clock = VirtualClock()
        robot = make_robot(robot_cfg, clock, task)
        dt = dt or robot.action_dt
        servo = make_servo(robot_cfg, robot, clock)
    try:
        if robot_cfg.command_timeout_s <= dt:
            raise ConfigError(f"robot.command_timeout_s={robot_cfg.command_timeout_s} must exceed the policy's control "
                              f"period {dt} s, or every step between two actions trips the command watchdog")
        servo.estop.on_signal()  # `kill -USR1 <pid>` from another terminal latches the e-stop
        loop = build_loop(cfg, robot, servo, actor, action_dim, dt, int(task.get("max_episode_steps", 0) or 0))
        recorder = EpisodeRecorder(cfg.record, attrs={"task": task.name, "robot": robot_cfg.name,
                                                      "checkpoint": str(ckpt.path)}) if cfg.record else None
    except BaseException:
        servo.driver.stop()
        raise
    return run_episodes(cfg, loop, recorder)


def build_loop(cfg: DictConfig, robot: Any, servo: Any, actor: Any, action_dim: int, dt: float,
               task_steps: int) -> DeployLoop:
    """Scheduler and policy worker around ``servo``; ``dt`` is the policy's control period."""
    steps_per_inference = cfg.steps_per_inference or actor.action_steps
    latency = None if cfg.inference_latency_s < 0 else cfg.inference_latency_s
    if cfg.strategy == "rti" and latency is not None:
        check_rti_bounds(int(np.ceil(latency / dt - 1e-9)), steps_per_inference, actor.horizon)
    scheduler = ChunkScheduler(dt, action_dim, strategy=cfg.strategy, exec_latency=cfg.exec_latency_s,
                               action_offset=cfg.action_offset, merge_weight=cfg.merge_weight,
                               ensemble_decay=cfg.ensemble_decay)
    max_steps = cfg.max_steps or task_steps or 200
    gripper_dim = len(cfg.robot.joint_lower) if cfg.robot.gripper else None
    return DeployLoop(robot, servo, scheduler, PolicyWorker(actor, latency), dt, max_steps, steps_per_inference,
                      teleop=make_teleop(cfg.teleop, action_dim), gripper_dim=gripper_dim,
                      gripper_close_action=cfg.robot.gripper_close_action, auto_rearm=cfg.robot.auto_rearm)


def make_teleop(kind: str, action_dim: int) -> Any:
    if kind == "none":
        return None
    from . import teleop_devices

    if kind == "keyboard":
        return teleop_devices.KeyboardTeleop(action_dim)
    if kind == "spacemouse":
        return teleop_devices.SpaceMouseTeleop(action_dim)
    raise ConfigError(f"teleop must be none, keyboard or spacemouse, got '{kind}'")


def _clipped(flags: np.ndarray) -> str:
    """'velocity 12, workspace 1': how many control steps each safety stage acted in."""
    counts = {name: int(np.count_nonzero(flags & bit)) for name, bit in FLAG_BITS.items()}
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none"


def _live_report(bar: tqdm, loop: DeployLoop, before: tuple, step: int) -> None:
    """The running cycle report: servo rate and lateness, inference latency, dropped actions."""
    bar.update(1)
    if step % 10:
        return
    stats = loop.servo.stats
    late = np.asarray(stats.lateness[-500:] or [0.0]) * 1e3
    bar.set_postfix(overruns=stats.overruns - before[1], late_p99_ms=f"{np.percentile(late, 99):.3f}",
                    infer_ms=f"{1e3 * np.mean(loop.worker.latencies[-10:] or [0.0]):.1f}",
                    dropped=loop.scheduler.dropped - before[3])


def run_episodes(cfg: DictConfig, loop: DeployLoop, recorder: EpisodeRecorder | None) -> list[EpisodeReport]:
    """Run ``cfg.episodes`` episodes with a cycle report per episode and a summary; record if asked."""
    reports = []
    try:
        for i in range(cfg.episodes):
            if loop.servo.estop.triggered:
                console.print(f"e-stop ({loop.servo.estop.reason}): not starting more episodes")
                break
            stats, scheduler = loop.servo.stats, loop.scheduler
            before = (stats.ticks, stats.overruns, len(stats.lateness), scheduler.dropped, scheduler.over_budget,
                      len(loop.worker.latencies))
            wall, clock_t0 = time.perf_counter(), loop.clock.now()
            with tqdm(total=loop.max_steps, desc=f"episode {i}", unit="step", leave=False) as bar:
                loop.on_step = partial(_live_report, bar, loop, before)
                report = loop.run_episode(cfg.seed + i)
            wall, seconds = time.perf_counter() - wall, loop.clock.now() - clock_t0
            late = np.asarray(stats.lateness[before[2]:] or [0.0]) * 1e3
            infer = np.asarray(loop.worker.latencies[before[5]:] or [0.0]) * 1e3
            console.print(
                f"episode {i}: seed {report.seed}, {report.steps} steps, success {report.success}"
                + (f", fault '{report.fault}'" if report.fault else "") + f", takeovers {report.takeovers} | "
                f"servo {(stats.ticks - before[0]) / max(seconds, 1e-9):.0f} Hz, overruns {stats.overruns - before[1]}, "
                f"lateness p50 {np.percentile(late, 50):.3f} ms p99 {np.percentile(late, 99):.3f} ms | inference "
                f"{infer.mean():.1f} ms | dropped {scheduler.dropped - before[3]}, over budget "
                f"{scheduler.over_budget - before[4]} | steps the safety filter shaped: "
                f"{_clipped(report.data['safety_flags'])} | "
                f"{seconds / max(wall, 1e-9):.1f}x real time")
            if recorder is not None:
                recorder.add(report.data, success=report.success, seed=report.seed, faulted=report.fault is not None,
                             takeovers=report.takeovers, safety_events=len(report.events),
                             intervened_steps=int(report.data["intervention"].sum()),
                             state_latency_s=state_latency(cfg.robot),
                             exec_latency_s=cfg.exec_latency_s, inference_latency_s=float(infer.mean() / 1e3))
            reports.append(report)
    finally:
        loop.servo.driver.stop()
        if loop.teleop is not None:
            loop.teleop.close()
    rate = np.mean([r.success for r in reports]) if reports else 0.0
    console.print(f"success {100 * rate:.1f}% over {len(reports)} episodes"
                  + (f"; recorded into {cfg.record}" if recorder is not None else ""))
    return reports
