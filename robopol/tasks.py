"""Build a task's batched env and scripted expert from its config (the ``task=`` group).

Task options (``configs/task/<name>.yaml``), by schema:

- ``point_reach``: the numpy toy task; ``multigoal``: the numpy multimodal toy task (any of 6 goals);
- ``ogbench``: ``cube_single``, ``cube_double``, ``scene``, ``puzzle_3x3`` (goal-conditioned: each episode
  draws one of OGBench's five evaluation tasks, the goal is the ``goal`` observation) and
  ``<name>_task1`` ... ``<name>_task5`` (OGBench's single-task reward variants, no goal key);
- ``maze``: ``pointmaze_umaze``, ``pointmaze_medium``, ``antmaze_umaze``;
- ``fetch``: ``fetch_push``, ``fetch_pick_and_place``;
- ``locomotion``: ``halfcheetah``, ``hopper``, ``walker2d``, ``ant`` (no scripted expert);
- ``isaaclab``: ``isaaclab/ur5e_reach``, ``isaaclab/ur5e_push`` (robopol's own Isaac Lab 3 tasks, or any
  registered Isaac Lab task through ``gym_id``; Python 3.12 with the ``isaaclab`` extra, see docs/isaaclab.md).

robopol's core reaches the simulators only through the ``_target_`` and ``expert`` strings below.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from robopol.envs import BatchedEnv, Expert
from robopol.errors import ConfigError, RobopolError
from robopol.schemas import TaskConfig


@dataclass
class PointReachTaskConfig(TaskConfig):
    """The built-in 2-D point-mass reaching task (numpy only; for smoke tests and the quick demo)."""

    name: str = "point_reach"
    _target_: str = "robopol.sim.toy.PointReachEnv"
    expert: str = "robopol.sim.toy.PointReachExpert"
    max_episode_steps: int = 50
    goal_tolerance: float = 0.05
    """Distance to the goal that counts as success."""
    max_speed: float = 0.1
    """Distance moved per step at a full-scale action."""


@dataclass
class MultiGoalTaskConfig(PointReachTaskConfig):
    """A point mass at the centre of goals on a circle, any of which counts: the multimodal toy task (numpy only)."""

    name: str = "multigoal"
    _target_: str = "robopol.sim.toy.MultiGoalEnv"
    expert: str = "robopol.sim.toy.MultiGoalExpert"
    max_episode_steps: int = 30
    goal_tolerance: float = 0.1
    num_goals: int = 6
    """Goals, evenly spaced on the circle."""
    radius: float = 1.0
    """Radius of the goal circle."""


@dataclass
class SimTaskConfig(TaskConfig):
    """Fields shared by the MuJoCo task suites."""

    backend: str = "auto"
    """Batched-env back end: inprocess, workers (worker processes) or auto (workers when num_envs > 1)."""
    envs_per_worker: int = 0
    """Envs each worker process steps (workers back end; 0: spread them over the CPUs, one worker per CPU); more per worker amortises the ~0.3 ms message per step."""


@dataclass
class OGBenchTaskConfig(SimTaskConfig):
    """OGBench manipulation: a UR5e arm with a Robotiq gripper (cubes, buttons, drawer, window)."""

    name: str = "cube_single"
    _target_: str = "robopol.sim.ogbench_tasks.make_ogbench_env"
    expert: str = "robopol.sim.experts.ogbench.OGBenchExpert"
    max_episode_steps: int = 200
    env_id: str = "cube-single-v0"
    """OGBench env id: cube-single-v0, cube-double-v0, scene-v0 or puzzle-3x3-v0."""
    task_id: int = 0
    """0: goal-conditioned (episodes draw one of the 5 evaluation tasks); 1-5: that single-task variant."""


@dataclass
class MazeTaskConfig(SimTaskConfig):
    """gymnasium-robotics PointMaze / AntMaze, episodic: an episode ends when the agent reaches the goal."""

    name: str = "pointmaze_umaze"
    _target_: str = "robopol.sim.gym_tasks.make_gym_env"
    expert: str = "robopol.sim.experts.maze.MazeExpert"
    # A step costs less than the ~0.3 ms round trip to a worker process: batches are faster in-process.
    backend: str = "inprocess"
    max_episode_steps: int = 300
    env_id: str = "PointMaze_UMaze-v3"
    """gymnasium-robotics env id: PointMaze_UMaze-v3, PointMaze_Medium-v3 or AntMaze_UMaze-v5."""


@dataclass
class FetchTaskConfig(SimTaskConfig):
    """gymnasium-robotics Fetch: move the block to the goal with the 7-DoF Fetch arm."""

    name: str = "fetch_push"
    _target_: str = "robopol.sim.gym_tasks.make_gym_env"
    expert: str = "robopol.sim.experts.fetch.FetchExpert"
    # A step costs less than the ~0.3 ms round trip to a worker process: batches are faster in-process.
    backend: str = "inprocess"
    max_episode_steps: int = 50
    env_id: str = "FetchPush-v4"
    """gymnasium-robotics env id: FetchPush-v4 or FetchPickAndPlace-v4."""
    terminate_on_success: bool = True
    """End the episode when the block reaches the goal (false: run to the time limit, as in the benchmark)."""


@dataclass
class LocomotionTaskConfig(SimTaskConfig):
    """gymnasium MuJoCo locomotion: reward for running forward, episodes end when the robot falls."""

    name: str = "halfcheetah"
    _target_: str = "robopol.sim.gym_tasks.make_gym_env"
    expert: str = ""
    # A step costs less than the ~0.3 ms round trip to a worker process: batches are faster in-process.
    backend: str = "inprocess"
    max_episode_steps: int = 1000
    env_id: str = "HalfCheetah-v5"
    """gymnasium env id: HalfCheetah-v5, Hopper-v5, Walker2d-v5 or Ant-v5."""


@dataclass
class IsaacLabTaskConfig(TaskConfig):
    """An Isaac Lab 3 task (kit-less, Newton physics) behind robopol's batched-env interface."""

    name: str = "isaaclab_ur5e_reach"
    _target_: str = "robopol.sim.isaaclab.adapter.make_isaaclab_env"
    expert: str = "robopol.sim.experts.isaaclab_ur5e.UR5eExpert"
    max_episode_steps: int = 80
    gym_id: str = ""
    """Gymnasium id of a registered Isaac Lab task (else env_class + env_cfg)."""
    env_class: str = "robopol.sim.isaaclab.ur5e:UR5eReachEnv"
    """``module:Class`` of a DirectRLEnv / ManagerBasedRLEnv (used with env_cfg when gym_id is empty)."""
    env_cfg: str = "robopol.sim.isaaclab.ur5e:UR5eReachEnvCfg"
    """``module:Class`` of its config class."""
    device: str = "cpu"
    """Simulation device: cpu, or cuda / cuda:N for a GPU (the one switch a GPU run needs; untested without a GPU)."""
    observation: dict[str, str] = field(default_factory=lambda: {"state": "policy"})
    """robopol observation key -> Isaac Lab observation group."""
    action_low: list[float] = field(default_factory=lambda: [-1.0, -1.0, -1.0])
    """Lower action bounds (Isaac Lab reports an unbounded action space)."""
    action_high: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Upper action bounds."""
    success_term: str = "terminated"
    """What counts as success: 'terminated' (the task terminates only on success), a manager-based termination
    term's name, or '' (never)."""
    warp_cache: str = ""
    """Warp kernel cache directory (default: Warp's own, ~/.cache/warp); keep it between runs: a cold cache
    costs minutes of kernel compilation."""


# Schema of each task option (``configs/task/<name>.yaml`` extends ``/schemas/task/<schema>``).
TASK_SCHEMAS: dict[str, type[TaskConfig]] = {
    "point_reach": PointReachTaskConfig,
    "multigoal": MultiGoalTaskConfig,
    "ogbench": OGBenchTaskConfig,
    "maze": MazeTaskConfig,
    "fetch": FetchTaskConfig,
    "locomotion": LocomotionTaskConfig,
    "isaaclab": IsaacLabTaskConfig,
}

# Task-config fields that describe the task to robopol rather than being env constructor arguments.
_NOT_ENV_ARGS = ("expert",)


def make_env(task: DictConfig, num_envs: int, seed: int) -> BatchedEnv:
    """Instantiate ``task._target_`` with the task's fields plus ``num_envs`` and ``seed``."""
    fields: dict[str, Any] = OmegaConf.to_container(task, resolve=True)  # type: ignore[assignment]
    for key in _NOT_ENV_ARGS:
        fields.pop(key, None)
    try:
        return instantiate(fields, num_envs=num_envs, seed=seed)
    except RobopolError:
        raise
    except Exception as err:
        cause = err.__cause__
        if isinstance(cause, RobopolError):  # Hydra wraps what the factory raised; ours are already clear
            raise cause from None
        raise ConfigError(f"task '{task.name}': cannot build its env {task._target_} ({err})") from err


def make_expert(task: DictConfig, env: BatchedEnv, noise: float, seed: int, variant: str = "") -> Expert:
    """The task's scripted expert; ``variant`` picks one of its behaviours (empty: the default)."""
    if not task.get("expert"):
        raise ConfigError(f"task '{task.name}' has no scripted expert (task.expert is empty)")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    cls = get_class(task.expert)
    if not variant:
        return cls(env=env, noise=noise, seed=seed)
    if "variant" not in inspect.signature(cls).parameters:
        raise ConfigError(f"task '{task.name}': its expert {task.expert} has no variants, got "
                          f"expert={variant!r}")
    return cls(env=env, noise=noise, seed=seed, variant=variant)
