"""What the generative heads share: the masked loss, backbone choice from config, validation, checkpoints."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from robopol.cli.app import compose
from robopol.policies.base import masked_mse
from robopol.policies.diffusion import DiffusionPolicy
from robopol.policies.flow import FlowPolicy

SMALL = ["policy.hidden_dims=[16]", "policy.down_dims=[8,16]", "policy.n_groups=4", "policy.embed_dim=8",
         "policy.d_model=16", "policy.n_heads=2", "policy.n_layers=1", "policy.horizon=4",
         "policy.action_steps=2", "policy.obs_steps=2"]


def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[2.0, 2.0], [4.0, 0.0]]])
    target = torch.zeros_like(pred)
    # per-step errors (mean over action dims): [[5, 0], [4, 8]]
    assert masked_mse(pred, target).item() == pytest.approx(17 / 4)
    is_pad = torch.tensor([[False, True], [False, False]])
    assert masked_mse(pred, target, is_pad).item() == pytest.approx(17 / 3)
    assert masked_mse(pred, target, torch.ones(2, 2, dtype=torch.bool)).item() == 0.0


def _build(head: str, backbone: str, *extra: str, seed: int = 0):
    cfg = compose("train", [f"policy={head}", f"policy.backbone={backbone}", *SMALL, *extra])
    torch.manual_seed(seed)
    return instantiate(cfg.policy, obs_dim=3, action_dim=2), cfg


@pytest.mark.parametrize("backbone", ["mlp", "unet", "transformer"])
@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_every_head_and_backbone_builds_from_config_trains_and_samples(head, backbone):
    policy, cfg = _build(head, backbone)
    assert type(policy) is {"diffusion": DiffusionPolicy, "flow": FlowPolicy}[head]
    assert (policy.obs_steps, policy.horizon, policy.action_steps) == (2, 4, 2)
    assert (policy.sampler, policy.inference_steps) == (cfg.policy.sampler, cfg.policy.inference_steps)
    batch = {"obs": torch.randn(5, 2, 3), "action": torch.rand(5, 4, 2) * 2 - 1,
             "action_is_pad": torch.zeros(5, 4, dtype=torch.bool)}
    loss, metrics = policy.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and list(metrics.values()) == [loss.item()]
    unused = [n for n, p in policy.named_parameters() if p.grad is None]
    assert not unused, f"parameters outside the graph: {unused}"

    policy.eval()
    chunk = policy.sample(batch["obs"], generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (5, 4, 2) and chunk.dtype == torch.float32

    # A checkpoint holds only weights: a fresh policy from the same config samples the same chunk.
    twin, _ = _build(head, backbone, seed=1)
    assert not torch.equal(twin.sample(batch["obs"], generator=torch.Generator().manual_seed(0)), chunk)
    twin.load_state_dict(policy.state_dict())
    twin.eval()
    torch.testing.assert_close(twin.sample(batch["obs"], generator=torch.Generator().manual_seed(0)), chunk)


def test_unet_horizon_must_halve_and_the_error_names_the_key():
    message = r"policy.horizon=6 must be divisible by 2 \*\* \(len\(policy.down_dims\) - 1\) = 4"
    with pytest.raises(ValueError, match=message):
        DiffusionPolicy(obs_dim=3, action_dim=2, horizon=6, action_steps=2, backbone="unet",
                        down_dims=[8, 16, 32])
    with pytest.raises(Exception, match="policy.horizon=5"):
        _build("flow", "unet", "policy.horizon=5")
    # Other backbones, or a one-level U-Net, take any horizon.
    one_level = FlowPolicy(obs_dim=3, action_dim=2, horizon=5, action_steps=2, backbone="unet", down_dims=[8])
    assert one_level.sample(torch.zeros(1, 1, 3)).shape == (1, 5, 2)
    assert _build("diffusion", "transformer", "policy.horizon=5")[0].horizon == 5


def test_bad_shapes_and_sizes_are_named():
    with pytest.raises(ValueError, match="policy.backbone must be one of mlp, unet, transformer"):
        FlowPolicy(obs_dim=3, action_dim=2, backbone="resnet")
    with pytest.raises(ValueError, match="policy.action_steps"):
        FlowPolicy(obs_dim=3, action_dim=2, horizon=4, action_steps=5)
    with pytest.raises(ValueError, match="policy.n_groups=8"):
        FlowPolicy(obs_dim=3, action_dim=2, down_dims=[12, 24], horizon=4)
    with pytest.raises(ValueError, match="policy.d_model=30 must be divisible by policy.n_heads=4"):
        FlowPolicy(obs_dim=3, action_dim=2, backbone="transformer", d_model=30)
    policy = FlowPolicy(obs_dim=3, action_dim=2, obs_steps=2, backbone="mlp", hidden_dims=[8])
    with pytest.raises(ValueError, match=r"obs must have shape \(B, obs_steps=2, obs_dim=3\), got \(1, 1, 3"):
        policy.sample(torch.zeros(1, 1, 3))
