"""What each ``robopol`` subcommand does with its composed config."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from robopol.errors import ConfigError

console = Console(soft_wrap=True)  # long paths stay on one line, copy-pasteable


def train_command(cfg: DictConfig) -> None:
    from robopol import distributed
    from robopol.train.trainer import train

    hydra_cfg = HydraConfig.get()
    result = train(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))
    distributed.shutdown()
    if not _rank_zero():
        return
    console.print(f"trained {result.steps} steps in {result.seconds:.1f} s; run directory: {result.run_dir}")
    if result.final_eval is not None:
        _print_eval(result.final_eval.as_dict())


def _rank_zero() -> bool:
    """Whether this process reports: always, except for ranks above 0 under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def demo_command(cfg: DictConfig) -> None:
    from robopol import distributed
    from robopol.train.trainer import train

    if _rank_zero():
        console.print(f"[bold]robopol demo[/bold]: {cfg.demos} expert demonstrations of '{cfg.task.name}' -> "
                      f"{cfg.algo.name} with a {cfg.policy.name} policy -> evaluation over "
                      f"{cfg.trainer.eval_episodes} episodes")
    hydra_cfg = HydraConfig.get()
    result = train(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))
    distributed.shutdown()
    if not _rank_zero():
        return
    run = result.run_dir
    if result.final_eval is not None:
        _print_eval(result.final_eval.as_dict())
    console.print(f"total time {result.seconds:.1f} s. Outputs in {run}:")
    console.print(f"  demonstrations  {cfg.data or run / 'demos.zarr'}\n  checkpoints     {run / 'checkpoints'}\n"
                  f"  metrics         {run / 'metrics.jsonl'} (TensorBoard: {run / 'tb'})\n"
                  f"  training curve  {run / 'plots' / 'training.png'}")
    for video in sorted(run.joinpath("videos").glob("*.mp4")):
        console.print(f"  video           {video}")


def eval_command(cfg: DictConfig) -> None:
    """Evaluate a checkpoint: in this process, in ``workers`` processes, or over torchrun's ranks (each runs
    every N-th env batch; the result is the one a single process gets for the same seeds)."""
    from robopol import distributed
    from robopol.runtime import (
        absorb_stats,
        actor_stats,
        eval_batches,
        latency_summary,
        record_video,
        run_eval_batches,
        summarize_episodes,
    )

    if cfg.episodes < 1 or cfg.num_envs < 1 or cfg.workers < 1:
        raise ConfigError(f"episodes, num_envs and workers must be at least 1, got {cfg.episodes}, {cfg.num_envs} "
                          f"and {cfg.workers}")
    ranks, device = distributed.setup(cfg.device)
    if ranks.enabled and cfg.workers > 1:
        raise ConfigError("under torchrun every rank evaluates its share of the episodes; drop workers=")
    env, actor, ckpt = _eval_setup(cfg, str(device))
    batches = list(range(eval_batches(cfg.episodes, env.num_envs)))
    if cfg.workers > 1:
        parts = _eval_in_workers(cfg, [batches[w::cfg.workers] for w in range(cfg.workers)])
        others = [stats for _, stats in parts]  # this process ran no episode
    else:
        mine = batches[ranks.rank::ranks.world_size]
        parts = distributed.gather_objects((run_eval_batches(env, actor, cfg.episodes, cfg.seed, mine),
                                            actor_stats(actor)))
        others = [stats for _, stats in parts[1:]]
    distributed.shutdown()
    if not ranks.is_main:
        env.close()
        return
    absorb_stats(actor, others)
    episodes = {b: out for part, _ in parts for b, out in part.items()}
    result = {**summarize_episodes(episodes).as_dict(), **latency_summary(actor)}
    out = Path(cfg.out) if cfg.out else ckpt.path.parent.parent / f"eval_step{ckpt.step}.json"
    videos = [record_video(env, actor, out.parent / "videos" / f"eval_step{ckpt.step}_seed{cfg.seed + i}.mp4",
                           seed=cfg.seed + i) for i in range(cfg.videos)]
    env.close()
    summary = {"checkpoint": str(ckpt.path), "task": env.spec.task, "step": ckpt.step,
               "execution": cfg.execution, "sampler": cfg.sampler or ckpt.config.policy.get("sampler"),
               **result, "videos": [str(v) for v in videos if v is not None]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    _print_eval(result)
    console.print(f"summary: {out}")
    for video in summary["videos"]:
        console.print(f"video: {video}")


def _eval_setup(cfg: DictConfig, device: str) -> tuple:
    """The evaluation's env (checked against the checkpoint), actor on ``device`` and checkpoint."""
    from robopol.runtime import check_env_matches, load_actor
    from robopol.tasks import make_env

    actor, ckpt = load_actor(cfg.ckpt, device, execution=cfg.execution, ensemble_decay=cfg.ensemble_decay,
                             sampler=cfg.sampler or None, steps=cfg.inference_steps or None, rti=cfg.rti,
                             seed=cfg.seed)
    manifest = ckpt.manifest
    task = cfg.task if cfg.get("task") is not None else ckpt.config.task
    env = make_env(task, num_envs=min(cfg.num_envs, cfg.episodes), seed=cfg.seed)
    try:
        check_env_matches(env.spec, manifest["env_spec"], manifest["obs_keys"])
    except Exception:
        env.close()
        raise
    return env, actor, ckpt


def _eval_in_workers(cfg: DictConfig, shards: list[list[int]]) -> list[tuple[dict, dict]]:
    """Each worker process evaluates its share of the env batches."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from omegaconf import OmegaConf

    threads = max(1, (os.cpu_count() or 1) // len(shards))
    config = OmegaConf.to_container(cfg, resolve=True)
    with ProcessPoolExecutor(len(shards), mp_context=multiprocessing.get_context("forkserver")) as pool:
        return list(pool.map(_eval_shard, [config] * len(shards), shards, [threads] * len(shards)))


def _eval_shard(config: dict, batches: list[int], threads: int) -> tuple[dict, dict]:
    import torch
    from omegaconf import OmegaConf

    from robopol.runtime import actor_stats, run_eval_batches

    torch.set_num_threads(threads)
    cfg = OmegaConf.create(config)
    env, actor, _ = _eval_setup(cfg, cfg.device)
    try:
        return run_eval_batches(env, actor, cfg.episodes, cfg.seed, batches), actor_stats(actor)
    finally:
        env.close()


def collect_command(cfg: DictConfig) -> None:
    from robopol.collect import collect_episodes

    result = collect_episodes(cfg.task, cfg.out, cfg.episodes, noise=cfg.noise, seed=cfg.seed, expert=cfg.expert,
                              random_fraction=cfg.random_fraction, num_workers=cfg.num_workers,
                              num_envs=cfg.num_envs)
    console.print(f"collected {result.episodes} episodes ({result.steps} steps, seeds from {result.first_seed}) "
                  f"of '{cfg.task.name}' into {cfg.out} in {result.seconds:.1f} s after {result.startup_seconds:.1f} s "
                  f"of start-up ({result.steps_per_second:,.0f} steps/s with {cfg.num_workers} workers)")
    if result.failed:
        console.print(f"{result.failed} episodes were left out because the simulator failed (see the warnings)")
    if result.expert_episodes:
        console.print(f"expert success rate {100 * result.expert_success_rate:.1f}% over "
                      f"{result.expert_episodes} expert episodes")
        if len(result.per_task) > 1:
            for task_id, (n, rate) in result.per_task.items():
                console.print(f"  task {task_id}: {100 * rate:.1f}% over {n} episodes")
    if result.episodes > result.expert_episodes:
        console.print(f"{result.episodes - result.expert_episodes} uniformly random episodes; success rate "
                      f"over all episodes {100 * result.success_rate:.1f}%")


def data_command(cfg: DictConfig) -> None:
    actions = {"validate": _data_validate, "info": _data_info, "convert": _data_convert, "replay": _data_replay,
               "merge": _data_merge}
    if cfg.action not in actions:
        raise ConfigError(f"unknown data action '{cfg.action}'; choose one of {', '.join(actions)}")
    if not cfg.paths:
        raise ConfigError(f"robopol data {cfg.action} needs a store path: robopol data {cfg.action} PATH")
    actions[cfg.action](cfg)


def _data_validate(cfg: DictConfig) -> None:
    from robopol.data.validate import validate_store

    failed = False
    for path in cfg.paths:
        problems = validate_store(path)
        if not problems:
            console.print(f"{path}: OK, no problems found")
            continue
        failed = True
        table = Table(title=f"{path}: {len(problems)} problem(s)")
        for column in ("key", "episode", "index", "problem"):
            table.add_column(column)
        for p in problems:
            table.add_row(str(p.key or "-"), _dash(p.episode), _dash(p.index), p.message)
        console.print(table)
    if failed:
        sys.exit(1)


def _data_info(cfg: DictConfig) -> None:
    from robopol.data.info import plot_store_info, print_store_info, store_info

    for path in cfg.paths:
        info = store_info(path)
        print_store_info(info, console=console)
        if cfg.plot:
            name = Path(str(path).rstrip("/")).name.removesuffix(".zip").removesuffix(".zarr")
            out = Path(cfg.out) if cfg.out and len(cfg.paths) == 1 else Path(f"{name}_info.png")
            console.print(f"plot: {plot_store_info(path, out, info=info)}")


def _data_convert(cfg: DictConfig) -> None:
    from robopol.data.convert import convert

    if len(cfg.paths) != 2:
        raise ConfigError(f"robopol data convert takes SOURCE DESTINATION, got {len(cfg.paths)} path(s)")
    src, dst = cfg.paths
    store = convert(src, dst, fmt=cfg.format or None, overwrite=cfg.overwrite)
    console.print(f"converted {src} -> {dst}: {len(store)} episodes, {store.n_steps} steps, "
                  f"keys {', '.join(store.keys())}")


def _data_merge(cfg: DictConfig) -> None:
    from robopol.data.remote import expand_locations, merge_stores

    if len(cfg.paths) < 2:
        raise ConfigError(f"robopol data merge takes SHARD... DESTINATION (shards may be glob patterns), got "
                          f"{len(cfg.paths)} path(s)")
    sources = expand_locations(cfg.paths[:-1])
    store = merge_stores(sources, cfg.paths[-1], overwrite=cfg.overwrite)
    console.print(f"merged {len(sources)} store(s) -> {cfg.paths[-1]}: {len(store)} episodes, {store.n_steps} steps")


def _data_replay(cfg: DictConfig) -> None:
    from robopol.data.store import EpisodeStore
    from robopol.sim.replay import replay_store

    if len(cfg.paths) != 1:
        raise ConfigError(f"robopol data replay takes one store path, got {len(cfg.paths)}")
    path = cfg.paths[0]
    task = cfg.task
    if task is None:  # the store records the task it was collected on
        recorded = EpisodeStore.open(path).attrs.get("task")
        if recorded is None:
            raise ConfigError(f"store {path} does not record its task; pass task=<name>")
        from robopol.cli.app import compose

        task = compose("collect", [f"task={recorded}", "out=unused"]).task
    video = str(Path(cfg.out) / "episode_{episode}.mp4") if cfg.out else None
    rows = replay_store(path, task, episodes=list(cfg.episodes) or None, video=video)
    table = Table(title=f"replay of {path} on task '{task.name}'")
    for column in ("episode", "seed", "steps", "max divergence", "stored success", "replayed success", "video"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["episode"]), str(r["seed"]), str(r["steps"]), f"{r['max_divergence']:.3g}",
                      str(r["success"]), str(r["replayed_success"]), r["video"] or "-")
    console.print(table)
    worst = max(r["max_divergence"] for r in rows)
    console.print(f"{len(rows)} episodes replayed; largest state divergence {worst:.3g}")


def bench_command(cfg: DictConfig) -> None:
    suites: dict[str, Callable[[DictConfig], object]] = {
        "data": _bench_data, "sim": _bench_sim, "policy": _bench_policy, "inference": _bench_inference,
        "offline": _bench_offline, "control": _bench_control, "online": _bench_online, "scale": _bench_scale,
    }
    if cfg.suite not in suites:
        raise ConfigError(f"unknown benchmark suite '{cfg.suite}'; available: {', '.join(suites)}")
    suites[cfg.suite](cfg)


def _bench_data(cfg: DictConfig) -> None:
    from robopol.data.bench import bench_data

    bench_data(n_steps=50_000 if cfg.quick else 1_000_000, seconds=0.5 if cfg.quick else 3.0, out_dir=cfg.out_dir)


def _bench_control(cfg: DictConfig) -> None:
    from robopol.real.bench import bench_control

    bench_control(cfg.out_dir, quick=cfg.quick, seconds=cfg.seconds, latencies=list(cfg.latencies),
                  strategies=list(cfg.strategies), switch=cfg.switch)


def _bench_sim(cfg: DictConfig) -> None:
    from robopol.sim.bench import bench_sim

    bench_sim(cfg.out_dir, quick=cfg.quick, suites=tuple(cfg.sim_suites), isaaclab_envs=tuple(cfg.isaaclab_envs))


def _bench_policy(cfg: DictConfig) -> None:
    from robopol.policies.bench import bench_policy

    bench_policy(cfg.out_dir, quick=cfg.quick)


def _bench_offline(cfg: DictConfig) -> None:
    from robopol.bench.offline import bench_offline

    bench_offline(cfg)


def _bench_online(cfg: DictConfig) -> None:
    from robopol.bench.online import bench_online

    bench_online(cfg)


def _bench_scale(cfg: DictConfig) -> None:
    from robopol.bench.scale import bench_scale

    bench_scale(cfg)


def _bench_inference(cfg: DictConfig) -> None:
    from robopol.bench.inference import bench_inference

    bench_inference(cfg)


def deploy_command(cfg: DictConfig) -> None:
    from robopol.real.deploy import deploy

    deploy(cfg)


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_eval(result: dict) -> None:
    console.print(
        f"success rate {100 * result['success_rate']:.1f}% "
        f"(95% CI {100 * result['success_ci95_low']:.1f}-{100 * result['success_ci95_high']:.1f}%) over "
        f"{result['episodes']} episodes; mean return {result['mean_return']:.3f}, "
        f"mean length {result['mean_length']:.1f}"
    )
    if "nfe_per_action" in result:
        console.print(f"{result['nfe_per_action']:.2f} network evaluations per executed action; planning call "
                      f"latency p50 {result['latency_ms_p50']:.2f} ms, p99 {result['latency_ms_p99']:.2f} ms "
                      f"({result['plans']} calls)")


COMMAND_FUNCTIONS: dict[str, Callable[[DictConfig], None]] = {
    "train": train_command,
    "eval": eval_command,
    "collect": collect_command,
    "data": data_command,
    "bench": bench_command,
    "deploy": deploy_command,
    "demo": demo_command,
}
