"""gymnasium-robotics (PointMaze, AntMaze, Fetch) and gymnasium MuJoCo locomotion as SimEnvs.

The envs are used unwrapped: the vector layer owns the time limit (gymnasium's ``TimeLimit`` would end
episodes on its own clock) and the action checks. Conventions, the same for every suite:

- goal-conditioned envs (mazes, Fetch) observe ``observation``, ``achieved_goal`` and ``goal``;
  locomotion observes ``observation``;
- an episode ends at success: mazes run as episodic tasks (``continuing_task=False``), Fetch ends at
  ``is_success`` unless ``terminate_on_success=False``; locomotion ends when the robot falls (Hopper,
  Walker2d, Ant) and never succeeds;
- the replay state is the MuJoCo physics state plus the goal, which these envs keep in Python.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from robopol.envs import ArraySpec, EnvSpec
from robopol.errors import ConfigError

from .base import MujocoSim, Transition, actuator_names
from .vector import VectorEnv, make_vector_env

MAZES = ("PointMaze_UMaze-v3", "PointMaze_Medium-v3", "AntMaze_UMaze-v5")
FETCH = ("FetchPush-v4", "FetchPickAndPlace-v4")
LOCOMOTION = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")


def _make(env_id: str, **kwargs: Any) -> Any:
    import gymnasium as gym

    if env_id in MAZES or env_id in FETCH:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    elif env_id not in LOCOMOTION:
        raise ConfigError(f"unknown gymnasium env id '{env_id}': use one of {MAZES + FETCH + LOCOMOTION}")
    return gym.make(env_id, disable_env_checker=True, **kwargs)


class GymSim(MujocoSim):
    """One gymnasium(-robotics) MuJoCo env; ``suite`` is ``maze``, ``fetch`` or ``locomotion``."""

    def __init__(self, env_id: str, name: str = "", terminate_on_success: bool = True) -> None:
        self.env_id = env_id
        self.suite = "maze" if env_id in MAZES else "fetch" if env_id in FETCH else "locomotion"
        kwargs: dict[str, Any] = {}
        if self.suite == "maze":  # episodic: the episode ends at the goal instead of drawing a new one
            kwargs = {"continuing_task": False, "reset_target": False}
        wrapped = _make(env_id, **kwargs)
        self.max_episode_steps = int(wrapped.spec.max_episode_steps)
        self.env = wrapped.unwrapped
        self.terminate_on_success = terminate_on_success
        obs = self.reset(0)
        nu = self.env.action_space.shape[0]
        names = {"maze": ("fx", "fy") if env_id.startswith("Point") else actuator_names(self.model),
                 "fetch": ("dx", "dy", "dz", "dgripper")}.get(self.suite, actuator_names(self.model))
        low, high = self.env.action_space.low.astype(float), self.env.action_space.high.astype(float)
        self.spec = EnvSpec(
            task=name or env_id,
            observation={k: ArraySpec(v.shape) for k, v in obs.items()},
            action=ArraySpec((nu,), low=tuple(low), high=tuple(high), names=tuple(names)),
            max_episode_steps=self.max_episode_steps,
            goal_key="goal" if self.suite != "locomotion" else None,
            dt=float(self._inner().dt),
        )

    def _inner(self) -> Any:
        """The MuJoCo env that owns model/data (the mazes wrap a point or ant env)."""
        return getattr(self.env, "point_env", None) or getattr(self.env, "ant_env", None) or self.env

    @property
    def model(self) -> Any:
        return self._inner().model

    @property
    def data(self) -> Any:
        return self._inner().data

    def reset(self, seed: int, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        obs, _ = self.env.reset(seed=seed, options=options)
        return self._obs(obs)

    def step(self, action: np.ndarray) -> Transition:
        obs, reward, terminated, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        if self.suite == "fetch":
            success = bool(info["is_success"])
            terminated = success and self.terminate_on_success
        else:
            success = bool(info.get("success", False))
        return Transition(self._obs(obs), float(reward), bool(terminated), success)

    def _obs(self, obs: Any) -> dict[str, np.ndarray]:
        if isinstance(obs, dict):
            return {"observation": np.asarray(obs["observation"], dtype=np.float32),
                    "achieved_goal": np.asarray(obs["achieved_goal"], dtype=np.float32),
                    "goal": np.asarray(obs["desired_goal"], dtype=np.float32)}
        return {"observation": np.asarray(obs, dtype=np.float32)}

    def get_state(self) -> np.ndarray:
        state = self.physics_state()
        if self.suite != "locomotion":
            state = np.concatenate([state, np.asarray(self.env.goal, dtype=np.float64)])
        return state

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        if self.suite != "locomotion":
            n = len(self.env.goal)
            state, self.env.goal = state[:-n], state[-n:].copy()
            if self.suite == "maze":
                self.env.update_target_site_pos()
        self.set_physics_state(state)

    def camera_settings(self) -> dict[str, Any] | None:
        if self.suite == "maze":  # top-down over the whole maze
            maze = self.env.maze
            span = max(maze.map_length, maze.map_width) * maze.maze_size_scaling
            return {"lookat": (0.0, 0.0, 0.0), "distance": 1.3 * span, "azimuth": 90.0, "elevation": -90.0}
        if self.suite == "fetch":  # gymnasium-robotics' default Fetch view
            return {"lookat": (1.3, 0.75, 0.55), "distance": 2.5, "azimuth": 132.0, "elevation": -14.0}
        torso = self.data.xpos[1]
        return {"lookat": (float(torso[0]), float(torso[1]), 0.5), "distance": 4.0, "azimuth": 90.0,
                "elevation": -20.0}

    def render(self, width: int = 256, height: int = 256) -> np.ndarray:
        if self.suite == "fetch":
            self.env._render_callback()  # moves the goal marker to the current goal
        return super().render(width, height)

    def close(self) -> None:
        super().close()
        self.env.close()


def make_gym_env(num_envs: int = 1, seed: int = 0, name: str = "", env_id: str = "PointMaze_UMaze-v3",
                 max_episode_steps: int = 0, terminate_on_success: bool = True, backend: str = "auto",
                 autoreset: bool = False, envs_per_worker: int = 0) -> VectorEnv:
    """Batched gymnasium(-robotics) env (the ``_target_`` of the maze, Fetch and locomotion task configs);
    ``max_episode_steps=0`` keeps the env's registered limit."""
    if env_id not in MAZES + FETCH + LOCOMOTION:
        raise ConfigError(f"unknown gymnasium env id '{env_id}': use one of {MAZES + FETCH + LOCOMOTION}")
    factory = partial(GymSim, env_id=env_id, name=name, terminate_on_success=terminate_on_success)
    return make_vector_env(factory, num_envs, seed, backend=backend, autoreset=autoreset, name=name or None,
                           max_episode_steps=max_episode_steps or None, envs_per_worker=envs_per_worker)
