"""``robopol bench policy``: training speed and per-chunk latency of every head, sampler and backbone.

For each row: training steps/s (``train_it_s``: loss + backward + AdamW at batch 256), sampling latency of
one chunk at batch 1 (``p50_ms`` / ``p99_ms`` over the timed repeats), the time of the same number of bare
network calls on fixed inputs (``net_ms``, ``nfe`` calls), and ``overhead = p50_ms / net_ms - 1``: what the
sampler loop, the scheduler and the noise cost beyond the network evaluations (target: at most 0.10).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robopol.bench.report import write_report
from robopol.policies.diffusion import DiffusionPolicy
from robopol.policies.flow import FlowPolicy
from robopol.policies.meanflow import MeanFlowPolicy
from robopol.policies.mlp import MLPPolicy

# Shapes of a small arm task: 2 observation steps of 20 features, 16-step chunks of 7-D actions.
OBS_DIM, OBS_STEPS, HORIZON, ACTION_DIM, BATCH = 20, 2, 16, 7, 256
SAMPLERS = [(DiffusionPolicy, "ddpm", 100), (DiffusionPolicy, "ddim", 10), (FlowPolicy, "euler", 10),
            (FlowPolicy, "midpoint", 5), (MeanFlowPolicy, "one_step", 1)]


def _timings(fns: Sequence[Callable[[], Any]], min_reps: int, budget_s: float, warmup: int = 2) -> np.ndarray:
    """Seconds per call, ``(reps, len(fns))``: the functions take turns, so load from other processes hits
    them alike; at least ``min_reps`` rounds, more while within ``budget_s``."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 1000):
        row = []
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            row.append(time.perf_counter() - t0)
        times.append(row)
    return np.asarray(times)


def _train_steps_per_s(policy: nn.Module, steps: int) -> float:
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    batch = {"obs": torch.randn(BATCH, OBS_STEPS, OBS_DIM),
             "action": torch.rand(BATCH, HORIZON, ACTION_DIM) * 2 - 1,
             "action_is_pad": torch.zeros(BATCH, HORIZON, dtype=torch.bool)}

    def step() -> None:
        loss, _ = policy.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    policy.train()
    return float(1.0 / np.median(_timings([step], steps, 0.0, warmup=3)))


def _row(head: str, backbone: str, sampler: str, nfe: int, policy: nn.Module, train_sps: float,
         sample: Callable[[], Any], net_calls: Callable[[], Any], reps: int,
         budget_s: float) -> dict[str, Any]:
    policy.eval()
    with torch.no_grad():
        latency, net = _timings([sample, net_calls], reps, budget_s).T
    net_ms = float(np.median(net)) * 1e3
    median_ms = float(np.median(latency)) * 1e3
    return {
        "policy": f"{head} {sampler}".strip(), "backbone": backbone, "nfe": nfe,
        "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
        "train_it_s": train_sps,
        "p50_ms": median_ms,
        "p99_ms": float(np.percentile(latency, 99)) * 1e3,
        "net_ms": net_ms,
        "overhead": median_ms / net_ms - 1.0,
    }


def bench_policy(out_dir: str | Path, quick: bool = False) -> list[dict[str, Any]]:
    """Measure every head x sampler x backbone, print the table and write ``out_dir/policy.json``."""
    torch.manual_seed(0)
    hidden = [128, 128] if quick else [512, 512, 512]
    backbones = {"mlp": {"backbone": "mlp", "hidden_dims": hidden},
                 "unet": {"backbone": "unet", "down_dims": [16, 32, 64] if quick else [64, 128, 256]}}
    train_steps, reps, budget_s = (2, 3, 0.0) if quick else (10, 20, 3.0)
    shape = {"obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "obs_steps": OBS_STEPS, "horizon": HORIZON,
             "action_steps": HORIZON // 2}
    obs = torch.randn(1, OBS_STEPS, OBS_DIM)
    x = torch.randn(1, HORIZON, ACTION_DIM)
    level = torch.full((1,), 0.5)
    rows: list[dict[str, Any]] = []
    for backbone, sizes in backbones.items():
        for cls in (DiffusionPolicy, FlowPolicy, MeanFlowPolicy):
            policy = cls(**shape, **sizes)
            train_sps = _train_steps_per_s(policy, train_steps)
            for _, sampler, steps in (s for s in SAMPLERS if s[0] is cls):
                nfe = 2 * steps if sampler == "midpoint" else steps

                # the mean-flow network takes a (t, r) pair per sample
                net_level = level.expand(1, 2) if cls is MeanFlowPolicy else level

                def net_calls(policy: nn.Module = policy, nfe: int = nfe, net_level: torch.Tensor = net_level) -> None:
                    for _ in range(nfe):
                        policy.net(x, net_level, obs)

                def sample(policy: nn.Module = policy, sampler: str = sampler, steps: int = steps) -> None:
                    policy.sample(obs, sampler=sampler, steps=steps)

                head = cls.__name__.removesuffix("Policy").lower()
                rows.append(_row(head, backbone, f"{sampler}-{steps}", nfe, policy, train_sps, sample,
                                 net_calls, reps, budget_s))
    mlp = MLPPolicy(**shape, hidden_dims=hidden)
    rows.append(_row("mlp", "mlp", "", 1, mlp, _train_steps_per_s(mlp, train_steps),
                     lambda: mlp.sample(obs), lambda: mlp(obs), reps, budget_s))
    notes = (f"obs {OBS_STEPS}x{OBS_DIM}, chunk {HORIZON}x{ACTION_DIM}; training at batch {BATCH}, "
             f"latency at batch 1 on {torch.get_num_threads()} torch threads; mlp backbone {hidden}, "
             f"unet down_dims {backbones['unet']['down_dims']}; "
             "overhead = p50_ms / net_ms - 1 (target <= 0.10)")
    write_report("policy", rows, out_dir, notes=notes)
    return rows
