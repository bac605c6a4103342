"""``robopol bench inference`` end to end on the toy task (quick sizes), and sampler choice at evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli


@pytest.mark.slow
def test_bench_inference_trains_every_model_and_reports_each_sampler(tmp_path):
    out = tmp_path / "bench"
    proc = run_cli("bench", "inference", "quick=true", "task=point_reach", f"out_dir={out}", cwd=tmp_path,
                   check=True)
    assert "robopol bench inference_point_reach" in proc.stdout
    report = json.loads((out / "inference_point_reach.json").read_text())
    rows = {(r["model"], r["sampler"].split("@")[0]): r for r in report["rows"]}
    assert set(rows) == {("diffusion", "ddpm-100"), ("diffusion", "ddim-10"), ("diffusion", "rti-3"),
                         ("diffusion", "rti-2"), ("flow", "euler-10"), ("flow", "rti-3"), ("flow", "rti-2"),
                         ("meanflow", "one_step-1"),
                         ("meanflow", "one_step-2"), ("consistency_am", "consistency-1"),
                         ("consistency_lcm", "consistency-1"), ("consistency_lcm", "consistency-2")}
    for row in rows.values():
        assert 0 <= row["ci_low"] <= row["success"] <= row["ci_high"] <= 1
        assert 0 < row["p50_ms"] <= row["p99_ms"] and 0 < row["chunk_p50_ms"] <= row["chunk_p99_ms"]
        assert row["timed_plans"] >= 20  # quick runs time whole episodes until 20 planning calls
        assert 0 < row["hot_chunk_p50_ms"] <= row["hot_chunk_p99_ms"]
    # receding execution of 4 actions per 8-step chunk: a 1-call sampler costs 1/4 per action (more when an
    # episode ends mid-chunk); RTI re-plans every step with at most 3 calls after its first full chain
    assert rows[("meanflow", "one_step-1")]["nfe_per_action"] < 0.5
    assert rows[("consistency_lcm", "consistency-2")]["nfe_per_action"] < 1.0
    assert rows[("diffusion", "ddpm-100")]["nfe_per_action"] >= 25
    assert 2.0 <= rows[("flow", "rti-3")]["nfe_per_action"] < 5.0
    assert rows[("flow", "rti-2")]["nfe_per_action"] < rows[("flow", "rti-3")]["nfe_per_action"]
    assert (out / "inference_point_reach.png").stat().st_size > 1000
    models = out / "inference" / "point_reach"
    assert sorted(p.name for p in models.iterdir()) == ["consistency_am", "consistency_lcm", "demos.zarr",
                                                        "diffusion", "flow", "meanflow"]

    # a second run reuses the trained models (their checkpoints stay untouched) and evaluates again
    stamps = {p: p.stat().st_mtime_ns for p in models.glob("*/checkpoints/*/model.safetensors")}
    assert len(stamps) == 5
    run_cli("bench", "inference", "quick=true", "task=point_reach", f"out_dir={out}", cwd=tmp_path, check=True)
    assert {p: p.stat().st_mtime_ns for p in models.glob("*/checkpoints/*/model.safetensors")} == stamps

    bad = run_cli("bench", "inference", "quick=true", "latency_plans=0", f"out_dir={out}", cwd=tmp_path)
    assert bad.returncode != 0 and "latency_plans must be at least 1, got 0" in bad.stderr

    # sampler choice from the eval config, with the RTI settings
    summary = tmp_path / "rti.json"
    run_cli("eval", f"ckpt={models / 'flow'}", "sampler=rti", "rti.steps=2", "rti.noise_level=0.2",
            "episodes=4", "videos=0", f"out={summary}", cwd=tmp_path, check=True)
    result = json.loads(summary.read_text())
    assert result["sampler"] == "rti" and 1.5 < result["nfe_per_action"] < 4
    run_cli("eval", f"ckpt={models / 'meanflow'}", "sampler=one_step", "episodes=4", "videos=0", f"out={summary}",
            cwd=tmp_path, check=True)
    assert json.loads(summary.read_text())["nfe_per_action"] < 0.5
    bad = run_cli("eval", f"ckpt={models / 'meanflow'}", "sampler=ddim", "episodes=4", "videos=0", cwd=tmp_path)
    assert bad.returncode != 0 and "sampler must be one of one_step, euler, midpoint" in bad.stderr


def test_latency_episodes_take_turns_until_every_sampler_has_its_calls(monkeypatch):
    from robopol.bench import inference

    class Actor:
        def __init__(self, name: str, plans_per_episode: int) -> None:
            self.name, self.plans_per_episode, self.plans = name, plans_per_episode, 0

    class Env:
        closed = False

        def close(self) -> None:
            self.closed = True

    played, env = [], Env()

    def play(env_, actor, episodes, seed):
        assert env_ is env and episodes == 1
        played.append((actor.name, seed))
        actor.plans += actor.plans_per_episode

    monkeypatch.setattr(inference, "evaluate", play)
    monkeypatch.setattr(inference, "make_env", lambda task, num_envs, seed: env)
    monkeypatch.setattr(inference, "latency_summary", lambda actor: {"plans": actor.plans})
    threads = torch.get_num_threads()
    summaries = inference.time_samplers([Actor("a", 5), Actor("b", 2)], task=None, latency_plans=6,
                                        latency_threads=1)
    # the same seeds in turn; an actor with its calls sits out the later rounds
    assert played == [("a", 5000), ("b", 5000), ("a", 5001), ("b", 5001), ("b", 5002)]
    assert summaries == [{"plans": 10}, {"plans": 6}]
    assert env.closed and torch.get_num_threads() == threads


def test_back_to_back_timing_takes_turns_in_blocks_over_each_actors_windows():
    from robopol.bench import inference

    calls = []

    class Actor:
        action_steps = 3

        def __init__(self, name: str) -> None:
            self.name, self.resets = name, 0

        def reset(self) -> None:
            self.resets += 1

        def sample_chunk(self, obs, shift):
            calls.append((self.name, int(obs.item()), shift))

    windows = [torch.arange(3.0).reshape(3, 1, 1), 10 + torch.arange(2.0).reshape(2, 1, 1)]
    actors = [Actor("a"), Actor("b")]
    threads = torch.get_num_threads()
    summaries = inference.time_back_to_back(actors, windows, calls=5, latency_threads=1, block=2)
    # blocks of 2 in turn; each actor cycles through its own windows at batch 1 and moves by its action steps
    assert [(name, value) for name, value, _ in calls] == [
        ("a", 0), ("a", 1), ("b", 10), ("b", 11), ("a", 2), ("a", 0), ("b", 10), ("b", 11), ("a", 1), ("b", 10)]
    assert {shift for _, _, shift in calls} == {3}
    assert [actor.resets for actor in actors] == [1, 1]
    assert len(summaries) == 2 and all(0 <= s["p50_ms"] <= s["p99_ms"] for s in summaries)
    assert torch.get_num_threads() == threads


def test_demo_windows_come_from_store_steps_normalised_for_each_actor(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from robopol.bench import inference
    from robopol.data.normalize import Normalizer
    from robopol.data.store import EpisodeStore

    store = EpisodeStore.create(str(tmp_path / "s.zarr"))
    for start in (0, 100):  # step values identify the episode and step
        steps = start + np.arange(5, dtype=np.float32)[:, None]
        store.add_episode({"x": steps, "action": np.zeros((5, 1), np.float32)})
    identity = Normalizer.fit({"x": np.array([[0.0], [1.0]], np.float32)}, {"x": "identity"})
    scaled = Normalizer.fit({"x": np.array([[0.0], [104.0]], np.float32)}, {"x": "minmax"})
    actors = [SimpleNamespace(obs_steps=2, obs_keys=["x"], normalizer=n) for n in (identity, scaled)]
    raw, normed = inference.demo_windows(actors, store, count=50, seed=0)
    assert raw.shape == normed.shape == (50, 2, 1)
    values = set(raw[:, 1, 0].tolist())
    assert values <= {*range(5), *range(100, 105)} and len(values) > 4  # random steps of both episodes
    # the history holds the previous step, or repeats the first one at an episode start
    previous, current = raw[:, 0, 0], raw[:, 1, 0]
    assert bool(((current - previous == 1) | ((current == previous) & (current % 100 == 0))).all())
    torch.testing.assert_close(normed, scaled.normalize("x", raw))
