"""The on-policy training loop: batched env rollouts -> algorithm iterations -> metrics, checkpoints, evaluation.

``robopol train`` hands algorithms with ``online = True`` (``algo=ppo``) to :func:`train_online`. One
iteration collects ``algo.rollout_steps`` decisions from each of ``algo.num_envs`` envs and calls
``algo.update(rollout)``; ``trainer.steps``, ``log_every``, ``eval_every`` and ``ckpt_every`` count
iterations. Training logs the raw return and length of the episodes that ended during the iteration, env
steps and env steps per second. Evaluation runs the policy's mean action through the same
:class:`robopol.runtime.ChunkActor` as ``robopol eval``; ``checkpoints/best`` is the highest mean return.

Checkpoints hold the policy, critic and normalisation statistics, the optimiser and learning rate, and the
RNG states. A resumed run continues from the iteration it saved with the same weights and statistics, but
its envs start new episodes (with fresh seeds): rollouts in flight at the checkpoint are not saved, so the
continuation is a different (equally valid) trajectory from an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from tqdm.auto import tqdm

from robopol import distributed
from robopol.checkpoint import Checkpoint, load_checkpoint, mark_best, save_checkpoint
from robopol.data.normalize import Normalizer
from robopol.envs import BatchedEnv, EnvSpec
from robopol.errors import ConfigError
from robopol.runtime import ChunkActor, evaluate, record_video
from robopol.tasks import make_env
from robopol.train.run import MetricsLogger, RunDir, plot_metrics

ACTION_KEY = "action"
RESUME_SEED_STRIDE = 1_000_003
"""A resumed run resets its envs with ``seed + iteration * RESUME_SEED_STRIDE`` so episodes are not replayed."""
RANK_SEED_STRIDE = 100_003
"""Under torchrun, rank r's envs start from ``seed + r * RANK_SEED_STRIDE``."""


def flat_obs(obs: dict[str, Any], keys: list[str]) -> torch.Tensor:
    """Observation dict of (N, ...) arrays or tensors -> (N, obs_dim) float64 on the CPU, keys in ``keys`` order
    (as the runtime)."""
    return torch.cat([torch.as_tensor(obs[k], dtype=torch.float64).cpu().flatten(1) for k in keys], dim=-1)


def policy_normalizer(algo: Any, spec: EnvSpec, obs_keys: list[str]) -> Normalizer:
    """The runtime's view of the algorithm's normalisation: ``meanstd`` per observation key from the running
    statistics, and the action box mapped to [-1, 1] (``identity`` for unbounded actions)."""
    modes: dict[str, str] = {}
    stats: dict[str, dict[str, np.ndarray]] = {}
    mean = algo.obs_rms.mean.numpy() if algo.obs_norm else None
    std = algo.obs_rms.std().numpy() if algo.obs_norm else None
    at = 0
    for key in obs_keys:
        shape = tuple(spec.observation[key].shape)
        size = int(np.prod(shape))
        if mean is None:
            center, scale = np.zeros(size), np.ones(size)
        else:
            center, scale = mean[at:at + size], 1.0 / std[at:at + size]
        modes[key] = "meanstd"
        stats[key] = _stats(center.reshape(shape), scale.reshape(shape))
        at += size
    low, high = spec.action.low, spec.action.high
    shape = tuple(spec.action.shape)
    if low is None or high is None:
        modes[ACTION_KEY] = "identity"
        stats[ACTION_KEY] = _stats(np.zeros(shape), np.ones(shape))
    else:
        low, high = np.broadcast_to(low, shape).astype(np.float64), np.broadcast_to(high, shape).astype(np.float64)
        modes[ACTION_KEY] = "minmax"
        stats[ACTION_KEY] = _stats((low + high) / 2.0, 2.0 / (high - low))
    return Normalizer(modes, stats)


def init_policy_config(cfg: DictConfig, ckpt: Checkpoint) -> DictConfig:
    """``init=``: the run's config with the checkpoint's policy config (its weights must fit it)."""
    if "policy" not in ckpt.config or "obs_keys" not in ckpt.manifest:
        raise ConfigError(f"init={cfg.init}: {ckpt.path} is not a policy checkpoint (no policy config or obs_keys)")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.policy = ckpt.config.policy
    return cfg


def _load_init(cfg: DictConfig, ckpt: Checkpoint, policy: Any, obs_keys: list[str], obs_dim: int,
               action_dim: int) -> Normalizer:
    """Load the ``init=`` checkpoint's (EMA) weights into ``policy``; returns its normaliser. Errors if the
    checkpoint does not fit the task."""
    manifest = ckpt.manifest
    got = (list(manifest["obs_keys"]), manifest["obs_dim"], manifest["action_dim"])
    if got != (obs_keys, obs_dim, action_dim):
        raise ConfigError(f"init={cfg.init}: the checkpoint's observations {got[0]} ({got[1]} dims) and {got[2]} "
                          f"action dims do not fit task '{cfg.task.name}' ({obs_keys}, {obs_dim}, {action_dim})")
    ckpt.load_modules({"ema" if "ema" in ckpt.module_names() else "policy": policy})
    return Normalizer.from_state(*ckpt.normalizer())


def _flat_affine(normalizer: Normalizer, obs_keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The normaliser's per-key affine maps over the flat observation vector (keys in ``obs_keys`` order)."""
    center = [np.broadcast_to(normalizer.stats(k)["center"], normalizer.shape(k)).ravel() for k in obs_keys]
    scale = [np.broadcast_to(normalizer.stats(k)["scale"], normalizer.shape(k)).ravel() for k in obs_keys]
    return torch.as_tensor(np.concatenate(center)), torch.as_tensor(np.concatenate(scale))


def _stats(center: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Normalizer statistics for the affine map ``(x - center) * scale`` (the summary fields follow it)."""
    half = 1.0 / scale
    return {"scale": scale, "center": center, "min": center - half, "max": center + half, "mean": center,
            "std": half, "q01": center - half, "q99": center + half}


class EpisodeTracker:
    """Raw return and length of every env's current episode; collects those that end."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def step(self, reward: np.ndarray, ended: np.ndarray, stepped: np.ndarray | None = None) -> None:
        """One env step; ``stepped`` marks the envs that took it (default: all)."""
        self.returns += reward
        self.lengths += 1 if stepped is None else stepped
        for i in np.flatnonzero(ended):
            self.finished.append((float(self.returns[i]), int(self.lengths[i])))
        self.returns[ended] = 0.0
        self.lengths[ended] = 0

    def drain(self) -> dict[str, float]:
        if not self.finished:
            return {}
        returns, lengths = zip(*self.finished, strict=True)
        self.finished = []
        return {"episode_return": float(np.mean(returns)), "episode_length": float(np.mean(lengths)),
                "episodes": float(len(returns))}


def merge_episode_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """:meth:`EpisodeTracker.drain` outputs of several ranks as one, weighted by their episode counts."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    total = sum(p["episodes"] for p in parts)
    return {"episode_return": sum(p["episode_return"] * p["episodes"] for p in parts) / total,
            "episode_length": sum(p["episode_length"] * p["episodes"] for p in parts) / total, "episodes": total}


def collect_rollout(env: BatchedEnv, algo: Any, obs: dict[str, Any], obs_keys: list[str],
                    normalizer: Normalizer, tracker: EpisodeTracker) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``algo.rollout_steps`` decisions of every env. Returns the ``(T, N, ...)`` rollout and the observation
    to continue from. Sampled actions are stored as drawn and clipped to the action box only for the env.

    A decision is one action (``(N, A)`` from ``algo.act``) or a chunk executed open loop (``(N, Ta, A)``, as
    DPPO does): its reward is the sum of the rewards up to the chunk's end or the episode's, whichever comes
    first. ``env`` runs without auto-reset: an env whose episode ends waits (the rest of its chunk is not
    executed) and starts its next episode at the next decision (``env.reset_done()``)."""
    steps: list[dict[str, torch.Tensor]] = []
    tensor_env = hasattr(env, "step_tensors")
    for _ in range(algo.rollout_steps):
        norm_obs = algo.normalize_obs(flat_obs(obs, obs_keys), update=True)
        out = algo.act(norm_obs)
        chunk = out["action"] if out["action"].dim() == 3 else out["action"][:, None]
        reward = torch.zeros(env.num_envs)
        ended = torch.zeros(env.num_envs, dtype=torch.bool)
        terminated = torch.zeros(env.num_envs, dtype=torch.bool)
        for action in chunk.unbind(1):
            command = normalizer.unnormalize(ACTION_KEY, action.clamp(-1.0, 1.0).double())
            command = command.reshape(env.num_envs, *env.spec.action.shape)
            # Envs with a tensor path (Isaac Lab) keep actions and results as tensors: no numpy per step.
            result = env.step_tensors(command) if tensor_env else env.step(command.numpy())
            live = ~ended
            step_reward = torch.where(live, torch.as_tensor(result.reward, dtype=torch.float32).cpu(), 0.0)
            ends_now = live & torch.as_tensor(result.terminated | result.truncated).cpu()
            reward += step_reward
            terminated |= live & torch.as_tensor(result.terminated).cpu()
            ended |= ends_now
            tracker.step(step_reward.double().numpy(), ends_now.numpy(), live.numpy())
            obs = result.obs
            if ended.all():
                break
        # ended envs still show their episode's last observation: value it, then start their next episode
        next_value = torch.where(terminated, 0.0, algo.value(algo.normalize_obs(flat_obs(obs, obs_keys))))
        steps.append({"obs": norm_obs, **out, "reward": algo.scale_rewards(reward, ended),
                      "next_value": next_value, "episode_end": ended})
        if ended.any():
            obs = env.reset_done_tensors() if tensor_env else env.reset_done()
    rollout = {k: torch.stack([s[k] for s in steps]) for k in steps[0]}
    return rollout, obs


def train_online(cfg: DictConfig, run_root: str | Path, overrides: list[str] | None = None) -> Any:
    """Train an on-policy algorithm as ``cfg`` says in ``run_root`` (see the module docstring); returns the
    trainer's ``TrainResult``."""
    from robopol.train.trainer import TrainResult, seed_everything

    t0 = time.perf_counter()
    tcfg = cfg.trainer
    for key in ("steps", "log_every", "ckpt_every"):
        if tcfg[key] < 1:
            raise ConfigError(f"trainer.{key} must be at least 1, got {tcfg[key]}")
    if cfg.data:
        raise ConfigError(f"algo={cfg.algo.name} learns from its own rollouts; drop data={cfg.data}")
    if cfg.device != "cpu":
        raise ConfigError(f"algo={cfg.algo.name} runs on the CPU with the CPU simulators; drop device={cfg.device}")
    if cfg.teacher:
        raise ConfigError(f"teacher={cfg.teacher} is only used by algo=distill; to fine-tune a policy use init=")
    if tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    rank, _ = distributed.setup(cfg.device, tcfg.dist_timeout_s)
    init = load_checkpoint(cfg.init) if cfg.init else None
    if init is not None:
        cfg = init_policy_config(cfg, init)
    run = RunDir(distributed.broadcast_object(str(run_root)), create=rank.is_main)
    if rank.is_main:
        run.save_config(cfg)
    seed_everything(cfg.seed)

    env = make_env(cfg.task, num_envs=cfg.algo.num_envs, seed=cfg.seed + rank.rank * RANK_SEED_STRIDE)
    eval_env = None
    try:  # the envs (worker processes, for most tasks) close whatever happens
        if not hasattr(env, "reset_done"):
            raise ConfigError(f"task '{cfg.task.name}': its env ({type(env).__name__}) cannot restart the episodes "
                              f"that ended (reset_done), which rollouts need; use a robopol.sim task")
        if tcfg.eval_episodes:
            # Isaac Lab allows one simulation per process: such tasks evaluate on the training envs.
            eval_env = env if getattr(env, "one_per_process", False) else \
                make_env(cfg.task, num_envs=min(10, tcfg.eval_episodes), seed=cfg.seed)
        final_eval, last = _train(cfg, run, env, eval_env, overrides, init, rank)
    finally:
        env.close()
        if eval_env is not None and eval_env is not env:
            eval_env.close()
    if rank.is_main:
        plot_metrics(run.metrics, run.plots / "training.png")
    distributed.barrier()
    return TrainResult(run.root, last, time.perf_counter() - t0, final_eval)


def _train(cfg: DictConfig, run: RunDir, env: BatchedEnv, eval_env: BatchedEnv | None,
           overrides: list[str] | None, init: Checkpoint | None, rank: distributed.Dist) -> tuple[Any, int]:
    """The body of :func:`train_online` once its envs exist (``init``: the policy checkpoint to fine-tune);
    returns the last evaluation and iteration. Under torchrun every rank collects its own rollouts."""
    from robopol.train.trainer import (
        _rank_rng_state,
        _set_rng_states,
        _skip_log,
        build,
        rank_rng_states,
        start_ranks,
    )

    tcfg = cfg.trainer
    spec = env.spec
    obs_keys = sorted(spec.observation)
    obs_dim = sum(int(np.prod(spec.observation[k].shape)) for k in obs_keys)
    action_dim = int(np.prod(spec.action.shape))
    policy = build(cfg.policy, "policy", obs_dim=obs_dim, action_dim=action_dim)
    init_normalizer = _load_init(cfg, init, policy, obs_keys, obs_dim, action_dim) if init is not None else None
    algo = build(cfg.algo, "algo", policy=policy, total_steps=tcfg.steps)
    if init_normalizer is not None:
        algo.fix_obs_normalization(*_flat_affine(init_normalizer, obs_keys))
    start_ranks(algo, cfg.seed, rank)  # each rank samples its own actions and minibatches

    def runtime_normalizer() -> Normalizer:
        """What deployment normalises with: the fine-tuned policy's own, else the running statistics."""
        return init_normalizer if init_normalizer is not None else policy_normalizer(algo, spec, obs_keys)

    start, best_return = 0, -float("inf")
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        ckpt.load_modules(algo.modules())
        state = ckpt.training_state()
        algo.load_state_dict(state["algo"])
        _set_rng_states(_rank_rng_state(state, rank, cfg.resume))
        best_return, start = state["best_return"], ckpt.step
        if start >= tcfg.steps:
            raise ConfigError(f"resume={cfg.resume} is already at iteration {start}; raise trainer.steps above it")
    if overrides is not None and rank.is_main:
        run.record_overrides(overrides)
    logger = MetricsLogger(run, resume_step=start if cfg.resume else None) if rank.is_main else None
    log = logger.log if logger is not None else _skip_log
    extra = {"env_spec": spec.describe(), "obs_keys": obs_keys, "action_key": ACTION_KEY, "obs_dim": obs_dim,
             "action_dim": action_dim}

    def checkpoint(iteration: int) -> None:
        rng = rank_rng_states(rank)
        if not rank.is_main:
            return
        normalizer = runtime_normalizer()
        save_checkpoint(run.checkpoints, step=iteration, modules=algo.modules(), config=cfg,
                        normalizer=(normalizer.spec(), normalizer.state_dict()),
                        training_state={"step": iteration, "algo": algo.state_dict(), "best_return": best_return,
                                        **rng},
                        extra=extra)

    obs = env.reset(seed=cfg.seed + rank.rank * RANK_SEED_STRIDE + start * RESUME_SEED_STRIDE)
    tracker = EpisodeTracker(env.num_envs)
    transitions = algo.num_envs * algo.rollout_steps * rank.world_size  # env steps of all ranks together
    last = tcfg.steps if tcfg.stop_after <= 0 else min(tcfg.stop_after, tcfg.steps)
    final_eval = None
    bar = tqdm(total=tcfg.steps, initial=start, desc=f"train {cfg.algo.name} on {cfg.task.name}", unit="iter",
               disable=not (tcfg.progress and rank.is_main), dynamic_ncols=True)
    for iteration in range(start + 1, last + 1):
        began = time.perf_counter()
        rollout, obs = collect_rollout(env, algo, obs, obs_keys, runtime_normalizer(), tracker)
        rollout_seconds = time.perf_counter() - began
        metrics = algo.update(rollout)
        bar.update(1)
        if iteration % tcfg.log_every == 0 or iteration == last:
            episodes = merge_episode_stats(distributed.gather_objects(tracker.drain()))  # ended since the last record
            metrics = distributed.mean_metrics({**metrics, "iteration_s": time.perf_counter() - began,
                                                "rollout_s": rollout_seconds})
            metrics.update(episodes, env_steps=iteration * transitions,
                           env_steps_per_s=transitions / metrics.pop("rollout_s"))
            log(iteration, metrics)
            if episodes:
                bar.set_postfix(ret=f"{episodes['episode_return']:.1f}")
        if tcfg.eval_episodes > 0 and (iteration == tcfg.steps or
                                       (tcfg.eval_every > 0 and iteration % tcfg.eval_every == 0)):
            actor = ChunkActor(algo.eval_policy(), runtime_normalizer(), obs_keys, ACTION_KEY)
            final_eval = evaluate(eval_env, actor, tcfg.eval_episodes, seed=10_000 + cfg.seed, ranks=rank)
            log(iteration, {**final_eval.as_dict(), "env_steps": iteration * transitions}, prefix="eval")
            if eval_env is env:  # the evaluation ended the rollout's episodes: start new ones
                obs = env.reset(seed=cfg.seed + rank.rank * RANK_SEED_STRIDE + iteration * RESUME_SEED_STRIDE)
            if tcfg.videos and rank.is_main:
                record_video(eval_env, actor, run.videos / f"iter_{iteration:06d}.mp4", seed=10_000 + cfg.seed)
            if final_eval.mean_return > best_return:
                best_return = final_eval.mean_return
                checkpoint(iteration)
                if rank.is_main:
                    mark_best(run.checkpoints, iteration)
                continue
        if iteration % tcfg.ckpt_every == 0 or iteration == last:
            checkpoint(iteration)
    bar.close()
    if logger is not None:
        logger.close()
    return final_eval, last
