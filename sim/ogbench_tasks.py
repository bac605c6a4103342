"""OGBench manipulation (UR5e arm + Robotiq gripper): cube-single, cube-double, scene, puzzle-3x3.

Two flavours per environment (``task_id`` in the task config):

- ``task_id=0``, goal-conditioned: each episode draws one of OGBench's five evaluation tasks from its seed;
  the observation has ``observation`` and ``goal`` (the goal state, same layout), reward 1 at success;
- ``task_id=1..5``, OGBench's single-task reward variant (``*-singletask-taskK-v0``): fixed task, no goal
  key, reward ``#objects_at_goal - #objects`` (0 at success).

Every episode ends at success (``terminate_at_goal``) or at the time limit. Determinism: OGBench builds each
task's goal observation with two random actions drawn from a fresh, unseeded action space; the env class is
subclassed here so that those draws come from a space seeded with the episode seed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from robopol.envs import ArraySpec, EnvSpec
from robopol.errors import ConfigError

from .base import MujocoSim, Transition
from .vector import VectorEnv, make_vector_env

ENVS = ("cube-single-v0", "cube-double-v0", "scene-v0", "puzzle-3x3-v0")
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "dgripper")


def _registered(env_id: str) -> Any:
    import gymnasium as gym
    import ogbench.manipspace  # noqa: F401 - registers the manipulation env ids

    try:
        return gym.spec(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"unknown OGBench env id '{env_id}': use one of {ENVS} ({err})") from err


def _seeded_class(cls: type) -> type:
    """``cls`` with an ``action_space`` that the adapter seeds at every reset (see the module docstring)."""

    class Seeded(cls):  # type: ignore[misc, valid-type]
        @property
        def action_space(self):  # noqa: D401 - a property that mirrors the base class
            return self._robopol_action_space

    Seeded.__name__ = Seeded.__qualname__ = cls.__name__
    return Seeded


class OGBenchSim(MujocoSim):
    """One OGBench manipulation env in ``task`` mode."""

    camera = "front"

    def __init__(self, env_id: str = "cube-single-v0", task_id: int = 0, name: str = "") -> None:
        import gymnasium as gym
        from gymnasium.envs.registration import load_env_creator

        if env_id not in ENVS:
            raise ConfigError(f"unknown OGBench env id '{env_id}': use one of {ENVS}")
        if not 0 <= task_id <= 5:
            raise ConfigError(f"OGBench task_id must be 0 (goal-conditioned) or 1-5, got {task_id}")
        self.env_id, self.fixed_task = env_id, task_id
        self.goal_conditioned = task_id == 0
        reg_id = env_id if task_id == 0 else env_id.replace("-v0", f"-singletask-task{task_id}-v0")
        reg = _registered(reg_id)
        self.env = _seeded_class(load_env_creator(reg.entry_point))(**reg.kwargs)
        self.env._robopol_action_space = gym.spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
        self.kind = env_id.split("-")[0]  # cube | scene | puzzle
        obs = self.reset(0)
        observation = {"observation": ArraySpec(obs["observation"].shape)}
        if self.goal_conditioned:
            observation["goal"] = ArraySpec(obs["goal"].shape)
        self.spec = EnvSpec(
            task=name or reg_id, observation=observation,
            action=ArraySpec((5,), low=(-1.0,) * 5, high=(1.0,) * 5, names=ACTION_NAMES),
            max_episode_steps=int(reg.max_episode_steps), goal_key="goal" if self.goal_conditioned else None,
            dt=float(self.env._control_timestep),
        )

    @property
    def model(self) -> Any:
        return self.env.model

    @property
    def data(self) -> Any:
        return self.env.data

    @property
    def has_buttons(self) -> bool:
        return self.kind in ("scene", "puzzle")

    def reset(self, seed: int, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        options = dict(options or {})
        if self.fixed_task:
            task_id = self.fixed_task
        elif options.get("task_id"):
            task_id = int(options["task_id"])
        else:
            # Its own stream: the env's np_random is seeded with the same integer.
            task_id = int(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).integers(1, 6))
        self.env._robopol_action_space.seed(seed)
        ob, info = self.env.reset(seed=seed, options={"task_id": task_id})
        self.task_id = task_id
        self._goal = np.asarray(info["goal"], dtype=np.float32) if self.goal_conditioned else None
        return self._obs(ob)

    def step(self, action: np.ndarray) -> Transition:
        ob, reward, terminated, _, info = self.env.step(np.asarray(action, dtype=np.float64))
        return Transition(self._obs(ob), float(reward), bool(terminated), bool(info["success"]))

    def _obs(self, ob: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"observation": np.asarray(ob, dtype=np.float32)}
        if self._goal is not None:
            obs["goal"] = self._goal
        return obs

    # Scene and puzzle keep their button states in Python (they also set the drawer/window lock damping):
    # they are appended to the physics state so that replay restores them.
    def get_state(self) -> np.ndarray:
        state = self.physics_state()
        if self.has_buttons:
            state = np.concatenate([state, self.env._cur_button_states.astype(np.float64)])
        return state

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        if self.has_buttons:
            n = len(self.env._cur_button_states)
            state, buttons = state[:-n], state[-n:]
            self.env._cur_button_states = np.rint(buttons).astype(self.env._cur_button_states.dtype)
            self.env._apply_button_states()
        self.set_physics_state(state)

    def close(self) -> None:
        super().close()
        self.env.close()


def make_ogbench_env(num_envs: int = 1, seed: int = 0, name: str = "cube_single",
                     env_id: str = "cube-single-v0", task_id: int = 0, max_episode_steps: int = 0,
                     backend: str = "auto", autoreset: bool = False, envs_per_worker: int = 0) -> VectorEnv:
    """Batched OGBench env (the ``_target_`` of the OGBench task configs); ``max_episode_steps=0`` keeps
    OGBench's limit."""
    factory = partial(OGBenchSim, env_id=env_id, task_id=task_id, name=name)
    return make_vector_env(factory, num_envs, seed, backend=backend, autoreset=autoreset, name=name,
                           max_episode_steps=max_episode_steps or None, envs_per_worker=envs_per_worker)
