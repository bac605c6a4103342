"""Scripted experts of robopol's Isaac Lab UR5e tasks: batched torch controllers on the flange's Cartesian moves.

Both read the task's state (flange, cube and goal positions) on the simulation device and act for every env
at once. Actions move the flange target ``ACTION_STEP`` metres per unit, so a position error ``e`` maps to
``e / ACTION_STEP``.

- reach: head straight for the goal;
- push: rise to a safe height, go above a point behind the cube on the goal-to-cube line, lower the tool
  disc to the cube's height and push along the line, steering the cube back onto it; if the tool gets beside
  or in front of the cube, rise and line up again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robopol.errors import ConfigError

TOOL_RADIUS = 0.04
"""Radius of the UR5e's flange cylinder (its MJCF ``eef_collision`` geom), the disc that pushes."""
SAFE_HEIGHT = 0.10
"""Flange height for travelling over the cube."""
PUSH_SPEED = 0.6
"""Fraction of full speed while pushing (a gentler contact keeps the cube from being flung)."""


class UR5eExpert:
    """The ``Expert`` protocol over an ``IsaacLabEnv`` running ``UR5eReachEnv`` or ``UR5ePushEnv``."""

    def __init__(self, env: Any, noise: float = 0.0, seed: int = 0) -> None:
        task = getattr(env, "env", None)
        if task is None or not hasattr(task, "flange_pos"):
            raise ConfigError(f"the UR5e expert drives robopol's Isaac Lab UR5e tasks; task '{env.spec.task}' is "
                              f"not one of them")
        if noise < 0:
            raise ConfigError(f"noise must be >= 0, got {noise}")
        from robopol.sim.isaaclab.ur5e import ACTION_STEP, CUBE_SIZE

        self.env, self.task, self.noise = env, task, float(noise)
        self.step = ACTION_STEP
        self.push_height = task.cfg.flange_floor  # as low as the task lets the flange go
        self.behind = CUBE_SIZE / 2 + TOOL_RADIUS + 0.015
        """Distance from the cube centre to the tool axis when lined up to push."""
        self.push = hasattr(task, "cube_pos")
        self.generator = torch.Generator(device=env.device)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.generator.manual_seed(int(seed))

    def act_tensors(self) -> torch.Tensor:
        """(N, 3) actions on the simulation device."""
        flange = self.task.flange_pos()
        target = self._push_target(flange) if self.push else self.task.goal
        action = (target - flange) / self.step
        if self.noise > 0:
            action = action + self.noise * torch.randn(action.shape, generator=self.generator, device=action.device)
        return action.clamp(-1.0, 1.0)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.act_tensors().cpu().numpy().astype(np.float32)

    def _push_target(self, flange: torch.Tensor) -> torch.Tensor:
        cube, goal = self.task.cube_pos(), self.task.goal
        line = goal[:, :2] - cube[:, :2]
        direction = line / torch.linalg.norm(line, dim=-1, keepdim=True).clamp(min=1e-6)
        behind = cube[:, :2] - self.behind * direction
        rel = flange[:, :2] - cube[:, :2]
        along = (rel * direction).sum(-1)  # negative: behind the cube
        normal = torch.stack([direction[:, 1], -direction[:, 0]], dim=-1)
        across = (rel * normal).sum(-1)  # signed distance from the line
        lined_up = (along < -self.behind + 0.02) & (across.abs() < 0.02)
        low = flange[:, 2] < self.push_height + 0.02
        above_start = torch.linalg.norm(flange[:, :2] - behind, dim=-1) < 0.015

        def at(xy: torch.Tensor, height: float) -> torch.Tensor:
            return torch.cat([xy, torch.full_like(xy[:, :1], height)], dim=-1)

        # pushing: move along the line, steering sideways towards it (the cube drifts off it otherwise)
        push_xy = flange[:, :2] + PUSH_SPEED * self.step * direction - 0.5 * across[:, None] * normal
        push = at(push_xy, self.push_height)
        descend = at(behind, self.push_height)
        travel = at(behind, SAFE_HEIGHT)
        rise = at(flange[:, :2], SAFE_HEIGHT)
        target = torch.where((low & ~lined_up)[:, None], rise, travel)
        target = torch.where(above_start[:, None], descend, target)
        return torch.where((low & lined_up)[:, None], push, target)
