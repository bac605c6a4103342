"""Algorithms the data-parallel tests run under torchrun (``algo._target_=dist_helpers.<name>``, with
``tests/`` on PYTHONPATH): BC that reports its weights per rank, or fails on one rank at one step as
``ROBOPOL_TEST_CRASH=<rank>:<step>:<raise|kill>`` says."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

from robopol import distributed
from robopol.algos.bc import BC
from robopol.algos.iql import IQL
from robopol.algos.ppo import PPO


def weight_fingerprint(module: torch.nn.Module) -> list[float]:
    return [float(p.double().sum()) for p in module.parameters()]


class ReportingBC(BC):
    """BC that writes each rank's policy and EMA weight sums to ``$ROBOPOL_TEST_REPORT/rank<r>.json``
    after every update, so a test can compare what rank 0 does not save."""

    def update(self, batch):
        metrics = super().update(batch)
        folder = os.environ.get("ROBOPOL_TEST_REPORT")
        if folder:
            report = {"policy": weight_fingerprint(self.policy), "ema": weight_fingerprint(self.ema)}
            Path(folder, f"rank{distributed.current().rank}.json").write_text(json.dumps(report))
        return metrics


class CrashOnStep:
    """Mixin for an algorithm that raises (or is SIGKILLed, like an out-of-memory kill) on one rank at one
    step of this process."""

    updates = 0

    def update(self, batch):
        self.updates += 1
        crash = os.environ.get("ROBOPOL_TEST_CRASH")
        if crash:
            rank, step, mode = crash.split(":")
            if distributed.current().rank == int(rank) and self.updates == int(step):
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected failure in rank {rank} at step {step}")
        return super().update(batch)


class CrashingBC(CrashOnStep, BC):
    pass


class CrashingIQL(CrashOnStep, IQL):
    pass


class ReportingPPO(PPO):
    """PPO that writes each rank's weights, observation statistics and learning rate after every iteration."""

    def update(self, rollout):
        metrics = super().update(rollout)
        folder = os.environ.get("ROBOPOL_TEST_REPORT")
        if folder:
            report = {"policy": weight_fingerprint(self.policy), "critic": weight_fingerprint(self.critic),
                      "obs_mean": self.obs_rms.mean.tolist(), "obs_count": float(self.obs_rms.count), "lr": self.lr}
            Path(folder, f"rank{distributed.current().rank}.json").write_text(json.dumps(report))
        return metrics
