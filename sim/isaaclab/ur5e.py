"""robopol's own Isaac Lab tasks: a UR5e on a table, built from primitives and a packaged MJCF (no downloads).

Both are ``DirectRLEnv`` tasks that run kit-less on Newton's MuJoCo-Warp solver. Every tensor stays on the
simulation device, so ``device`` is meant to be the one switch for a GPU (tested on the CPU only):

- ``ur5e_reach``: bring the tool flange within 3 cm of a random goal in the workspace;
- ``ur5e_push``: push a 4 cm cube across the table to within 4 cm of a random goal.

Actions are Cartesian displacements of the flange, ``ACTION_STEP`` metres per unit, in [-1, 1]^3. Each step
turns one into joint position targets by damped least squares on the arm's Jacobian, while a second task
keeps the flange pointing down (:mod:`robopol.sim.isaaclab.kinematics`). Episodes end on success
(``terminated``) or at the time limit (``truncated``). Resets draw everything random from the env's episode
seed (``episode_seeds``, set by the adapter), so an episode is a function of its seed, as in robopol's
MuJoCo tasks.

Importing this module needs Isaac Lab 3 (Python 3.12, ``pip install 'robopol[isaaclab]'``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import isaaclab.sim as sim_utils
import torch
from isaaclab.actuators import ImplicitActuatorCfg
from isaaclab.assets import ArticulationCfg, AssetBaseCfg, RigidObjectCfg
from isaaclab.envs import DirectRLEnv, DirectRLEnvCfg
from isaaclab.scene import InteractiveSceneCfg
from isaaclab.sim import SimulationCfg
from isaaclab.utils import configclass
from isaaclab_newton.physics import MJWarpSolverCfg, NewtonCfg

from .assets import ur5e_mjcf, ur5e_usd
from .kinematics import SerialChain, damped_least_squares, orientation_error
from .seeding import seeded_uniform

ACTION_STEP = 0.02
"""Metres the flange target moves per unit of action and step."""
MAX_LEAD = 0.04
"""Metres the flange target may run ahead of the flange."""
HOME = (-1.5708, -1.5708, 1.5708, -1.5708, -1.5708, 0.0)
"""Joint angles at the start of an episode (plus noise): flange 0.49 m in front of the base, pointing down."""
JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
          "wrist_3_joint")
TABLE_SIZE = (1.0, 1.2, 0.05)
CUBE_SIZE = 0.04


def _physics() -> NewtonCfg:
    return NewtonCfg(solver_cfg=MJWarpSolverCfg(njmax=120, nconmax=40, integrator="implicitfast", cone="pyramidal"),
                     num_substeps=1, use_cuda_graph=True)


def _robot() -> ArticulationCfg:
    # The base sits on the table top at the origin of each env; gains are the MJCF's position servos.
    return ArticulationCfg(
        prim_path="{ENV_REGEX_NS}/Robot",
        spawn=sim_utils.UsdFileCfg(usd_path=str(ur5e_usd()), fix_root_link=True),
        init_state=ArticulationCfg.InitialStateCfg(pos=(0.0, 0.0, 0.0),
                                                   joint_pos=dict(zip(JOINTS, HOME, strict=True))),
        actuators={
            "shoulder": ImplicitActuatorCfg(joint_names_expr=list(JOINTS[:3]), stiffness=2000.0, damping=400.0,
                                            joint_effort_limit=150.0, armature=0.1),
            "wrist": ImplicitActuatorCfg(joint_names_expr=list(JOINTS[3:]), stiffness=500.0, damping=100.0,
                                         joint_effort_limit=28.0, armature=0.1),
        },
    )


def _box(path: str, size: tuple[float, float, float], pos: tuple[float, float, float],
         color: tuple[float, float, float]) -> AssetBaseCfg:
    """A static box collider."""
    return AssetBaseCfg(prim_path=path, init_state=AssetBaseCfg.InitialStateCfg(pos=pos),
                        spawn=sim_utils.CuboidCfg(size=size, collision_props=sim_utils.UsdPhysicsCollisionCfg(),
                                                  visual_material=sim_utils.PreviewSurfaceCfg(diffuse_color=color)))


@configclass
class UR5eSceneCfg(InteractiveSceneCfg):
    """The arm on a table (top at z = 0) over a floor."""

    robot: ArticulationCfg = _robot()
    table = _box("{ENV_REGEX_NS}/Table", TABLE_SIZE, (0.35, 0.0, -TABLE_SIZE[2] / 2), (0.6, 0.5, 0.4))
    floor = _box("/World/Floor", (200.0, 200.0, 0.1), (0.0, 0.0, -0.8), (0.3, 0.3, 0.3))


@configclass
class UR5ePushSceneCfg(UR5eSceneCfg):
    cube: RigidObjectCfg = RigidObjectCfg(
        prim_path="{ENV_REGEX_NS}/Cube",
        init_state=RigidObjectCfg.InitialStateCfg(pos=(0.45, 0.0, CUBE_SIZE / 2)),
        spawn=sim_utils.CuboidCfg(size=(CUBE_SIZE,) * 3, rigid_props=sim_utils.UsdPhysicsRigidBodyCfg(),
                                  mass_props=sim_utils.MassCfg(mass=0.1),
                                  collision_props=sim_utils.UsdPhysicsCollisionCfg(),
                                  visual_material=sim_utils.PreviewSurfaceCfg(diffuse_color=(0.8, 0.1, 0.1))),
    )


@configclass
class UR5eReachEnvCfg(DirectRLEnvCfg):
    """Reach: the goal is drawn in ``goal_low`` .. ``goal_high`` (env frame, metres)."""

    decimation: int = 2
    episode_length_s: float = 4.0
    action_space: int = 3
    observation_space: int = 18
    state_space: int = 0
    sim: SimulationCfg = SimulationCfg(dt=0.025, device="cpu", render_interval=2, physics=_physics())
    scene: InteractiveSceneCfg = UR5eSceneCfg(num_envs=4, env_spacing=2.5, replicate_physics=True)
    goal_low: tuple[float, float, float] = (0.35, -0.25, 0.10)
    """Lower corner of the box goals are drawn from (env frame, metres)."""
    goal_high: tuple[float, float, float] = (0.60, 0.25, 0.40)
    """Upper corner of that box."""
    success_distance: float = 0.03
    """Flange-goal distance (m) that counts as success and ends the episode."""
    joint_noise: float = 0.05
    """Uniform noise (radians) on the home joint angles at reset."""
    ik_damping: float = 0.05
    """Damping of the least-squares IK step (bounds joint steps near singular poses)."""
    orientation_gain: float = 0.5
    """Fraction of the flange's orientation error corrected per step."""
    flange_floor: float = 0.05
    """Lowest flange height (m above the table) the actions can command."""


@configclass
class UR5ePushEnvCfg(UR5eReachEnvCfg):
    """Push: cube and goal drawn on the table, at least ``min_push`` apart."""

    episode_length_s: float = 8.0
    observation_space: int = 21
    # Contacts need a step well below MuJoCo's default contact time constant (0.02 s): at 0.025 s the cube
    # sinks into the table. The control period stays 0.05 s.
    decimation: int = 5
    sim: SimulationCfg = SimulationCfg(dt=0.01, device="cpu", render_interval=5, physics=_physics())
    scene: InteractiveSceneCfg = UR5ePushSceneCfg(num_envs=4, env_spacing=2.5, replicate_physics=True)
    cube_low: tuple[float, float] = (0.40, -0.15)
    """Lower corner of the cube's start area on the table (x, y; m)."""
    cube_high: tuple[float, float] = (0.55, 0.15)
    """Upper corner of that area."""
    goal_low: tuple[float, float, float] = (0.35, -0.25, CUBE_SIZE / 2)
    """Lower corner of the goal area (z: the cube's centre height on the table)."""
    goal_high: tuple[float, float, float] = (0.60, 0.25, CUBE_SIZE / 2)
    """Upper corner of the goal area."""
    min_push: float = 0.10
    """Least start distance (m) between cube and goal; closer goals are moved away along the cube-goal line."""
    success_distance: float = 0.04
    """Cube-goal distance (m, in the table plane) that counts as success."""
    flange_floor: float = 0.012
    """Low enough for the tool disc to push the cube, high enough to clear the table."""


class UR5eReachEnv(DirectRLEnv):
    """Reach with the UR5e flange; observation: joint angles and velocities, flange position, goal."""

    cfg: UR5eReachEnvCfg

    def __init__(self, cfg: UR5eReachEnvCfg, render_mode: str | None = None, **kwargs) -> None:
        super().__init__(cfg, render_mode, **kwargs)
        self.robot = self.scene["robot"]
        self.joint_ids, _ = self.robot.find_joints(list(JOINTS), preserve_order=True)
        self.chain = SerialChain.from_mjcf(ur5e_mjcf(), "attachment_site").to(self.device)
        self.episode_seeds = torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        """Set by the adapter before each reset; everything random in an episode derives from it."""
        self.goal = torch.zeros(self.num_envs, 3, device=self.device)
        self.target = torch.zeros(self.num_envs, 6, device=self.device)
        self.flange_goal = torch.zeros(self.num_envs, 3, device=self.device)
        """Where the actions so far have sent the flange; the servos lag behind it."""
        self.down = self.chain.forward(torch.tensor([HOME], device=self.device)).ee_rot.expand(self.num_envs, 3, 3)

    # -- state --------------------------------------------------------------------------------------------
    def joint_pos(self) -> torch.Tensor:
        return self.robot.data.joint_pos.torch[:, self.joint_ids]

    def flange_pos(self) -> torch.Tensor:
        """(N, 3) flange position in the env frame (the robot base is at the env origin)."""
        return self.chain.forward(self.joint_pos()).ee_pos

    # -- control ------------------------------------------------------------------------------------------
    def _pre_physics_step(self, actions: torch.Tensor) -> None:
        q = self.joint_pos()
        kin = self.chain.forward(q)
        # Integrate the commands, so the flange moves ACTION_STEP per unit despite the servo lag, but never
        # lead the flange by more than MAX_LEAD (no wind-up against an obstacle).
        goal = self.flange_goal + ACTION_STEP * actions.clamp(-1.0, 1.0)
        goal = kin.ee_pos + (goal - kin.ee_pos).clamp(-MAX_LEAD, MAX_LEAD)
        goal[:, 2] = goal[:, 2].clamp(min=self.cfg.flange_floor)
        self.flange_goal = goal
        error = torch.cat([goal - kin.ee_pos,
                           self.cfg.orientation_gain * orientation_error(kin.ee_rot, self.down)], dim=-1)
        self.target = q + damped_least_squares(kin.jacobian(), error, self.cfg.ik_damping)

    def _apply_action(self) -> None:
        self.robot.actuators.target_command.set_position_index(value=self.target, joint_ids=self.joint_ids)

    # -- task ---------------------------------------------------------------------------------------------
    def distance(self) -> torch.Tensor:
        return torch.linalg.norm(self.flange_pos() - self.goal, dim=-1)

    def _get_observations(self) -> dict:
        joint_vel = self.robot.data.joint_vel.torch[:, self.joint_ids]
        return {"policy": torch.cat([self.joint_pos(), joint_vel, self.flange_pos(), self.goal], dim=-1)}

    def _get_rewards(self) -> torch.Tensor:
        return -self.distance()

    def _get_dones(self) -> tuple[torch.Tensor, torch.Tensor]:
        success = self.distance() < self.cfg.success_distance
        return success, self.episode_length_buf >= self.max_episode_length

    def _reset_idx(self, env_ids: Sequence[int] | torch.Tensor | None) -> None:
        if env_ids is None:
            env_ids = torch.arange(self.num_envs, device=self.device)
        env_ids = torch.as_tensor(env_ids, device=self.device, dtype=torch.long)
        super()._reset_idx(env_ids)
        u = seeded_uniform(self.episode_seeds[env_ids], 12)
        home = torch.tensor(HOME, device=self.device)
        q = home + self.cfg.joint_noise * (2 * u[:, :6] - 1)
        self.robot.write_joint_position_to_sim_index(position=q, joint_ids=self.joint_ids, env_ids=env_ids)
        self.robot.write_joint_velocity_to_sim_index(velocity=torch.zeros_like(q), joint_ids=self.joint_ids,
                                                     env_ids=env_ids)
        self.robot.actuators.target_command.set_position_index(value=q, joint_ids=self.joint_ids, env_ids=env_ids)
        self.target[env_ids] = q
        self.flange_goal[env_ids] = self.chain.forward(q).ee_pos
        self.reset_task(env_ids, u[:, 6:])

    def reset_task(self, env_ids: torch.Tensor, u: torch.Tensor) -> None:
        low, high = torch.tensor(self.cfg.goal_low, device=self.device), torch.tensor(self.cfg.goal_high,
                                                                                     device=self.device)
        self.goal[env_ids] = low + (high - low) * u[:, :3]


class UR5ePushEnv(UR5eReachEnv):
    """Push the cube to the goal on the table; observation: joints, flange, cube position and yaw, goal."""

    cfg: UR5ePushEnvCfg

    def __init__(self, cfg: UR5ePushEnvCfg, render_mode: str | None = None, **kwargs) -> None:
        super().__init__(cfg, render_mode, **kwargs)
        self.cube = self.scene["cube"]

    def cube_pos(self) -> torch.Tensor:
        """(N, 3) cube centre in the env frame."""
        return self.cube.data.root_pos_w.torch - self.scene.env_origins

    def distance(self) -> torch.Tensor:
        return torch.linalg.norm((self.cube_pos() - self.goal)[:, :2], dim=-1)

    def _get_observations(self) -> dict:
        obs = super()._get_observations()["policy"]
        return {"policy": torch.cat([obs[:, :15], self.cube_pos(), self.goal], dim=-1)}

    def _get_rewards(self) -> torch.Tensor:
        reach = torch.linalg.norm(self.flange_pos() - self.cube_pos(), dim=-1)
        return -self.distance() - 0.1 * reach

    def reset_task(self, env_ids: torch.Tensor, u: torch.Tensor) -> None:
        cfg = self.cfg
        cube_low, cube_high = (torch.tensor(v, device=self.device) for v in (cfg.cube_low, cfg.cube_high))
        cube = cube_low + (cube_high - cube_low) * u[:, :2]
        goal_low, goal_high = (torch.tensor(v[:2], device=self.device) for v in (cfg.goal_low, cfg.goal_high))
        goal = goal_low + (goal_high - goal_low) * u[:, 2:4]
        # A goal too close to the cube moves straight away from it, to min_push (kept on the table).
        away = goal - cube
        norm = torch.linalg.norm(away, dim=-1, keepdim=True)
        angle = 2 * math.pi * u[:, 4:5]
        direction = torch.where(norm > 1e-6, away / norm.clamp(min=1e-6),
                                torch.cat([torch.cos(angle), torch.sin(angle)], -1))
        goal = torch.where(norm < cfg.min_push, cube + cfg.min_push * direction, goal)
        self.goal[env_ids] = torch.cat([goal, torch.full_like(goal[:, :1], CUBE_SIZE / 2)], -1)
        pose = torch.zeros(len(env_ids), 7, device=self.device)
        pose[:, :2] = cube
        pose[:, 2] = CUBE_SIZE / 2
        pose[:, 6] = 1.0  # (x, y, z, w): upright
        pose[:, :3] += self.scene.env_origins[env_ids]
        self.cube.write_root_pose_to_sim_index(root_pose=pose, env_ids=env_ids)
        self.cube.write_root_velocity_to_sim_index(root_velocity=torch.zeros(len(env_ids), 6, device=self.device),
                                                   env_ids=env_ids)
