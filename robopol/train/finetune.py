"""Offline-to-online fine-tuning of the chunk-critic algorithms (``qc``, ``dqc``, ``ofql``), as in the
Q-chunking paper's protocol: after its offline gradient steps, the run goes on acting in the simulator and
learning from a mix of the offline windows and its own episodes.

- **Acting.** ``online.envs`` envs run whole episodes in lockstep (reset together, as evaluation does) with
  the algorithm's deployed sampler through :class:`robopol.runtime.ChunkActor`, so chunks execute open-loop
  exactly as they would on a robot. The samplers draw noise, which is the exploration.
- **Replay.** Finished episodes are appended to ``<run>/online.zarr``, an episode store with the same keys as
  the offline data (observations, ``action``, ``reward``, ``terminal``, ``success``), written atomically per
  batch of episodes, so a crash never leaves a half episode and the data outlives the run. Episodes the
  budget cuts short are stored as they are, like a time-out (no terminal).
- **Updates.** After ``online.start`` env steps, every env step is followed by ``online.utd`` gradient
  steps per env stepped. Each batch takes ``round(online.ratio * batch_size)`` windows from the online
  episodes (:class:`MixedSampler`) and the rest from the offline store; before the first online episode ends
  the batch is all offline.
- **Steps.** Checkpoints, metrics and evaluations count ``trainer.steps + online env steps``. Checkpoints
  are taken between batches of episodes and record which online episodes they learned from, so a resumed
  run (``resume=<run>``) rebuilds the same replay even if episodes were written after the last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopol.data.sampler import WindowConfig, WindowSampler
from robopol.data.store import EpisodeStore
from robopol.errors import ConfigError
from robopol.runtime import ChunkActor, evaluate

ONLINE_STORE = "online.zarr"
ONLINE_SEEDS = 1_000_000
"""Batches of online episodes reset with ``seed + ONLINE_SEEDS + env steps so far``: seeds no batch repeats,
apart from evaluation's (``10_000 + seed``)."""


class MixedSampler:
    """Batches with a fixed share ``ratio`` of online windows (once there are any), the rest offline.

    The batch's ``online`` field (bool, per row) says where each window came from."""

    def __init__(self, offline: WindowSampler, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"online.ratio must be in [0, 1], got {ratio}")
        self.offline, self.ratio = offline, ratio
        self.online: WindowSampler | None = None

    def online_count(self, batch_size: int) -> int:
        return 0 if self.online is None else round(self.ratio * batch_size)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        n_online = self.online_count(batch_size)
        parts = [(self.offline, batch_size - n_online, False), (self.online, n_online, True)]
        drawn = [(sampler.sample(n), n, flag) for sampler, n, flag in parts if n > 0]
        batch = {k: np.concatenate([windows[k] for windows, _, _ in drawn]) for k in drawn[0][0]}
        batch["online"] = np.concatenate([np.full(n, flag) for _, n, flag in drawn])
        return batch


@dataclass
class OnlineState:
    """Progress of the online phase, saved in checkpoints."""

    env_steps: int = 0
    episodes: tuple[int, ...] = ()
    """Ids in the online store of the episodes the replay holds."""

    def as_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "episodes": list(self.episodes)}

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> OnlineState:
        return cls() if state is None else cls(int(state["env_steps"]), tuple(int(e) for e in state["episodes"]))


class OnlineReplay:
    """The online episodes: the store they are appended to and a window sampler over those in use."""

    def __init__(self, location: str, window: WindowConfig, obs_keys: list[str], prepare_rewards: Callable,
                 seed: int) -> None:
        self.location, self.window, self.obs_keys = location, window, obs_keys
        self.prepare_rewards, self.seed = prepare_rewards, seed
        self.store: EpisodeStore | None = None

    def open(self, episodes: tuple[int, ...]) -> WindowSampler | None:
        """Open the store left by an earlier invocation; the sampler over ``episodes`` (None: no episodes)."""
        if not episodes:
            return None
        self.store = EpisodeStore.open(self.location, mode="a")
        if len(self.store) < max(episodes) + 1:
            raise ConfigError(f"{self.location} holds {len(self.store)} episodes, and the checkpoint learned from "
                              f"episode {max(episodes)}: the online store does not belong to this checkpoint")
        return self.sampler(episodes)

    def append(self, episodes: list[dict[str, np.ndarray]], success: np.ndarray) -> range:
        if self.store is None:
            exists = Path(self.location).exists()
            self.store = EpisodeStore.open(self.location, mode="a") if exists else EpisodeStore.create(self.location)
        data = {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}
        ends = np.cumsum([len(ep["action"]) for ep in episodes])
        return self.store.add_episodes(data, ends, {"success": success, "source": np.full(len(episodes), "policy",
                                                                                          dtype=object)})

    def sampler(self, episodes: tuple[int, ...]) -> WindowSampler:
        assert self.store is not None
        arrays = self.store.load([*self.obs_keys, "action", "reward", "terminal"])
        arrays["reward"] = self.prepare_rewards(arrays["reward"], arrays["terminal"])
        return WindowSampler(arrays, self.store.episode_ends, self.window, episodes=np.asarray(episodes),
                             seed=self.seed + len(episodes))


class EpisodeRecorder:
    """Per-env step records of a lockstep batch of episodes, cut at each env's end."""

    def __init__(self, num_envs: int) -> None:
        self.steps: list[list[dict[str, Any]]] = [[] for _ in range(num_envs)]
        self.done = np.zeros(num_envs, dtype=bool)
        self.success = np.zeros(num_envs, dtype=bool)
        self.returns = np.zeros(num_envs)

    def add(self, obs: dict[str, np.ndarray], action: np.ndarray, result: Any) -> int:
        """Record one lockstep env step; returns how many envs were still in their episode."""
        live = np.flatnonzero(~self.done)
        for i in live:
            self.steps[i].append({**{k: v[i] for k, v in obs.items()}, "action": action[i],
                                  "reward": np.float32(result.reward[i]), "terminal": bool(result.terminated[i])})
        self.returns[live] += result.reward[live]
        self.success[live] |= result.success[live]
        self.done[live] |= result.terminated[live] | result.truncated[live]
        return live.size

    def episodes(self) -> list[dict[str, np.ndarray]]:
        """Each env's episode as store arrays (an env that never stepped gives an empty dict)."""
        return [{k: np.stack([s[k] for s in steps]) for k in steps[0]} if steps else {} for steps in self.steps]


def finetune_online(cfg: Any, algo: Any, mixed: MixedSampler, replay: OnlineReplay, state: OnlineState,
                    make_batch: Callable[[dict[str, np.ndarray]], dict[str, torch.Tensor]], normalizer: Any,
                    obs_keys: list[str], device: torch.device, eval_env: Any, log: Callable[..., None],
                    checkpoint: Callable[[int, OnlineState, Any], None], progress: Any) -> Any:
    """The online phase (module docstring). ``log(step, metrics, prefix)``; ``checkpoint(step, state, eval)``
    saves (and marks best) at a global step; ``progress`` is the run's progress bar. Returns the last
    evaluation."""
    from robopol.tasks import make_env

    ocfg, tcfg = cfg.online, cfg.trainer
    total = ocfg.steps if tcfg.stop_after <= 0 else min(ocfg.steps, tcfg.stop_after - tcfg.steps)
    mixed.online = replay.open(state.episodes)
    env = make_env(cfg.task, num_envs=ocfg.envs, seed=cfg.seed)
    final_eval, last_ckpt, last_eval = None, state.env_steps, state.env_steps
    try:
        while state.env_steps < total:
            began, updates = time.perf_counter(), 0
            actor = ChunkActor(algo.eval_policy(), normalizer, obs_keys, "action", device)
            obs = env.reset(seed=cfg.seed + ONLINE_SEEDS + state.env_steps)
            recorder = EpisodeRecorder(env.num_envs)
            metrics: dict[str, float] = {}
            while not recorder.done.all() and state.env_steps < total:
                action = actor.act(obs)
                result = env.step(action)
                live = recorder.add(obs, action, result)
                state.env_steps += live
                obs = result.obs
                if state.env_steps >= ocfg.start:
                    for _ in range(ocfg.utd * live):
                        batch = mixed.sample(tcfg.batch_size)
                        metrics = algo.update(make_batch(batch))
                        metrics["online_fraction"] = float(batch["online"].mean())
                        updates += 1
            progress.update(state.env_steps - progress.n + tcfg.steps)
            finished = [i for i in range(env.num_envs) if recorder.steps[i]]
            episodes = recorder.episodes()
            ids = replay.append([episodes[i] for i in finished], recorder.success[finished])
            state.episodes = (*state.episodes, *ids)
            mixed.online = replay.sampler(state.episodes)
            step = tcfg.steps + state.env_steps
            log(step, {"episode_return": float(recorder.returns[finished].mean()),
                       "success_rate": float(recorder.success[finished].mean()), "episodes": len(state.episodes),
                       "updates": updates, "seconds": time.perf_counter() - began}, prefix="online")
            if metrics:
                log(step, metrics)
            evaluate_now = state.env_steps >= total or (ocfg.eval_every > 0
                                                        and state.env_steps - last_eval >= ocfg.eval_every)
            if evaluate_now and tcfg.eval_episodes > 0:
                last_eval = state.env_steps
                final_eval = evaluate(eval_env, ChunkActor(algo.eval_policy(), normalizer, obs_keys, "action",
                                                           device), tcfg.eval_episodes, seed=10_000 + cfg.seed)
                log(step, final_eval.as_dict(), prefix="eval")
            if state.env_steps >= total or state.env_steps - last_ckpt >= tcfg.ckpt_every or evaluate_now:
                last_ckpt = state.env_steps
                checkpoint(step, state, final_eval if evaluate_now else None)
    finally:
        env.close()
    return final_eval
