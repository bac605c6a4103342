"""Human takeover: AUTONOMOUS -> PAUSED -> CORRECTING -> AUTONOMOUS (LeRobot's DAgger phases, HIL-SERL's
"non-zero input means the human acts" rule).

``update(engaged)`` is called once per control step with whether the teleoperator is engaged and returns
the transition that happened, if any, for the deploy loop to act on:

- ``"pause"``: the human grabbed the device; inference pauses, pending chunks and the policy's warm-start /
  ensemble state are dropped and the robot holds for ``pause_steps`` steps (at least one), so the hand-over
  starts from rest;
- ``"correct"``: the human's actions now drive the robot (recorded with ``intervention=1``);
- ``"release"``: the human let go for ``release_steps`` consecutive steps; the policy re-plans from the
  current state and the safety filter's rate limits ramp the robot onto its new chunk.
"""

from __future__ import annotations

AUTONOMOUS, PAUSED, CORRECTING = "autonomous", "paused", "correcting"


class Takeover:
    """The takeover state machine, one ``update`` per control step."""

    def __init__(self, pause_steps: int = 1, release_steps: int = 3) -> None:
        if pause_steps < 1 or release_steps < 1:
            raise ValueError(f"need pause_steps >= 1 and release_steps >= 1, got {pause_steps}, {release_steps}")
        self.pause_steps, self.release_steps = pause_steps, release_steps
        self.reset()

    def reset(self) -> None:
        self.mode = AUTONOMOUS
        self._paused_for = self._idle_for = 0
        self.takeovers = 0

    def update(self, engaged: bool) -> str | None:
        if self.mode == AUTONOMOUS:
            if not engaged:
                return None
            self.mode, self._paused_for, self._idle_for = PAUSED, 0, 0
            self.takeovers += 1
            return "pause"
        self._idle_for = 0 if engaged else self._idle_for + 1
        if self._idle_for >= self.release_steps:
            self.mode = AUTONOMOUS
            return "release"
        if self.mode == PAUSED:
            self._paused_for += 1
            if self._paused_for >= self.pause_steps and engaged:
                self.mode = CORRECTING
                return "correct"
        return None
