"""``robopol bench offline task=... data=...``: offline RL against behaviour cloning on the same data.

For each algorithm in ``algos`` and each seed in ``seeds`` the suite trains with the recipe below on the
episode store ``data`` for ``train_steps`` gradient steps, evaluating ``episodes`` episodes every
``eval_every`` steps. It then reports, per algorithm, the final success rate (mean and standard deviation over
seeds, and each seed's), its difference to flow BC (``bc``) trained on the same data with the same steps,
and the training wall-clock per 1000 gradient steps (sampling + update, evaluation excluded); a plot shows
success against gradient steps (mean +- std over seeds).

``jobs=N`` trains up to N runs side by side in worker processes with one torch thread each (a GPU machine
fits a dozen: ``device=cuda jobs=12``). Runs live in ``out_dir/offline/<task>/<algo>/seed<k>``; a run
already trained to ``train_steps`` is reused and an interrupted one resumes from its latest checkpoint, so
several invocations with different ``algos`` / ``seeds`` can train side by side (on a GPU machine) and a
last one with every algorithm and seed only gathers the results.

Every recipe shares the chunk: ``horizon`` steps planned and executed whole (QC's h = 5); DQC's critic looks
``dqc_horizon`` steps ahead. Paper-scale settings are overrides of the same recipe (``train_steps``,
``batch_size``, ``extra`` for anything else, e.g. ``extra=[algo.critic_hidden_dims=[1024,1024,1024,1024]]``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from robopol.bench.report import pyplot, save_figure, write_report
from robopol.checkpoint import load_checkpoint
from robopol.errors import CheckpointError, ConfigError
from robopol.train.run import read_metrics

console = Console(soft_wrap=True)

# Per algorithm: its policy head and algorithm overrides. The BC baseline is the flow head QC and DQC extract
# from, trained with the same optimiser settings as imitation elsewhere in robopol.
RECIPES: dict[str, list[str]] = {
    "bc": ["algo=bc", "policy=flow_mlp", "algo.lr=3e-4", "algo.warmup_steps=500", "algo.ema_decay=0.999"],
    # QC's target with one policy sample instead of the best of 32: 32x cheaper, and what was measured
    "qc": ["algo=qc", "policy=flow_mlp", "algo.ema_decay=0.999", "algo.backup=sample"],
    "qc_fql": ["algo=qc", "algo.extraction=distill", "policy=flow_mlp"],
    "dqc": ["algo=dqc", "policy=flow_mlp", "algo.ema_decay=0.999"],
    # eta tuned on cube-single task 1 play (5k steps, seed 0): 0.1 ~ BC, 0.3 16%, 0.5 26%, 1.0 0% (BC 18%)
    "ofql": ["algo=ofql", "policy=meanflow", "algo.eta=0.5"],
    "iql": ["algo=iql", "policy=flow_mlp", "algo.ema_decay=0.999"],
    "aloe": ["algo=aloe", "policy=flow_mlp", "algo.ema_decay=0.999"],
    # imitation for the first half of the run (algo.bc_steps, set below), then gated PPO from it
    "rl100": ["algo=rl100", "policy=diffusion_mlp", "algo.ema_decay=0.999"],
}


def bench_offline(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train (or reuse) every (algorithm, seed) run, print the table, write JSON and the plot."""
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    if cfg.task is None or not cfg.data:
        raise ConfigError("robopol bench offline needs task=<name> and data=<episode store with rewards>, e.g. "
                          "task=cube_single_task1 data=cube_single_task1_play.zarr (make one with "
                          "`robopol collect recipe=cube_single_task1_play out=...`)")
    unknown = [a for a in cfg.algos if a not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown algos {unknown}; available: {', '.join(RECIPES)}")
    quick = cfg.quick
    steps, every = (40, 20) if quick else (cfg.train_steps, cfg.eval_every or cfg.train_steps)
    episodes = 4 if quick else cfg.episodes
    root = Path(cfg.out_dir) / "offline" / cfg.task.name
    horizon = cfg.horizon
    common = [f"task={cfg.task.name}", f"data={Path(cfg.data).resolve()}", f"device={cfg.device}",
              f"policy.horizon={horizon}", f"policy.action_steps={horizon}", f"trainer.steps={steps}",
              f"trainer.eval_every={every}", f"trainer.eval_episodes={episodes}", f"trainer.ckpt_every={steps}",
              f"trainer.batch_size={16 if quick else cfg.batch_size}", "trainer.log_every=100",
              f"trainer.progress={not quick}", "trainer.videos=false",
              # evaluation envs in the training process: parallel runs would otherwise oversubscribe the CPU
              *(["task.backend=inprocess"] if "backend" in cfg.task else []),
              *(["policy.hidden_dims=[32,32]"] if quick else [])]
    runs: dict[str, list[Path]] = {}
    pending: list[tuple[Path, list[str]]] = []
    for algo in cfg.algos:
        for seed in cfg.seeds:
            run = root / algo / f"seed{seed}"
            runs.setdefault(algo, []).append(run)
            if _trained_to(run, steps):
                continue
            small_critic = ["algo.critic_hidden_dims=[32,32]"] if quick and algo != "bc" else []
            overrides = [*RECIPES[algo], *common, f"seed={seed}", *small_critic,
                         *([f"algo.chunk_horizon={cfg.dqc_horizon}"] if algo == "dqc" else []),
                         *([f"algo.bc_steps={steps // 2}"] if algo == "rl100" else []),
                         *_extra_for(algo, cfg.extra)]
            if _checkpoint_step(run) > 0:  # an interrupted run continues where it stopped
                overrides.append(f"resume={run.resolve()}")
            pending.append((run, overrides))
    if cfg.jobs > 1:
        _train_side_by_side(pending, cfg.jobs)
    for run, overrides in pending if cfg.jobs <= 1 else []:
        console.print(f"[bold]{run.parent.name}[/] {run.name}: training {steps} steps -> {run}")
        t0 = time.perf_counter()
        train(compose("train", overrides), run, overrides)
        console.print(f"{run.parent.name} {run.name}: {time.perf_counter() - t0:.0f} s")
    rows = summarise(runs)
    notes = (f"task {cfg.task.name}; data {cfg.data}; {steps} gradient steps at batch "
             f"{16 if quick else cfg.batch_size}; chunk {horizon} steps executed whole"
             f"{f' (dqc: critic chunk {cfg.dqc_horizon})' if 'dqc' in cfg.algos else ''}; success over "
             f"{episodes} episodes at the last step, mean +- std over seeds {list(cfg.seeds)}; "
             f"s_per_1k_steps = sampling + update time, evaluation excluded; device {cfg.device}")
    name = f"offline_{cfg.task.name}"
    write_report(name, rows, cfg.out_dir, notes=notes)
    plot_offline(runs, Path(cfg.out_dir) / f"{name}.png", cfg.task.name)
    return rows


def _train_side_by_side(pending: list[tuple[Path, list[str]]], jobs: int) -> None:
    """Train the runs in up to ``jobs`` processes at once, one torch thread each (``OMP_NUM_THREADS`` unless
    set), each logging to ``<run>.log`` beside its run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    queue, running, failed = list(pending), [], []
    while queue or running:
        while queue and len(running) < jobs:
            run, overrides = queue.pop(0)
            run.mkdir(parents=True, exist_ok=True)
            log = run.parent / f"{run.name}.log"
            command = [sys.executable, "-m", "robopol.bench.offline", str(run), *overrides]
            console.print(f"[bold]{run.parent.name}[/] {run.name}: training in a worker process, log {log}")
            with open(log, "w") as out:
                running.append((run, log, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)))
        time.sleep(1.0)
        for item in [r for r in running if r[2].poll() is not None]:
            running.remove(item)
            run, log, proc = item
            console.print(f"{run.parent.name} {run.name}: {'done' if proc.returncode == 0 else 'FAILED'}")
            if proc.returncode:
                failed.append(f"{run} (exit {proc.returncode}; see {log})")
    if failed:
        raise ConfigError("bench offline: training failed for " + "; ".join(failed))


def _extra_for(algo: str, extra: list[str]) -> list[str]:
    """``extra`` overrides for one algorithm: BC, the baseline, takes none of the ``algo.*`` ones (it has no
    critic or reward settings)."""
    return [o for o in extra if not (algo == "bc" and o.lstrip("+").startswith("algo."))]


def _checkpoint_step(run: Path) -> int:
    """Step of the run's latest checkpoint; 0 when it has none."""
    try:
        return load_checkpoint(run).step
    except CheckpointError:
        return 0


def _trained_to(run: Path, steps: int) -> bool:
    return _checkpoint_step(run) >= steps and (run / "metrics.jsonl").exists()


def success_curve(run: Path) -> tuple[list[int], list[float]]:
    """Evaluation steps and success rates of one run."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success_rate" in r]
    return [r["step"] for r in records], [r["eval/success_rate"] for r in records]


def summarise(runs: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """One row per algorithm: mean success at every evaluation step the seeds share, the final success over
    seeds, its gap to BC, and training seconds per 1k steps."""
    rows = []
    finals = {algo: [success_curve(run)[1][-1] for run in paths] for algo, paths in runs.items()}
    for algo, paths in runs.items():
        curves = [dict(zip(*success_curve(run), strict=True)) for run in paths]
        shared = sorted(set.intersection(*(set(c) for c in curves)))
        step_ms = [r["train/step_ms"] for run in paths for r in read_metrics(run / "metrics.jsonl")
                   if "train/step_ms" in r]
        final = np.array(finals[algo])
        row = {"algo": algo, "seeds": len(paths), "success_mean": float(final.mean()),
               "success_std": float(final.std()), "per_seed": json.dumps([round(float(f), 3) for f in final]),
               "s_per_1k_steps": float(np.median(step_ms)) if step_ms else float("nan"),
               **{f"success@{step}": float(np.mean([c[step] for c in curves])) for step in shared}}
        if "bc" in finals and algo != "bc":
            row["vs_bc_points"] = 100 * (float(final.mean()) - float(np.mean(finals["bc"])))
        rows.append(row)
    return rows


def plot_offline(runs: dict[str, list[Path]], out: Path, task: str) -> Path:
    """Success rate against gradient steps, mean +- std over seeds, one line per algorithm."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo, paths in runs.items():
        curves = [success_curve(run) for run in paths]
        length = min(len(c[0]) for c in curves)
        steps = np.array(curves[0][0][:length])
        success = 100 * np.array([c[1][:length] for c in curves])
        mean, std = success.mean(0), success.std(0)
        ax.plot(steps, mean, marker="o", label=f"{algo} ({len(paths)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"robopol bench offline: {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


if __name__ == "__main__":  # one run of a side-by-side bench: python -m robopol.bench.offline RUN OVERRIDES...
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    train(compose("train", sys.argv[2:]), Path(sys.argv[1]), sys.argv[2:])
