"""Maze experts: a waypoint follower on the maze's cell graph, for the point mass and for the ant.

The planner finds the shortest path of free cells (breadth-first search, 4-connected) from the agent's cell
to the goal cell and aims at a point of that path a fixed look-ahead distance ahead of the agent; inside the
goal cell it aims at the goal itself. The point mass tracks that point with a PD law on its force input.
The ant walks toward it with a scripted trot (``AntGait``).

Variants: ``waypoint`` (default) heads for the task's goal; ``play`` chases random free cells one after the
other for the whole episode (goal-agnostic data for goal-conditioned learning).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from .base import Controller, ScriptedExpert


class MazeGraph:
    """Free cells of a gymnasium-robotics maze and shortest paths between them."""

    def __init__(self, maze: Any) -> None:
        self.maze = maze
        grid = np.array([[1 if c == 1 else 0 for c in row] for row in maze.maze_map])
        self.free = grid == 0
        self.cells = [tuple(c) for c in np.argwhere(self.free)]

    def cell(self, xy: np.ndarray) -> tuple[int, int]:
        r, c = self.maze.cell_xy_to_rowcol(np.asarray(xy))
        r = int(np.clip(r, 0, self.free.shape[0] - 1))
        c = int(np.clip(c, 0, self.free.shape[1] - 1))
        if not self.free[r, c]:  # pushed into a wall cell by noise: use the nearest free cell
            centres = np.array([self.centre(x) for x in self.cells])
            r, c = self.cells[int(np.argmin(np.linalg.norm(centres - xy, axis=1)))]
        return r, c

    def centre(self, cell: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.maze.cell_rowcol_to_xy(np.array(cell)), dtype=np.float64)

    def path(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells from ``start`` to ``goal`` inclusive (just ``[start]`` if the goal cannot be reached)."""
        prev: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        queue = deque([start])
        while queue:
            cur = queue.popleft()
            if cur == goal:
                break
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (cur[0] + dr, cur[1] + dc)
                if (0 <= nxt[0] < self.free.shape[0] and 0 <= nxt[1] < self.free.shape[1]
                        and self.free[nxt] and nxt not in prev):
                    prev[nxt] = cur
                    queue.append(nxt)
        if goal not in prev:
            return [start]
        out = [goal]
        while prev[out[-1]] is not None:
            out.append(prev[out[-1]])  # type: ignore[arg-type]
        return out[::-1]

    def aim(self, pos: np.ndarray, goal: np.ndarray, lookahead: float) -> np.ndarray:
        """A point on the path of cell centres from ``pos`` to ``goal``, ``lookahead`` ahead of the agent."""
        cells = self.path(self.cell(pos), self.cell(goal))
        if len(cells) == 1:
            return np.asarray(goal, dtype=np.float64)
        points = [self.centre(c) for c in cells[1:-1]] + [np.asarray(goal, dtype=np.float64)]
        # Walk the polyline (agent -> next centre -> ... -> goal) for ``lookahead``; corners come from cell
        # centres, so the aim never cuts through a wall cell.
        left, here = lookahead, np.asarray(pos, dtype=np.float64)
        for p in points:
            seg = float(np.linalg.norm(p - here))
            if seg >= left:
                return here + (p - here) * (left / max(seg, 1e-9))
            left, here = left - seg, p
        return points[-1]


class MazeController(Controller):
    """Shared waypoint logic; subclasses turn the aim point into an action."""

    lookahead = 0.5  # in cells

    def __init__(self, sim: Any, variant: str) -> None:
        self.graph = MazeGraph(sim.env.maze)
        self.scale = float(sim.env.maze.maze_size_scaling)
        self.play = variant == "play"

    def reset(self, sim: Any, rng: np.random.Generator) -> None:
        self.rng = rng
        self.target: np.ndarray | None = None

    def goal(self, sim: Any, pos: np.ndarray) -> np.ndarray:
        if not self.play:
            return np.asarray(sim.env.goal, dtype=np.float64)
        if self.target is None or np.linalg.norm(self.target - pos) < 0.45:
            cell = self.graph.cells[int(self.rng.integers(len(self.graph.cells)))]
            self.target = self.graph.centre(cell) + self.rng.uniform(-0.25, 0.25, 2) * self.scale
        return self.target

    def aim(self, sim: Any, pos: np.ndarray) -> np.ndarray:
        return self.graph.aim(pos, self.goal(sim, pos), self.lookahead * self.scale)


class PointMazeController(MazeController):
    kp, kd = 10.0, 1.0

    def act(self, sim: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
        pos, vel = obs["observation"][:2].astype(np.float64), obs["observation"][2:4].astype(np.float64)
        return np.clip(self.kp * (self.aim(sim, pos) - pos) - self.kd * vel, -1.0, 1.0)


class AntGait:
    """A scripted trot for the gymnasium Ant that walks in any direction of the ground plane.

    Diagonal leg pairs alternate between stance and swing. A hip swings its leg about the vertical, which
    moves the foot along the tangent of the leg's direction; pushing the body along ``d`` therefore sweeps
    each stance foot backwards with an amplitude proportional to ``d``'s component along that tangent, while
    the swing pair lifts (ankle) and swings forwards. Joint targets are tracked by PD on the torque inputs.
    """

    # Leg directions in the torso frame and the ant's joint order (hip_1, ankle_1, ... in qpos order).
    LEG_ANGLES = np.deg2rad([45.0, 135.0, 225.0, 315.0])
    ANKLE_SIGN = np.array([1.0, -1.0, -1.0, 1.0])  # sign that lifts each foot
    ANKLE_REST = 1.0  # rad, knee bend that holds the torso up

    def __init__(self, period: float = 0.5, hip_amp: float = 0.45, lift: float = 0.45,
                 kp: float = 3.0, kd: float = 0.15) -> None:
        self.period, self.hip_amp, self.lift, self.kp, self.kd = period, hip_amp, lift, kp, kd
        self.phase = 0.0

    def act(self, qpos: np.ndarray, qvel: np.ndarray, direction_body: np.ndarray, dt: float,
            actuator_joint: np.ndarray) -> np.ndarray:
        """Torques for the 8 actuators; ``direction_body`` is a unit vector in the torso frame."""
        self.phase = (self.phase + dt / self.period) % 1.0
        hips = np.zeros(4)
        ankles = np.zeros(4)
        for leg, angle in enumerate(self.LEG_ANGLES):
            pair = leg % 2  # legs 0 and 2, 1 and 3 move together
            s = np.sin(2 * np.pi * (self.phase + 0.5 * pair))
            tangent = np.array([-np.sin(angle), np.cos(angle)])
            # Stance (s < 0 half) sweeps the foot against the motion; swing carries it forward, lifted.
            hips[leg] = self.hip_amp * float(tangent @ direction_body) * s
            ankles[leg] = self.ANKLE_SIGN[leg] * (self.ANKLE_REST - self.lift * max(0.0, s))
        target = np.empty(8)
        target[0::2], target[1::2] = hips, ankles  # qpos order: hip_1, ankle_1, hip_2, ...
        q, qd = qpos[7:15], qvel[6:14]
        torque = self.kp * (target - q) - self.kd * qd
        return np.clip(torque[actuator_joint], -1.0, 1.0)


class AntMazeController(MazeController):
    lookahead = 0.75

    def __init__(self, sim: Any, variant: str) -> None:
        super().__init__(sim, variant)
        model = sim.model
        # Actuator k drives joint actuator_joint[k] (index among the 8 leg joints, in qpos order).
        self.actuator_joint = np.array([int(model.actuator_trnid[k, 0]) - 1 for k in range(model.nu)])
        self.dt = float(sim.spec.dt)

    def reset(self, sim: Any, rng: np.random.Generator) -> None:
        super().reset(sim, rng)
        self.gait = AntGait()

    def act(self, sim: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
        qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
        pos = qpos[:2]
        w, x, y, z = qpos[3:7]
        yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        d_world = self.aim(sim, pos) - pos
        d_world = d_world / max(float(np.linalg.norm(d_world)), 1e-6)
        c, s = np.cos(-yaw), np.sin(-yaw)
        d_body = np.array([c * d_world[0] - s * d_world[1], s * d_world[0] + c * d_world[1]])
        return self.gait.act(qpos, qvel, d_body, self.dt, self.actuator_joint)


class MazeExpert(ScriptedExpert):
    """Expert for PointMaze and AntMaze; see the module docstring for the variants."""

    VARIANTS = ("waypoint", "play")

    def make_controller(self, sim: Any, variant: str) -> Controller:
        if sim.env_id.startswith("Ant"):
            return AntMazeController(sim, variant)
        return PointMazeController(sim, variant)
