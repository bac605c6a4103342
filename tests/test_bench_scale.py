"""``robopol bench scale`` end to end at toy sizes: one row per process count with consistent throughput."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


def test_bench_scale_times_one_and_two_processes(tmp_path):
    out = tmp_path / "bench"
    run_cli("bench", "scale", "quick=true", "train_policy=mlp", "procs=[1,2]", "demos=10", "batch_size=16",
            f"out_dir={out}", cwd=tmp_path, check=True)
    rows = json.loads((out / "scale.json").read_text())["rows"]
    assert [(r["procs"], r["global_batch"]) for r in rows] == [(1, 16), (2, 32)]
    for row in rows:
        assert row["samples_per_s"] == pytest.approx(row["global_batch"] / row["step_ms"] * 1000)
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[1]["samples_per_s"] / rows[0]["samples_per_s"])
    # each process count trained for real: a run directory with its metrics, written once
    assert (out / "scale_runs" / "procs2" / "metrics.jsonl").read_text().count('"step": 10,') == 1


def test_bench_scale_refuses_too_few_steps(tmp_path):
    proc = run_cli("bench", "scale", "steps=3", f"out_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "steps must be at least 5 (the first fifth is warm-up), got 3" in proc.stderr
