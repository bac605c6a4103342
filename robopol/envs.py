"""The batched environment protocol shared by simulators, evaluation and the runtime.

Simulators in ``robopol.sim`` implement ``BatchedEnv``; robopol's core only sees this protocol. Observations
are dicts of arrays with a leading env axis, actions are ``(num_envs, action_dim)``.

Contract of ``step`` (what evaluation and collection rely on):

- actions of the wrong shape or with NaN/inf raise ``ConfigError``; values outside the action bounds are
  clipped and counted (``clipped_actions``), never passed on silently;
- an episode ends per env at ``terminated`` (success or failure) or ``truncated`` (time limit, or a simulator
  error); without auto-reset a finished env is frozen: it repeats its last observation and flags with zero
  reward until ``reset``;
- ``StepResult.info`` may hold ``clipped`` (bool per env), ``errors`` (one dict per failed env with its index,
  seed and message) and, with auto-reset, ``final_obs`` (the last observation of the episodes that ended).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    dt: float = 0.0
    """Simulated seconds per step (0: unknown); sets video frame rates."""

    def describe(self) -> dict[str, Any]:
        """JSON-able summary used for compatibility checks between a checkpoint and a task."""
        return {
            "task": self.task,
            "observation": {k: list(v.shape) for k, v in self.observation.items()},
            "action": list(self.action.shape),
            "dt": self.dt,
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
    """N environments stepped together. Episodes end per env; ``reset`` starts all of them anew.

    ``reset(seed)`` makes the initial states a deterministic function of ``seed``; the simulator envs give
    env ``i`` the episode seed ``seed + i``, so consecutive batches should use seeds ``num_envs`` apart.
    """

    spec: EnvSpec
    num_envs: int
    clipped_actions: int

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


@runtime_checkable
class SimulatorEnv(BatchedEnv, Protocol):
    """Optional extras of simulator-backed envs: state for replay, frames for video, episode metadata."""

    def get_state(self, index: int) -> np.ndarray:
        """Flat float64 simulator state of env ``index`` (restoring it reproduces the physics)."""
        ...

    def set_state(self, index: int, state: np.ndarray) -> None: ...

    def render(self, index: int = 0, width: int = 256, height: int = 256) -> np.ndarray:
        """RGB frame ``(height, width, 3)`` uint8 of env ``index``."""
        ...

    def episode_info(self, index: int) -> dict[str, Any]:
        """``seed`` and ``task_id`` of env ``index``'s current episode."""
        ...


class Expert(Protocol):
    """A scripted policy that produces demonstrations for a task.

    Built as ``Expert(env=..., noise=..., seed=...)`` (plus ``variant=...`` where a task has several); call
    ``reset`` after ``env.reset``. ``noise`` is the std of Gaussian noise added to its actions.
    """

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...
