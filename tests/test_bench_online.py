"""``robopol bench online`` end to end on the toy tasks (quick sizes): runs, the table with its ratios to PPO,
goal coverage on the multi-goal task, the plot, reuse; and its bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from robopol.bench.online import heading_share, kept_modes


@pytest.mark.slow
def test_bench_online_trains_each_method_and_counts_goals(tmp_path):
    out = tmp_path / "bench"
    args = ("bench", "online", "quick=true", "tasks=[point_reach]", "methods=[ppo,policyflow,dppo]", "seeds=[0]",
            "iterations=4", "episodes=2", "coverage_episodes=12", f"out_dir={out}")
    run_cli(*args, cwd=tmp_path, check=True)
    report = [*json.loads((out / "online.json").read_text())["rows"],
              *json.loads((out / "online_coverage.json").read_text())["rows"]]
    rows = {(r["task"], r["method"]): r for r in report}
    assert set(rows) == {(t, m) for t in ("point_reach", "multigoal") for m in ("ppo", "policyflow", "dppo")}
    ppo = rows[("point_reach", "ppo")]
    assert ppo["env_steps"] == 4 * 2 * 16 and "return_gap_pct" not in ppo  # quick: 2 envs x 16 steps x 4 iterations
    for method in ("policyflow", "dppo"):
        row = rows[("point_reach", method)]
        gap = 100 * (row["final_return"] - ppo["final_return"]) / abs(ppo["final_return"])
        assert row["return_gap_pct"] == pytest.approx(gap)
        assert row["time_vs_ppo"] == pytest.approx(row["s_per_iter"] / ppo["s_per_iter"])
    for method in ("ppo", "policyflow", "dppo"):
        counts = json.loads(rows[("multigoal", method)]["goal_counts"])
        assert len(counts) == 1 and len(counts[0]) == 7 and sum(counts[0]) == 12  # 6 goals, then misses
        assert rows[("multigoal", method)]["success"] == pytest.approx(1 - counts[0][-1] / 12)
        assert json.loads(rows[("multigoal", method)]["modes_per_seed"]) == [kept_modes(np.array(counts[0]))]
        assert 0 <= rows[("multigoal", method)]["heading"] <= 1
    assert (out / "online.png").stat().st_size > 1000
    assert (out / "online_coverage.png").stat().st_size > 1000
    coverage = (out / "online_coverage.json").read_text()
    before = (out / "online" / "point_reach" / "ppo" / "seed0" / "metrics.jsonl").read_text()
    run_cli(*args, cwd=tmp_path, check=True)  # a second invocation reuses every run
    assert (out / "online" / "point_reach" / "ppo" / "seed0" / "metrics.jsonl").read_text() == before
    assert (out / "online_coverage.json").read_text() == coverage  # the policies' draws are seeded


def test_kept_modes_counts_goals_reached_in_five_percent_of_the_episodes():
    assert kept_modes(np.array([100, 0, 0, 0, 0, 0, 0])) == 1
    assert kept_modes(np.array([90, 5, 4, 1, 0, 0, 0])) == 2  # 5 of 100 is 5%, 4 is not
    assert kept_modes(np.array([50, 50, 50, 50, 50, 50, 0])) == 6
    assert kept_modes(np.array([4, 4, 4, 4, 4, 4, 76])) == 0  # misses count in the total, never as a mode


def test_heading_share_counts_actions_closest_to_the_goals_direction():
    goals = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    actions = np.array([[1.0, 0.2], [0.5, -0.4], [0.1, 1.0], [-1.0, -0.9], [0.3, -1.0]])
    assert heading_share(actions, goals, 0) == pytest.approx(2 / 5)  # the first two: closest to +x
    assert heading_share(actions, goals, 1) == pytest.approx(1 / 5)
    assert heading_share(actions, goals, 2) == pytest.approx(1 / 5)
    assert heading_share(2 * actions, 3 * goals, 3) == pytest.approx(1 / 5)  # directions only, not lengths


def test_bench_online_bad_inputs(tmp_path):
    proc = run_cli("bench", "online", "methods=[ppo,sac]", cwd=tmp_path)
    assert proc.returncode != 0 and "unknown methods ['sac']; available: ppo, policyflow, dppo" in proc.stderr
    proc = run_cli("bench", "online", "methods=[]", cwd=tmp_path)
    assert proc.returncode != 0 and "methods is empty; name at least one of ppo, policyflow, dppo" in proc.stderr
    proc = run_cli("bench", "online", "iterations=0", cwd=tmp_path)
    assert proc.returncode != 0 and "iterations must be at least 1, got 0" in proc.stderr


@pytest.mark.slow
def test_bench_online_fine_tunes_a_bc_checkpoint(tmp_path, toy_store):
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    bc = ["task=point_reach", f"data={toy_store}", "algo=bc", "policy=diffusion_mlp", "policy.horizon=4",
          "policy.action_steps=2", "policy.obs_steps=1", "policy.hidden_dims=[16]", "policy.embed_dim=8",
          "trainer.steps=20", "trainer.batch_size=16", "trainer.eval_episodes=0",
          "trainer.progress=false", "trainer.num_threads=1"]
    train(compose("train", bc), tmp_path / "bc")
    out = tmp_path / "bench"
    run_cli("bench", "online", "quick=true", "tasks=[]", "coverage=false", f"init={tmp_path / 'bc'}",
            "seeds=[0,1]", "finetune_iterations=2", "episodes=4", f"out_dir={out}", cwd=tmp_path, check=True)
    assert not (out / "online.json").exists()  # no locomotion task: no locomotion table
    (row,) = json.loads((out / "online_finetune.json").read_text())["rows"]
    assert row["task"] == "point_reach" and row["method"] == "dppo fine-tuning BC" and row["seeds"] == 2
    per_seed = json.loads(row["per_seed"])
    assert row["bc_success"] == pytest.approx(np.mean([b for b, _ in per_seed]), abs=1e-3)
    assert row["gain_points"] == pytest.approx(100 * (row["success"] - row["bc_success"]))
    for seed in (0, 1):
        assert (out / "online" / "point_reach" / "dppo_finetune" / f"seed{seed}" / "checkpoints").is_dir()


def test_curves_count_the_wall_clock_of_every_iteration(tmp_path):
    from robopol.bench.online import curves

    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 1, "train/iteration_s": 2.0, "train/env_steps": 100},
               {"step": 2, "train/iteration_s": 3.0, "train/env_steps": 200, "train/episode_return": 7.0},
               {"step": 3, "train/iteration_s": 4.0, "train/env_steps": 300},
               {"step": 4, "train/iteration_s": 1.0, "train/env_steps": 400, "train/episode_return": 9.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    steps, seconds, returns = curves(run)
    assert steps.tolist() == [200, 400] and seconds.tolist() == [5.0, 10.0] and returns.tolist() == [7.0, 9.0]
