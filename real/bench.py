"""``robopol bench control``: timing of the real-robot loop on the MuJoCo stand-in, no hardware needed.

1. **Servo soak**: the servo process holds the stand-in arm for ``seconds`` at 500 Hz against the wall clock;
   lateness of every tick against its absolute deadline (p50 / p99 / max) and overruns. On an idle machine
   the target is p99 below 0.5 ms; CI-style claims use the median and p99 only, never the maximum.
2. **End to end**: the whole realtime loop (policy process + servo process) with a scripted policy; the time
   from an observation to the first servo command computed from it, per chunk.
3. **Merge strategies under latency**: lockstep episodes with a smooth scripted policy that switches mode
   (its target path flips phase) with probability ``switch`` per chunk, each strategy under each injected
   inference latency; per run the largest change between consecutive actions in force and between requested
   joint targets, how often the safety filter's velocity limit had to act, RMS jerk of the sent command, the
   mean staleness of the action in force (its time minus its chunk's observation time), dropped actions and
   over-budget chunks.

Prints a table per part and writes ``control_servo.json``, ``control_end_to_end.json``,
``control_merge.json`` and ``control_merge.png`` to ``out_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from robopol.bench.report import write_report
from robopol.errors import ConfigError

from .scheduler import STRATEGIES

STANDIN_SCENE = {"name": "cube_single_task1", "env_id": "cube-single-v0", "task_id": 1, "max_episode_steps": 200}
DT = 0.05  # the stand-in scene's control period


class SmoothActor:
    """Scripted chunk policy: a smooth end-effector path in absolute time; a mode switch flips its phase."""

    def __init__(self, horizon: int = 16, action_steps: int = 4, switch: float = 0.2, seed: int = 0) -> None:
        self.horizon, self.action_steps, self.switch = horizon, action_steps, switch
        self.rng = np.random.default_rng(seed)
        self.step, self.phase = 0, 0.0

    def reset(self) -> None:
        self.step, self.phase = 0, 0.0

    def observe(self, obs: dict) -> None:
        pass

    def plan(self, shift: int | None) -> np.ndarray:
        self.step += shift or 0
        if self.rng.random() < self.switch:
            self.phase += np.pi
        t = (self.step + np.arange(self.horizon)) * DT
        chunk = np.zeros((1, self.horizon, 5))
        chunk[0, :, 0] = 0.4 * np.sin(2 * np.pi * 0.5 * t + self.phase)
        chunk[0, :, 1] = 0.4 * np.cos(2 * np.pi * 0.5 * t + self.phase)
        chunk[0, :, 2] = 0.2 * np.sin(2 * np.pi * 0.25 * t)
        return chunk


def _deploy_cfg(*overrides: str):
    from robopol.cli.app import compose

    return compose("deploy", ["ckpt=scripted", *overrides])


def servo_soak(seconds: float) -> dict[str, Any]:
    """Hold the stand-in in the servo process for ``seconds``; lateness of every tick."""
    from .process import RemoteServo

    cfg = _deploy_cfg()
    servo = RemoteServo(OmegaConf.to_container(cfg.robot, resolve=True), STANDIN_SCENE, DT, 7, 5, {})
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            servo.clock.sleep_until(time.monotonic() + 0.05)
            servo._drain()
        servo._drain()
    finally:
        servo.stop()
    late = np.asarray(servo.stats.lateness) * 1e3
    return {"part": "servo soak", "seconds": seconds, "ticks": servo.stats.ticks,
            "rate_hz": servo.stats.ticks / seconds, "overruns": servo.stats.overruns,
            "lateness_p50_ms": float(np.percentile(late, 50)), "lateness_p99_ms": float(np.percentile(late, 99)),
            "lateness_max_ms": float(late.max())}


def end_to_end(seconds: float) -> dict[str, Any]:
    """Realtime loop with a scripted policy: observation -> first command of its chunk, per chunk."""
    from .deploy import build_loop
    from .process import RemoteRobot, RemoteServo

    cfg = _deploy_cfg("realtime=true")
    servo = RemoteServo(OmegaConf.to_container(cfg.robot, resolve=True), STANDIN_SCENE, DT, 7, 5,
                        {"observation": (28,)})
    first_command: dict[int, float] = {}
    step = servo.step

    def watching_step():
        infos = step()
        for info in infos:
            if info.chunk_id > 0 and info.sent is not None:
                first_command.setdefault(info.chunk_id, info.t)
        return infos

    servo.step = watching_step
    try:
        loop = build_loop(cfg, RemoteRobot(servo, ["observation"]), servo, SmoothActor(), 5, DT,
                          max(int(seconds / DT), 2))
        loop.run_episode(seed=0)
    finally:
        servo.stop()
    delays = np.asarray([first_command[c] - obs_t for c, (obs_t, _) in loop.chunks.items() if c in first_command])
    delays = delays * 1e3 if len(delays) else np.zeros(1)
    infer = np.asarray(loop.worker.latencies) * 1e3
    return {"part": "end to end", "seconds": seconds, "chunks": len(loop.chunks),
            "obs_to_command_p50_ms": float(np.percentile(delays, 50)),
            "obs_to_command_p99_ms": float(np.percentile(delays, 99)),
            "inference_p50_ms": float(np.percentile(infer, 50)) if len(infer) else 0.0,
            "servo_overruns": servo.stats.overruns}


def merge_under_latency(strategy: str, latency: float, steps: int, switch: float, seed: int = 0) -> dict[str, Any]:
    """One lockstep stand-in episode; continuity and staleness of what the servo commanded."""
    from .clock import VirtualClock
    from .deploy import build_loop, make_robot, make_servo

    delay = int(np.ceil(latency / DT - 1e-9))
    per_inference = max(4, delay)
    cfg = _deploy_cfg(f"strategy={strategy}", f"inference_latency_s={latency}",
                      f"steps_per_inference={per_inference}")
    clock = VirtualClock()
    robot = make_robot(cfg.robot, clock, OmegaConf.create(STANDIN_SCENE))
    servo = make_servo(cfg.robot, robot, clock)
    requested: list[np.ndarray] = []
    sent: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    stale: list[float] = []
    velocity_clipped = 0
    step = servo.step

    def recording_step():
        nonlocal velocity_clipped
        infos = step()
        for info in infos:
            if info.sent is None:
                continue
            requested.append(info.requested[:6].copy())
            sent.append(info.sent[:6].copy())
            velocity_clipped += "velocity" in info.flags
            if info.activated and info.action is not None:
                actions.append(info.action.copy())
            if info.chunk_id in loop.chunks:
                stale.append(info.t - loop.chunks[info.chunk_id][0])
        return infos

    servo.step = recording_step
    actor = SmoothActor(horizon=16, action_steps=per_inference, switch=switch, seed=seed)
    loop = build_loop(cfg, robot, servo, actor, 5, DT, steps)
    report = loop.run_episode(seed)
    robot.close()
    jerk = np.diff(np.stack(sent), n=3, axis=0) / servo.period ** 3
    return {"part": "merge", "strategy": strategy, "latency_ms": 1e3 * latency, "steps": report.steps,
            "fault": report.fault or "",
            "max_action_jump": float(np.abs(np.diff(np.stack(actions), axis=0)).max()),
            "max_target_jump_mrad": 1e3 * float(np.abs(np.diff(np.stack(requested), axis=0)).max()),
            "velocity_clipped_pct": 100.0 * velocity_clipped / len(sent),
            "rms_jerk_rad_s3": float(np.sqrt(np.mean(jerk ** 2))),
            "staleness_ms": 1e3 * float(np.mean(stale)) if stale else 0.0,
            "dropped": loop.scheduler.dropped, "over_budget": loop.scheduler.over_budget}


def bench_control(out_dir: str, quick: bool = False, seconds: float = 60.0,
                  latencies: list[float] | None = None, strategies: list[str] | None = None,
                  switch: float = 0.2) -> list[dict[str, Any]]:
    """Run the three parts; one table and JSON file each (``control_servo``, ``control_end_to_end``,
    ``control_merge`` with its plot)."""
    latencies = latencies or ([0.0, 0.1] if quick else [0.0, 0.05, 0.1, 0.2, 0.3])
    strategies = strategies or list(STRATEGIES)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or min(latencies) < 0 or seconds <= 0:
        raise ConfigError(f"bench control: strategies must be among {list(STRATEGIES)}, latencies >= 0 and "
                          f"seconds > 0, got strategies {strategies}, latencies {latencies}, seconds {seconds}")
    soak = min(seconds, 2.0) if quick else seconds
    servo = servo_soak(soak)
    write_report("control_servo", [servo], out_dir, notes="the stand-in held at 500 Hz in its own process; "
                 "lateness of each tick against its absolute deadline (target p99 < 0.5 ms on an idle machine)")
    e2e = end_to_end(min(soak, 5.0))
    write_report("control_end_to_end", [e2e], out_dir, notes="realtime loop, scripted policy: observation to the "
                 "first servo command computed from it (actions due within exec_latency are dropped)")
    steps = 40 if quick else 200
    merges = [merge_under_latency(s, lat, steps, switch) for s in strategies for lat in latencies]
    path = write_report("control_merge", merges, out_dir, notes="lockstep stand-in episodes, scripted policy "
                        f"switching mode with probability {switch} per chunk; jumps between consecutive actions in "
                        "force (policy space) and requested joint targets; velocity_clipped_pct: ticks the safety "
                        "filter's velocity limit acted; staleness: action time - its observation time")
    _plot(merges, path.with_suffix(".png"))
    return [servo, e2e, *merges]


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        x = [r["latency_ms"] for r in mine]
        for ax, key in zip(axes, ("max_action_jump", "velocity_clipped_pct", "staleness_ms"), strict=True):
            ax.plot(x, [r[key] for r in mine], marker="o", label=strategy)
            ax.set_xlabel("injected inference latency (ms)")
            ax.set_ylabel(key)
    axes[0].legend()
    fig.suptitle("robopol bench control: chunk merging on the stand-in")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
