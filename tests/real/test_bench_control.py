"""``robopol bench control``: the three parts run, write their JSON and plot, and ensembling smooths."""

from __future__ import annotations

import json

from robopol.real.bench import bench_control


def test_bench_control_reports_servo_timing_end_to_end_and_merge_continuity(tmp_path):
    rows = bench_control(str(tmp_path), quick=True, seconds=1.0, latencies=[0.1],
                         strategies=["replace", "temporal_ensemble"], switch=0.5)
    servo, e2e, *merges = rows
    assert servo["ticks"] > 300 and servo["lateness_p50_ms"] >= 0
    assert e2e["chunks"] >= 3 and e2e["obs_to_command_p50_ms"] > 0
    by = {r["strategy"]: r for r in merges}
    assert set(by) == {"replace", "temporal_ensemble"} and all(r["fault"] == "" for r in merges)
    # the same mode-switching chunks: averaging overlapping predictions can only shrink the jumps
    assert by["temporal_ensemble"]["max_action_jump"] < by["replace"]["max_action_jump"]
    assert by["replace"]["dropped"] > 0  # 100 ms of latency: the first two actions of every chunk are stale
    for name in ("control_servo", "control_end_to_end", "control_merge"):
        assert json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / "control_merge.png").stat().st_size > 1000
