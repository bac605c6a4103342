"""OGBench manipulation expert: OGBench's shipped oracles, driven by a sub-goal planner.

OGBench's oracles each solve one sub-goal (move cube *i* to a pose, press button *b*, slide the drawer or
window to a position) and read it from the ``privileged/target_*`` entries that the env only fills in its
data-collection mode. Here the env stays in task mode and this module plays the data-collection side: it
chooses the next sub-goal, fills in those entries, and starts a fresh oracle whenever the previous one is
done (the loop of OGBench's dataset generator, written anew for task mode).

Variants (``robopol collect ... expert=VARIANT``):

- ``plan`` (default): plan oracles (keyframe plans, open loop) toward the task's goal, noise-free plans;
- ``markov``: OGBench's Markov (closed-loop) oracles toward the task's goal;
- ``play``: plan oracles with OGBench's temporally correlated plan noise, chasing random sub-goals for the
  whole episode, as in OGBench's *play* datasets;
- ``noisy``: Markov oracles chasing random sub-goals, as in OGBench's *noisy* datasets (add ``noise=``).

The planner toward the goal re-reads the scene after every sub-goal, so a slipped grasp or a missed button
is simply planned again: cubes whose goal is blocked wait, a swap goes through a free spot, stacks are built
bottom up, lights-out presses come from solving the toggle system over GF(2), and the scene's locks are
opened before and restored after the drawer or window moves.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .base import Controller, ScriptedExpert, numpy_global_rng

CUBE_TOL = 0.04  # OGBench's success radius for a cube
SLIDE_TOL = 0.04  # ... for the drawer and window positions
DRAWER_OPEN, WINDOW_OPEN = -0.16, 0.2
# The in-drawer goal leaves the cube 2 cm from the drawer's front wall: aim 8 mm deeper (well inside the 4 cm
# success radius) so that the released cube does not rest on the wall.
DRAWER_PLACE_OFFSET = 0.008


class Subgoal(NamedTuple):
    kind: str  # cube | button | drawer | window
    index: int = 0  # cube or button index
    pos: np.ndarray | None = None  # cube target position
    q: float = 0.0  # drawer / window target joint position
    state: int = 0  # button target state
    fingers_along_x: bool = False  # grasp so that the fingers close along world x (placing into the drawer)


def solve_lights_out(need: np.ndarray, rows: int, cols: int) -> np.ndarray | None:
    """Buttons to press (0/1 per button) so that the toggles add up to ``need`` mod 2; None if unsolvable."""
    n = rows * cols
    a = np.zeros((n, n), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        for dr, dc in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
            if 0 <= r + dr < rows and 0 <= c + dc < cols:
                a[(r + dr) * cols + c + dc, i] = 1  # pressing i toggles its neighbour
    m = np.concatenate([a, need.reshape(-1, 1).astype(np.uint8) % 2], axis=1)
    pivots, row = [], 0
    for col in range(n):  # Gauss-Jordan elimination over GF(2)
        hit = np.flatnonzero(m[row:, col])
        if not len(hit):
            continue
        p = row + hit[0]
        m[[row, p]] = m[[p, row]]
        for r in np.flatnonzero(m[:, col]):
            if r != row:
                m[r] ^= m[row]
        pivots.append(col)
        row += 1
        if row == n:
            break
    if m[row:, n].any():
        return None
    x = np.zeros(n, dtype=np.uint8)
    for r, col in enumerate(pivots):
        x[col] = m[r, n]
    return x


class OGBenchController(Controller):
    def __init__(self, sim: Any, variant: str) -> None:
        self.kind = sim.kind
        self.markov = variant in ("markov", "noisy")
        self.play = variant in ("play", "noisy")
        self.oracle: Any = None
        self.subgoal: Subgoal | None = None

    def reset(self, sim: Any, rng: np.random.Generator) -> None:
        self.rng = rng
        self._np = {"rng": np.random.RandomState(int(rng.integers(2**32))).get_state()}
        self.oracle, self.subgoal = None, None

    def act(self, sim: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
        env = sim.env
        if self.oracle is None or self.oracle.done:
            self.subgoal = self._random_subgoal(env) if self.play else self._next_subgoal(env)
            if self.subgoal is None:  # everything is in place; the env ends the episode
                self.oracle = None
                return np.zeros(5)
            self.oracle = self._make_oracle(env, self.subgoal)
            info = self._info(env)
            if self.subgoal.fingers_along_x:
                # The plan oracle picks the grasp yaw (mod 90 degrees) nearest to the effector's yaw when
                # it plans: planning from the yaw whose fingers close along x makes it grasp and place that
                # way, and the fingers then clear the drawer's front wall. The arm turns there first.
                info["proprio/effector_yaw"] = np.array([self._yaw_fingers_along_x(env)])
            with numpy_global_rng(self._np):
                self.oracle.reset(obs["observation"], info)
        return np.asarray(self.oracle.select_action(obs["observation"], self._info(env)), dtype=np.float64)

    # ------------------------------------------------------------------ oracles

    def _make_oracle(self, env: Any, g: Subgoal) -> Any:
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        closed = self.kind == "puzzle"  # puzzle buttons are pressed with a closed gripper, as in OGBench
        if self.markov:
            classes = {"cube": CubeMarkovOracle, "drawer": DrawerMarkovOracle, "window": WindowMarkovOracle}
            if g.kind == "button":
                return ButtonMarkovOracle(env=env, gripper_always_closed=closed)
            return classes[g.kind](env=env)
        # Plan noise: OGBench's play data uses 0.1; the goal-directed expert plans without noise (the
        # noise knob adds action noise instead).
        kw = {"noise": 0.1 if self.play else 0.0}
        if g.kind == "button":
            return ButtonPlanOracle(env=env, gripper_always_closed=closed, **kw)
        plan = {"cube": CubePlanOracle, "drawer": DrawerPlanOracle, "window": WindowPlanOracle}
        return plan[g.kind](env=env, **kw)

    @staticmethod
    def _yaw_fingers_along_x(env: Any) -> float:
        """Effector yaw at which the gripper pads face each other along world x."""
        d = env._data
        pads = d.body("ur5e/robotiq/right_pad").xpos - d.body("ur5e/robotiq/left_pad").xpos
        yaw = float(env.compute_ob_info()["proprio/effector_yaw"][0])
        offset = yaw - np.arctan2(pads[1], pads[0])  # effector yaw minus the pads' direction
        return float(np.arctan2(np.sin(offset), np.cos(offset)))

    def _info(self, env: Any) -> dict[str, Any]:
        """The env's privileged info plus the ``privileged/target_*`` entries of the current sub-goal."""
        info = env.compute_ob_info()
        g = self.subgoal
        assert g is not None
        if g.kind == "cube":
            info["privileged/target_block"] = g.index
            info["privileged/target_block_pos"] = np.asarray(g.pos, dtype=np.float64)
            info["privileged/target_block_yaw"] = np.array(
                [self._yaw_fingers_along_x(env) if g.fingers_along_x else 0.0])
        elif g.kind == "button":
            info["privileged/target_button"] = g.index
            top = env._data.site_xpos[env._button_site_ids[g.index]]
            info["privileged/target_button_top_pos"] = top.copy()
            info["privileged/target_button_state"] = g.state
        else:
            joint = f"{g.kind}_slide"
            q = info[f"privileged/{g.kind}_pos"][0]
            axis = env._data.xaxis[env._model.joint(joint).id]
            info[f"privileged/target_{g.kind}_pos"] = np.array([g.q])
            handle = info[f"privileged/{g.kind}_handle_pos"]
            info[f"privileged/target_{g.kind}_handle_pos"] = handle + (g.q - q) * axis
        return info

    # ------------------------------------------------------------------ the task's goal

    def _next_subgoal(self, env: Any) -> Subgoal | None:
        if self.kind == "cube":
            return self._next_cube(env)
        if self.kind == "puzzle":
            return self._next_press(env)
        return self._next_scene(env)

    @staticmethod
    def _cubes(env: Any) -> tuple[np.ndarray, np.ndarray]:
        pos = np.array([env._data.joint(f"object_joint_{i}").qpos[:3] for i in range(env._num_cubes)])
        goal = np.array([env._data.mocap_pos[m] for m in env._cube_target_mocap_ids])
        return pos, goal

    def _next_cube(self, env: Any) -> Subgoal | None:
        pos, goal = self._cubes(env)
        n = len(pos)
        placed = np.linalg.norm(pos - goal, axis=1) <= CUBE_TOL
        pending = [i for i in np.argsort(goal[:, 2], kind="stable") if not placed[i]]
        if not pending:
            return None

        def covered(i: int) -> bool:  # another cube sits on top of cube i
            return any(j != i and pos[j, 2] > pos[i, 2] + 0.02
                       and np.linalg.norm(pos[j, :2] - pos[i, :2]) < 0.03 for j in range(n))

        def blocked(i: int) -> bool:  # goal i is occupied by a cube that is not its intended support
            return any(j != i and np.linalg.norm(pos[j, :2] - goal[i, :2]) < 0.05
                       and not (placed[j] and goal[j, 2] < goal[i, 2] - 0.02) for j in range(n))

        def supported(i: int) -> bool:  # a stacked goal needs its base cube placed first
            if goal[i, 2] < 0.03:
                return True
            return any(j != i and placed[j] and goal[j, 2] < goal[i, 2] - 0.02
                       and np.linalg.norm(goal[j, :2] - goal[i, :2]) < 0.02 for j in range(n))

        for i in pending:
            if not covered(i) and not blocked(i) and supported(i):
                return Subgoal("cube", int(i), goal[i].copy())
        # Every pending cube waits for another (a swap): park one of them on a free spot.
        movable = [i for i in pending if not covered(i)] or pending
        i = movable[0]
        return Subgoal("cube", int(i), self._free_spot(env, np.concatenate([pos, goal])))

    def _free_spot(self, env: Any, avoid: np.ndarray) -> np.ndarray:
        low, high = env._target_sampling_bounds
        best, best_d = None, -1.0
        for _ in range(64):
            xy = self.rng.uniform(low, high)
            d = float(np.min(np.linalg.norm(avoid[:, :2] - xy, axis=1)))
            if d > 0.1:
                return np.array([*xy, 0.02])
            if d > best_d:
                best, best_d = xy, d
        return np.array([*best, 0.02])

    def _next_press(self, env: Any) -> Subgoal | None:
        cur = env._cur_button_states.astype(np.uint8)
        need = cur ^ env._target_button_states.astype(np.uint8)
        if not need.any():
            return None
        presses = solve_lights_out(need, env._num_rows, env._num_cols)
        todo = np.flatnonzero(presses) if presses is not None else np.flatnonzero(need)
        effector = env._data.site_xpos[env._pinch_site_id]
        tops = np.array([env._data.site_xpos[env._button_site_ids[b]] for b in todo])
        b = int(todo[np.argmin(np.linalg.norm(tops[:, :2] - effector[:2], axis=1))])  # nearest first
        return Subgoal("button", b, state=int(1 - cur[b]))

    def _next_scene(self, env: Any) -> Subgoal | None:
        d = env._data
        buttons = env._cur_button_states
        q = {k: float(d.joint(f"{k}_slide").qpos[0]) for k in ("drawer", "window")}
        q_goal = {"drawer": float(env._target_drawer_pos), "window": float(env._target_window_pos)}
        axis = d.xaxis[env._model.joint("drawer_slide").id].copy()
        (cube,), (goal,) = self._cubes(env)

        def unlock_then(kind: str, target: float) -> Subgoal:
            lock = 0 if kind == "drawer" else 1
            if buttons[lock] == 0:
                return Subgoal("button", lock, state=1)
            return Subgoal(kind, q=target)

        # A cube that belongs in the drawer goes in while the drawer is open; the drawer carries it home.
        goal_in_drawer = env._is_in_drawer(goal + (q["drawer"] - q_goal["drawer"]) * axis)
        if goal_in_drawer:
            shift = (q["drawer"] - q_goal["drawer"]) * axis  # where the goal is while the drawer is at q
            in_drawer = env._is_in_drawer(cube)
            lands = cube - shift if in_drawer else cube
            if np.linalg.norm(lands - goal) > CUBE_TOL - 0.005:
                if q["drawer"] > DRAWER_OPEN + 0.008:  # fully open, or the cube hits the front of the drawer
                    return unlock_then("drawer", DRAWER_OPEN)
                return Subgoal("cube", 0, goal + shift + DRAWER_PLACE_OFFSET * axis, fingers_along_x=True)
        for kind in ("drawer", "window"):
            if abs(q[kind] - q_goal[kind]) > SLIDE_TOL * 0.75:
                return unlock_then(kind, q_goal[kind])
        if not goal_in_drawer and np.linalg.norm(cube - goal) > CUBE_TOL:
            return Subgoal("cube", 0, goal.copy())
        for b in range(len(buttons)):
            if buttons[b] != env._target_button_states[b]:
                return Subgoal("button", b, state=int(env._target_button_states[b]))
        return None

    # ------------------------------------------------------------------ play

    def _random_subgoal(self, env: Any) -> Subgoal:
        rng = self.rng
        if self.kind == "puzzle":
            b = int(rng.integers(env._num_buttons))
            return Subgoal("button", b, state=int(1 - env._cur_button_states[b]))
        kind = "cube"
        if self.kind == "scene":
            # OGBench's play mix: locked drawers and windows are tried less often.
            p = np.array([1.0, 1.0, *(0.25 + 0.75 * env._cur_button_states[:2])])
            kind = ("cube", "button", "drawer", "window")[int(rng.choice(4, p=p / p.sum()))]
        if kind == "button":
            b = int(rng.integers(2))
            return Subgoal("button", b, state=int(1 - env._cur_button_states[b]))
        if kind in ("drawer", "window"):
            q = float(env._data.joint(f"{kind}_slide").qpos[0])
            if kind == "drawer":
                return Subgoal("drawer", q=DRAWER_OPEN if q > DRAWER_OPEN / 2 else 0.0)
            return Subgoal("window", q=WINDOW_OPEN if q < WINDOW_OPEN / 2 else 0.0)
        pos, _ = self._cubes(env)
        top = [i for i in range(len(pos)) if not any(
            j != i and pos[j, 2] > pos[i, 2] + 0.02 and np.linalg.norm(pos[j, :2] - pos[i, :2]) < 0.03
            for j in range(len(pos)))]
        i = int(rng.choice(top))
        others = [j for j in top if j != i]
        if self.kind == "scene" and env._data.joint("drawer_slide").qpos[0] < -0.12 and rng.uniform() < 0.3:
            return Subgoal("cube", i, env._drawer_center + np.r_[rng.uniform(-0.005, 0.005, 2), 0.0])
        if others and rng.uniform() < 0.5:  # stack on another top cube
            return Subgoal("cube", i, pos[int(rng.choice(others))] + np.array([0.0, 0.0, 0.04]))
        low, high = env._target_sampling_bounds
        return Subgoal("cube", i, np.array([*rng.uniform(low, high), 0.02]))


class OGBenchExpert(ScriptedExpert):
    """Expert for every OGBench manipulation task; see the module docstring for the variants."""

    VARIANTS = ("plan", "markov", "play", "noisy")

    def make_controller(self, sim: Any, variant: str) -> Controller:
        return OGBenchController(sim, variant)
