"""``robopol bench sim``'s Isaac Lab rows (CI's Python 3.12 leg): one fresh process per env count."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("isaaclab_newton", reason="Isaac Lab 3 needs Python 3.12 with the 'isaaclab' extra "
                                              "(scripts/isaaclab_env.sh); CI runs these in its second leg")

from robopol.sim import bench  # noqa: E402


def test_isaaclab_rows_beside_the_mujoco_pool(tmp_path):
    rows = bench.bench_sim(str(tmp_path), quick=True, suites=("isaaclab",), isaaclab_envs=(2, 8, 64))
    isaac = [r for r in rows if r["suite"] == "isaaclab"]
    assert [(r["task"], r["envs"]) for r in isaac] == [  # quick: the first two counts
        ("isaaclab/ur5e_reach", 2), ("isaaclab/ur5e_reach", 8), ("isaaclab/ur5e_push", 2), ("isaaclab/ur5e_push", 8)]
    for row in isaac:
        assert row["isaaclab_steps_s"] > 0 and row["startup_s"] > 0 and row["device"] == "cpu"
    (mujoco,) = [r for r in rows if r["suite"] == "ogbench"]
    assert mujoco["task"] == "cube_single" and mujoco["grouped_pool_steps_s"] > 0
    assert json.loads((tmp_path / "sim.json").read_text())["rows"] == rows
    assert (tmp_path / "sim_isaaclab.png").stat().st_size > 0
