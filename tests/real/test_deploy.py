"""The whole loop on the MuJoCo stand-in: deploy episodes, injected faults with zero safety violations, a
crashing policy worker, human takeover, the e-stop, recording that trains ALOE, and the servo process."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from omegaconf import OmegaConf
from robopol.real.clock import VirtualClock
from robopol.real.deploy import build_loop, make_robot, make_servo
from robopol.real.teleop import ScriptedTeleop

from robopol.cli.app import compose
from robopol.data.store import EpisodeStore
from robopol.data.validate import validate_store
from robopol.errors import ConfigError

CUBE = OmegaConf.create({"name": "cube_single_task1", "env_id": "cube-single-v0", "task_id": 1,
                         "max_episode_steps": 200})
DT = 0.05


class ScriptedActor:
    """Chunk-policy test double: uniform random OGBench actions (hard on the limits; the gripper dim fixed at
    ``gripper`` if given), or a crash at plan number ``fail_at``."""

    def __init__(self, horizon: int = 8, action_steps: int = 4, seed: int = 0, fail_at: int | None = None,
                 scale: float = 1.0, gripper: float | None = None) -> None:
        self.horizon, self.action_steps = horizon, action_steps
        self.rng = np.random.default_rng(seed)
        self.fail_at, self.scale, self.gripper, self.plans = fail_at, scale, gripper, 0

    def reset(self) -> None:
        pass

    def observe(self, obs: dict) -> None:
        assert obs["observation"].shape[0] == 1

    def plan(self, shift: int | None) -> np.ndarray:
        self.plans += 1
        if self.fail_at is not None and self.plans >= self.fail_at:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        chunk = (self.scale * self.rng.uniform(-1, 1, size=(1, self.horizon, 5))).astype(np.float32)  # as a policy
        if self.gripper is not None:
            chunk[..., 4] = self.gripper
        return chunk


class CommandLog:
    """Wraps the stand-in's ``command`` to log every sent command with the state the servo measured."""

    def __init__(self, robot, servo) -> None:
        self.entries: list[tuple[float, np.ndarray, np.ndarray]] = []
        inner = robot.command

        def command(target):
            self.entries.append((servo.clock.now(), np.array(target), servo.state.position.copy()))
            inner(target)

        robot.command = command

    def violations(self, limits, dt: float) -> list[str]:
        found, prev = [], None
        for t, sent, measured in self.entries:
            if not np.all(np.isfinite(sent)):
                found.append(f"{t:.3f}: non-finite command")
            elif np.any(sent < limits.safe_lower - 1e-9) or np.any(sent > limits.safe_upper + 1e-9):
                found.append(f"{t:.3f}: outside the joint limits")
            if prev is not None:
                if np.any(np.abs(sent - prev) > limits.max_velocity * dt + 1e-9):
                    found.append(f"{t:.3f}: faster than max_velocity")
                allowed = np.maximum(limits.max_relative, np.abs(prev - measured) - limits.max_velocity * dt)
                if np.any(np.abs(sent - measured) > allowed + 1e-9):
                    found.append(f"{t:.3f}: too far from the measured state")
            prev = sent
        return found


def make(*overrides: str, actor=None, teleop=None, max_steps: int = 40, task=CUBE):
    cfg = compose("deploy", ["ckpt=unused", *overrides])
    clock = VirtualClock()
    robot = make_robot(cfg.robot, clock, task)
    servo = make_servo(cfg.robot, robot, clock)
    log = CommandLog(robot, servo)
    loop = build_loop(cfg, robot, servo, actor or ScriptedActor(), 5, DT, max_steps)
    loop.teleop = teleop
    return loop, log


@pytest.mark.parametrize("strategy", ["replace", "queue_merge", "temporal_ensemble", "rti"])
@pytest.mark.parametrize("latency", [0.0, 0.12, 0.3])
def test_random_chunks_under_injected_faults_never_violate_a_limit(strategy, latency):
    faults = ["robot.faults.state_latency_s=0.02", "robot.faults.jitter_s=0.01", "robot.faults.drop_rate=0.2"]
    steps = max(4, round(latency / DT))  # the hand-off bound d <= s <= H - d, with H = 16
    loop, log = make(f"strategy={strategy}", f"inference_latency_s={latency}", f"steps_per_inference={steps}",
                     *faults, actor=ScriptedActor(horizon=16, action_steps=steps))
    report = loop.run_episode(seed=3)
    assert report.steps == 40 and report.fault is None, report.events
    assert len(log.entries) == 40 * 25  # 500 Hz for 2 s
    assert log.violations(loop.servo.safety.limits, loop.servo.period) == []
    flags = report.data["safety_flags"]
    assert np.any(flags != 0), "random chunks should have been clipped somewhere"
    if latency > 0:
        assert loop.scheduler.dropped > 0  # stamped from the observation time: the stale head is dropped


def test_a_policy_emitting_nan_latches_the_filter_and_holds():
    class NaNActor(ScriptedActor):
        def plan(self, shift):
            chunk = super().plan(shift)
            if self.plans >= 3:
                chunk[:] = np.nan
            return chunk

    loop, log = make("inference_latency_s=0.0", actor=NaNActor(scale=0.3))
    report = loop.run_episode(seed=0)
    assert report.fault == "safety: nan" and loop.servo.held
    assert log.violations(loop.servo.safety.limits, loop.servo.period) == []


def test_lockstep_with_zero_latency_and_open_limits_reproduces_the_simulator_exactly():
    from robopol.sim.ogbench_tasks import OGBenchSim

    wide = ["robot.max_joint_velocity=[1e4,1e4,1e4,1e4,1e4,1e4]", "robot.gripper_max_velocity=1e4",
            "robot.max_joint_acceleration=[1e6,1e6,1e6,1e6,1e6,1e6]", "robot.max_relative=10", "robot.jump_fault=10"]
    # the gripper dim saturated, as OGBench's experts and policies drive it: an intermediate gripper target goes
    # through the driver's opening <-> actuator conversion, whose 1e-14 round-off contact dynamics amplify
    actor = ScriptedActor(scale=0.5, gripper=1.0)
    loop, _ = make("inference_latency_s=0.0", "exec_latency_s=0.0", *wide, actor=actor, max_steps=60)
    report = loop.run_episode(seed=5)
    data = report.data
    assert (data["source"] == 0).all() and report.steps == 60
    sim = OGBenchSim(CUBE.env_id, CUBE.task_id)
    np.testing.assert_array_equal(sim.reset(5)["observation"], data["observation"][0])
    for k in range(report.steps - 1):
        obs = sim.step(data["action"][k]).obs["observation"]
        np.testing.assert_allclose(obs, data["observation"][k + 1], atol=1e-6, err_msg=f"step {k}")


@pytest.mark.parametrize(("fault", "reason"), [("robot.faults.freeze_at_s=0.5", "stale_state"),
                                               ("robot.faults.heartbeat_dead_at_s=0.5", "driver_heartbeat"),
                                               ("robot.faults.protective_stop_at_s=0.5", "driver_error")])
def test_robot_faults_end_in_a_hold_within_the_bound(fault, reason):
    loop, log = make(fault, "inference_latency_s=0.0", actor=ScriptedActor(scale=0.3))
    report = loop.run_episode(seed=1)
    assert report.fault is not None and report.fault.startswith(reason), report.events
    trip_t = report.events[0][0]
    bound = {"stale_state": 0.05, "driver_heartbeat": 0.02, "driver_error": 0.0}[reason]
    assert 0.5 <= trip_t <= 0.5 + bound + 2 * loop.servo.period + 1e-9
    assert loop.servo.held and report.steps < 40
    after = [sent for t, sent, _ in log.entries if t >= trip_t]
    steps = np.abs(np.diff(np.stack(after), axis=0)).max(axis=1) if len(after) > 1 else np.zeros(1)
    assert np.all(np.diff(steps) <= 1e-9), "the hold must decelerate, never speed up"
    assert log.violations(loop.servo.safety.limits, loop.servo.period) == []


def test_a_crashing_policy_worker_leaves_the_robot_holding_still():
    loop, log = make("inference_latency_s=0.0", actor=ScriptedActor(fail_at=3, scale=0.5), max_steps=60)
    report = loop.run_episode(seed=2)
    assert report.fault.startswith("command_timeout"), report.events
    assert any(reason.startswith("policy_worker_error: CUDA error") for _, reason in report.events)
    crash_t = next(t for t, reason in report.events if reason.startswith("policy_worker_error"))
    last_waypoint = crash_t - DT * 4 + DT * 7  # the last chunk planned 4 steps earlier ran out 7 steps after
    assert report.events[-1][0] <= last_waypoint + loop.servo.config.command_timeout_s + 2 * loop.servo.period
    assert loop.servo.held and log.violations(loop.servo.safety.limits, loop.servo.period) == []
    # once held, the arm settles onto the hold (a few mrad of PD sag) and then stays
    robot, commands = loop.robot, len(log.entries)
    loop.servo.run(0.5)
    settled = robot.read_state().position.copy()
    loop.servo.run(0.5)
    assert np.abs(robot.read_state().position[:6] - settled[:6]).max() < 2e-4
    assert len(log.entries) == commands  # no command after the hold


def test_takeover_hands_over_and_back_without_a_jump_and_is_recorded():
    def human(t: float):
        return np.array([0.6, 0.0, 0.3, 0.0, 0.0]) if 0.5 <= t < 1.0 else None

    loop, log = make("inference_latency_s=0.02", actor=ScriptedActor(scale=0.5), teleop=ScriptedTeleop(5, human),
                     max_steps=40)
    report = loop.run_episode(seed=4)
    assert report.fault is None and report.takeovers == 1
    data = report.data
    grid = np.arange(40) * DT
    engaged = (grid >= 0.5) & (grid < 1.0)
    # the first engaged step pauses (the robot holds), then the human drives it
    assert not data["intervention"][engaged][0] and data["intervention"][engaged][1:].all()
    assert not data["intervention"][~engaged].any()
    assert (data["source"][data["intervention"]] == 1).all()
    np.testing.assert_allclose(data["action"][data["intervention"]], [[0.6, 0.0, 0.3, 0.0, 0.0]] * 9)
    assert (data["source"][grid >= 1.3] == 0).all()  # the policy is back after release_steps
    assert log.violations(loop.servo.safety.limits, loop.servo.period) == []
    assert loop.servo.safety.fault is None  # no jump fault at either hand-over


def test_taking_over_a_closed_hand_keeps_it_closed():
    class ClosingActor(ScriptedActor):
        def plan(self, shift):
            chunk = np.zeros((1, self.horizon, 5), dtype=np.float32)
            chunk[..., 4] = 1.0  # OGBench: +1 closes the hand
            return chunk

    class DeviceTeleop(ScriptedTeleop):
        gripper = -1.0  # a device's toggle, left "open" by the last operator

        def poll(self, t):
            cmd = super().poll(t)
            cmd.action[4] = self.gripper if cmd.engaged else 0.0
            return cmd

    teleop = DeviceTeleop(5, lambda t: np.array([0.2, 0.0, 0.0, 0.0, 0.0]) if t >= 0.6 else None)
    loop, _ = make("inference_latency_s=0.0", actor=ClosingActor(), teleop=teleop, max_steps=30)
    report = loop.run_episode(seed=0)
    human = report.data["intervention"]
    assert human.any() and teleop.gripper == 1.0  # synced to "closed" when the takeover began
    assert (report.data["action"][human, 4] == 1.0).all()
    assert loop.robot.read_state().position[6] < 0.5  # still closed at the end


def test_the_operator_ends_an_episode_from_the_teleop():
    loop, _ = make("inference_latency_s=0.0", actor=ScriptedActor(scale=0.3), teleop=ScriptedTeleop(5, done_at=0.5))
    report = loop.run_episode(seed=0)
    assert report.steps == 11 and report.fault is None and not report.success


def test_estop_from_the_teleop_latches_until_released_and_rearmed():
    loop, _ = make("inference_latency_s=0.0", actor=ScriptedActor(scale=0.3), teleop=ScriptedTeleop(5, estop_at=0.3))
    report = loop.run_episode(seed=0)
    assert report.fault == "estop: teleop key" and loop.servo.held
    with pytest.raises(RuntimeError, match="e-stop .* is still triggered"):
        loop.servo.rearm()
    loop.servo.estop.rearm()
    loop.servo.rearm()
    assert loop.servo.fault is None and not loop.servo.held


def test_rti_hand_off_bound_is_checked_at_start():
    with pytest.raises(ConfigError, match="delay <= execute <= horizon - delay"):
        make("strategy=rti", "inference_latency_s=0.3", "steps_per_inference=4")


@pytest.fixture(scope="module")
def cube_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cube")
    run_cli("collect", "task=cube_single_task1", "episodes=3", f"out={root / 'demos.zarr'}", "num_workers=1",
            cwd=root, check=True)
    run_cli("train", "task=cube_single_task1", f"data={root / 'demos.zarr'}", "policy=flow_mlp",
            "policy.hidden_dims=[32,32]", "policy.horizon=4", "policy.action_steps=2", "trainer.steps=20",
            "trainer.batch_size=16", "trainer.eval_every=20", "trainer.eval_episodes=1", "trainer.progress=false",
            "trainer.videos=false", f"hydra.run.dir={root / 'run'}", cwd=root, check=True)
    return root


def test_deploy_cli_completes_episodes_and_its_recording_trains_aloe(cube_checkpoint):
    root = cube_checkpoint
    store = root / "deployed.zarr"
    proc = run_cli("deploy", f"ckpt={root / 'run'}", "episodes=2", "max_steps=15", f"record={store}", cwd=root,
                   check=True)
    assert "episode 1: seed 1, 15 steps" in proc.stdout and f"recorded into {store}" in proc.stdout
    assert "servo 500 Hz" in proc.stdout
    proc = run_cli("deploy", f"ckpt={root / 'run'}", "teleop=keyboard", cwd=root)
    assert proc.returncode == 2 and "teleop=keyboard puts a human in the loop: pass realtime=true" in proc.stderr
    proc = run_cli("deploy", f"ckpt={root / 'run'}", "max_steps=-1", cwd=root)
    assert proc.returncode == 2 and "max_steps must be at least 0, got -1" in proc.stderr
    proc = run_cli("deploy", f"ckpt={root / 'run'}", "robot.workspace_high=[0.5,0.5]", cwd=root)
    assert proc.returncode == 2 and "workspace_low and workspace_high must be two lists of the same length" in (
        proc.stderr)
    assert validate_store(str(store)) == []
    with EpisodeStore.open(str(store)) as episodes:
        assert len(episodes) == 2 and episodes.n_steps == 30
        assert {"observation", "action", "policy_action", "command", "intervention", "reward", "terminal",
                "source", "chunk_id", "chunk_index", "latency", "safety_flags"} <= set(episodes.keys())
        assert episodes.episode_meta(0)["source"] == "policy"
        data = episodes.get_episode(0)
        assert (data["chunk_id"][data["source"] == 0] > 0).all()
    run_cli("train", "algo=aloe", "task=cube_single_task1", f"data={store}", "policy=flow_mlp",
            "policy.hidden_dims=[32,32]", "policy.horizon=4", "policy.action_steps=4", "algo.interventions=true",
            "trainer.steps=4", "trainer.batch_size=8", "trainer.eval_every=0", "trainer.progress=false",
            "trainer.videos=false", f"hydra.run.dir={root / 'aloe'}", cwd=root, check=True)
    assert (root / "aloe" / "checkpoints" / "latest").is_file()


def test_realtime_deploy_runs_the_servo_in_its_own_process(cube_checkpoint):
    root = cube_checkpoint
    before = set(glob.glob("/dev/shm/rp_*"))
    proc = run_cli("deploy", f"ckpt={root / 'run'}", "episodes=2", "max_steps=10", "realtime=true", cwd=root,
                   check=True)
    assert "episode 0: seed 0, 10 steps" in proc.stdout and "episode 1: seed 1, 10 steps" in proc.stdout
    assert "fault" not in proc.stdout  # nothing of episode 0 leaks into episode 1
    # both shared-memory segments were unlinked (other processes' segments may come and go meanwhile)
    assert not set(glob.glob("/dev/shm/rp_*")) - before
    # a driver that cannot start in the servo process is one line naming the cause, and nothing leaks
    proc = run_cli("deploy", f"ckpt={root / 'run'}", "realtime=true", "robot.faults.drop_rate=2", cwd=root)
    assert proc.returncode == 2 and "servo process: ready failed" in proc.stderr
    assert not set(glob.glob("/dev/shm/rp_*")) - before


def test_realtime_takeover_longer_than_the_policy_timeout_and_a_second_episode():
    from robopol.real.process import RemoteRobot, RemoteServo

    cfg = compose("deploy", ["ckpt=unused", "realtime=true", "inference_latency_s=0.0"])
    servo = RemoteServo(OmegaConf.to_container(cfg.robot, resolve=True), OmegaConf.to_container(CUBE), DT, 7, 5,
                        {"observation": (28,)})
    try:
        teleop = ScriptedTeleop(5, lambda t: np.array([0.3, 0, 0, 0, 0]) if 0.2 <= t - start < 1.6 else None)
        loop = build_loop(cfg, RemoteRobot(servo, ["observation"]), servo, ScriptedActor(scale=0.3), 5, DT, 40)
        loop.teleop = teleop
        start = servo.clock.now()
        first = loop.run_episode(seed=0)
        start = servo.clock.now() + 10.0  # no takeover in the second episode
        second = loop.run_episode(seed=1)
    finally:
        servo.stop()
    assert first.fault is None and first.takeovers == 1 and first.data["intervention"].sum() >= 20, first.events
    assert second.fault is None and second.steps == 40 and not second.data["intervention"].any(), second.events
