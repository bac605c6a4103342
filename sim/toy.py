"""PointReach: a 2-D point mass that must reach a random goal (numpy only).

It is small enough for tests and for the quick demo while exercising the whole pipeline: observation dicts,
bounded actions that get clipped and counted, success, truncation, and a scripted expert with a noise knob.

``PointMassSim`` is the same task as a single ``SimEnv`` for the vector back ends of ``robopol.sim.vector``,
with fault injection (raise, NaN, or kill the process at a chosen step of chosen seeds) so that the worker
pool's failure handling can be exercised without a physics engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from robopol.envs import ArraySpec, EnvSpec, StepResult
from robopol.errors import ConfigError

from .base import SimEnv, Transition


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
        self.autoreset = False
        """Start a new episode (drawn from the same generator) in every env whose episode ended, reporting the
        ended episodes' last observations as ``info['final_obs']``."""
        self._rng = np.random.default_rng(seed)
        self._pos = np.zeros((num_envs, 2))
        self._goal = np.zeros((num_envs, 2))
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._done = np.zeros(num_envs, dtype=bool)  # ended without auto-reset: frozen until reset

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._pos, self._goal = self._draw_episodes(self.num_envs)
        self._t[:] = 0
        self._done[:] = False
        return self._obs()

    def reset_done(self) -> dict[str, np.ndarray]:
        """New episodes in the envs whose episode ended (without auto-reset); every env's observation."""
        if self._done.any():
            self._pos[self._done], self._goal[self._done] = self._draw_episodes(int(self._done.sum()))
            self._t[self._done] = 0
            self._done[:] = False
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, 2):
            raise ConfigError(f"task '{self.spec.task}': actions must have shape ({self.num_envs}, 2), got "
                              f"{actions.shape}")
        if not np.isfinite(actions).all():
            bad = np.flatnonzero(~np.isfinite(actions).all(axis=1)).tolist()
            raise ConfigError(f"task '{self.spec.task}': actions contain NaN or inf for envs {bad}")
        clipped = np.clip(actions, -1.0, 1.0)
        self.clipped_actions += int(np.any(clipped != actions, axis=1).sum())
        moving = ~self._done[:, None]
        self._pos = np.where(moving, np.clip(self._pos + self.max_speed * clipped, *self.ARENA), self._pos)
        self._t += ~self._done
        dist = self._goal_distance()
        success = dist < self.goal_tolerance
        truncated = (self._t >= self.spec.max_episode_steps) & ~success
        obs, info = self._obs(), {}
        ended = success | truncated
        if not self.autoreset:
            self._done |= ended
        elif ended.any():
            info["final_obs"] = {k: v.copy() for k, v in obs.items()}
            self._pos[ended], self._goal[ended] = self._draw_episodes(int(ended.sum()))
            self._t[ended] = 0
            obs = self._obs()
        return StepResult(obs=obs, reward=-dist.astype(np.float32), terminated=success.copy(), truncated=truncated,
                          success=success, info=info)

    def close(self) -> None:
        pass

    ARENA = (0.0, 1.0)
    """Bounds of the square the point moves in."""

    def _draw_episodes(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Start positions and goals of ``n`` new episodes."""
        return self._rng.uniform(0.1, 0.9, size=(n, 2)), self._rng.uniform(0.1, 0.9, size=(n, 2))

    def _goal_distance(self) -> np.ndarray:
        return np.linalg.norm(self._goal - self._pos, axis=1)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self._pos.astype(np.float32), "goal": self._goal.astype(np.float32)}


class MultiGoalEnv(PointReachEnv):
    """The point starts at the centre of ``num_goals`` goals on a circle and succeeds at any of them.

    Every goal is equally good (the reward is minus the distance to the nearest goal), so an optimal policy
    may go to any of them: the multi-goal task on which PolicyFlow's Brownian regulariser keeps every mode
    where Gaussian PPO settles on one (algorithms.md §8c). The observation is the position only.
    """

    ARENA = (-1.5, 1.5)

    def __init__(self, num_envs: int = 1, seed: int = 0, max_episode_steps: int = 30, goal_tolerance: float = 0.1,
                 max_speed: float = 0.1, num_goals: int = 6, radius: float = 1.0, name: str = "multigoal") -> None:
        if num_goals < 1 or radius <= 0:
            raise ConfigError(f"task '{name}': num_goals must be at least 1 and radius positive, got {num_goals} "
                              f"and {radius}")
        super().__init__(num_envs, seed, max_episode_steps, goal_tolerance, max_speed, name)
        angles = 2 * np.pi * np.arange(num_goals) / num_goals
        self.goals = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        low, high = self.ARENA
        self.spec = replace(self.spec, observation={
            "pos": ArraySpec((2,), low=(low, low), high=(high, high), names=("x", "y"))}, goal_key=None)

    def nearest_goal(self, pos: np.ndarray) -> np.ndarray:
        """Index of the goal nearest to each position (N, 2)."""
        return np.linalg.norm(pos[:, None] - self.goals[None], axis=-1).argmin(axis=1)

    def _draw_episodes(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._rng.normal(0.0, 0.01, size=(n, 2)), np.zeros((n, 2))  # goals are fixed

    def _goal_distance(self) -> np.ndarray:
        return np.linalg.norm(self._pos[:, None] - self.goals[None], axis=-1).min(axis=1)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self._pos.astype(np.float32)}


class MultiGoalExpert:
    """Heads for one goal per episode, drawn uniformly: demonstrations with ``num_goals`` modes."""

    def __init__(self, env: MultiGoalEnv, noise: float = 0.0, seed: int = 0) -> None:
        self.goals, self.max_speed, self.noise = env.goals, env.max_speed, noise
        self._rng = np.random.default_rng(seed)
        self._target: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._target = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        pos = obs["pos"]
        near_start = np.linalg.norm(pos, axis=1) < 0.05  # a new episode: pick its goal
        if self._target is None or len(self._target) != len(pos):
            self._target = self.goals[self._rng.integers(len(self.goals), size=len(pos))]
        elif near_start.any():
            self._target[near_start] = self.goals[self._rng.integers(len(self.goals), size=int(near_start.sum()))]
        action = np.clip((self._target - pos) / self.max_speed, -1.0, 1.0)
        if self.noise > 0:
            action = action + self.noise * self._rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


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


class PointMassSim(SimEnv):
    """One point mass of PointReach as a ``SimEnv``; ``fault`` makes chosen episodes fail at ``fault_step``.

    ``fault``: ``""`` (none), ``"raise"``, ``"nan"`` (NaN observation) or ``"exit"`` (the process dies, as a
    segfaulting simulator would); it applies to episodes whose seed is in ``fault_seeds`` (all if empty).
    """

    def __init__(self, max_speed: float = 0.1, goal_tolerance: float = 0.05, fault: str = "",
                 fault_step: int = 3, fault_seeds: Sequence[int] = ()) -> None:
        if fault not in ("", "raise", "nan", "exit"):
            raise ConfigError(f"fault must be '', 'raise', 'nan' or 'exit', got {fault!r}")
        self.max_speed, self.goal_tolerance = max_speed, goal_tolerance
        self.fault, self.fault_step, self.fault_seeds = fault, fault_step, set(fault_seeds)
        box = dict(low=(0.0, 0.0), high=(1.0, 1.0))
        self.spec = EnvSpec(
            task="point_mass",
            observation={"pos": ArraySpec((2,), names=("x", "y"), **box),
                         "goal": ArraySpec((2,), names=("goal_x", "goal_y"), **box)},
            action=ArraySpec((2,), low=(-1.0, -1.0), high=(1.0, 1.0), names=("vx", "vy")),
            max_episode_steps=50, goal_key="goal",
        )
        self._pos = np.zeros(2)
        self._goal = np.zeros(2)
        self._seed, self._t = 0, 0

    def reset(self, seed: int, options: dict | None = None) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        self._pos, self._goal = rng.uniform(0.1, 0.9, size=2), rng.uniform(0.1, 0.9, size=2)
        self._seed, self._t = seed, 0
        return self._obs()

    def step(self, action: np.ndarray) -> Transition:
        self._t += 1
        chosen = not self.fault_seeds or self._seed in self.fault_seeds
        if self.fault and self._t == self.fault_step and chosen:
            if self.fault == "raise":
                raise RuntimeError(f"injected fault at step {self._t} of seed {self._seed}")
            if self.fault == "exit":
                os._exit(3)
            self._pos = np.full(2, np.nan)  # np.clip keeps NaN: the observation below carries it out
        self._pos = np.clip(self._pos + self.max_speed * np.asarray(action), 0.0, 1.0)
        dist = float(np.linalg.norm(self._goal - self._pos))
        success = dist < self.goal_tolerance
        return Transition(self._obs(), -dist, success, success)

    def get_state(self) -> np.ndarray:
        return np.concatenate([self._pos, self._goal])

    def set_state(self, state: np.ndarray) -> None:
        self._pos, self._goal = np.array(state[:2]), np.array(state[2:])

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self._pos.astype(np.float32), "goal": self._goal.astype(np.float32)}


def make_point_mass_env(num_envs: int = 1, seed: int = 0, name: str = "point_mass",
                        max_episode_steps: int = 50, backend: str = "inprocess", fault: str = "",
                        fault_step: int = 3, fault_seeds: Sequence[int] = (), autoreset: bool = False,
                        envs_per_worker: int = 0):
    """Batched ``PointMassSim`` (a task ``_target_``): the vector back ends without a physics engine."""
    from functools import partial

    from .vector import make_vector_env

    factory = partial(PointMassSim, fault=fault, fault_step=fault_step, fault_seeds=tuple(fault_seeds))
    return make_vector_env(factory, num_envs, seed, backend=backend, autoreset=autoreset, name=name,
                           max_episode_steps=max_episode_steps, envs_per_worker=envs_per_worker)
