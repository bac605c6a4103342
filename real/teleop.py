"""Teleoperators: a human's input in the policy's action space.

A teleoperator is polled once per policy step. HIL-SERL's override rule decides who acts: any non-zero
input (beyond ``deadband``) or a held button is the human taking over. The deploy loop's takeover state
machine (``robopol.real.takeover``) turns that into AUTONOMOUS -> PAUSED -> CORRECTING and back.

``ScriptedTeleop`` is the test double and the scripted "human" of stand-in runs; keyboard and SpaceMouse
devices live in ``robopol.real.teleop_devices``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class TeleopInput:
    """One poll of a teleoperator."""

    action: np.ndarray
    """Commanded action in the policy's action space (zeros when idle)."""
    engaged: bool
    """The human wants control (non-zero input or a held button)."""
    estop: bool = False
    """The operator pressed the e-stop key/button."""
    done: bool = False
    """The operator ends the episode (e.g. marks it finished)."""


class Teleop(Protocol):
    """A human input device."""

    def poll(self, t: float) -> TeleopInput:
        """The input at loop time ``t``."""

    def close(self) -> None:
        """Release the device."""


def engaged(action: np.ndarray, buttons: bool, deadband: float) -> bool:
    """HIL-SERL's rule: the human acts when any axis leaves the dead band or a button is held."""
    return bool(buttons or np.any(np.abs(action) > deadband))


class ScriptedTeleop:
    """Replays ``script(t) -> action or None`` (None: hands off); the e-stop fires at ``estop_at`` seconds and
    the operator ends the episode at ``done_at``."""

    def __init__(self, action_dim: int, script: Callable[[float], np.ndarray | None] | None = None,
                 estop_at: float | None = None, done_at: float | None = None) -> None:
        self.action_dim = action_dim
        self.script = script or (lambda t: None)
        self.estop_at, self.done_at = estop_at, done_at

    def poll(self, t: float) -> TeleopInput:
        action = self.script(t)
        estop = self.estop_at is not None and t >= self.estop_at
        done = self.done_at is not None and t >= self.done_at
        if action is None:
            return TeleopInput(np.zeros(self.action_dim, dtype=np.float32), engaged=False, estop=estop, done=done)
        return TeleopInput(np.asarray(action, dtype=np.float32), engaged=True, estop=estop, done=done)

    def close(self) -> None:
        pass
