"""PointReach: a 2-D point mass that must reach a random goal (numpy only).

It is small enough for tests and for the quick demo while exercising the whole pipeline: observation dicts,
bounded actions that get clipped and counted, success, truncation, and a scripted expert with a noise knob.
"""

from __future__ import annotations

import numpy as np

from robopol.envs import ArraySpec, EnvSpec, StepResult
from robopol.errors import ConfigError


class PointReachEnv:
    """``num_envs`` point masses in the unit square; the action is a velocity command in [-1, 1]^2."""

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        max_episode_steps: int = 50,
        goal_tolerance: float = 0.05,
        max_speed: float = 0.1,
        name: str = "point_reach",
    ) -> None:
        if num_envs < 1:
            raise ConfigError(f"num_envs must be at least 1, got {num_envs}")
        self.num_envs = num_envs
        self.goal_tolerance = goal_tolerance
        self.max_speed = max_speed
        self.spec = EnvSpec(
            task=name,
            observation={
                "pos": ArraySpec((2,), low=(0.0, 0.0), high=(1.0, 1.0), names=("x", "y")),
                "goal": ArraySpec((2,), low=(0.0, 0.0), high=(1.0, 1.0), names=("goal_x", "goal_y")),
            },
            action=ArraySpec((2,), low=(-1.0, -1.0), high=(1.0, 1.0), names=("vx", "vy")),
            max_episode_steps=max_episode_steps,
            goal_key="goal",
        )
        self.clipped_actions = 0
        self._rng = np.random.default_rng(seed)
        self._pos = np.zeros((num_envs, 2))
        self._goal = np.zeros((num_envs, 2))
        self._t = 0

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._pos = self._rng.uniform(0.1, 0.9, size=(self.num_envs, 2))
        self._goal = self._rng.uniform(0.1, 0.9, size=(self.num_envs, 2))
        self._t = 0
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"PointReach expects actions of shape ({self.num_envs}, 2), got {actions.shape}")
        clipped = np.clip(actions, -1.0, 1.0)
        self.clipped_actions += int(np.any(clipped != actions, axis=1).sum())
        self._pos = np.clip(self._pos + self.max_speed * clipped, 0.0, 1.0)
        self._t += 1
        dist = np.linalg.norm(self._goal - self._pos, axis=1)
        success = dist < self.goal_tolerance
        truncated = np.full(self.num_envs, self._t >= self.spec.max_episode_steps)
        return StepResult(
            obs=self._obs(), reward=-dist.astype(np.float32), terminated=success.copy(),
            truncated=truncated & ~success, success=success,
        )

    def close(self) -> None:
        pass

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self._pos.astype(np.float32), "goal": self._goal.astype(np.float32)}


class PointReachExpert:
    """Heads straight for the goal at full speed; ``noise`` adds Gaussian action noise (quality knob)."""

    def __init__(self, env: PointReachEnv, noise: float = 0.0, seed: int = 0) -> None:
        self.max_speed = env.max_speed
        self.noise = noise
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        action = np.clip((obs["goal"] - obs["pos"]) / self.max_speed, -1.0, 1.0)
        if self.noise > 0:
            action = action + self.noise * self._rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
