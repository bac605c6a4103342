"""Offline-to-online fine-tuning (robopol.train.finetune): the mixed sampler's online share, the online phase
of `robopol train` (episodes in an episode store, metrics, step accounting), resume into the online phase,
and configuration errors."""

from __future__ import annotations

import numpy as np
import pytest

from robopol.data.sampler import WindowConfig, WindowSampler
from robopol.errors import ConfigError
from robopol.train.finetune import MixedSampler

WINDOW = WindowConfig(obs_keys=("obs",), obs_steps=1, horizon=2, critic=True)


def sampler(first_value: float, episodes: int, seed: int) -> WindowSampler:
    """``episodes`` episodes of 5 steps whose observations count up from ``first_value``."""
    n = 5 * episodes
    data = {"obs": first_value + np.arange(n, dtype=np.float32)[:, None], "action": np.zeros((n, 1), np.float32),
            "reward": np.zeros(n, np.float32)}
    return WindowSampler(data, np.arange(5, n + 1, 5), WINDOW, seed=seed)


@pytest.mark.parametrize("ratio, batch_size, expected", [(0.5, 32, 16), (0.25, 10, 2), (0.0, 8, 0), (1.0, 8, 8)])
def test_mixed_sampler_draws_the_online_share(ratio, batch_size, expected):
    mixed = MixedSampler(sampler(0.0, 4, seed=0), ratio)
    before = mixed.sample(batch_size)  # no online episodes yet: all offline
    assert not before["online"].any() and (before["obs"] < 1000).all()
    mixed.online = sampler(1000.0, 2, seed=1)
    for _ in range(5):
        batch = mixed.sample(batch_size)
        assert batch["online"].sum() == expected and batch["obs"].shape[0] == batch_size
        assert (batch["obs"][batch["online"]] >= 1000).all()  # online rows come from the online episodes
        assert (batch["obs"][~batch["online"]] < 1000).all()
        assert batch["reward_sum"].shape == (batch_size,)


def test_mixed_sampler_rejects_a_bad_ratio():
    with pytest.raises(ConfigError, match=r"online.ratio must be in \[0, 1\], got 1.5"):
        MixedSampler(sampler(0.0, 2, seed=0), 1.5)


def online_overrides(store: str, *extra: str) -> list[str]:
    return ["algo=qc", "algo.best_of_n=2", "algo.backup=sample", "policy=flow_mlp", "policy.horizon=4",
            "policy.action_steps=4", f"data={store}", "policy.hidden_dims=[16]", "algo.critic_hidden_dims=[16]",
            "trainer.steps=6", "trainer.batch_size=8", "trainer.log_every=3", "trainer.ckpt_every=1000",
            "trainer.eval_episodes=2", "trainer.videos=false", "trainer.progress=false", "trainer.num_threads=1",
            "task.max_episode_steps=10", "online.steps=60", "online.envs=2", "online.ratio=0.5", *extra]


def test_online_phase_records_episodes_and_continues_the_step_count(tmp_path, toy_store):
    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.data.store import EpisodeStore
    from robopol.train.run import read_metrics
    from robopol.train.trainer import train

    result = train(compose("train", online_overrides(toy_store)), tmp_path / "run")
    store = EpisodeStore.open(tmp_path / "run" / "online.zarr")
    assert len(store) >= 2 and {"action", "reward", "terminal"} <= set(store.keys())
    state = load_checkpoint(tmp_path / "run").training_state()["online"]
    assert state["env_steps"] >= 60 and result.steps == 6 + state["env_steps"]
    assert state["episodes"] == list(range(len(store)))
    assert int(store.episode_ends[-1]) == state["env_steps"]  # every env step was recorded
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    online = [r for r in records if "online/episode_return" in r]
    assert online and all(r["step"] > 6 for r in online)
    fractions = [r["train/online_fraction"] for r in records if "train/online_fraction" in r]
    assert fractions and fractions[-1] == 0.5  # once episodes exist, half of every batch is online
    assert any("eval/success_rate" in r and r["step"] == result.steps for r in records)


def test_resume_into_the_online_phase_keeps_the_checkpoints_episodes(tmp_path, toy_store):
    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.data.store import EpisodeStore
    from robopol.train.trainer import train

    run = tmp_path / "run"
    train(compose("train", online_overrides(toy_store, "online.steps=0")), run)  # offline only
    assert not (run / "online.zarr").exists()
    result = train(compose("train", online_overrides(toy_store, f"resume={run}", "online.steps=30")), run)
    first = load_checkpoint(run).training_state()["online"]
    assert result.steps == 6 + first["env_steps"] and first["env_steps"] >= 30
    # an episode written after the last checkpoint (a crash) is not learned from on resume
    store = EpisodeStore.open(run / "online.zarr", mode="a")
    stray = {k: v[:3] for k, v in store.load().items()}
    store.add_episodes(stray, [3])
    train(compose("train", online_overrides(toy_store, f"resume={run}", "online.steps=60")), run)
    second = load_checkpoint(run).training_state()["online"]
    assert second["episodes"][:len(first["episodes"])] == first["episodes"]
    assert len(first["episodes"]) not in second["episodes"]  # the stray episode's id


@pytest.mark.parametrize("extra, message", [
    (["algo=bc", "policy=flow_mlp"], "algo=bc has no online phase"),
    (["online.utd=0"], "online.utd must be at least 1"),
    (["online.ratio=2"], r"online.ratio must be in \[0, 1\]"),
    (["online.start=-1"], "online.start and online.eval_every must be >= 0"),
])
def test_bad_online_settings(tmp_path, toy_store, extra, message):
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    overrides = online_overrides(toy_store, *extra)
    if extra[0] == "algo=bc":
        overrides = [o for o in overrides if not o.startswith(("algo.", "algo="))] + ["algo=bc"]
    with pytest.raises(ConfigError, match=message):
        train(compose("train", overrides), tmp_path / "run")


@pytest.mark.parametrize("algo", [["algo=ofql", "policy=meanflow"], ["algo=dqc", "policy=flow_mlp", "algo.chunk_horizon=8", "algo.best_of_n=2"]])
def test_ofql_and_dqc_continue_online(tmp_path, toy_store, algo):
    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    overrides = [o for o in online_overrides(toy_store, "online.steps=20")
                 if not o.startswith(("algo=", "algo.best_of_n", "algo.backup", "policy="))]
    result = train(compose("train", [*algo, *overrides]), tmp_path / "run")
    assert result.steps == 6 + load_checkpoint(tmp_path / "run").training_state()["online"]["env_steps"] > 6
