"""A robot arm for Isaac Lab authored from a packaged MJCF: rigid bodies, primitive colliders, hinge joints.

Isaac Lab spawns articulations from USD, and its MJCF converter needs the Isaac Sim importer wheels (whose
dependencies clash with Isaac Lab's own pins). The arms robopol uses are simple enough to write out directly
with ``pxr.UsdPhysics``: MuJoCo's C library compiles the MJCF (so every default and ``childclass`` applies),
and each body becomes a rigid body at its zero-angle pose with its inertia, its capsule / cylinder collision
geoms (visual meshes are left out: nothing here renders), and a revolute joint to its parent whose frame is
the child body's frame. The root body stays free here: the spawner fixes it to the world where it places
the robot (``fix_root_link``). The file is cached by the MJCF's content, so it is written once per machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

UR5E_MJCF = "manipspace/descriptions/universal_robots_ur5e/ur5e.xml"
"""The UR5e model inside the ogbench wheel (a robopol dependency)."""


def ur5e_mjcf() -> Path:
    import ogbench

    return Path(ogbench.__file__).parent / UR5E_MJCF


CACHE_DIR = "~/.cache/robopol/isaaclab"
"""Where authored assets are written once per machine."""


def _quat(wxyz: np.ndarray):
    from pxr import Gf

    return Gf.Quatf(float(wxyz[0]), Gf.Vec3f(*(float(v) for v in wxyz[1:])))


def _vec(xyz: np.ndarray):
    from pxr import Gf

    return Gf.Vec3f(*(float(v) for v in xyz))


def _axis_token(axis: np.ndarray, joint: str) -> str:
    for i, token in enumerate("XYZ"):
        if np.allclose(np.abs(axis), np.eye(3)[i]):
            if axis[i] < 0:
                break
            return token
    raise ValueError(f"joint '{joint}': only joints along +x, +y or +z of their body are supported, got {axis}")


def author_arm_usd(mjcf: str | Path, out: str | Path, root_name: str = "robot") -> Path:
    """Write the articulation of ``mjcf`` (every body with a joint is a hinge child of its parent) to ``out``."""
    import mujoco
    from pxr import Sdf, Usd, UsdGeom, UsdPhysics

    model = mujoco.MjModel.from_xml_path(str(mjcf))
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.usda")
    stage = Usd.Stage.CreateNew(str(tmp))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    UsdPhysics.SetStageKilogramsPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, f"/{root_name}")
    stage.SetDefaultPrim(root.GetPrim())

    paths: dict[int, Sdf.Path] = {}
    for body in range(1, model.nbody):
        path = Sdf.Path(f"/{root_name}/{model.body(body).name}")
        paths[body] = path
        xform = UsdGeom.Xform.Define(stage, path)
        xform.AddTranslateOp().Set(_vec(data.xpos[body]))
        xform.AddOrientOp().Set(_quat(data.xquat[body]))
        UsdPhysics.RigidBodyAPI.Apply(xform.GetPrim())
        if model.body_parentid[body] == 0:  # the root link carries the articulation (fix_root_link needs that)
            UsdPhysics.ArticulationRootAPI.Apply(xform.GetPrim())
        mass = UsdPhysics.MassAPI.Apply(xform.GetPrim())
        mass.CreateMassAttr(float(model.body_mass[body]))
        mass.CreateCenterOfMassAttr(_vec(model.body_ipos[body]))
        mass.CreateDiagonalInertiaAttr(_vec(model.body_inertia[body]))
        mass.CreatePrincipalAxesAttr(_quat(model.body_iquat[body]))
        for geom in range(model.body_geomadr[body], model.body_geomadr[body] + model.body_geomnum[body]):
            if model.geom_contype[geom] == 0 and model.geom_conaffinity[geom] == 0:
                continue  # a visual mesh
            kind = model.geom_type[geom]
            radius, half = float(model.geom_size[geom][0]), float(model.geom_size[geom][1])
            if kind == mujoco.mjtGeom.mjGEOM_CAPSULE:
                shape = UsdGeom.Capsule.Define(stage, path.AppendChild(f"collision_{geom}"))
            elif kind == mujoco.mjtGeom.mjGEOM_CYLINDER:
                shape = UsdGeom.Cylinder.Define(stage, path.AppendChild(f"collision_{geom}"))
            else:
                raise ValueError(f"{mjcf}: geom {geom} of body '{model.body(body).name}' is neither a capsule nor "
                                 f"a cylinder; only those colliders are supported")
            shape.CreateRadiusAttr(radius)
            shape.CreateHeightAttr(2.0 * half)
            shape.CreateAxisAttr(UsdGeom.Tokens.z)
            shape.AddTranslateOp().Set(_vec(model.geom_pos[geom]))
            shape.AddOrientOp().Set(_quat(model.geom_quat[geom]))
            UsdPhysics.CollisionAPI.Apply(shape.GetPrim())

    for body in range(1, model.nbody):
        parent = int(model.body_parentid[body])
        name = model.body(body).name
        if model.body_jntnum[body] == 0:
            if parent != 0:
                raise ValueError(f"{mjcf}: body '{name}' is welded to its parent; only the root may have no joint")
            continue  # the root: the spawner fixes it to the world (``fix_root_link``)
        if model.body_jntnum[body] != 1 or parent == 0:
            raise ValueError(f"{mjcf}: body '{name}' must have exactly one joint and a parent body")
        j = int(model.body_jntadr[body])
        jname = model.joint(j).name
        if model.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE or np.any(model.jnt_pos[j] != 0):
            raise ValueError(f"{mjcf}: joint '{jname}' must be a hinge at its body's origin")
        joint = UsdPhysics.RevoluteJoint.Define(stage, f"/{root_name}/joints/{jname}")
        joint.CreateBody0Rel().SetTargets([paths[parent]])
        joint.CreateBody1Rel().SetTargets([paths[body]])
        joint.CreateLocalPos0Attr(_vec(model.body_pos[body]))
        joint.CreateLocalRot0Attr(_quat(model.body_quat[body]))
        joint.CreateLocalPos1Attr(_vec(np.zeros(3)))
        joint.CreateLocalRot1Attr(_quat(np.array([1.0, 0.0, 0.0, 0.0])))
        joint.CreateAxisAttr(_axis_token(model.jnt_axis[j], jname))
        if model.jnt_limited[j]:
            low, high = np.degrees(model.jnt_range[j])
            joint.CreateLowerLimitAttr(float(low))
            joint.CreateUpperLimitAttr(float(high))
        UsdPhysics.DriveAPI.Apply(joint.GetPrim(), "angular")
    stage.GetRootLayer().Save()
    os.replace(tmp, out)  # readers never see a half-written file
    return out


def ur5e_usd() -> Path:
    """The UR5e articulation (from the ogbench wheel's MJCF), authored once and cached by content."""
    mjcf = ur5e_mjcf()
    digest = hashlib.sha256(mjcf.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
    out = Path(CACHE_DIR).expanduser() / f"ur5e_{digest}.usda"
    return out if out.exists() else author_arm_usd(mjcf, out, root_name="ur5e")
