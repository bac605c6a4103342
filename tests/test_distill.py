"""Consistency distillation: boundary scalings, both losses by hand, a student that learns its teacher, the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import run_cli

from robopol.algos.distill import Distill, action_matching_loss, consistency_loss
from robopol.checkpoint import load_checkpoint
from robopol.policies.consistency import ConsistencyPolicy, boundary_scalings
from robopol.policies.diffusion import DiffusionPolicy
from robopol.policies.flow import FlowPolicy

FLOW_HEAD = {"_target_": "robopol.policies.flow.FlowPolicy", "obs_steps": 1, "horizon": 2, "action_steps": 1,
             "backbone": "mlp", "hidden_dims": [64, 64], "layer_norm": True}


class Fixed(torch.nn.Module):
    """Stand-in network: ``net(x, level, obs) = fn(x, level)``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, level, obs):
        return self.scale * self.fn(x, level)


def student_and_teacher(fn_student, fn_teacher):
    student = ConsistencyPolicy(1, 1, FLOW_HEAD)
    student.head.net = Fixed(fn_student)
    teacher = FlowPolicy(1, 1, 1, 2, 1, backbone="mlp", hidden_dims=[8])
    teacher.net = Fixed(fn_teacher)
    return student, teacher


def test_boundary_scalings_make_f_the_identity_on_clean_chunks():
    c_skip, c_out = boundary_scalings(torch.tensor([0.0, 0.01, 1.0]))
    torch.testing.assert_close(c_skip[0], torch.tensor(1.0))
    torch.testing.assert_close(c_out[0], torch.tensor(0.0))
    assert c_skip[1].item() == pytest.approx(0.25 / (100 + 0.25))  # one level of 100: LCM's 10x scaling
    assert c_skip[2].item() < 1e-6 and c_out[2].item() == pytest.approx(1.0, abs=1e-6)
    student, _ = student_and_teacher(lambda x, t: x * 0 + 5.0, lambda x, t: x)
    x = torch.randn(3, 2, 1)
    torch.testing.assert_close(student.consistency(x, torch.ones(3), torch.zeros(3, 1, 1)), x)


def test_consistency_loss_by_hand_on_a_two_interval_flow_grid():
    student, teacher = student_and_teacher(lambda x, t: 2 - x, lambda x, t: -x)
    target = ConsistencyPolicy(1, 1, FLOW_HEAD)
    target.head.net = Fixed(lambda x, t: 1 - x)
    batch = {"obs": torch.zeros(2, 1, 1), "action": torch.tensor([[[0.5], [0.5]], [[-1.0], [1.0]]])}
    g = torch.Generator().manual_seed(0)
    loss, metrics = consistency_loss(student, target, teacher, batch, solver_steps=2, generator=g)

    g = torch.Generator().manual_seed(0)
    noise = torch.randn((2, 2, 1), generator=g)
    index = torch.randint(1, 3, (2,), generator=g)
    times = torch.tensor([1.0, 0.5, 0.0])  # scales 0, 1/2, 1
    expected = []
    for i in range(2):
        t, t_prev = times[index[i]].item(), times[index[i] - 1].item()
        a, eps = batch["action"][i], noise[i]
        x = (1 - t) * eps + t * a
        x_prev = x + (t_prev - t) * (-x)  # teacher Euler step with v = -x
        c_skip, c_out = (float(c) for c in boundary_scalings(torch.tensor(1 - t)))
        pred = c_skip * x + c_out * (x + (1 - t) * (2 - x))
        if t_prev == 1.0:
            goal = x_prev
        else:
            c_skip_p, c_out_p = (float(c) for c in boundary_scalings(torch.tensor(1 - t_prev)))
            goal = c_skip_p * x_prev + c_out_p * (x_prev + (1 - t_prev) * (1 - x_prev))
        expected.append((pred - goal).pow(2).mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert metrics["consistency_mse"] == pytest.approx(loss.item())
    loss.backward()
    assert student.head.net.scale.grad is not None and target.head.net.scale.grad is None


@pytest.mark.parametrize("head", [FLOW_HEAD, {"_target_": "robopol.policies.diffusion.DiffusionPolicy",
                                             "backbone": "mlp", "hidden_dims": [8], "prediction_type": "sample"}])
def test_sampling_chains_the_consistency_function(head):
    torch.manual_seed(0)
    student = ConsistencyPolicy(1, 1, head, inference_steps=2)
    obs = torch.randn(3, student.obs_steps, 1)
    got = student.sample(obs, generator=torch.Generator().manual_seed(3))
    # by hand: f at the top level on noise, then re-noised to scale 1/2 with fresh noise and mapped back
    g = torch.Generator().manual_seed(3)
    shape = (3, student.horizon, 1)
    top, half = (student.head.level_at(scale).expand(3) for scale in (1.0, 0.5))
    x = student.consistency(torch.randn(shape, generator=g), top, obs)
    x = student.consistency(student.head.noised(x, torch.randn(shape, generator=g), half), half, obs)
    torch.testing.assert_close(got, x)


def test_action_matching_loss_by_hand():
    student, teacher = student_and_teacher(lambda x, t: x * 0, lambda x, t: x * 0 + 0.3)
    batch = {"obs": torch.zeros(4, 1, 1), "action": torch.zeros(4, 2, 1)}
    loss, _ = action_matching_loss(student, teacher, batch, generator=torch.Generator().manual_seed(1))
    noise = torch.randn((4, 2, 1), generator=torch.Generator().manual_seed(1))
    c_skip, c_out = boundary_scalings(torch.tensor(1.0))
    # teacher: Euler from noise with v = 0.3 lands on noise + 0.3; student: f = c_skip x + c_out (x + 1 * 0)
    expected = ((c_skip + c_out) * noise - (noise + 0.3)).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distill_rejects_bad_settings():
    student, teacher = student_and_teacher(lambda x, t: x, lambda x, t: x)
    with pytest.raises(ValueError, match="algo.loss must be one of consistency, action_matching, got 'l1'"):
        Distill(student, teacher, total_steps=10, loss="l1")
    with pytest.raises(ValueError, match="algo.solver_steps must be at least 1"):
        Distill(student, teacher, total_steps=10, solver_steps=0)
    with pytest.raises(ValueError, match="algo=distill trains a consistency student, got a FlowPolicy"):
        Distill(teacher, teacher, total_steps=10)
    with pytest.raises(ValueError, match="samples only with sampler=consistency, got 'euler'"):
        student.sample(torch.zeros(1, 1, 1), sampler="euler")


def bimodal(n, g):
    side = torch.where(torch.rand(n, 1, generator=g) < 0.5, -0.6, 0.6)
    return (side + 0.05 * torch.randn(n, 2, generator=g)).unsqueeze(-1)


@pytest.mark.parametrize("loss", ["consistency", "action_matching"])
def test_one_step_student_approaches_its_multi_step_teacher(loss):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    teacher = FlowPolicy(1, 1, **{k: v for k, v in FLOW_HEAD.items() if k != "_target_"}, inference_steps=8)
    opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    for _ in range(800):
        batch_loss, _ = teacher.loss({"obs": torch.zeros(256, 1, 1), "action": bimodal(256, g)}, generator=g)
        opt.zero_grad()
        batch_loss.backward()
        opt.step()
    student = ConsistencyPolicy(1, 1, FLOW_HEAD)
    student.head.load_state_dict(teacher.state_dict())
    algo = Distill(student, teacher, total_steps=400, loss=loss, solver_steps=8, lr=1e-3, warmup_steps=10)

    def gap() -> float:
        noise_seed = torch.Generator().manual_seed(7)
        obs = torch.zeros(2000, 1, 1)
        one_step = student.sample(obs, generator=noise_seed)
        noise_seed = torch.Generator().manual_seed(7)
        return (one_step - teacher.sample(obs, generator=noise_seed)).abs().mean().item()

    before = gap()
    for _ in range(400):
        algo.update({"obs": torch.zeros(256, 1, 1), "action": bimodal(256, g)})
    after = gap()
    # warm-started, the student's one step is the teacher's mean estimate, half a mode away from its samples
    assert before > 0.3 and after < 0.4 * before, (before, after)


@pytest.mark.slow
def test_train_algo_distill_end_to_end_and_its_errors(tmp_path, toy_store):
    tiny = ["trainer.batch_size=16", "trainer.log_every=10", "trainer.eval_episodes=4", "trainer.progress=false"]
    run_cli("train", "policy=flow", "policy.backbone=mlp", "policy.hidden_dims=[32]", f"data={toy_store}",
            "trainer.steps=20", *tiny, f"hydra.run.dir={tmp_path / 'teacher'}", cwd=tmp_path, check=True)
    proc = run_cli("train", "algo=distill", f"teacher={tmp_path / 'teacher'}", "trainer.steps=10", *tiny,
                   f"hydra.run.dir={tmp_path / 'student'}", cwd=tmp_path, check=True)
    assert "trained 10 steps" in proc.stdout and "success rate" in proc.stdout
    ckpt = load_checkpoint(tmp_path / "student")
    assert ckpt.config.policy.name == "consistency" and ckpt.config.policy.head.name == "flow"
    assert ckpt.config.task.name == "point_reach" and ckpt.config.data == toy_store
    assert {"policy", "ema", "target"} <= set(ckpt.module_names())
    proc = run_cli("eval", f"ckpt={tmp_path / 'student'}", "episodes=4", "videos=0", "inference_steps=2",
                   f"out={tmp_path / 'eval.json'}", cwd=tmp_path, check=True)
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["sampler"] == "consistency" and summary["nfe_per_action"] > 0
    assert "network evaluations per executed action" in proc.stdout

    def error(*args: str) -> str:
        proc = run_cli("train", *args, *tiny, f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
        assert proc.returncode != 0
        return proc.stderr.strip().splitlines()[-1]

    assert "algo=distill needs teacher=" in error("algo=distill")
    assert "only used by algo=distill, got algo=bc" in error(f"teacher={tmp_path / 'teacher'}")
    assert "takes the task and policy from the teacher checkpoint; drop task=point_reach" in error(
        "algo=distill", f"teacher={tmp_path / 'teacher'}", "task=point_reach")
    run_cli("train", f"data={toy_store}", "trainer.steps=5", *tiny, f"hydra.run.dir={tmp_path / 'mlp'}",
            cwd=tmp_path, check=True)
    assert "is a 'mlp' policy; algo=distill needs a diffusion or flow teacher" in error(
        "algo=distill", f"teacher={tmp_path / 'mlp'}")
    assert "sampler=consistency" in run_cli("eval", f"ckpt={tmp_path / 'student'}", "sampler=euler", "videos=0",
                                            cwd=tmp_path).stderr


def test_distilling_an_epsilon_prediction_teacher_warns_and_names_the_alternatives():
    head = {"_target_": "robopol.policies.diffusion.DiffusionPolicy", "backbone": "mlp", "hidden_dims": [8]}
    teacher = DiffusionPolicy(1, 1, backbone="mlp", hidden_dims=[8])
    with pytest.warns(UserWarning, match="prefer a flow teacher or a diffusion teacher with policy.prediction_type"):
        Distill(ConsistencyPolicy(1, 1, head), teacher, total_steps=10)
    v_teacher = DiffusionPolicy(1, 1, backbone="mlp", hidden_dims=[8], prediction_type="v_prediction")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Distill(ConsistencyPolicy(1, 1, {**head, "prediction_type": "v_prediction"}), v_teacher, total_steps=10)
