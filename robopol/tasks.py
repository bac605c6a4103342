"""Build a task's batched env and scripted expert from its config (the ``task=`` group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from robopol.envs import BatchedEnv, Expert
from robopol.errors import ConfigError
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


# Schema of each task option (``configs/task/<name>.yaml`` extends ``/schemas/task/<schema>``).
TASK_SCHEMAS: dict[str, type[TaskConfig]] = {"point_reach": PointReachTaskConfig}

# Task-config fields that describe the task to robopol rather than being env constructor arguments.
_NOT_ENV_ARGS = ("expert",)


def make_env(task: DictConfig, num_envs: int, seed: int) -> BatchedEnv:
    """Instantiate ``task._target_`` with the task's fields plus ``num_envs`` and ``seed``."""
    fields: dict[str, Any] = OmegaConf.to_container(task, resolve=True)  # type: ignore[assignment]
    for key in _NOT_ENV_ARGS:
        fields.pop(key, None)
    try:
        return instantiate(fields, num_envs=num_envs, seed=seed)
    except Exception as err:
        raise ConfigError(f"task '{task.name}': cannot build its env {task._target_} ({err})") from err


def make_expert(task: DictConfig, env: BatchedEnv, noise: float, seed: int) -> Expert:
    if not task.get("expert"):
        raise ConfigError(f"task '{task.name}' has no scripted expert (task.expert is empty)")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    return get_class(task.expert)(env=env, noise=noise, seed=seed)
