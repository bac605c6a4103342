"""Data-parallel training under torchrun: 2 gloo processes on CPU, spawned by the tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robopol import distributed
from robopol.data.sampler import WindowConfig, WindowSampler
from robopol.train.run import read_metrics

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# Single-action chunks: no padded steps, so the mean of the ranks' mean losses is the global batch's mean loss.
BC_ARGS = ["policy=mlp", "policy.hidden_dims=[32,32]", "policy.horizon=1", "policy.action_steps=1",
           "algo.lr=3e-3", "trainer.steps=12", "trainer.log_every=1",
           "trainer.ckpt_every=4", "trainer.eval_episodes=0", "trainer.progress=false", "trainer.val_fraction=0",
           "algo.ema_decay=0.9", "algo.warmup_steps=2"]
IQL_ARGS = ["algo=iql", "policy=flow_mlp", "policy.hidden_dims=[32,32]", "policy.horizon=4", "policy.action_steps=4",
            "algo.critic_hidden_dims=[32,32]", "algo.lr=1e-3", "trainer.log_every=1", "trainer.eval_episodes=0",
            "trainer.progress=false", "trainer.val_fraction=0"]


def launch(nproc: int, args: list[str], cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m robopol train ARGS`` (``nproc=0``: plain ``python -m robopol``)."""
    launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [])
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "OMP_NUM_THREADS": "1",
                **(env or {})}
    return subprocess.run([sys.executable, *launcher, "-m", "robopol", "train", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def curve(run: Path, key: str) -> np.ndarray:
    records = [r for r in read_metrics(run / "metrics.jsonl") if f"train/{key}" in r]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "one record per step, once"
    return np.array([r[f"train/{key}"] for r in records])


def test_a_sharded_batch_is_the_matching_slice_of_one_process_s_global_batch(toy_store):
    from robopol.data.store import EpisodeStore

    store = EpisodeStore.open(toy_store)
    arrays = store.load(["pos", "goal", "action"])
    window = WindowConfig(obs_keys=("pos", "goal"), action_key="action", horizon=4)
    single = WindowSampler(arrays, store.episode_ends, window, seed=3).sample(8)
    ranks = [WindowSampler(arrays, store.episode_ends, window, seed=3).sample(4, r, 2) for r in range(2)]
    for key, value in single.items():
        np.testing.assert_array_equal(np.concatenate([ranks[0][key], ranks[1][key]]), value)
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2 processes"):
        WindowSampler(arrays, store.episode_ends, window, seed=3).sample(4, 2, 2)


def test_outside_torchrun_the_collectives_are_identities():
    assert distributed.current() == distributed.Dist()
    assert distributed.mean_metrics({"loss": 2.0}) == {"loss": 2.0}
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.broadcast_object(5) == 5
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    distributed.sync_gradients([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]


def test_bc_on_two_ranks_matches_one_process_with_twice_the_batch_and_only_rank_0_writes(tmp_path, toy_store):
    data = f"data={toy_store}"
    one, two = tmp_path / "one", tmp_path / "two"
    args = [data, *BC_ARGS, "trainer.steps=60", "algo.lr=1e-2", "trainer.ckpt_every=20"]
    check(launch(0, [*args, "trainer.batch_size=32", f"hydra.run.dir={one}"], tmp_path))
    (tmp_path / "ranks").mkdir()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = launch(2, [*args, "trainer.batch_size=16", f"hydra.run.dir={two}",
                      "algo._target_=dist_helpers.ReportingBC"], workdir,
                  env={"ROBOPOL_TEST_REPORT": str(tmp_path / "ranks")})
    check(proc)
    np.testing.assert_allclose(curve(two, "loss"), curve(one, "loss"), rtol=1e-5)
    assert curve(two, "loss")[-5:].mean() < 0.5 * curve(two, "loss")[0]  # it learns
    # Every rank holds the same weights and EMA after the last step.
    reports = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0] == reports[1]
    # Rank 0 alone writes: one run directory, nothing in the working directory, one summary line.
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["latest", "step_00000020", "step_00000040",
                                                                       "step_00000060"]
    assert proc.stdout.count("trained 60 steps") == 1


def test_iql_critic_losses_on_two_ranks_match_one_process_with_twice_the_batch(tmp_path, toy_store):
    # The store is read through fsspec's local:// filesystem, as a remote one would be, and cached once.
    args = [f"data=local://{toy_store}", f"data_cache={tmp_path / 'cache'}", *IQL_ARGS, "trainer.steps=15"]
    check(launch(0, [*args, "trainer.batch_size=64", f"hydra.run.dir={tmp_path / 'one'}"], tmp_path))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = launch(2, [*args, "trainer.batch_size=32", f"hydra.run.dir={tmp_path / 'two'}"], workdir)
    check(proc)
    assert list(workdir.iterdir()) == [] and proc.stdout.count("trained 15 steps") == 1  # rank 0 alone writes
    # V and Q learn from data alone (in-sample), so their losses follow the same trajectory; the flow
    # policy's noise differs per rank and only its loss may differ.
    for key in ("loss", "value_loss"):
        np.testing.assert_allclose(curve(tmp_path / "two", key), curve(tmp_path / "one", key), rtol=1e-3)
    assert len(list((tmp_path / "cache").glob("*.zarr"))) == 1


@pytest.mark.parametrize("algo", ["bc", "iql"])
def test_a_job_killed_mid_run_resumes_to_the_uninterrupted_trajectory(tmp_path, toy_store, algo):
    args = ([f"data={toy_store}", *BC_ARGS, "trainer.batch_size=16", "algo._target_=dist_helpers.CrashingBC"]
            if algo == "bc" else
            [f"data={toy_store}", *IQL_ARGS, "trainer.steps=12", "trainer.ckpt_every=4", "trainer.batch_size=16",
             "algo._target_=dist_helpers.CrashingIQL"])
    check(launch(2, [*args, f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path))
    killed = launch(2, [*args, f"hydra.run.dir={tmp_path / 'killed'}"], tmp_path,
                    env={"ROBOPOL_TEST_CRASH": "1:10:kill"})
    assert killed.returncode != 0
    assert (tmp_path / "killed" / "checkpoints" / "step_00000008").is_dir()
    assert not (tmp_path / "killed" / "checkpoints" / "step_00000012").exists()
    check(launch(2, [f"resume={tmp_path / 'killed'}"], tmp_path))
    np.testing.assert_allclose(curve(tmp_path / "killed", "loss"), curve(tmp_path / "whole", "loss"), rtol=1e-6)
    # A different number of processes cannot continue the run's per-rank streams.
    proc = launch(0, [f"resume={tmp_path / 'killed'}", "trainer.steps=16"], tmp_path)
    assert proc.returncode == 2
    assert "was trained by 2 process(es) and this job has 1; launch it with torchrun --nproc_per_node=2" in proc.stderr


@pytest.mark.parametrize("algo", ["bc", "iql"])
def test_an_exception_in_rank_1_ends_both_ranks_and_shows_the_error(tmp_path, toy_store, algo):
    args = ([*BC_ARGS, "algo._target_=dist_helpers.CrashingBC"] if algo == "bc" else
            [*IQL_ARGS, "algo._target_=dist_helpers.CrashingIQL"])
    proc = launch(2, [f"data={toy_store}", *args, "trainer.batch_size=16", "trainer.steps=200",
                      f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                  env={"ROBOPOL_TEST_CRASH": "1:3:raise"}, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    # torchrun's summary names rank 1 as the root cause, with its error.
    assert re.search(r"Root Cause.*rank\s*: 1 .*RuntimeError: injected failure in rank 1 at step 3", output, re.S)
    assert not (tmp_path / "run" / "checkpoints" / "step_00000200").exists()


def test_evaluation_in_workers_or_over_ranks_equals_the_serial_one(tmp_path, toy_store):
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    cfg = compose("train", [f"data={toy_store}", "policy=flow_mlp", "policy.hidden_dims=[32,32]", "trainer.steps=30",
                            "trainer.batch_size=32", "trainer.eval_episodes=0", "trainer.progress=false"])
    train(cfg, tmp_path / "run")
    common = [f"ckpt={tmp_path / 'run'}", "episodes=7", "num_envs=2", "videos=0", "seed=5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    results = {}
    for name, launcher, extra in [("serial", [], []), ("workers", [], ["workers=3"]),
                                  ("ranks", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], [])]:
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, *launcher, "-m", "robopol", "eval", *common, *extra, f"out={out}"],
                              env=env, capture_output=True, text=True, timeout=180)
        check(proc)
        results[name] = json.loads(out.read_text())
    keys = ("episodes", "success_rate", "mean_return", "mean_length", "plans")
    for name in ("workers", "ranks"):
        assert {k: results[name][k] for k in keys} == {k: results["serial"][k] for k in keys}, name
    assert results["serial"]["episodes"] == 7
    proc = subprocess.run([sys.executable, "-m", "robopol", "eval", *common, "workers=0"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "workers must be at least 1" in proc.stderr


def test_ppo_on_two_ranks_keeps_every_rank_equal_and_counts_both_ranks_env_steps(tmp_path):
    (tmp_path / "ranks").mkdir()
    proc = launch(2, ["algo=ppo", "policy=gaussian", "algo.num_envs=4", "algo.rollout_steps=16", "trainer.steps=3",
                      "trainer.log_every=1", "trainer.eval_episodes=2", "trainer.progress=false", "trainer.videos=false",
                      "algo._target_=dist_helpers.ReportingPPO", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                  env={"ROBOPOL_TEST_REPORT": str(tmp_path / "ranks")})
    check(proc)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert [r["train/env_steps"] for r in records] == [128, 256, 384]  # 2 ranks x 4 envs x 16 steps per iteration
    reports = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0] == reports[1]  # weights, running statistics and learning rate
