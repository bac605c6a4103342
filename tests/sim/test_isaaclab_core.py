"""The parts of the Isaac Lab back end that need no Isaac Lab: the arm's kinematics (against MuJoCo's), the
per-seed random numbers, the task configs, and the one-line error where Isaac Lab is missing."""

from __future__ import annotations

import importlib.util

import mujoco
import numpy as np
import pytest
import torch
from robopol.sim.isaaclab.assets import ur5e_mjcf
from robopol.sim.isaaclab.kinematics import (
    SerialChain,
    damped_least_squares,
    orientation_error,
    quat_to_matrix,
)
from robopol.sim.isaaclab.seeding import seeded_uniform

from robopol.cli.app import compose
from robopol.errors import MissingExtraError
from robopol.tasks import make_env

HAVE_ISAACLAB = importlib.util.find_spec("isaaclab_newton") is not None


@pytest.fixture(scope="module")
def chain():
    return SerialChain.from_mjcf(ur5e_mjcf(), "attachment_site")


def test_forward_kinematics_and_jacobian_match_mujoco(chain):
    model = mujoco.MjModel.from_xml_path(str(ur5e_mjcf()))
    data = mujoco.MjData(model)
    site = model.site("attachment_site").id
    q = np.random.default_rng(0).uniform(-3.0, 3.0, (6, 6))
    kin = chain.forward(torch.as_tensor(q))
    jac = kin.jacobian()
    for i in range(len(q)):
        data.qpos[:] = q[i]
        mujoco.mj_forward(model, data)
        jp, jr = np.zeros((3, 6)), np.zeros((3, 6))
        mujoco.mj_jacSite(model, data, jp, jr, site)
        np.testing.assert_allclose(kin.ee_pos[i].numpy(), data.site_xpos[site], atol=1e-12)
        np.testing.assert_allclose(kin.ee_rot[i].numpy(), data.site_xmat[site].reshape(3, 3), atol=1e-12)
        np.testing.assert_allclose(jac[i, :3].numpy(), jp, atol=1e-12)
        np.testing.assert_allclose(jac[i, 3:].numpy(), jr, atol=1e-12)
    assert chain.joint_names[0] == "shoulder_pan_joint" and len(chain.joint_names) == 6


def test_damped_least_squares_moves_the_flange_by_the_requested_displacement(chain):
    q = torch.tensor([[-1.5708, -1.5708, 1.5708, -1.5708, -1.5708, 0.0]], dtype=torch.float64)
    kin = chain.forward(q)
    step = torch.tensor([[0.004, -0.003, 0.002, 0.0, 0.0, 0.0]], dtype=torch.float64)
    moved = chain.forward(q + damped_least_squares(kin.jacobian(), step, damping=1e-4))
    np.testing.assert_allclose((moved.ee_pos - kin.ee_pos).numpy(), step[:, :3].numpy(), atol=1e-4)
    # orientation held: the rotation between the two frames is (nearly) none
    assert float(orientation_error(moved.ee_rot, kin.ee_rot).norm()) < 1e-4


def test_orientation_error_is_the_rotation_vector_for_small_rotations():
    angle = 0.01
    half = torch.tensor([[np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)]], dtype=torch.float64)
    rotated = quat_to_matrix(half)
    error = orientation_error(torch.eye(3, dtype=torch.float64)[None], rotated)
    np.testing.assert_allclose(error.numpy(), [[0.0, 0.0, angle]], atol=1e-6)


def test_seeded_uniform_is_a_function_of_the_seed_alone():
    draws = seeded_uniform(torch.arange(20_000), 3)
    assert draws.shape == (20_000, 3) and draws.dtype == torch.float32
    assert float(draws.min()) >= 0.0 and float(draws.max()) < 1.0
    np.testing.assert_allclose(draws.mean(0).numpy(), 0.5, atol=0.01)
    np.testing.assert_allclose(draws.std(0).numpy(), (1 / 12) ** 0.5, atol=0.01)
    corr = np.corrcoef(draws.T.numpy())
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.03  # draws of one seed are not related
    torch.testing.assert_close(seeded_uniform(torch.tensor([5, 7]), 3)[1], seeded_uniform(torch.tensor([7]), 3)[0])
    assert not torch.equal(seeded_uniform(torch.tensor([5]), 3), seeded_uniform(torch.tensor([6]), 3))


@pytest.mark.parametrize("name", ["ur5e_reach", "ur5e_push"])
def test_task_configs_compose(name):
    task = compose("collect", [f"task=isaaclab/{name}", "out=unused"]).task
    assert task.name == f"isaaclab_{name}" and task.env_class.endswith(("UR5eReachEnv", "UR5ePushEnv"))
    assert task.observation == {"state": "policy"} and list(task.action_low) == [-1.0] * 3


@pytest.mark.skipif(HAVE_ISAACLAB, reason="Isaac Lab is installed here")
def test_missing_isaaclab_is_one_line_naming_the_extra_and_python():
    task = compose("collect", ["task=isaaclab/ur5e_reach", "out=unused"]).task
    with pytest.raises(MissingExtraError, match=r"Python 3\.\d+ environment .*needs Python 3\.12 and the "
                                                r"'isaaclab' extra: run scripts/isaaclab_env\.sh"):
        make_env(task, num_envs=2, seed=0)


def test_authored_usd_has_the_arm_as_rigid_bodies_hinges_and_primitive_colliders(tmp_path):
    pxr = pytest.importorskip("pxr", reason="USD (pxr) comes with the Isaac Lab environment")
    from robopol.sim.isaaclab.assets import author_arm_usd

    path = author_arm_usd(ur5e_mjcf(), tmp_path / "ur5e.usda", root_name="ur5e")
    stage = pxr.Usd.Stage.Open(str(path))
    physics, geom = pxr.UsdPhysics, pxr.UsdGeom
    bodies = [p for p in stage.Traverse() if p.HasAPI(physics.RigidBodyAPI)]
    assert [p.GetName() for p in bodies] == ["base", "shoulder_link", "upper_arm_link", "forearm_link",
                                             "wrist_1_link", "wrist_2_link", "wrist_3_link"]
    assert [p.GetName() for p in stage.Traverse() if p.HasAPI(physics.ArticulationRootAPI)] == ["base"]
    joints = {p.GetName(): physics.RevoluteJoint(p) for p in stage.Traverse() if p.IsA(physics.RevoluteJoint)}
    assert list(joints) == ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint",
                            "wrist_2_joint", "wrist_3_joint"]
    assert joints["shoulder_pan_joint"].GetAxisAttr().Get() == "Z"
    assert joints["shoulder_lift_joint"].GetAxisAttr().Get() == "Y"
    assert joints["elbow_joint"].GetUpperLimitAttr().Get() == pytest.approx(180.0, abs=0.01)  # degrees
    colliders = [p for p in stage.Traverse() if p.HasAPI(physics.CollisionAPI)]
    assert len(colliders) == 9 and all(p.IsA(geom.Capsule) or p.IsA(geom.Cylinder) for p in colliders)
    assert not any(p.IsA(geom.Mesh) for p in stage.Traverse())  # visual meshes are left out
    mass = physics.MassAPI(stage.GetPrimAtPath("/ur5e/upper_arm_link"))
    assert mass.GetMassAttr().Get() == pytest.approx(8.393)
