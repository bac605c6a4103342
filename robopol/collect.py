"""Run a task's scripted expert in its batched env and append every episode to an episode store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from robopol.data.store import EpisodeStore
from robopol.errors import ConfigError, StoreError
from robopol.tasks import make_env, make_expert


@dataclass
class CollectResult:
    episodes: int
    steps: int
    success_rate: float


def collect_episodes(
    task: DictConfig,
    out: str,
    episodes: int,
    noise: float = 0.0,
    seed: int = 0,
    num_envs: int = 8,
    progress: bool = True,
) -> CollectResult:
    """Append ``episodes`` expert episodes to the store at ``out`` (created if missing).

    Episode ``i`` of the store uses seed ``seed + i``, so appending to an existing store continues the
    seed sequence and two collections with the same arguments produce the same data.
    """
    if episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {episodes}")
    try:
        store = EpisodeStore.open(out, mode="a")
    except StoreError:  # nothing there yet; create() refuses to overwrite anything that is not a store
        store = EpisodeStore.create(out)
    first = len(store)
    env = make_env(task, num_envs=num_envs, seed=seed)
    expert = make_expert(task, env, noise=noise, seed=seed)
    successes, steps = [], 0
    bar = tqdm(total=episodes, desc=f"collect {task.name}", unit="ep", disable=not progress)
    while len(successes) < episodes:
        batch_seed = seed + first + len(successes)
        obs = env.reset(seed=batch_seed)
        expert.reset(seed=batch_seed)
        traces = [_EpisodeTrace() for _ in range(env.num_envs)]
        done = np.zeros(env.num_envs, dtype=bool)
        while not done.all():
            actions = expert.act(obs)
            result = env.step(actions)
            for i in np.flatnonzero(~done):
                traces[i].add(obs, i, actions[i], result.reward[i], result.terminated[i], result.success[i])
            done |= result.terminated | result.truncated
            obs = result.obs
        for i, trace in enumerate(traces[: episodes - len(successes)]):
            store.add_episode(trace.arrays(), source="expert", success=trace.success, seed=batch_seed,
                              task_id=0, env_index=i)
            successes.append(trace.success)
            steps += trace.length
            bar.update(1)
    bar.close()
    env.close()
    return CollectResult(episodes=len(successes), steps=steps, success_rate=float(np.mean(successes)))


class _EpisodeTrace:
    """Per-step records of one env's episode, stacked into store arrays at the end."""

    def __init__(self) -> None:
        self.obs: dict[str, list[np.ndarray]] = {}
        self.action: list[np.ndarray] = []
        self.reward: list[float] = []
        self.terminal: list[bool] = []
        self.success = False

    def add(self, obs: dict[str, np.ndarray], i: int, action: np.ndarray, reward: float, terminal: bool,
            success: bool) -> None:
        for key, value in obs.items():
            self.obs.setdefault(key, []).append(value[i])
        self.action.append(action)
        self.reward.append(reward)
        self.terminal.append(bool(terminal))
        self.success |= bool(success)

    @property
    def length(self) -> int:
        return len(self.action)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {key: np.stack(values) for key, values in self.obs.items()}
        arrays["action"] = np.stack(self.action).astype(np.float32)
        arrays["reward"] = np.asarray(self.reward, dtype=np.float32)
        arrays["terminal"] = np.asarray(self.terminal, dtype=bool)
        return arrays
