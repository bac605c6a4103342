"""Shared set-up: the worker count and torch threads of a parallel run, a small toy-task store, one torch
thread for tiny networks, a helper to run the CLI in a subprocess, and the call log the fakes of robot APIs
keep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0))
MAX_WORKERS = 4
"""``-n auto`` (the default in pyproject.toml) starts one worker per core up to this many: many tests start
CLI subprocesses of their own, so more workers would only compete for the same cores and memory."""


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(MAX_WORKERS, CORES))


if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Workers share the cores: each, and every CLI subprocess it starts, gets its share of torch threads
    # rather than all of them (oversubscribed threads made the suite slower, not faster).
    _threads = max(1, CORES // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def run_cli(*args: str, cwd: Path, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``robopol ARGS`` as a user would (same interpreter), capturing output."""
    env = {**os.environ, "MUJOCO_GL": "egl", "COLUMNS": "200", "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    proc = subprocess.run([sys.executable, "-m", "robopol", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"robopol {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> str:
    """40 expert episodes of the point-reach toy task."""
    from robopol.cli.app import compose
    from robopol.collect import collect_episodes

    cfg = compose("collect", ["out=unused"])
    path = str(tmp_path_factory.mktemp("toy") / "demos.zarr")
    collect_episodes(cfg.task, path, episodes=40, seed=0, progress=False)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny networks run fastest on one torch thread, which also makes them immune to a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CallLog:
    """What a fake of a hardware API was asked, in order; ``fail[name]`` makes that call raise."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}

    def record(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def names(self):
        return [c[0] for c in self.calls]
