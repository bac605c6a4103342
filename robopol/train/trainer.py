"""The training loop: data -> windows -> algorithm updates -> metrics, checkpoints, evaluation.

One function, ``train(cfg, run_root)``, serves every algorithm whose object has ``update(batch)``,
``modules()``, ``eval_policy()``, ``validation_loss(batch)`` and ``state_dict()``/``load_state_dict()``.
Resuming from a run directory restores weights, optimizer and scheduler, the sampler position and every RNG,
so N steps + resume + N steps equals 2N steps bit for bit on CPU. With ``online.steps``, the chunk-critic
algorithms then go on learning from their own episodes (:mod:`robopol.train.finetune`). Algorithms that learn
only from their own rollouts (``online = True``) go to :func:`robopol.train.online.train_online` instead.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from tqdm.auto import tqdm

from robopol import distributed
from robopol.checkpoint import Checkpoint, load_checkpoint, mark_best, save_checkpoint
from robopol.data.normalize import Normalizer
from robopol.data.remote import cached_store
from robopol.data.sampler import WindowConfig, WindowSampler, split_episodes
from robopol.data.store import EpisodeStore
from robopol.data.validate import check_store
from robopol.envs import EnvSpec
from robopol.errors import ConfigError
from robopol.runtime import ChunkActor, EvalResult, evaluate, obs_features, record_video
from robopol.tasks import make_env
from robopol.train.finetune import ONLINE_STORE, MixedSampler, OnlineReplay, OnlineState, finetune_online
from robopol.train.run import MetricsLogger, RunDir, plot_metrics

ACTION_KEY = "action"
PRECISIONS = ("fp32", "bf16")
RELABELLED_GOAL = "relabelled_goal"


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_eval: EvalResult | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_batch(windows: dict[str, np.ndarray], obs_keys: list[str], normalizer: Normalizer,
             device: torch.device, step_keys: tuple[str, ...] = (),
             goal_key: str | None = None) -> dict[str, torch.Tensor]:
    """Sampler windows (raw numpy) -> normalised torch batch: ``obs`` (B, To, D), ``action`` (B, H, A), the
    chunk-critic fields when the windows have them, and per-step ``step_keys`` (B, H) as stored.

    With relabelled goals in the windows, the ``goal_key`` observation (and the next observation's) is the
    relabelled goal at every history step, and ``goal_offset`` (B,) counts the steps from the anchor to the
    goal's step (negative: the goal lies elsewhere)."""
    if goal_key is not None and "goal_index" in windows:
        windows = dict(windows)
        for key in (goal_key, f"next_obs.{goal_key}"):
            if key in windows:
                windows[key] = np.repeat(windows[RELABELLED_GOAL][:, None], windows[key].shape[1], axis=1)
    obs = {k: torch.as_tensor(windows[k], device=device) for k in obs_keys}
    batch = {
        "obs": obs_features(obs, obs_keys, normalizer).float(),
        "action": normalizer.normalize(ACTION_KEY, torch.as_tensor(windows[ACTION_KEY], device=device)).float(),
        "action_is_pad": torch.as_tensor(windows["action_is_pad"], device=device),
    }
    if "reward_sum" in windows:  # chunk-critic fields (see robopol.data.sampler)
        next_obs = {k: torch.as_tensor(windows[f"next_obs.{k}"], device=device) for k in obs_keys}
        batch["next_obs"] = obs_features(next_obs, obs_keys, normalizer).float()
        for key in ("reward_sum", "discount"):
            batch[key] = torch.as_tensor(windows[key], device=device).float()
        for key in ("mask", "valid", "terminal", "truncated"):
            batch[key] = torch.as_tensor(windows[key], device=device)
    for key in step_keys:
        batch[key] = torch.as_tensor(windows[key], device=device)
    if "goal_index" in windows:
        batch["goal_offset"] = torch.as_tensor(windows["goal_index"] - windows["index"], device=device)
    return batch


def train(cfg: DictConfig, run_root: str | Path, overrides: list[str] | None = None) -> TrainResult:
    """Train as ``cfg`` says in ``run_root``; ``overrides`` (the command line) are recorded for ``resume=``."""
    if getattr(get_class(cfg.algo._target_), "online", False):
        from robopol.train.online import train_online

        return train_online(cfg, run_root, overrides)
    if cfg.init:
        raise ConfigError(f"init={cfg.init} fine-tunes a policy with an online algorithm (algo=dppo); "
                          f"algo={cfg.algo.name} trains from data (to continue a run, use resume=)")
    t0 = time.perf_counter()
    tcfg = cfg.trainer
    for key in ("steps", "batch_size", "log_every", "ckpt_every"):
        if tcfg[key] < 1:
            raise ConfigError(f"trainer.{key} must be at least 1, got {tcfg[key]}")
    if tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    if tcfg.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got '{tcfg.precision}'")
    rank, device = distributed.setup(cfg.device, tcfg.dist_timeout_s)
    if rank.enabled and cfg.online.steps > 0:
        raise ConfigError(f"online.steps={cfg.online.steps}: the offline-to-online phase runs in one process; "
                          "launch it without torchrun")
    teacher_ckpt = load_checkpoint(cfg.teacher) if _check_teacher(cfg, overrides or []) else None
    if teacher_ckpt is not None:
        cfg = student_config(cfg, teacher_ckpt)
    run = RunDir(distributed.broadcast_object(str(run_root)), create=rank.is_main)
    if rank.is_main:
        run.save_config(cfg)
    seed_everything(cfg.seed)

    env = make_env(cfg.task, num_envs=min(10, tcfg.eval_episodes) or 1, seed=cfg.seed)
    obs_keys = sorted(env.spec.observation)
    data_location = cfg.data or _collect_demos(cfg, run, rank.is_main)
    if cfg.data_cache:
        data_location = _cached_data(data_location, cfg.data_cache, rank)
    store = EpisodeStore.open(data_location)
    check_store(store, required_keys=[*obs_keys, ACTION_KEY])
    arrays = store.load([*obs_keys, ACTION_KEY])
    _check_data_matches_task(arrays, env.spec, data_location)

    obs_dim = sum(int(np.prod(arrays[k].shape[1:])) for k in obs_keys)
    action_dim = int(np.prod(arrays[ACTION_KEY].shape[1:]))
    pcfg = cfg.policy
    policy = build(pcfg, "policy", obs_dim=obs_dim, action_dim=action_dim).to(device)
    teacher = None
    if teacher_ckpt is not None:  # the student starts from the teacher's weights
        teacher = _load_teacher(teacher_ckpt, obs_dim, action_dim).to(device)
        policy.head.load_state_dict(teacher.state_dict())
    algo = build(cfg.algo, "algo", policy=policy, total_steps=tcfg.steps,
                 **({"teacher": teacher} if teacher is not None else {}))
    start_ranks(algo, cfg.seed, rank)
    if tcfg.compile:
        _compile_networks(algo)
    online = cfg.online.steps > 0
    if online:
        _check_online(cfg, algo)
    options = algo.window_options() if hasattr(algo, "window_options") else {}
    if options.get("critic"):
        arrays.update(_load_rewards(store, data_location, algo))
    relabel_goals, goal_from = options.pop("relabel_goals", False), options.pop("goal_from", "")
    goal_key = env.spec.goal_key if relabel_goals else None
    if relabel_goals:
        options.update(goal_key=_goal_source(env.spec, goal_from, algo.name), goal_out_key=RELABELLED_GOAL)
    step_keys = tuple(options.get("step_keys", ()))
    missing = [k for k in step_keys if k not in store.keys()]
    if missing:
        raise ConfigError(f"algo={algo.name} reads the per-step {missing} flags, and store {data_location} has "
                          f"none; record them (e.g. human takeovers as 'intervention') or turn the option off")
    arrays.update(store.load(list(step_keys)) if step_keys else {})

    train_eps, val_eps = split_episodes(len(store), tcfg.val_fraction, seed=cfg.seed)
    window = WindowConfig(obs_keys=tuple(obs_keys), action_key=ACTION_KEY, obs_steps=policy.obs_steps,
                          **{"horizon": policy.horizon, **options})
    sampler = WindowSampler(arrays, store.episode_ends, window, episodes=train_eps, seed=cfg.seed)
    val_sampler = (WindowSampler(arrays, store.episode_ends, window, episodes=val_eps, seed=cfg.seed + 1)
                   if len(val_eps) else None)
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None or teacher_ckpt is not None:  # the statistics the weights were trained with
        normalizer = Normalizer.from_state(*(ckpt or teacher_ckpt).normalizer())
    else:
        starts = store.episode_starts
        train_steps = np.concatenate([np.arange(starts[e], store.episode_ends[e]) for e in train_eps])
        normalizer = Normalizer.fit({k: arrays[k][train_steps] for k in [*obs_keys, ACTION_KEY]},
                                    modes={k: "minmax" for k in [*obs_keys, ACTION_KEY]})

    start = 0
    best_success = -1.0  # success rate of checkpoints/best
    online_state = OnlineState()
    if ckpt is not None:
        ckpt.load_modules(algo.modules())
        state = ckpt.training_state()
        algo.load_state_dict(state["algo"])
        sampler.load_state_dict(state["sampler"])
        if val_sampler is not None:
            val_sampler.load_state_dict(state["val_sampler"])
        _set_rng_states(_rank_rng_state(state, rank, cfg.resume))
        best_success = state["best_success"]
        online_state = OnlineState.from_dict(state.get("online"))
        start = ckpt.step
        if start >= tcfg.steps + cfg.online.steps:
            raise ConfigError(f"resume={cfg.resume} is already at step {start}; raise trainer.steps (or "
                              f"online.steps) above it")

    if overrides is not None and rank.is_main:  # only now: a resume that failed to load must not change the record
        run.record_overrides(overrides)
    logger = MetricsLogger(run, resume_step=start if ckpt is not None else None) if rank.is_main else None
    log = logger.log if logger is not None else _skip_log
    extra = {"env_spec": env.spec.describe(), "obs_keys": obs_keys, "action_key": ACTION_KEY,
             "obs_dim": obs_dim, "action_dim": action_dim}

    def checkpoint(step: int) -> None:
        rng = rank_rng_states(rank)  # a collective: every rank checkpoints at the same steps
        if not rank.is_main:
            return
        save_checkpoint(
            run.checkpoints, step=step, modules=algo.modules(), config=cfg,
            normalizer=(normalizer.spec(), normalizer.state_dict()),
            training_state={"step": step, "algo": algo.state_dict(), "sampler": sampler.state_dict(),
                            "val_sampler": val_sampler.state_dict() if val_sampler is not None else None,
                            "best_success": best_success, "online": online_state.as_dict(), **rng},
            extra=extra,
        )

    last = tcfg.steps if tcfg.stop_after <= 0 else min(tcfg.stop_after, tcfg.steps)
    final_eval = None
    bar = tqdm(total=tcfg.steps + cfg.online.steps, initial=start, desc=f"train {cfg.algo.name}/{pcfg.name}",
               unit="step", disable=not (tcfg.progress and rank.is_main), dynamic_ncols=True)
    update_seconds, updates = 0.0, 0  # time spent sampling and updating since the last record
    precision = _autocast(device, tcfg.precision)
    for step in range(start + 1, last + 1):
        began = time.perf_counter()
        windows = sampler.sample(tcfg.batch_size, rank.rank, rank.world_size)
        batch = to_batch(windows, obs_keys, normalizer, device, step_keys, goal_key)
        with precision:
            metrics = algo.update(batch)
        update_seconds, updates = update_seconds + time.perf_counter() - began, updates + 1
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            metrics["step_ms"] = 1000 * update_seconds / updates
            metrics = distributed.mean_metrics(metrics)
            update_seconds, updates = 0.0, 0
            if val_sampler is not None:
                val_batch = to_batch(val_sampler.sample(tcfg.batch_size, rank.rank, rank.world_size), obs_keys,
                                     normalizer, device, step_keys, goal_key)
                val_loss = distributed.mean_metrics({"loss": algo.validation_loss(val_batch)})
                log(step, val_loss, prefix="val")
            log(step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        evaluate_now = step == tcfg.steps or (tcfg.eval_every > 0 and step % tcfg.eval_every == 0)
        if evaluate_now and tcfg.eval_episodes > 0:
            actor = ChunkActor(algo.eval_policy(), normalizer, obs_keys, ACTION_KEY, device)
            final_eval = evaluate(env, actor, tcfg.eval_episodes, seed=10_000 + cfg.seed, ranks=rank)
            log(step, final_eval.as_dict(), prefix="eval")
            if tcfg.videos and rank.is_main:
                record_video(env, actor, run.videos / f"step_{step:08d}.mp4", seed=10_000 + cfg.seed)
            if final_eval.success_rate > best_success:
                best_success = final_eval.success_rate
                checkpoint(step)
                if rank.is_main:
                    mark_best(run.checkpoints, step)
                continue  # this step is saved already
        if step % tcfg.ckpt_every == 0 or step == last:
            checkpoint(step)
    if online and (tcfg.stop_after <= 0 or tcfg.stop_after > tcfg.steps):

        def online_checkpoint(step: int, state: OnlineState, result: Any) -> None:
            nonlocal best_success, online_state
            online_state = state
            if result is not None and result.success_rate > best_success:
                best_success = result.success_rate
                checkpoint(step)
                mark_best(run.checkpoints, step)
            else:
                checkpoint(step)

        replay = OnlineReplay(str(run.root / ONLINE_STORE), window, obs_keys, algo.prepare_rewards, cfg.seed)
        final_eval = finetune_online(
            cfg, algo, MixedSampler(sampler, cfg.online.ratio), replay, online_state,
            lambda windows: to_batch(windows, obs_keys, normalizer, device, step_keys, goal_key), normalizer,
            obs_keys, device, env, logger.log, online_checkpoint, bar) or final_eval
        last = tcfg.steps + online_state.env_steps
    bar.close()
    env.close()
    if logger is not None:
        logger.close()
        plot_metrics(run.metrics, run.plots / "training.png")
    distributed.barrier()  # rank 0's files are complete when any rank returns
    return TrainResult(run.root, last, time.perf_counter() - t0, final_eval)


def build(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """``instantiate`` with a constructor's ValueError turned into a one-line config error."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError | TypeError) else err
        raise ConfigError(f"{group}={node.name}: {cause}") from err


def _check_teacher(cfg: DictConfig, overrides: list[str]) -> bool:
    """Whether this run distils a teacher; errors for a teacher without algo=distill and vice versa."""
    distill = cfg.algo.name == "distill"
    if distill and not cfg.teacher:
        raise ConfigError("algo=distill needs teacher=<run or checkpoint directory of a diffusion or flow policy>")
    if cfg.teacher and not distill:
        raise ConfigError(f"teacher={cfg.teacher} is only used by algo=distill, got algo={cfg.algo.name}")
    given = [o for o in overrides if o.split("=")[0].lstrip("+~").split(".")[0] in ("task", "policy")]
    if distill and given:
        raise ConfigError(f"algo=distill takes the task and policy from the teacher checkpoint; drop "
                          f"{' '.join(given)}")
    return distill


def student_config(cfg: DictConfig, teacher: Checkpoint) -> DictConfig:
    """The run's config with the teacher's task, the student policy around the teacher's head and, when
    ``data`` is empty, the teacher's data (its ``data`` or the demonstrations collected into its run)."""
    from robopol.policies.base import GenerativePolicy

    head = teacher.config.policy
    if not issubclass(get_class(head._target_), GenerativePolicy):
        raise ConfigError(f"teacher={cfg.teacher} is a '{head.name}' policy; algo=distill needs a diffusion or "
                          "flow teacher")
    student = OmegaConf.create({"name": "consistency", "_target_": "robopol.policies.consistency.ConsistencyPolicy",
                                "_recursive_": False, "head": OmegaConf.to_container(head),
                                "sampler": "consistency", "inference_steps": 1})
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.task = teacher.config.task
        cfg.policy = student
        if not cfg.data:
            cfg.data = teacher.config.get("data") or str(teacher.path.parent.parent / "demos.zarr")
    return cfg


def _load_teacher(ckpt: Checkpoint, obs_dim: int, action_dim: int) -> nn.Module:
    if (ckpt.manifest.get("obs_dim"), ckpt.manifest.get("action_dim")) != (obs_dim, action_dim):
        raise ConfigError(f"teacher {ckpt.path} was trained on {ckpt.manifest.get('obs_dim')}-d observations and "
                          f"{ckpt.manifest.get('action_dim')}-d actions, the data has {obs_dim} and {action_dim}")
    teacher = build(ckpt.config.policy, "policy", obs_dim=obs_dim, action_dim=action_dim)
    ckpt.load_modules({"ema" if "ema" in ckpt.module_names() else "policy": teacher})
    return teacher


def _check_online(cfg: DictConfig, algo: Any) -> None:
    """The online phase's settings, and an algorithm that can continue online."""
    if not getattr(algo, "online_finetune", False):
        raise ConfigError(f"online.steps={cfg.online.steps}: algo={cfg.algo.name} has no online phase; offline-to-online "
                          f"fine-tuning runs algo=qc, dqc or ofql")
    for key in ("envs", "utd"):
        if cfg.online[key] < 1:
            raise ConfigError(f"online.{key} must be at least 1, got {cfg.online[key]}")
    if cfg.online.start < 0 or cfg.online.eval_every < 0:
        raise ConfigError(f"online.start and online.eval_every must be >= 0, got {cfg.online.start} and "
                          f"{cfg.online.eval_every}")
    if not 0.0 <= cfg.online.ratio <= 1.0:
        raise ConfigError(f"online.ratio must be in [0, 1], got {cfg.online.ratio}")


def _collect_demos(cfg: DictConfig, run: RunDir, main: bool) -> str:
    """``data`` empty: collect ``demos`` expert episodes of the task into the run directory (rank 0 collects
    while the other ranks wait)."""
    from robopol.collect import collect_episodes

    location = str(run.root / "demos.zarr")
    if main and not Path(location).exists():
        collect_episodes(cfg.task, location, episodes=cfg.demos, seed=cfg.seed, progress=cfg.trainer.progress,
                         num_workers=2)
    distributed.barrier()
    return location


def _cached_data(location: str, cache_dir: str, rank: distributed.Dist) -> str:
    """The local copy of a remote store; one process per machine (local rank 0) copies it first."""
    if rank.local_rank == 0:
        cached_store(location, cache_dir)
    distributed.barrier()
    return cached_store(location, cache_dir)  # up to date now: only compares, no copy


def _skip_log(step: int, metrics: dict[str, float], prefix: str = "train") -> None:
    """Ranks other than 0 log nothing."""


def _autocast(device: torch.device, precision: str) -> Any:
    """``trainer.precision=bf16``: bfloat16 autocast around each update (weights and optimiser stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _compile_networks(algo: Any) -> None:
    """``trainer.compile``: ``torch.compile`` each network in place (state-dict keys unchanged): a policy's
    backbone (``.net``), and critics, which are called directly."""
    for module in algo.modules().values():
        network = getattr(module, "net", module)
        if type(network).forward is not nn.Module.forward:
            network.compile()


def start_ranks(algo: Any, seed: int, rank: distributed.Dist) -> None:
    """Under torchrun: every rank starts from rank 0's weights, and ranks above 0 reseed so that their
    sampling noise differs (weights and data order stay shared)."""
    distributed.broadcast_modules(algo.modules().values())
    if rank.rank > 0:
        seed_everything(seed + 7919 * rank.rank)


def rank_rng_states(rank: distributed.Dist) -> dict[str, Any]:
    """The checkpoint's RNG entries: ``rng`` (rank 0's) and, under torchrun, every rank's as ``rng_ranks``
    (a collective: all ranks must call it)."""
    states = distributed.gather_objects(_rng_states())
    return {"rng": states[0], **({"rng_ranks": states} if rank.enabled else {})}


def _rank_rng_state(state: dict[str, Any], rank: distributed.Dist, resume: str) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint, which must come from a job of the same size."""
    saved = len(state.get("rng_ranks", [None]))
    if saved != rank.world_size:
        raise ConfigError(f"resume={resume} was trained by {saved} process(es) and this job has {rank.world_size}; "
                          f"launch it with torchrun --nproc_per_node={saved} (sampler shards and RNG streams are per "
                          f"process), or start a new run from its weights")
    return state["rng_ranks"][rank.rank] if rank.enabled else state["rng"]


def _load_rewards(store: EpisodeStore, location: str, algo: Any) -> dict[str, np.ndarray]:
    """The per-step ``reward`` (as the algorithm reads it) and ``terminal`` arrays a critic learns from."""
    keys = set(store.keys())
    if "reward" not in keys:
        raise ConfigError(f"algo={algo.name} learns from rewards, and store {location} has no per-step 'reward' "
                          f"key; collect it with `robopol collect` or convert a dataset that has rewards")
    terminal = store.load(["terminal"])["terminal"] if "terminal" in keys else None
    try:
        reward = algo.prepare_rewards(store.load(["reward"])["reward"], terminal)
    except ValueError as err:
        raise ConfigError(f"algo={algo.name} on {location}: {err}") from err
    return {"reward": reward, **({"terminal": terminal} if terminal is not None else {})}


def _goal_source(spec: EnvSpec, goal_from: str, algo: str) -> str:
    """The observation key relabelled goals are taken from: ``goal_from``, or the one key shaped like the goal."""
    if spec.goal_key is None:
        raise ConfigError(f"algo={algo} relabels goals, and task '{spec.task}' has no goal observation; use a "
                          f"goal-conditioned task or turn algo.relabel off")
    shape = spec.observation[spec.goal_key].shape
    candidates = [k for k, v in spec.observation.items() if k != spec.goal_key and v.shape == shape]
    if goal_from:
        if goal_from not in candidates:
            raise ConfigError(f"algo.goal_from={goal_from} must be an observation key of task '{spec.task}' shaped "
                              f"like its goal {tuple(shape)}: one of {candidates}")
        return goal_from
    if len(candidates) != 1:
        raise ConfigError(f"task '{spec.task}' has {len(candidates)} observation keys shaped like its goal "
                          f"{tuple(shape)} ({candidates}); name the one goals come from with algo.goal_from=")
    return candidates[0]


def _check_data_matches_task(arrays: dict[str, np.ndarray], spec: EnvSpec, location: str) -> None:
    expected = {**{k: v.shape for k, v in spec.observation.items()}, ACTION_KEY: spec.action.shape}
    wrong = [f"'{k}' has per-step shape {arrays[k].shape[1:]}, task '{spec.task}' needs {shape}"
             for k, shape in expected.items() if arrays[k].shape[1:] != tuple(shape)]
    if wrong:
        raise ConfigError(f"store {location} does not fit task '{spec.task}': " + "; ".join(wrong))


def _rng_states() -> dict[str, Any]:
    """Global RNGs; numpy randomness goes through seeded Generators whose states are saved by their owners."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
