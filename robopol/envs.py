"""The batched environment protocol shared by simulators, evaluation and the runtime.

Simulators in ``robopol.sim`` implement ``BatchedEnv``; robopol's core only sees this protocol. Observations
are dicts of arrays with a leading env axis, actions are ``(num_envs, action_dim)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """Shape (per env and step), dtype and optional bounds and per-dimension names of one array."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EnvSpec:
    """What a task observes and accepts; checkpoints store it so evaluation can refuse a mismatched task."""

    task: str
    observation: dict[str, ArraySpec]
    action: ArraySpec
    max_episode_steps: int
    goal_key: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary used for compatibility checks between a checkpoint and a task."""
        return {
            "task": self.task,
            "observation": {k: list(v.shape) for k, v in self.observation.items()},
            "action": list(self.action.shape),
        }


@dataclass
class StepResult:
    """Everything one batched step returns; all arrays have a leading env axis."""

    obs: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


class BatchedEnv(Protocol):
    """N environments stepped together. Episodes end per env; ``reset`` starts all of them anew."""

    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


class Expert(Protocol):
    """A scripted policy that produces demonstrations for a task."""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...
