"""Replay stored episodes: re-execute their actions from their stored initial state, measure how far the
simulation drifts from the stored states, and optionally render them to MP4 (headless: ``MUJOCO_GL=egl``).

Each episode is reset with its stored seed (and task id), which restores what the simulator keeps outside
its physics state (goals, task definitions), then its stored initial ``state`` is written into the
simulator, and its actions are stepped one by one. The divergence at step ``t`` is the largest absolute
difference between the replayed and the stored state vector; MuJoCo is deterministic on one machine, so
freshly collected episodes replay with a divergence of exactly 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from robopol.data.store import EpisodeStore
from robopol.errors import ConfigError
from robopol.tasks import make_env
from robopol.video import write_mp4


def replay_store(path: str, task_cfg: DictConfig, episodes: list[int] | None = None, video: str | None = None,
                 width: int = 256, height: int = 256) -> list[dict[str, Any]]:
    """Replay ``episodes`` (default: all) of the store at ``path`` in ``task_cfg``'s env.

    Returns one dict per episode: ``episode``, ``seed``, ``task_id``, ``steps``, ``max_divergence`` (over
    the replayed steps), ``reset_divergence`` (the reset state against the stored initial state, before it
    is overwritten), ``success`` (stored) and ``replayed_success``, ``video`` (the MP4 path or None).
    ``video``: an MP4 path; with several episodes ``{episode}`` in it is replaced by the episode index (or
    ``_ep<i>`` is added before the suffix).
    """
    store = EpisodeStore.open(path, mode="r")
    recorded = store.attrs.get("task")
    if recorded is not None and recorded != task_cfg.name:
        raise ConfigError(f"store {path} holds episodes of task '{recorded}', not '{task_cfg.name}': "
                          f"replay it with task={recorded}")
    if "state" not in store.keys():
        raise ConfigError(f"store {path} has no 'state' data key: replay needs the simulator state that "
                          f"`robopol collect` records; this store has {store.keys()}")
    selected = list(range(len(store))) if episodes is None else [int(i) for i in episodes]
    for i in selected:
        if not 0 <= i < len(store):
            raise ConfigError(f"store {path} has {len(store)} episodes; episode {i} does not exist")
    task = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True))
    if "backend" in task:
        task.backend = "inprocess"
    env = make_env(task, num_envs=1, seed=0)
    if not hasattr(env, "set_state"):
        raise ConfigError(f"task '{task_cfg.name}' has no simulator state to replay")
    rows = []
    try:
        for i in selected:
            rows.append(_replay_one(store, env, i, _video_path(video, i, len(selected)), width, height))
    finally:
        env.close()
    return rows


def _video_path(video: str | None, episode: int, count: int) -> str | None:
    if not video:
        return None
    if "{episode}" in video:
        return video.format(episode=episode)
    if count == 1:
        return video
    p = Path(video)
    return str(p.with_name(f"{p.stem}_ep{episode}{p.suffix or '.mp4'}"))


def _replay_one(store: EpisodeStore, env: Any, i: int, video: str | None, width: int, height: int
                ) -> dict[str, Any]:
    data = store.get_episode(i, keys=["action", "state"])
    meta = store.episode_meta(i)
    actions, states = data["action"], data["state"]
    task_id = int(meta.get("task_id", 0))
    env.reset(seed=int(meta.get("seed", 0)), options={"task_id": task_id} if task_id > 0 else None)
    reset_divergence = float(np.max(np.abs(env.get_state(0) - states[0]), initial=0.0))
    env.set_state(0, states[0])
    frames = [env.render(0, width, height)] if video else []
    divergence, replayed_success, steps = 0.0, False, 0
    for t in range(len(actions)):
        if t > 0:
            divergence = max(divergence, float(np.max(np.abs(env.get_state(0) - states[t]), initial=0.0)))
        result = env.step(actions[t][None])
        steps += 1
        replayed_success |= bool(result.success[0])
        if video:
            frames.append(env.render(0, width, height))
        if (result.terminated[0] or result.truncated[0]) and t < len(actions) - 1:
            divergence = float("inf")  # the replay ended early: it cannot match the stored episode
            break
    if video:
        write_mp4(video, frames, fps=1.0 / env.spec.dt if env.spec.dt > 0 else 20.0)
    return {"episode": i, "seed": int(meta.get("seed", -1)), "task_id": task_id, "steps": steps,
            "max_divergence": divergence, "reset_divergence": reset_divergence,
            "success": bool(meta.get("success", False)), "replayed_success": replayed_success, "video": video}
