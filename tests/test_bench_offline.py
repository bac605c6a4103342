"""``robopol bench offline`` end to end on the toy task (quick sizes): runs, reuse, resume, table and plot;
and its bad inputs."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from robopol.bench.offline import summarise
from robopol.train.run import read_metrics


@pytest.mark.slow
def test_bench_offline_trains_each_algorithm_and_seed_against_bc(tmp_path, toy_store):
    out = tmp_path / "bench"
    args = ("bench", "offline", "quick=true", "task=point_reach", f"data={toy_store}", "algos=[bc,qc]",
            "seeds=[0,1]", f"out_dir={out}")
    proc = run_cli(*args, "jobs=2", cwd=tmp_path, check=True)  # the four runs train in two worker processes
    assert proc.stdout.count("training in a worker process") == 4
    assert "robopol bench offline_point_reach" in proc.stdout
    report = json.loads((out / "offline_point_reach.json").read_text())
    rows = {r["algo"]: r for r in report["rows"]}
    assert set(rows) == {"bc", "qc"} and rows["qc"]["seeds"] == 2
    for row in rows.values():
        per_seed = json.loads(row["per_seed"])
        assert len(per_seed) == 2 and row["success_mean"] == pytest.approx(sum(per_seed) / 2, abs=1e-3)
        assert row["s_per_1k_steps"] > 0
    assert rows["qc"]["vs_bc_points"] == pytest.approx(100 * (rows["qc"]["success_mean"]
                                                              - rows["bc"]["success_mean"]))
    assert "vs_bc_points" not in rows["bc"]
    assert (out / "offline_point_reach.png").stat().st_size > 1000
    runs = out / "offline" / "point_reach"
    # quick: 40 steps, evaluated at 20 and 40
    assert [r["step"] for r in read_metrics(runs / "qc" / "seed1" / "metrics.jsonl")
            if "eval/success_rate" in r] == [20, 40]

    assert (runs / "qc" / "seed1.log").exists()

    # a second invocation reuses the finished runs: nothing is trained again
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/*/checkpoints/*/model.safetensors")}
    proc = run_cli(*args, cwd=tmp_path, check=True)
    assert "training" not in proc.stdout
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_summary_reports_the_last_evaluation_of_every_seed_and_the_gap_to_bc(tmp_path):
    def run(name: str, successes: list[float], step_ms: float):
        path = tmp_path / name
        path.mkdir()
        records = [{"step": 10 * (i + 1), "eval/success_rate": s} for i, s in enumerate(successes)]
        records.append({"step": 20, "train/step_ms": step_ms})
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    rows = summarise({"bc": [run("bc0", [0.1, 0.2], 5.0), run("bc1", [0.3, 0.4], 7.0)],
                      "qc": [run("qc0", [0.5, 0.8], 20.0), run("qc1", [0.2, 0.6], 30.0)]})
    bc, qc = rows
    assert bc["success_mean"] == pytest.approx(0.3) and bc["success_std"] == pytest.approx(0.1)
    assert qc["success_mean"] == pytest.approx(0.7) and json.loads(qc["per_seed"]) == [0.8, 0.6]
    assert qc["vs_bc_points"] == pytest.approx(40.0)
    assert bc["s_per_1k_steps"] == pytest.approx(6.0) and qc["s_per_1k_steps"] == pytest.approx(25.0)
    assert qc["success@10"] == pytest.approx(0.35) and qc["success@20"] == pytest.approx(0.7)


@pytest.mark.parametrize("args, message", [
    (("task=point_reach",), "needs task=<name> and data=<episode store with rewards>"),
    (("data=x.zarr",), "needs task=<name> and data=<episode store with rewards>"),
    (("task=point_reach", "data=x.zarr", "algos=[bc,sac]"), r"unknown algos \['sac'\]; available: bc, qc"),
    (("task=point_reach", "data=x.zarr", "extra=[algo.lr=1]"), r"cannot parse the overrides: .*\(quote list items "
                                                                r"that contain '='"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, args, message):
    import re

    proc = run_cli("bench", "offline", *args, f"out_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failing_worker_run_is_reported_with_its_log(tmp_path, toy_store):
    proc = run_cli("bench", "offline", "quick=true", "task=point_reach", f"data={toy_store}", "algos=[qc]",
                   "seeds=[0]", "jobs=2", 'extra=["algo.q_agg=max"]', f"out_dir={tmp_path / 'b'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "training failed for" in proc.stderr and "seed0.log" in proc.stderr
    log = (tmp_path / "b" / "offline" / "point_reach" / "qc" / "seed0.log").read_text()
    assert "algo.q_agg must be one of min, mean, got 'max'" in log


def test_rl100_imitates_for_the_first_half_of_the_bench_run_then_runs_gated_ppo(tmp_path, toy_store):
    from robopol.checkpoint import load_checkpoint

    out = tmp_path / "bench"
    run_cli("bench", "offline", "quick=true", "task=point_reach", f"data={toy_store}", "algos=[rl100]",
            "seeds=[0]", f"out_dir={out}", cwd=tmp_path, check=True)
    run = out / "offline" / "point_reach" / "rl100" / "seed0"
    assert load_checkpoint(run).config.algo.bc_steps == 20  # quick: 40 steps
    records = read_metrics(run / "metrics.jsonl")
    assert any("train/ppo_loss" in r for r in records)  # the PPO phase ran after the 20 imitation steps
    assert json.loads((out / "offline_point_reach.json").read_text())["rows"][0]["algo"] == "rl100"
