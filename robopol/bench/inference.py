"""``robopol bench inference task=...``: success, network evaluations and latency of every fast sampler.

On one task the suite collects expert demonstrations, trains a diffusion and a flow teacher and a mean-flow
head by behaviour cloning, distils two consistency students from the flow teacher (action matching and the
LCM-style loss), and then, for each sampler: the success rate over ``episodes`` episodes (10 envs stepped
together), the network function evaluations per executed action (NFE/action) over those episodes, and the
latency at batch 1 on ``latency_threads`` torch threads (one, as ``robopol deploy`` runs the policy), timed
two ways with the samplers taking turns: in further whole episodes run one env at a time, until at least
``latency_plans`` planning calls, a whole planning call (``p50_ms``: observations in, actions out) and the
policy's chunk sampling inside it (``chunk_p50_ms``); then as many chunk samplings back to back on
demonstration observations (``hot_chunk_p50_ms``: the model's latency with its weights in cache, as it is
usually quoted). RTI rows warm-start from the level :func:`robopol.runtime.pick_rti_noise_level` picks
from the demonstrations. Models already trained in ``out_dir`` to the requested steps are reused, so a rerun
only evaluates. Writes ``inference_<task>.json`` and a plot of success against latency.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from robopol.bench.report import pyplot, save_figure, using_threads, write_report
from robopol.checkpoint import load_checkpoint
from robopol.data.store import EpisodeStore
from robopol.errors import CheckpointError, ConfigError
from robopol.runtime import (
    ChunkActor,
    evaluate,
    latency_summary,
    load_actor,
    observation_windows,
    pick_rti_noise_level,
)
from robopol.schemas import RTIConfig
from robopol.tasks import make_env

console = Console(soft_wrap=True)
# The demo's imitation recipe, and a gentler one for the warm-started student.
BC_RECIPE = ["algo.lr=3e-4", "algo.warmup_steps=500", "algo.ema_decay=0.999", "trainer.batch_size=256"]
DISTILL_RECIPE = ["algo=distill", "algo.warmup_steps=200", "trainer.batch_size=256"]
# Students by loss: action matching regresses one call onto the teacher's full sampler (a larger step size
# suits that plain regression); the LCM-style loss trains every level, so chained sampling works too.
STUDENTS = {"consistency_am": ["algo.loss=action_matching", "algo.lr=3e-4"],
            "consistency_lcm": ["algo.loss=consistency", "algo.lr=1e-4"]}


def bench_inference(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train (or reuse) the models, evaluate every sampler, print the table, write JSON and the plot."""
    from robopol.cli.app import compose
    from robopol.collect import collect_episodes
    from robopol.train.trainer import train

    if cfg.latency_plans < 1:
        raise ConfigError(f"latency_plans must be at least 1, got {cfg.latency_plans}")
    task = cfg.task if cfg.task is not None else compose("train", ["task=cube_single_task1"]).task
    quick = cfg.quick
    steps = 40 if quick else cfg.train_steps
    episodes = 4 if quick else cfg.episodes
    latency_plans = min(cfg.latency_plans, 20) if quick else cfg.latency_plans
    root = Path(cfg.out_dir) / "inference" / task.name
    store_path = root / "demos.zarr"
    demos = 10 if quick else cfg.demos
    have = len(EpisodeStore.open(str(store_path))) if store_path.exists() else 0
    if have < demos:  # a first run stopped during collection: its store is readable, append the rest
        collect_episodes(task, str(store_path), episodes=demos - have, num_workers=0 if quick else 2,
                         progress=not quick)
    small = [f"task={task.name}", *(["policy.hidden_dims=[32,32]", "trainer.batch_size=16"] if quick else [])]
    common = [f"data={store_path.resolve()}", "trainer.eval_episodes=0",
              "trainer.log_every=100", f"trainer.progress={not quick}"]

    def trained(name: str, overrides: list[str], model_steps: int) -> Path:
        run = root / name
        try:
            if load_checkpoint(run).step >= model_steps:
                return run
        except CheckpointError:
            pass
        full = [*overrides, *common, f"trainer.steps={model_steps}", f"trainer.ckpt_every={model_steps}"]
        train(compose("train", full), run, full)
        return run

    diffusion = trained("diffusion", ["policy=diffusion_mlp", *BC_RECIPE, *small], steps)
    flow = trained("flow", ["policy=flow_mlp", *BC_RECIPE, *small], steps)
    meanflow = trained("meanflow", ["policy=meanflow", *BC_RECIPE, *small], steps)
    distill_small = ["trainer.batch_size=16"] if quick else []
    # from the flow teacher: an epsilon-prediction diffusion teacher makes a poor one-step student (Distill warns)
    students = {name: trained(name, [*DISTILL_RECIPE, *loss, f"teacher={flow.resolve()}", *distill_small],
                              max(1, steps // 3)) for name, loss in STUDENTS.items()}

    store = EpisodeStore.open(str(store_path))
    rti_levels = {}
    for name, run in (("diffusion", diffusion), ("flow", flow)):
        actor, _ = load_actor(str(run), sampler="rti")
        rti_levels[name] = pick_rti_noise_level(actor, store, pairs=16 if quick else 256)
    rows_spec = [
        ("diffusion", diffusion, "ddpm", 100, None),
        ("diffusion", diffusion, "ddim", 10, None),
        ("diffusion", diffusion, "rti", 3, rti_levels["diffusion"]),
        ("diffusion", diffusion, "rti", 2, rti_levels["diffusion"]),
        ("flow", flow, "euler", 10, None),
        ("flow", flow, "rti", 3, rti_levels["flow"]),
        ("flow", flow, "rti", 2, rti_levels["flow"]),
        ("meanflow", meanflow, "one_step", 1, None),
        ("meanflow", meanflow, "one_step", 2, None),
        ("consistency_am", students["consistency_am"], "consistency", 1, None),
        ("consistency_lcm", students["consistency_lcm"], "consistency", 1, None),
        ("consistency_lcm", students["consistency_lcm"], "consistency", 2, None),
    ]
    rows, samplers = [], []
    for model, run, sampler, sampler_steps, level in rows_spec:
        # RTI rows: the steps are the warm-started calls; the first call of an episode runs the full chain
        rti = RTIConfig(noise_level=level, steps=sampler_steps) if level is not None else None
        choice = {"sampler": sampler, "steps": None if rti else sampler_steps, "rti": rti}
        row = evaluate_sampler(run, task, episodes, **choice)
        label = f"{sampler}-{sampler_steps}" + (f"@{level:.2f}" if rti else "")
        rows.append({"model": model, "sampler": label, **row})
        samplers.append((run, choice))
        console.print(f"{model} {label}: success {100 * row['success']:.0f}% over {episodes} episodes, "
                      f"{row['nfe_per_action']:.2f} NFE/action ({row['eval_s']:.0f} s)")
    actors = [load_actor(str(run), seed=5000, **choice)[0] for run, choice in samplers]
    in_episodes = time_samplers(actors, task, latency_plans, cfg.latency_threads)
    back_to_back = time_back_to_back(actors, demo_windows(actors, store, 64), latency_plans, cfg.latency_threads)
    for row, timing, hot in zip(rows, in_episodes, back_to_back, strict=True):
        row.update({"p50_ms": timing["latency_ms_p50"], "p99_ms": timing["latency_ms_p99"],
                    "chunk_p50_ms": timing["chunk_ms_p50"], "chunk_p99_ms": timing["chunk_ms_p99"],
                    "timed_plans": timing["plans"], "hot_chunk_p50_ms": hot["p50_ms"],
                    "hot_chunk_p99_ms": hot["p99_ms"]})
        console.print(f"{row['model']} {row['sampler']}: planning call p50 {row['p50_ms']:.2f} ms, "
                      f"chunk p50 {row['chunk_p50_ms']:.2f} ms over {timing['plans']} calls; back to back "
                      f"{row['hot_chunk_p50_ms']:.2f} ms")
    notes = (f"task {task.name}; {demos} expert demos; BC models {steps} steps, "
             f"consistency students {max(1, steps // 3)} distillation steps from the flow teacher; "
             f"success over {episodes} episodes (95% Wilson CI); latency of one planning call at batch 1 on "
             f"{cfg.latency_threads or torch.get_num_threads()} torch thread(s), over at least {latency_plans} "
             f"calls in episodes, then as many back-to-back chunk samplings on demonstration observations "
             f"(hot_chunk_*); NFE/action = network calls per executed action")
    write_report(f"inference_{task.name}", rows, cfg.out_dir, notes=notes)
    plot_inference(rows, Path(cfg.out_dir) / f"inference_{task.name}.png", task.name)
    return rows


def evaluate_sampler(run: Path, task: DictConfig, episodes: int, sampler: str, steps: int | None,
                     rti: RTIConfig | None) -> dict[str, Any]:
    """Success and NFE/action of one sampler over ``episodes`` episodes, 10 envs at a time."""
    actor, _ = load_actor(str(run), sampler=sampler, steps=steps, rti=rti, seed=1000)
    env = make_env(task, num_envs=min(10, episodes), seed=1000)
    t0 = time.perf_counter()
    result = evaluate(env, actor, episodes, seed=1000)
    seconds = time.perf_counter() - t0
    env.close()
    return {"success": result.success_rate, "ci_low": result.success_ci95[0], "ci_high": result.success_ci95[1],
            "nfe_per_action": actor.nfe_per_action, "eval_s": seconds}


def time_samplers(actors: list[ChunkActor], task: DictConfig, latency_plans: int,
                  latency_threads: int = 0) -> list[dict[str, float]]:
    """Latency summaries at batch 1 on ``latency_threads`` torch threads (0: torch's setting as it is), over
    whole single-env episodes until every actor has timed ``latency_plans`` planning calls (an episode plans
    only 5 to 50 times, and two episodes' p50 moved by half between reruns).

    The actors take turns, one episode each (every actor plays the episodes of seeds 5000, 5001, ...), so a
    change of load on the machine during the measurement reaches every sampler alike and their latency
    ratios stay comparable; timings on a shared 2-core machine move by up to 2x between runs."""
    env = make_env(task, num_envs=1, seed=5000)
    try:
        with using_threads(latency_threads):
            seed = 5000
            while any(actor.plans < latency_plans for actor in actors):
                for actor in actors:
                    if actor.plans < latency_plans:
                        evaluate(env, actor, 1, seed=seed)
                seed += 1
    finally:
        env.close()
    return [latency_summary(actor) for actor in actors]


def time_back_to_back(actors: list[ChunkActor], windows: list[torch.Tensor], calls: int,
                      latency_threads: int = 0, block: int = 20) -> list[dict[str, float]]:
    """Chunk-sampling latency p50 / p99 (ms) of each actor over ``calls`` calls at batch 1, back to back on
    its observation windows ``windows[i]`` ``(N, To, D)`` in turn, as a model's latency is usually quoted.

    Nothing runs between the calls, so the weights and the code stay in the CPU caches. In an episode the
    simulator runs between planning calls and the next call starts cold, which costs a one-call sampler
    proportionally most (on cube-single task 1 filling the caches with other data between back-to-back calls
    took a mean-flow call from 0.32 to 0.59 ms and a DDIM-10 chain from 4.1 to 4.3 ms). The actors take turns in
    blocks of ``block`` calls; each starts from a reset, so an RTI actor runs its full chain once and then
    warm-starts, moving its guess by its executed steps per call."""
    for actor in actors:
        actor.reset()
    times: list[list[float]] = [[] for _ in actors]
    with using_threads(latency_threads):
        while any(len(timed) < calls for timed in times):
            for actor, obs, timed in zip(actors, windows, times, strict=True):
                for _ in range(min(block, calls - len(timed))):
                    window = obs[len(timed) % len(obs)][None]
                    started = time.perf_counter()
                    actor.sample_chunk(window, actor.action_steps)
                    timed.append(1e3 * (time.perf_counter() - started))
    return [{"p50_ms": float(np.percentile(timed, 50)), "p99_ms": float(np.percentile(timed, 99))}
            for timed in times]


def demo_windows(actors: list[ChunkActor], store: EpisodeStore, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` observation windows at random steps of the store's episodes, normalised for each actor."""
    rng = np.random.default_rng(seed)
    starts, ends = store.episode_starts, store.episode_ends
    episodes = rng.integers(len(ends), size=count)
    steps = rng.integers(starts[episodes], ends[episodes])
    arrays = store.load(sorted({key for actor in actors for key in actor.obs_keys}))
    return [observation_windows(actor, arrays, steps, starts[episodes]) for actor in actors]


def plot_inference(rows: list[dict[str, Any]], out: Path, task: str) -> Path:
    """Success (with its 95% interval) against planning latency, one point per sampler, named in the legend."""
    plt = pyplot()
    markers = {}
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for row in rows:
        x, y = row["p50_ms"], 100 * row["success"]
        err = [[max(0.0, y - 100 * row["ci_low"])], [max(0.0, 100 * row["ci_high"] - y)]]  # rounding at 0/100%
        marker = markers.setdefault(row["model"], "osD^vP*X"[len(markers) % 8])
        ax.errorbar(x, y, yerr=err, fmt=marker, capsize=3,
                    label=f"{row['model']} {row['sampler']} ({row['nfe_per_action']:.2f} NFE/action)")
    ax.set_xscale("log")
    ax.set_xlabel("planning-call latency p50 at batch 1 (ms, log scale)")
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"robopol bench inference: {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, out)
