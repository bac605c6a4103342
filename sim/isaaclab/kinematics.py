"""Batched forward kinematics, geometric Jacobian and damped-least-squares IK of a serial arm, in torch.

The robopol Isaac Lab tasks act in Cartesian end-effector displacements, but the simulator takes joint
position targets. The chain's constants come from the same packaged MJCF the simulator loads (compiled by
MuJoCo's C library, which knows every MJCF default), so the kinematics cannot drift from the model. All
functions work on ``(N, ...)`` tensors on any device, so they run beside a GPU simulation without copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def quat_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from unit quaternions ``(..., 4)`` in MuJoCo's (w, x, y, z) order."""
    w, x, y, z = quat.unbind(-1)
    rows = (
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    )
    return torch.stack(rows, -2)


def axis_angle_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotations ``(N, 3, 3)`` by ``angle`` (N,) about the unit ``axis`` (3,) (Rodrigues' formula)."""
    k = axis.to(angle.dtype)
    skew = torch.zeros(3, 3, dtype=angle.dtype, device=angle.device)
    skew[0, 1], skew[0, 2], skew[1, 0], skew[1, 2], skew[2, 0], skew[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    eye = torch.eye(3, dtype=angle.dtype, device=angle.device)
    return eye + s * skew + (1 - c) * (skew @ skew)


@dataclass(frozen=True)
class Kinematics:
    """World-frame pose of the end effector and of every joint for a batch of joint angles."""

    ee_pos: torch.Tensor
    """(N, 3) end-effector position."""
    ee_rot: torch.Tensor
    """(N, 3, 3) end-effector orientation."""
    joint_pos: torch.Tensor
    """(N, J, 3) position of each joint's anchor."""
    joint_axis: torch.Tensor
    """(N, J, 3) each joint's axis."""

    def jacobian(self) -> torch.Tensor:
        """(N, 6, J) geometric Jacobian of the end effector: linear rows, then angular rows."""
        linear = torch.cross(self.joint_axis, self.ee_pos[:, None, :] - self.joint_pos, dim=-1)
        return torch.cat([linear.transpose(1, 2), self.joint_axis.transpose(1, 2)], dim=1)


@dataclass(frozen=True)
class SerialChain:
    """A chain of bodies, each moved by one hinge joint at its origin, ending in an end-effector frame.

    Offsets are each body's pose in its parent's frame at zero joint angle; the first is the first moving
    body's pose in the robot's root frame (the root body's own pose folded in).
    """

    body_pos: torch.Tensor
    """(J, 3) body offsets."""
    body_rot: torch.Tensor
    """(J, 3, 3) body orientation offsets."""
    axes: torch.Tensor
    """(J, 3) joint axes in their body's frame."""
    ee_pos: torch.Tensor
    """(3,) end-effector position in the last body's frame."""
    ee_rot: torch.Tensor
    """(3, 3) end-effector orientation in the last body's frame."""
    joint_names: tuple[str, ...]

    @classmethod
    def from_mjcf(cls, path: str | Path, site: str) -> SerialChain:
        """The chain from the root body to ``site`` of a MuJoCo model whose joints are all hinges on a path."""
        import mujoco

        model = mujoco.MjModel.from_xml_path(str(path))
        site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
        if site_id < 0:
            raise ValueError(f"{path}: no site named '{site}'")
        bodies = []
        body = int(model.site_bodyid[site_id])
        while body != 0:
            bodies.append(body)
            body = int(model.body_parentid[body])
        bodies.reverse()
        root, moving = bodies[0], bodies[1:]
        if model.body_jntnum[root] != 0 or any(model.body_jntnum[b] != 1 for b in moving):
            raise ValueError(f"{path}: the chain to '{site}' must be a fixed root and one hinge per body")
        joints = [int(model.body_jntadr[b]) for b in moving]
        if any(model.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE or np.any(model.jnt_pos[j] != 0) for j in joints):
            raise ValueError(f"{path}: every joint on the chain to '{site}' must be a hinge at its body's origin")

        def rot(quat: np.ndarray) -> torch.Tensor:
            return quat_to_matrix(torch.as_tensor(quat, dtype=torch.float64))

        root_rot = rot(model.body_quat[root])
        pos = torch.as_tensor(model.body_pos[moving], dtype=torch.float64)
        rots = torch.stack([rot(model.body_quat[b]) for b in moving])
        pos[0] = torch.as_tensor(model.body_pos[root]) + root_rot @ pos[0]
        rots[0] = root_rot @ rots[0]
        return cls(body_pos=pos, body_rot=rots, axes=torch.as_tensor(model.jnt_axis[joints], dtype=torch.float64),
                   ee_pos=torch.as_tensor(model.site_pos[site_id], dtype=torch.float64),
                   ee_rot=rot(model.site_quat[site_id]),
                   joint_names=tuple(model.joint(j).name for j in joints))

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> SerialChain:
        move = {name: getattr(self, name).to(device=device, dtype=dtype)
                for name in ("body_pos", "body_rot", "axes", "ee_pos", "ee_rot")}
        return SerialChain(**move, joint_names=self.joint_names)

    def forward(self, q: torch.Tensor) -> Kinematics:
        """Poses in the robot's root frame for joint angles ``q`` (N, J)."""
        n = q.shape[0]
        pos = torch.zeros(n, 3, dtype=q.dtype, device=q.device)
        rot = torch.eye(3, dtype=q.dtype, device=q.device).expand(n, 3, 3)
        anchors, axes = [], []
        for j in range(len(self.joint_names)):
            pos = pos + rot @ self.body_pos[j]
            rot = rot @ self.body_rot[j]
            anchors.append(pos)
            axes.append(rot @ self.axes[j])
            rot = rot @ axis_angle_matrix(self.axes[j], q[:, j])
        return Kinematics(ee_pos=pos + rot @ self.ee_pos, ee_rot=rot @ self.ee_rot,
                          joint_pos=torch.stack(anchors, 1), joint_axis=torch.stack(axes, 1))


def orientation_error(current: torch.Tensor, desired: torch.Tensor) -> torch.Tensor:
    """(N, 3) rotation vector that turns ``current`` towards ``desired`` (both (N, 3, 3)); exact for small
    errors, and pointing the right way for any error below 180 degrees."""
    return 0.5 * torch.cross(current, desired, dim=-2).sum(-1)


def damped_least_squares(jacobian: torch.Tensor, error: torch.Tensor, damping: float) -> torch.Tensor:
    """Joint displacement (N, J) that moves the task coordinates by ``error`` (N, 6): J^T (J J^T + d^2 I)^-1 e.

    The damping keeps steps bounded near singularities, where plain least squares would explode."""
    eye = torch.eye(jacobian.shape[1], dtype=jacobian.dtype, device=jacobian.device)
    gram = jacobian @ jacobian.transpose(1, 2) + damping**2 * eye
    return (jacobian.transpose(1, 2) @ torch.linalg.solve(gram, error[..., None]))[..., 0]
