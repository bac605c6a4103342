"""The batched scripted expert: one controller per env, plus the quality knobs.

Knobs (the issue's three; the third lives in collection):

- ``noise``: std of Gaussian noise added to every action (in the action's units; all these tasks act in
  [-1, 1]), then clipped to the bounds;
- ``variant``: which controller drives the env, e.g. ``plan`` / ``markov`` oracles toward the task goal, or
  ``play``: random sub-goals chained for the whole episode (OGBench's play-data behaviour);
- a mixture of expert and uniformly random episodes: ``random_fraction`` of ``robopol collect``.

Controllers read the simulator's internals (goal positions, object poses), so the expert needs the
in-process back end; collection runs one in-process env and its expert inside each worker process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from robopol.errors import ConfigError

from ..vector import InProcessVectorEnv


class Controller(ABC):
    """Drives one env: ``reset`` at the start of each episode, then one action per step."""

    @abstractmethod
    def reset(self, sim: Any, rng: np.random.Generator) -> None: ...

    @abstractmethod
    def act(self, sim: Any, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class ScriptedExpert:
    """Implements the ``Expert`` protocol over an ``InProcessVectorEnv`` with one ``Controller`` per env."""

    VARIANTS: tuple[str, ...] = ("default",)
    """Accepted ``variant`` values; the first is used when ``variant`` is empty."""

    def __init__(self, env: Any, noise: float = 0.0, seed: int = 0, variant: str = "") -> None:
        if not isinstance(env, InProcessVectorEnv):
            raise ConfigError(
                f"the scripted expert of task '{env.spec.task}' reads simulator internals and needs the "
                f"in-process back end (task.backend=inprocess); got {type(env).__name__}"
            )
        if noise < 0:
            raise ConfigError(f"noise must be >= 0, got {noise}")
        variant = variant or self.VARIANTS[0]
        if variant not in self.VARIANTS:
            raise ConfigError(f"task '{env.spec.task}' has no expert variant '{variant}': use one of "
                              f"{list(self.VARIANTS)}")
        self.env, self.noise, self.seed, self.variant = env, float(noise), int(seed), variant
        self.controllers = [self.make_controller(sim, variant) for sim in env.envs]
        self._low = np.asarray(env.spec.action.low, dtype=np.float64)
        self._high = np.asarray(env.spec.action.high, dtype=np.float64)
        self._episode = np.full(env.num_envs, -1)
        self._rngs: list[np.random.Generator] = [np.random.default_rng(0)] * env.num_envs

    def make_controller(self, sim: Any, variant: str) -> Controller:
        raise NotImplementedError

    def reset(self, seed: int | None = None) -> None:
        """Forget every episode; each controller restarts at its env's next ``act``."""
        if seed is not None:
            self.seed = int(seed)
        self._episode[:] = -1

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        env = self.env
        actions = np.zeros((env.num_envs, *env.spec.action.shape))
        done = env.done
        for i, (ctrl, sim) in enumerate(zip(self.controllers, env.envs, strict=True)):
            if done[i]:
                continue  # frozen until the next reset: its action is ignored
            if self._episode[i] != env.episode_ids[i]:
                # A new episode: the controller's randomness depends on the expert seed and the episode seed.
                self._rngs[i] = np.random.default_rng([self.seed & 0xFFFFFFFF,
                                                       int(env.episode_seeds[i]) & 0xFFFFFFFF])
                ctrl.reset(sim, self._rngs[i])
                self._episode[i] = env.episode_ids[i]
            a = np.asarray(ctrl.act(sim, {k: v[i] for k, v in obs.items()}), dtype=np.float64)
            if self.noise > 0:
                a = a + self.noise * self._rngs[i].standard_normal(a.shape)
            actions[i] = np.clip(a, self._low, self._high)
        return actions.astype(np.float32)


@contextmanager
def numpy_global_rng(state: dict[str, Any]) -> Iterator[None]:
    """Run code that draws from ``np.random.*`` (OGBench's oracles do) on a private, seeded stream.

    ``state['rng']`` holds the private ``RandomState`` state; the caller's global state is restored after.
    """
    saved = np.random.get_state()
    np.random.set_state(state["rng"])
    try:
        yield
    finally:
        state["rng"] = np.random.get_state()
        np.random.set_state(saved)
