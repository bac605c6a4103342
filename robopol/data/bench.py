"""`robopol bench data`: window-sampler throughput and what it costs relative to a training step.

A synthetic low-dim store (episodes of 200-1000 steps, float32 obs/action, reward, terminal) is sampled
from RAM, loaded from a zarr store on disk into RAM (load time reported separately), and read lazily
from the zarr arrays batch by batch. A small MLP policy's training step on the same batch size gives the
share of a step the sampler costs, ``sampler / (sampler + train_step)``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robopol.data.sampler import WindowConfig, WindowSampler


def synthetic_store(
    n_steps: int, obs_dim: int, action_dim: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``n_steps`` steps in episodes of 200-1000 steps (the last one cut short); a third truly terminate."""
    rng = np.random.default_rng(seed)
    ends = np.cumsum(rng.integers(200, 1001, size=n_steps // 200 + 1))
    ends = ends[: int(np.searchsorted(ends, n_steps)) + 1]
    ends[-1] = n_steps
    total = n_steps
    terminal = np.zeros(total, dtype=bool)
    terminal[ends[rng.random(ends.size) < 1 / 3] - 1] = True
    data = {
        "obs": rng.standard_normal((total, obs_dim), dtype=np.float32),
        "action": rng.uniform(-1, 1, size=(total, action_dim)).astype(np.float32),
        "reward": (rng.random(total) < 0.05).astype(np.float32),
        "terminal": terminal,
    }
    return data, ends.astype(np.int64)


def _rate(fn: Callable[[], Any], seconds: float) -> tuple[float, int]:
    """Mean seconds per call over at least ``seconds`` (and at least 3 calls), after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def _write_zarr(path: Path, data: Mapping[str, np.ndarray], ends: np.ndarray) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w")
    for key, value in data.items():
        # Time-only chunks of about 2 MB, as diffusion_policy does for low-dim data.
        row_bytes = max(1, value[0].nbytes)
        chunk = (max(1, min(len(value), 2_000_000 // row_bytes)), *value.shape[1:])
        root.create_array(f"data/{key}", data=value, chunks=chunk)
    root.create_array("meta/episode_ends", data=ends)


def _train_step_fn(obs_dim: int, obs_steps: int, action_dim: int, horizon: int) -> tuple[Callable, str]:
    """One Adam step of an MLP regressing the action chunk from the observation history."""
    import torch

    hidden = 512
    net = torch.nn.Sequential(
        torch.nn.Linear(obs_steps * obs_dim, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, horizon * action_dim),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(batch: Mapping[str, np.ndarray]) -> None:
        obs = torch.from_numpy(batch["obs"]).flatten(1)
        target = torch.from_numpy(batch["action"]).flatten(1)
        loss = torch.nn.functional.mse_loss(net(obs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, f"MLP {obs_steps * obs_dim}-{hidden}x3-{horizon * action_dim}, Adam"


def bench_data(
    n_steps: int = 1_000_000,
    obs_dim: int = 28,
    action_dim: int = 5,
    obs_steps: int = 2,
    horizon: int = 16,
    batch_size: int = 256,
    seconds: float = 3.0,
    out_dir: str | Path = "runs/bench",
    torch_threads: int = 2,
) -> list[dict[str, Any]]:
    """Measure windows/s for each sampling path and write ``out_dir/data.json``; returns the rows."""
    from robopol.bench.report import using_threads, write_report

    data, ends = synthetic_store(n_steps, obs_dim, action_dim)
    imitation = WindowConfig(obs_keys=("obs",), obs_steps=obs_steps, horizon=horizon)
    critic = WindowConfig(obs_keys=("obs",), obs_steps=obs_steps, horizon=horizon, critic=True)
    goal = WindowConfig(
        obs_keys=("obs",), obs_steps=obs_steps, horizon=horizon, critic=True, goal_key="obs",
        p_current=0.2, p_future=0.5, p_random=0.3,
    )  # fmt: skip

    with using_threads(torch_threads):
        train_step, net_desc = _train_step_fn(obs_dim, obs_steps, action_dim, horizon)
        fixed = WindowSampler(data, ends, imitation, seed=1).sample(batch_size)
        train_s, _ = _rate(lambda: train_step(fixed), seconds)

    rows: list[dict[str, Any]] = []

    def add(case: str, sampler: WindowSampler, load_s: float | None = None, budget: float = seconds) -> None:
        per_batch, calls = _rate(lambda: sampler.sample(batch_size), budget)
        rows.append(
            {
                "case": case,
                "windows_per_s": batch_size / per_batch,
                "us_per_batch": per_batch * 1e6,
                "batches": calls,
                "load_s": load_s if load_s is not None else "",
                "share_of_train_step": per_batch / (per_batch + train_s),
            }
        )

    build = time.perf_counter()
    ram = WindowSampler(data, ends, imitation)
    build_s = time.perf_counter() - build
    add("ram imitation", ram)
    add("ram critic", WindowSampler(data, ends, critic))
    add("ram critic + goal relabel", WindowSampler(data, ends, goal))

    epoch_sampler = WindowSampler(data, ends, imitation)

    def epochs() -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield from epoch_sampler.iter_epoch(batch_size, drop_last=True)

    batches = epochs()
    per_batch, calls = _rate(lambda: next(batches), seconds)
    rows.append(
        {
            "case": "ram imitation iter_epoch",
            "windows_per_s": batch_size / per_batch,
            "us_per_batch": per_batch * 1e6,
            "batches": calls,
            "load_s": "",
            "share_of_train_step": per_batch / (per_batch + train_s),
        }
    )

    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        _write_zarr(path, data, ends)
        start = time.perf_counter()
        root = zarr.open_group(str(path), mode="r")
        loaded = {key: root[f"data/{key}"][:] for key in data}
        loaded_ends = root["meta/episode_ends"][:]
        load_s = time.perf_counter() - start
        add("zarr -> RAM imitation", WindowSampler(loaded, loaded_ends, imitation), load_s=load_s)
        lazy = {key: root[f"data/{key}"] for key in ("obs", "action")}
        add(
            "zarr lazy per-batch reads", WindowSampler(lazy, loaded_ends, imitation), budget=min(seconds, 1.0)
        )

    rows.append(
        {
            "case": "train step (reference)",
            "windows_per_s": batch_size / train_s,
            "us_per_batch": train_s * 1e6,
            "batches": "",
            "load_s": "",
            "share_of_train_step": "",
        }
    )
    notes = (
        f"{int(ends[-1]):,} steps in {ends.size} episodes, obs {obs_dim}-d, action {action_dim}-d, "
        f"To={obs_steps}, H={horizon}, batch {batch_size}; sampler index tables built in {build_s:.2f} s. "
        f"Train step: {net_desc}, {torch_threads} torch threads. "
        "share_of_train_step = sampler / (sampler + train step) per batch."
    )
    write_report("data", rows, out_dir, notes=notes)
    return rows
