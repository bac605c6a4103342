"""Training runs end to end on the toy task: run directory contents, exact resume, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from robopol.checkpoint import load_checkpoint
from robopol.train.run import read_metrics

TINY = ["trainer.batch_size=16", "trainer.log_every=10", "trainer.eval_episodes=4", "trainer.progress=false",
        "policy.hidden_dims=[32,32]", "algo.warmup_steps=5", "algo.ema_decay=0.9"]


def train(tmp_path, run: str, *extra: str, check: bool = True):
    return run_cli("train", *TINY, f"hydra.run.dir={tmp_path / run}", *extra, cwd=tmp_path, check=check)


def test_run_directory_holds_config_metrics_checkpoints_and_plots(tmp_path, toy_store):
    proc = train(tmp_path, "run", f"data={toy_store}", "trainer.steps=20", "trainer.ckpt_every=10",
                 "trainer.eval_every=10")
    run = tmp_path / "run"
    assert "trained 20 steps" in proc.stdout and str(run) in proc.stdout and "success rate" in proc.stdout
    assert (run / "config.yaml").is_file() and (run / "overrides.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest", "step_00000010",
                                                                       "step_00000020"]
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [10, 20]
    best = max(evals, key=lambda r: (r["eval/success_rate"], -r["step"]))["step"]
    assert (run / "checkpoints" / "best").read_text() == f"step_{best:08d}"
    assert load_checkpoint(run / "checkpoints" / "best").step == best
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == [10, 20]
    assert any("val/loss" in r for r in records) and any("eval/success_rate" in r for r in records)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "plots" / "training.png").stat().st_size > 1000


def test_resume_continues_bit_exactly(tmp_path, toy_store):
    common = [f"data={toy_store}", "trainer.steps=40", "trainer.ckpt_every=20"]
    train(tmp_path, "straight", *common)
    train(tmp_path, "split", *common, "trainer.stop_after=20")
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text() == "step_00000020"
    run_cli("train", f"resume={tmp_path / 'split'}", "trainer.stop_after=0", cwd=tmp_path, check=True)

    final = "checkpoints/step_00000040"
    a = load_file(tmp_path / "straight" / final / "model.safetensors")
    b = load_file(tmp_path / "split" / final / "model.safetensors")
    assert a.keys() == b.keys() and {"policy", "ema"} == {k.split(".")[0] for k in a}
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    sa = torch.load(tmp_path / "straight" / final / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "split" / final / "state.pt", weights_only=True)
    for pa, pb in zip(sa["algo"]["optimizer"]["state"].values(), sb["algo"]["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert sa["sampler"] == sb["sampler"] and torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])

    def learning(run):  # evaluation and wall-clock time (train/step_ms) aside
        return [{k: v for k, v in r.items() if not k.startswith("eval/") and k != "train/step_ms"}
                for r in read_metrics(tmp_path / run / "metrics.jsonl")]

    assert learning("straight") == learning("split"), "metrics after resume differ from the uninterrupted run"


def test_resume_with_a_different_network_is_a_clear_error(tmp_path, toy_store):
    train(tmp_path, "run", f"data={toy_store}", "trainer.steps=10")
    proc = run_cli("train", f"resume={tmp_path / 'run'}", "trainer.steps=20", "policy.hidden_dims=[8]", cwd=tmp_path)
    assert proc.returncode == 2
    assert "does not match the model" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", f"resume={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "already at step 10; raise trainer.steps" in proc.stderr


def test_bad_data_path_is_a_clear_error(tmp_path):
    proc = train(tmp_path, "run", f"data={tmp_path / 'missing.zarr'}", "trainer.steps=5", check=False)
    assert proc.returncode == 2 and "missing.zarr" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_reports_success_and_refuses_a_mismatched_task(tmp_path, toy_store):
    train(tmp_path, "run", f"data={toy_store}", "trainer.steps=10")
    out = tmp_path / "eval.json"
    proc = run_cli("eval", f"ckpt={tmp_path / 'run'}", "episodes=6", "num_envs=3", f"out={out}", cwd=tmp_path,
                   check=True)
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 6 and 0.0 <= summary["success_rate"] <= 1.0
    assert summary["success_ci95_low"] <= summary["success_rate"] <= summary["success_ci95_high"]
    assert "success rate" in proc.stdout


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_nonpositive_steps_are_refused(tmp_path, toy_store, steps):
    proc = train(tmp_path, "run", f"data={toy_store}", f"trainer.steps={steps}", check=False)
    assert proc.returncode == 2 and "trainer.steps must be at least 1" in proc.stderr


def test_multirun_sweep_makes_one_run_per_value(tmp_path, toy_store):
    proc = run_cli("train", "-m", "policy=mlp,flow", f"data={toy_store}", "trainer.steps=3", "trainer.eval_episodes=2",
                   "trainer.progress=false", "policy.hidden_dims=[16]", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path, check=True)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(runs) == 2 and "policy=mlp" in runs[0] and "policy=flow" in runs[1]
    for run in runs:
        assert (tmp_path / "sweep" / run / "checkpoints" / "latest").is_file()
    assert proc.stdout.count("trained 3 steps") == 2


def test_bf16_autocast_trains_and_a_bad_precision_is_refused(tmp_path, toy_store):
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    cfg = compose("train", [f"data={toy_store}", "policy=mlp", "policy.hidden_dims=[32,32]", "policy.horizon=1",
                            "policy.action_steps=1", "algo.lr=1e-2", "algo.warmup_steps=5",
                            "trainer.precision=bf16", "trainer.steps=60", "trainer.batch_size=32",
                            "trainer.log_every=10", "trainer.eval_episodes=0", "trainer.progress=false"])
    train(cfg, tmp_path / "run")
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    proc = run_cli("train", f"data={toy_store}", "trainer.precision=fp8", f"hydra.run.dir={tmp_path / 'bad'}",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.precision must be one of fp32, bf16, got 'fp8'" in proc.stderr


def test_compiled_networks_keep_their_checkpoint_keys(toy_store):
    from robopol.algos.bc import BC
    from robopol.policies.flow import FlowPolicy
    from robopol.train.trainer import _compile_networks

    policy = FlowPolicy(obs_dim=4, action_dim=2, obs_steps=1, horizon=4, action_steps=2, backbone="mlp",
                        hidden_dims=(16,))
    algo = BC(policy, total_steps=10, ema_decay=0.9)
    keys = {name: list(module.state_dict()) for name, module in algo.modules().items()}
    _compile_networks(algo)
    assert {name: list(module.state_dict()) for name, module in algo.modules().items()} == keys
    assert all(module.net._compiled_call_impl is not None for module in algo.modules().values())
