"""``robopol bench sim`` writes one row per task with both back ends (two pool layouts) and the collection speed."""

from __future__ import annotations

import json

import pytest
from robopol.sim import bench

from robopol.errors import ConfigError


def test_bench_sim_reports_each_backend_and_collection(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_STEP_TASKS", ("pointmaze_umaze",))
    monkeypatch.setattr(bench, "QUICK_COLLECT_TASKS", {"pointmaze_umaze": 4})
    rows = bench.bench_sim(str(tmp_path), quick=True)
    (row,) = rows
    assert row["task"] == "pointmaze_umaze" and row["suite"] == "maze" and row["envs"] == 2
    assert row["grouped_envs"] == 8
    for key in ("single_process_steps_s", "worker_pool_steps_s", "grouped_single_process_steps_s",
                "grouped_pool_steps_s", "collect_steps_s_1proc", "collect_steps_s_2workers"):
        assert row[key] > 0
    assert 0 < row["speedup"] < 10 and 0 < row["grouped_speedup"] < 10 and 0 < row["cpu_ceiling"] < 10
    assert row["expert_success"] == 1.0
    saved = json.loads((tmp_path / "sim.json").read_text())
    assert saved["bench"] == "sim" and saved["rows"] == rows and "machine" in saved


def test_bench_sim_refuses_unknown_suites_and_env_counts(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown suites \['physx'\]; choose from mujoco, isaaclab"):
        bench.bench_sim(str(tmp_path), suites=("mujoco", "physx"))
    with pytest.raises(ConfigError, match=r"isaaclab_envs must all be at least 1, got \[4, 0\]"):
        bench.bench_sim(str(tmp_path), isaaclab_envs=(4, 0))
