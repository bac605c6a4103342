"""Any Isaac Lab 3 task behind robopol's ``BatchedEnv`` protocol, with a torch path that stays on the device.

``make_isaaclab_env`` builds the task from a gymnasium id that Isaac Lab registered, or from an env class and
its config class (robopol's own UR5e tasks), with the device, env count and episode length from robopol's
task config; ``IsaacLabEnv`` wraps it. Two interfaces:

- ``reset_tensors`` / ``step_tensors``: observations, rewards, flags and actions as torch tensors on the
  simulation device, no numpy on the way (the on-policy training loop uses these);
- ``reset`` / ``step`` / ``reset_done``: the ``BatchedEnv`` protocol, numpy arrays, for collection,
  evaluation and deployment code that stores or prints what it gets (one copy per step at the boundary).

Semantics made explicit (they are what bootstrapping and episode recording rely on):

- **Observations**: ``observation`` maps each robopol key to an Isaac Lab observation group; a group that is
  itself a dict of terms is flattened in its own order.
- **Actions**: Isaac Lab reports an unbounded action space, so the bounds come from the task config;
  out-of-bound values are clipped and counted (``clipped_actions``), wrong shapes and NaN raise
  ``ConfigError``.
- **Flags**: ``terminated`` is Isaac Lab's termination, ``truncated`` its time-out (never both: a
  termination on the last step is a termination). ``success`` is ``terminated`` for tasks whose only
  termination is success (``success_term: terminated``), a named termination term of a manager-based task,
  or never (empty).
- **Auto-reset**: Isaac Lab resets finished envs inside ``step``. The adapter switches on Isaac Lab's
  ``compute_final_obs``, so the observation of every episode's last step is in ``final_obs``. With
  ``autoreset=True`` the step returns the new episodes' first observations (and ``final_obs``); with
  ``autoreset=False`` (the default, robopol's contract) a finished env is frozen: it repeats its final
  observation and flags with zero reward until ``reset_done`` or ``reset``. Isaac Lab cannot skip an env, so
  a frozen env's new episode is stepped anyway; ``reset_done`` then resets such envs once more (with their
  next seed, so the hidden episode's seed is skipped), and every episode robopol sees starts fresh from its
  seed. ``episode_info`` reports the seed of the episode an env shows.
- **Seeds**: env ``i`` starts with episode seed ``seed + i`` and each later episode takes ``num_envs`` more, as
  in ``robopol.sim.vector``. Tasks with an ``episode_seeds`` tensor (robopol's own) draw their resets from it,
  so an episode is a function of its seed; other Isaac Lab tasks draw from Isaac Lab's global generator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robopol.envs import ArraySpec, EnvSpec, StepResult
from robopol.errors import ConfigError, MissingExtraError

ISAACLAB_HINT = ("Isaac Lab 3 needs Python 3.12 and the 'isaaclab' extra: run scripts/isaaclab_env.sh "
                 "(see docs/isaaclab.md)")


def require_isaaclab() -> None:
    """Fail with one line naming the extra and the Python version when Isaac Lab 3 is not importable."""
    import sys

    try:
        import isaaclab  # noqa: F401
        import isaaclab_newton  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(f"this task runs on Isaac Lab, which is not installed in this Python "
                                f"{sys.version_info.major}.{sys.version_info.minor} environment ({err}). "
                                f"{ISAACLAB_HINT}") from err


def _import(path: str) -> Any:
    """``module:attribute`` -> the attribute."""
    import importlib

    module, _, attr = path.partition(":")
    if not attr:
        raise ConfigError(f"'{path}' must be 'module:attribute'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import '{path}' ({err})") from err


@dataclass
class TensorStep:
    """What ``step_tensors`` returns: tensors on the simulation device with a leading env axis."""

    obs: dict[str, torch.Tensor]
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    success: torch.Tensor
    final_obs: dict[str, torch.Tensor] | None
    """Every env's observation before this step's resets (only when some env finished)."""
    clipped: torch.Tensor


class IsaacLabEnv:
    """An Isaac Lab ``DirectRLEnv`` or ``ManagerBasedRLEnv`` (unwrapped) as a robopol ``BatchedEnv``."""

    one_per_process = True
    """Isaac Lab runs one simulation per process, so training evaluates on its training envs."""

    def __init__(self, env: Any, name: str, observation: dict[str, str], action_low: list[float],
                 action_high: list[float], success_term: str = "terminated", seed: int = 0,
                 autoreset: bool = False) -> None:
        self.env, self.name = env, name
        self.device = torch.device(env.device)
        self.num_envs = int(env.num_envs)
        self.autoreset = autoreset
        self.clipped_actions = 0
        self.groups = dict(observation)
        if not self.groups:
            raise ConfigError(f"task '{name}': task.observation must map at least one key to an Isaac Lab "
                              f"observation group")
        env.cfg.compute_final_obs = True  # read on every step, so setting it after creation is enough
        self._success_term = success_term
        if success_term not in ("", "terminated") and not hasattr(env, "termination_manager"):
            raise ConfigError(f"task '{name}': success_term={success_term!r} names a termination term, which only "
                              f"manager-based tasks have; use 'terminated' or ''")
        self.episode_seeds = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        """Seed of the episode each env shows (a frozen env's is its finished episode's until ``reset_done``)."""
        self._sim_seeds = torch.zeros_like(self.episode_seeds)  # of the episode Isaac Lab is running
        self._next_seeds = seed + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        self._reset_task_idx = env._reset_idx
        env._reset_idx = self._reset_idx  # every reset, Isaac Lab's own auto-resets included, draws new seeds

        obs = self._groups_to_obs(env.reset()[0])  # shapes for the spec
        # that reset drew one seed per env: the first reset() without a seed starts at ``seed`` again
        self._next_seeds = seed + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        n_act = len(action_low)
        if len(action_high) != n_act or n_act == 0:
            raise ConfigError(f"task '{name}': task.action_low and task.action_high need one bound per action "
                              f"dimension, got {len(action_low)} and {len(action_high)}")
        expected = getattr(env, "single_action_space", None)
        if expected is not None and expected.shape and int(np.prod(expected.shape)) != n_act:
            raise ConfigError(f"task '{name}': Isaac Lab expects {int(np.prod(expected.shape))} action values but "
                              f"task.action_low has {n_act}")
        self._low = torch.as_tensor(action_low, dtype=torch.float32, device=self.device)
        self._high = torch.as_tensor(action_high, dtype=torch.float32, device=self.device)
        self.spec = EnvSpec(
            task=name,
            observation={k: ArraySpec(shape=tuple(v.shape[1:])) for k, v in obs.items()},
            action=ArraySpec(shape=(n_act,), low=tuple(action_low), high=tuple(action_high)),
            max_episode_steps=int(env.max_episode_length), dt=float(env.step_dt))
        self._obs = obs
        self._final = {k: v.clone() for k, v in obs.items()}
        self._next_first = {k: v.clone() for k, v in obs.items()}
        """The next episode's first observation of each frozen env (shown by ``reset_done``)."""
        self._done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._stale = torch.zeros_like(self._done)  # frozen envs whose next episode has been stepped
        self._flags = [torch.zeros_like(self._done) for _ in range(3)]  # terminated, truncated, success
        self._started = False

    # ------------------------------------------------------------------------------------------ internals

    def _reset_idx(self, env_ids: Any) -> None:
        ids = torch.arange(self.num_envs, device=self.device) if env_ids is None else \
            torch.as_tensor(env_ids, device=self.device).long()
        self._sim_seeds[ids] = self._next_seeds[ids]
        self._next_seeds[ids] += self.num_envs
        if hasattr(self.env, "episode_seeds"):
            self.env.episode_seeds[ids] = self._sim_seeds[ids]
        self._reset_task_idx(env_ids)

    def _groups_to_obs(self, groups: dict[str, Any]) -> dict[str, torch.Tensor]:
        obs = {}
        for key, group in self.groups.items():
            if group not in groups:
                raise ConfigError(f"task '{self.name}': task.observation maps '{key}' to the observation group "
                                  f"'{group}', which the task does not have; its groups: {sorted(groups)}")
            value = groups[group]
            if isinstance(value, dict):
                value = torch.cat([v.reshape(v.shape[0], -1) for v in value.values()], dim=-1)
            obs[key] = value.to(torch.float32)
        return obs

    def _observe(self) -> dict[str, torch.Tensor]:
        """The current observation of every env, without stepping."""
        env = self.env
        groups = env.observation_manager.compute() if hasattr(env, "observation_manager") else \
            env._get_observations()
        return self._groups_to_obs(groups)

    def _success(self, terminated: torch.Tensor) -> torch.Tensor:
        if self._success_term == "terminated":
            return terminated.clone()
        if not self._success_term:
            return torch.zeros_like(terminated)
        return self.env.termination_manager.get_term(self._success_term).to(torch.bool)

    def _check_actions(self, actions: Any) -> tuple[torch.Tensor, torch.Tensor]:
        actions = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        shape = (self.num_envs, *self.spec.action.shape)
        if tuple(actions.shape) != shape:
            raise ConfigError(f"task '{self.spec.task}': actions must have shape {shape}, got {tuple(actions.shape)}")
        if not bool(torch.isfinite(actions).all()):
            raise ConfigError(f"task '{self.spec.task}': actions contain NaN or inf")
        clipped = ((actions < self._low) | (actions > self._high)).any(-1)
        self.clipped_actions += int(clipped.sum())
        return torch.clamp(actions, self._low, self._high), clipped

    # --------------------------------------------------------------------------------------- tensor path

    def reset_tensors(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Start every env anew (seeds as in the module docstring); observations on the device."""
        if seed is not None:
            self._next_seeds = seed + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        self._obs = self._groups_to_obs(self.env.reset()[0])
        self.episode_seeds = self._sim_seeds.clone()
        self._done[:] = self._stale[:] = False
        for flag in self._flags:
            flag[:] = False
        self._started = True
        return {k: v.clone() for k, v in self._obs.items()}

    def step_tensors(self, actions: Any) -> TensorStep:
        """One step of every env (see the module docstring for frozen envs and auto-reset)."""
        if not self._started:
            raise ConfigError(f"task '{self.spec.task}': call reset() before step()")
        actions, clipped = self._check_actions(actions)
        groups, reward, terminated, truncated, extras = self.env.step(actions)
        obs = self._groups_to_obs(groups)
        terminated = terminated.to(torch.bool)
        truncated = truncated.to(torch.bool) & ~terminated
        success = self._success(terminated)
        # Isaac Lab leaves the last final_obs in its extras until the next reset overwrites it
        final_groups = extras.pop("final_obs", None)
        final = self._groups_to_obs(final_groups) if final_groups is not None else None
        reward = reward.to(torch.float32)
        ended = terminated | truncated
        if self.autoreset:
            self._obs = obs
            self.episode_seeds = self._sim_seeds.clone()
            return TensorStep(obs={k: v.clone() for k, v in obs.items()}, reward=reward, terminated=terminated,
                              truncated=truncated, success=success, final_obs=final, clipped=clipped)
        frozen = self._done
        self._stale |= frozen
        live = ~frozen
        new_end = live & ended
        for key, value in obs.items():
            # live envs that just ended show their final observation; frozen ones keep theirs
            last = final[key] if final is not None else value
            self._final[key] = torch.where(new_end[:, None], last, self._final[key])
            self._obs[key] = torch.where(live[:, None] & ~ended[:, None], value, self._final[key])
            self._next_first[key] = torch.where(new_end[:, None], value, self._next_first[key])
        for flag, value in zip(self._flags, (terminated, truncated, success), strict=True):
            flag[:] = torch.where(live, value, flag)
        self._done = frozen | new_end
        return TensorStep(obs={k: v.clone() for k, v in self._obs.items()},
                          reward=torch.where(live, reward, torch.zeros_like(reward)),
                          terminated=self._flags[0].clone(), truncated=self._flags[1].clone(),
                          success=self._flags[2].clone(), final_obs=final, clipped=clipped)

    def reset_done_tensors(self) -> dict[str, torch.Tensor]:
        """Start the next episode of every frozen env; returns every env's observation."""
        done = self._done
        if not bool(done.any()):
            return {k: v.clone() for k, v in self._obs.items()}
        stale = (done & self._stale).nonzero().flatten()
        if len(stale):  # their auto-reset episode has been stepped while frozen: start it over from a new seed
            self._reset_idx(stale.to(torch.int32))
            self.env.scene.write_data_to_sim()
            self.env.sim.forward()
            fresh = self._observe()
        for key in self._obs:
            first = self._next_first[key]
            if len(stale):
                first = torch.where(self._stale[:, None], fresh[key], first)
            self._obs[key] = torch.where(done[:, None], first, self._obs[key])
        self.episode_seeds = torch.where(done, self._sim_seeds, self.episode_seeds)
        self._done[:] = self._stale[:] = False
        for flag in self._flags:
            flag[:] = False
        return {k: v.clone() for k, v in self._obs.items()}

    # ------------------------------------------------------------------------------- BatchedEnv (numpy)

    @staticmethod
    def _numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in obs.items()}

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        return self._numpy(self.reset_tensors(seed))

    def step(self, actions: Any) -> StepResult:
        out = self.step_tensors(actions)
        info: dict[str, Any] = {"clipped": out.clipped.cpu().numpy()}
        if out.final_obs is not None and self.autoreset:
            info["final_obs"] = self._numpy(out.final_obs)
        return StepResult(obs=self._numpy(out.obs), reward=out.reward.cpu().numpy(),
                          terminated=out.terminated.cpu().numpy(), truncated=out.truncated.cpu().numpy(),
                          success=out.success.cpu().numpy(), info=info)

    def reset_done(self) -> dict[str, np.ndarray]:
        return self._numpy(self.reset_done_tensors())

    @property
    def done(self) -> np.ndarray:
        """Envs whose episode has ended and that wait for a reset (always all False with auto-reset)."""
        return self._done.cpu().numpy().copy()

    def episode_info(self, index: int) -> dict[str, Any]:
        return {"seed": int(self.episode_seeds[index]), "task_id": 0}

    def close(self) -> None:
        self.env.close()


def make_isaaclab_env(name: str, num_envs: int, seed: int, max_episode_steps: int, observation: dict[str, str],
                      action_low: list[float], action_high: list[float], gym_id: str = "", env_class: str = "",
                      env_cfg: str = "", device: str = "cpu", success_term: str = "terminated",
                      warp_cache: str = "") -> IsaacLabEnv:
    """Build the Isaac Lab task of a ``task=`` config (fields documented in ``robopol.tasks``)."""
    if warp_cache:  # before Isaac Lab is imported, which initialises Warp
        os.environ.setdefault("WARP_CACHE_PATH", os.path.expanduser(warp_cache))
    require_isaaclab()
    if num_envs < 1:
        raise ConfigError(f"task '{name}': num_envs must be at least 1, got {num_envs}")
    if bool(gym_id) == bool(env_class and env_cfg):
        raise ConfigError(f"task '{name}': set either task.gym_id or both task.env_class and task.env_cfg")
    if gym_id:
        import gymnasium as gym
        import isaaclab_tasks  # noqa: F401 - registers Isaac Lab's gymnasium ids
        from isaaclab_tasks.utils import parse_env_cfg

        try:
            cfg = parse_env_cfg(gym_id, device=device, num_envs=num_envs)
        except Exception as err:
            raise ConfigError(f"task '{name}': Isaac Lab has no task '{gym_id}' ({err})") from err
        cls = None
    else:
        cfg, cls = _import(env_cfg)(), _import(env_class)
        cfg.sim.device = device
        cfg.scene.num_envs = num_envs
    cfg.seed = seed
    step_dt = cfg.sim.dt * cfg.decimation
    cfg.episode_length_s = (max_episode_steps - 0.5) * step_dt  # robopol's time limit is the task's (ceil'd)
    env = gym.make(gym_id, cfg=cfg).unwrapped if cls is None else cls(cfg)
    try:
        return IsaacLabEnv(env, name, observation, list(action_low), list(action_high), success_term, seed)
    except BaseException:
        env.close()
        raise
