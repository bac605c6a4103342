"""Fetch experts: closed-loop push and pick-and-place on the gripper's Cartesian deltas.

Both read only the observation (gripper and object positions, finger opening) and the goal. Actions move
the gripper by ``0.05 * action[:3]`` metres per step, so a position error ``e`` maps to ``e / 0.05``.

- push: go around the object at a safe height to a point behind it on the object-to-goal line, lower the
  fingertips to the object's centre height, and push along the line; if the object drifts sideways or the
  gripper ends up in front of it, back off and line up again;
- pick-and-place: open above the object, descend, close until the fingers hold it, carry it to the goal
  (which may be in the air) and hold it there.

Variants: ``scripted`` (default) heads for the task's goal; ``play`` moves the object to random points of
the goal region one after the other for the whole episode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Controller, ScriptedExpert

STEP = 0.05  # metres of gripper motion per unit of action


def _move(delta: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(gain * delta / STEP, -1.0, 1.0)


class FetchController(Controller):
    def __init__(self, sim: Any, variant: str) -> None:
        self.play = variant == "play"
        self.push = sim.env_id.startswith("FetchPush")
        self.sim = sim

    def reset(self, sim: Any, rng: np.random.Generator) -> None:
        self.rng = rng
        self.target: np.ndarray | None = None
        self.phase = "approach"
        self.closing = 0

    def goal(self, sim: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
        if not self.play:
            return obs["goal"].astype(np.float64)
        obj = obs["observation"][3:6].astype(np.float64)
        if self.target is None or np.linalg.norm(obj - self.target) < 0.04:
            env = sim.env
            target = env.initial_gripper_xpos[:3] + self.rng.uniform(-env.target_range, env.target_range, 3)
            target[2] = env.height_offset
            if env.target_in_the_air and self.rng.uniform() < 0.5:
                target[2] += self.rng.uniform(0, 0.45)
            self.target = target + np.r_[env.target_offset] if np.ndim(env.target_offset) else target
        return self.target

    def act(self, sim: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
        o = obs["observation"].astype(np.float64)
        grip, obj = o[0:3], o[3:6]
        goal = self.goal(sim, obs)
        return self._push(grip, obj, goal) if self.push else self._pick(grip, obj, o[9:11], goal)

    def _push(self, grip: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> np.ndarray:
        to_goal = goal[:2] - obj[:2]
        dist = float(np.linalg.norm(to_goal))
        a = np.zeros(4)
        if dist < 0.01:  # at the goal: stay clear of the object
            a[:3] = _move(np.array([0.0, 0.0, obj[2] + 0.06 - grip[2]]))
            return a
        d = to_goal / dist
        behind = obj[:2] - d * 0.055  # where the fingertips touch the object's back face
        rel = grip[:2] - obj[:2]
        along, across = float(rel @ d), float(rel @ np.array([-d[1], d[0]]))
        lined_up = along < -0.02 and abs(across) < 0.012
        low = obj[2] - 0.005  # fingertip height for pushing
        if self.phase == "push" and (abs(across) > 0.02 or along > -0.01):
            self.phase = "approach"
        if self.phase == "approach":
            if lined_up and abs(grip[2] - low) < 0.01:
                self.phase = "push"
            elif np.linalg.norm(grip[:2] - behind) < 0.01:
                a[:3] = _move(np.array([*(behind - grip[:2]), low - grip[2]]))  # behind it: descend
                return a
            else:  # travel above the object's height, then line up behind it
                safe = obj[2] + 0.05
                if grip[2] < safe - 0.01 and np.linalg.norm(grip[:2] - behind) > 0.02:
                    a[:3] = _move(np.array([0.0, 0.0, safe - grip[2]]))
                else:
                    a[:3] = _move(np.array([*(behind - grip[:2]), safe - grip[2]]))
                return a
        # Push: aim the fingertips past the object's centre by the remaining distance, correcting sideways.
        aim = obj[:2] + d * min(dist, 0.05) - d * 0.055
        correction = -np.array([-d[1], d[0]]) * across
        a[:3] = _move(np.array([*(aim - grip[:2] + correction), low - grip[2]]), gain=1.5)
        return a

    def _pick(self, grip: np.ndarray, obj: np.ndarray, fingers: np.ndarray, goal: np.ndarray) -> np.ndarray:
        a = np.zeros(4)
        rel = obj - grip
        held = self.phase == "carry" and float(fingers.sum()) > 0.01 and np.linalg.norm(rel) < 0.03
        if self.phase == "carry" and not held:
            self.phase, self.closing = "approach", 0
        if self.phase == "approach":
            if np.linalg.norm(rel[:2]) > 0.01:  # above the object, fingers open
                a[:3] = _move(np.array([rel[0], rel[1], obj[2] + 0.06 - grip[2]]))
            else:
                a[:3] = _move(rel + np.array([0.0, 0.0, 0.0]))
                if np.linalg.norm(rel) < 0.008:
                    self.phase = "grasp"
            a[3] = 1.0
            return a
        if self.phase == "grasp":
            a[:3] = _move(rel)
            a[3] = -1.0
            self.closing += 1
            if self.closing >= 3:
                self.phase = "carry"
            return a
        a[:3] = _move(goal - obj, gain=1.5)
        a[3] = -1.0
        return a


class FetchExpert(ScriptedExpert):
    """Expert for FetchPush and FetchPickAndPlace; see the module docstring for the variants."""

    VARIANTS = ("scripted", "play")

    def make_controller(self, sim: Any, variant: str) -> Controller:
        return FetchController(sim, variant)
