"""``robopol bench policy`` runs end to end and reports every head x sampler x backbone (untimed)."""

from __future__ import annotations

import json

import pytest

from robopol.policies.bench import bench_policy


def test_bench_policy_quick_writes_every_row(tmp_path):
    rows = bench_policy(tmp_path, quick=True)
    seen = {(r["policy"], r["backbone"], r["nfe"]) for r in rows}
    expected = {(f"{head} {sampler}", backbone, nfe) for backbone in ("mlp", "unet")
                for head, sampler, nfe in [("diffusion", "ddpm-100", 100), ("diffusion", "ddim-10", 10),
                                           ("flow", "euler-10", 10), ("flow", "midpoint-5", 10),
                                           ("meanflow", "one_step-1", 1)]}
    assert seen == expected | {("mlp", "mlp", 1)}
    for row in rows:
        assert row["p50_ms"] <= row["p99_ms"]
        assert row["overhead"] == pytest.approx(row["p50_ms"] / row["net_ms"] - 1)
    saved = json.loads((tmp_path / "policy.json").read_text())
    assert saved["rows"] == rows and saved["bench"] == "policy"
