"""Consistency distillation: a one-step student from a trained diffusion or flow teacher.

``robopol train algo=distill teacher=<run or checkpoint>`` trains a
:class:`robopol.policies.consistency.ConsistencyPolicy` on the teacher's data, normaliser and task, starting
from the teacher's weights. Two losses (``algo.loss``):

- ``consistency`` (LCM-style): split the teacher's noise range into ``solver_steps`` equal intervals of noise
  scale; noise a clean chunk to grid point ``n + 1``, take one deterministic teacher step (DDIM / Euler) to
  grid point ``n``, and pull the student's ``f(x_{n+1})`` towards the EMA target network's ``f(x_n)``. At
  ``n = 0`` the target is the teacher's step itself (f is the identity on clean chunks), which anchors the
  chain to the data. Trains every noise level, so chained few-step sampling works too.
- ``action_matching`` (RL-100's simplest variant): the same noise goes through the teacher's full sampler
  (its configured sampler and steps, no gradient) and through one student call; regress one on the other.

Optimisation is behaviour cloning's (AdamW, warm-up + cosine, gradient clipping, EMA for evaluation); the
consistency target network is a second, faster EMA of the student (LCM: 0.95).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from robopol.algos.bc import BC, update_ema
from robopol.policies.base import GenerativePolicy, check_choice, masked_mse
from robopol.policies.consistency import ConsistencyPolicy

LOSSES = ("consistency", "action_matching")


def consistency_loss(student: ConsistencyPolicy, target: ConsistencyPolicy, teacher: GenerativePolicy,
                     batch: dict[str, torch.Tensor], solver_steps: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """LCM-style consistency distillation loss on a batch of normalised windows (see the module docstring)."""
    action, obs = teacher.to_internal(batch["action"]), batch["obs"]
    grid = torch.stack([teacher.level_at(i / solver_steps) for i in range(solver_steps + 1)]).to(action.device)
    noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
    index = torch.randint(1, solver_steps + 1, (action.shape[0],), generator=generator, device=action.device)
    level, previous = grid[index], grid[index - 1]
    x = teacher.noised(action, noise, level)
    with torch.no_grad():
        x_previous = teacher.solver_step(x, level, previous, obs)
        goal = target.consistency(x_previous, previous, obs)
    loss = masked_mse(student.consistency(x, level, obs), goal, batch.get("action_is_pad"))
    return loss, {"consistency_mse": loss.item()}


def action_matching_loss(student: ConsistencyPolicy, teacher: GenerativePolicy, batch: dict[str, torch.Tensor],
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Same-noise action matching: one student call against the teacher's full sampler from the same noise."""
    obs = batch["obs"]
    noise = torch.randn(batch["action"].shape, generator=generator, device=obs.device, dtype=obs.dtype)
    with torch.no_grad():
        goal = teacher.integrate(noise, obs, teacher.sampler, teacher.inference_steps, generator)
    level = teacher.level_at(1.0).to(obs.device).expand(noise.shape[0])
    loss = masked_mse(student.consistency(noise, level, obs), goal)
    return loss, {"action_matching_mse": loss.item()}


class Distill(BC):
    """Consistency distillation of ``teacher`` into ``policy`` (a :class:`ConsistencyPolicy`)."""

    def __init__(
        self,
        policy: ConsistencyPolicy,
        teacher: GenerativePolicy,
        total_steps: int,
        loss: str = "consistency",
        solver_steps: int = 20,
        target_decay: float = 0.95,
        **bc: Any,
    ) -> None:
        """``bc`` takes the optimiser fields of :class:`robopol.algos.bc.BC`."""
        check_choice("algo.loss", loss, LOSSES)
        if solver_steps < 1:
            raise ValueError(f"algo.solver_steps must be at least 1, got {solver_steps}")
        if not 0.0 <= target_decay < 1.0:
            raise ValueError(f"algo.target_decay must be in [0, 1), got {target_decay}")
        if not isinstance(policy, ConsistencyPolicy):
            raise ValueError(f"algo=distill trains a consistency student, got a {type(policy).__name__}")
        if getattr(teacher, "prediction_type", None) == "epsilon":
            warnings.warn(
                "distilling an epsilon-prediction diffusion teacher: its clean estimate (x - sqrt(1 - abar) eps) / "
                "sqrt(abar) magnifies network errors ~16x at the top noise level a one-step student starts from "
                "(a student of such a teacher reached 4% success on cube-single task 1 where the teacher had 94%); "
                "prefer a flow teacher or a diffusion teacher with policy.prediction_type=sample or v_prediction",
                stacklevel=2)
        super().__init__(policy, total_steps, **bc)
        self.teacher = teacher.requires_grad_(False).eval()
        self.loss_name, self.solver_steps, self.target_decay = loss, solver_steps, target_decay
        self.target = copy.deepcopy(policy).requires_grad_(False)

    def loss(self, batch: dict[str, torch.Tensor],
             policy: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        student = self.policy if policy is None else policy
        if self.loss_name == "consistency":
            return consistency_loss(student, self.target, self.teacher, batch, self.solver_steps)
        return action_matching_loss(student, self.teacher, batch)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = super().update(batch)
        update_ema(self.target, self.policy, self.target_decay)
        return metrics

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "target": self.target}
