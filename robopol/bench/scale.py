"""``robopol bench scale``: data-parallel training throughput for 1, 2, ... processes under torchrun.

Each process count trains the same policy on the same store with ``batch_size`` windows per rank (weak
scaling: N processes learn from N x batch_size windows per step), launched by ``torchrun --standalone``
(gloo on CPU, NCCL on ``device=cuda``). On CPU the machine's cores are split evenly between the processes,
so 1 process gets them all. Throughput is global windows per second over the timed steps, from the
trainer's own ``step_ms`` (sampling, update and gradient all-reduce; start-up and the first fifth of the
steps left out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from robopol.bench.report import write_report
from robopol.errors import ConfigError
from robopol.train.run import read_metrics

QUICK_STEPS = 10


def bench_scale(cfg: DictConfig) -> Path:
    procs = list(cfg.procs)
    if not procs or min(procs) < 1:
        raise ConfigError(f"procs must list process counts of at least 1, got {procs}")
    steps = QUICK_STEPS if cfg.quick else cfg.steps
    if steps < 5:
        raise ConfigError(f"steps must be at least 5 (the first fifth is warm-up), got {steps}")
    out = Path(cfg.out_dir)
    data = cfg.data or str(out / "scale_data.zarr")
    if not cfg.data and not Path(data).exists():
        _collect(cfg, data)
    cores = os.cpu_count() or 1
    rows = []
    for n in procs:
        threads = max(1, cores // n) if cfg.device == "cpu" else 1
        run = out / "scale_runs" / f"procs{n}"
        shutil.rmtree(run, ignore_errors=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   "-m", "robopol", "train", f"data={data}", f"policy={cfg.train_policy}", f"trainer.steps={steps}",
                   f"trainer.batch_size={cfg.batch_size}", "trainer.log_every=1", f"trainer.ckpt_every={steps}",
                   "trainer.eval_episodes=0", "trainer.val_fraction=0", "trainer.progress=false",
                   f"trainer.num_threads={threads}", f"device={cfg.device}", f"hydra.run.dir={run}", *cfg.extra]
        if cfg.task is not None:
            command.insert(command.index("train") + 1, f"task={cfg.task.name}")
        print(f"training on {n} process(es), {threads} thread(s) each: {' '.join(command[7:])}", flush=True)
        proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise ConfigError(f"the {n}-process training run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        step_ms = [r["train/step_ms"] for r in read_metrics(run / "metrics.jsonl") if "train/step_ms" in r]
        timed = float(np.median(step_ms[len(step_ms) // 5:]))
        rows.append({"procs": n, "threads_per_proc": threads, "batch_per_rank": cfg.batch_size,
                     "global_batch": n * cfg.batch_size, "step_ms": timed,
                     "samples_per_s": n * cfg.batch_size / (timed / 1000.0)})
    for row in rows:
        row["speedup"] = row["samples_per_s"] / rows[0]["samples_per_s"]
    notes = (f"policy={cfg.train_policy} {' '.join(cfg.extra)}; {steps} steps per run, median step time over the last "
             f"four fifths; {cfg.device}, {'gloo' if cfg.device == 'cpu' else 'nccl'}; {cores} CPU cores split "
             f"between the processes")
    return write_report("scale", rows, out, notes)


def _collect(cfg: DictConfig, location: str) -> None:
    from robopol.cli.app import compose
    from robopol.collect import collect_episodes

    task = cfg.task if cfg.task is not None else compose("collect", ["out=unused"]).task
    collect_episodes(task, location, episodes=cfg.demos, seed=0, progress=True, num_workers=0)
