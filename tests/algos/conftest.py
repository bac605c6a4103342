"""Offline-RL tests: one torch thread (tiny networks; immune to a busy CPU) and the shared exact-resume check."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (``one_torch_thread`` in tests/conftest.py)."""


@pytest.fixture
def assert_resume_is_exact(tmp_path, toy_store):
    """10 steps + resume + 10 steps gives the weights of 20 uninterrupted steps, targets and EMA included."""
    from safetensors.torch import load_file

    from robopol.cli.app import compose
    from robopol.train.trainer import train

    def check(overrides: list[str]) -> None:
        base = [*overrides, f"data={toy_store}", "policy.hidden_dims=[32,32]", "algo.critic_hidden_dims=[32,32]",
                "trainer.steps=20", "trainer.batch_size=16", "trainer.ckpt_every=10", "trainer.log_every=5",
                "trainer.eval_episodes=0", "trainer.progress=false", "trainer.num_threads=1"]
        train(compose("train", base), tmp_path / "straight")
        train(compose("train", [*base, "trainer.stop_after=10"]), tmp_path / "split")
        train(compose("train", [*base, f"resume={tmp_path / 'split'}"]), tmp_path / "split")
        final = "checkpoints/step_00000020/model.safetensors"
        a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "split" / final)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{key} differs after resume"

    return check
