"""Online RL on an Isaac Lab task (CI's Python 3.12 leg): Gaussian PPO's rollouts go through the adapter's
tensor path, evaluation runs on the training envs (one simulation per process), checkpoints are policies."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("isaaclab_newton", reason="Isaac Lab 3 needs Python 3.12 with the 'isaaclab' extra "
                                              "(scripts/isaaclab_env.sh); CI runs these in its second leg")

from robopol.sim.isaaclab.adapter import IsaacLabEnv  # noqa: E402

from robopol.cli.app import compose  # noqa: E402
from robopol.train.trainer import train  # noqa: E402


def test_ppo_trains_on_the_tensor_path_and_evaluates_on_its_training_envs(tmp_path, monkeypatch):
    numpy_steps = []
    monkeypatch.setattr(IsaacLabEnv, "step", lambda self, actions: numpy_steps.append(1))  # must not be used
    overrides = ["task=isaaclab/ur5e_reach", "policy=gaussian", "algo=ppo", "algo.num_envs=8",
                 "algo.rollout_steps=20", "algo.epochs=2", "algo.minibatches=2", "policy.hidden_dims=[32]",
                 "algo.critic_hidden_dims=[32]", "trainer.steps=2", "trainer.log_every=1", "trainer.ckpt_every=2",
                 "trainer.eval_episodes=0", "trainer.progress=false", "trainer.videos=false"]
    result = train(compose("train", overrides), tmp_path / "run")
    assert result.steps == 2 and not numpy_steps
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/policy_loss" in r] == [1, 2]
    assert all(r["train/env_steps"] == r["step"] * 160 for r in records if "train/env_steps" in r)
    assert (tmp_path / "run" / "checkpoints" / "step_00000002").is_dir()
