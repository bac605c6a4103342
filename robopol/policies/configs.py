"""Config schemas of the policy heads (the ``policy=`` group), one per option."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from robopol.schemas import PolicyConfig


@dataclass
class MLPPolicyConfig(PolicyConfig):
    """Deterministic MLP regressor of the action chunk (mean-squared error): the simplest baseline."""

    name: str = "mlp"
    _target_: str = "robopol.policies.mlp.MLPPolicy"
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the hidden layers."""
    layer_norm: bool = False
    """LayerNorm after each hidden linear layer."""
    residual: bool = False
    """Residual connections between hidden layers of equal width."""


@dataclass
class GaussianPolicyConfig(PolicyConfig):
    """Diagonal Gaussian over single actions (tanh MLP mean, learned state-independent log std): Gaussian PPO's policy."""

    name: str = "gaussian"
    _target_: str = "robopol.policies.gaussian.GaussianPolicy"
    horizon: int = 1
    action_steps: int = 1
    hidden_dims: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the mean MLP's hidden layers."""
    init_log_std: float = 0.0
    """Initial log standard deviation of every action dimension (normalised action units)."""


@dataclass
class NoisyFlowPolicyConfig(PolicyConfig):
    """Flow policy plus learned Gaussian noise over single actions (PolicyFlow's policy, algo=policyflow)."""

    name: str = "noisy_flow"
    _target_: str = "robopol.policies.noisy_flow.NoisyFlowPolicy"
    horizon: int = 1
    action_steps: int = 1
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])
    """Widths of the velocity MLP's hidden layers (the PolicyFlow port: 3 x 256)."""
    time_dim: int = 64
    """Size of the sinusoidal time embedding."""
    flow_steps: int = 10
    """Midpoint steps of the ODE from z to the action (K)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian noise (normalised action units)."""
    prior_std: float = 1.0
    """Std of the flow's input noise z (PolicyFlow: 1, the action box's half-width)."""


@dataclass
class GenerativePolicyConfig(PolicyConfig):
    """Fields shared by the generative heads: the denoising backbone and its sizes, loss mask, sampler."""

    backbone: str = "unet"
    """Denoiser network: mlp, unet or transformer."""
    embed_dim: int = 128
    """Width of the sinusoidal noise-level embedding (mlp and unet backbones; transformer uses d_model)."""
    hidden_dims: list[int] = field(default_factory=lambda: [512, 512, 512])
    """mlp backbone: widths of the hidden layers."""
    layer_norm: bool = False
    """mlp backbone: LayerNorm after each hidden linear layer."""
    residual: bool = False
    """mlp backbone: residual connections between hidden layers of equal width."""
    down_dims: list[int] = field(default_factory=lambda: [32, 64, 128])
    """unet backbone: channels per level (DP: [256, 512, 1024]); horizon % 2 ** (len(down_dims) - 1) == 0."""
    kernel_size: int = 5
    """unet backbone: temporal convolution kernel size (odd)."""
    n_groups: int = 8
    """unet backbone: GroupNorm groups (must divide every down_dims entry)."""
    d_model: int = 128
    """transformer backbone: token width."""
    n_heads: int = 4
    """transformer backbone: attention heads (must divide d_model)."""
    n_layers: int = 4
    """transformer backbone: decoder layers."""
    dropout: float = 0.1
    """transformer backbone: dropout in attention and feed-forward layers."""
    mask_padding: bool = True
    """Leave chunk steps padded past an episode's end (action_is_pad) out of the loss."""
    discrete_dims: list[int] = field(default_factory=list)
    """Action dims that are binary commands (a gripper): binarised to the bounds at execution."""
    discrete_scale: float = 1.0
    """Training scale of discrete_dims (RTI-DP's scaling method: 0.1); sampling undoes it."""
    sampler: str = MISSING
    """Sampler used by sample() unless the caller names one."""
    inference_steps: int = 10
    """Sampler steps used by sample() unless the caller passes steps."""


@dataclass
class DiffusionPolicyConfig(GenerativePolicyConfig):
    """Diffusion head: DDPM noising for training, DDPM or DDIM sampling (diffusers schedulers)."""

    name: str = "diffusion"
    _target_: str = "robopol.policies.diffusion.DiffusionPolicy"
    num_train_timesteps: int = 100
    """Noise levels K of the training schedule."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule: linear, scaled_linear, squaredcos_cap_v2 or sigmoid."""
    prediction_type: str = "epsilon"
    """What the network predicts: epsilon (the noise), sample (the clean chunk) or v_prediction."""
    clip_sample: bool = True
    """Clip each predicted clean chunk during sampling (normalised actions lie in [-1, 1])."""
    clip_sample_range: float = 1.0
    """Bound of that clipping."""
    sampler: str = "ddim"
    """Sampler used by sample() unless the caller names one: ddpm or ddim."""
    inference_steps: int = 10
    """Sampler steps (network calls) used by sample() unless the caller passes steps; at most K."""


@dataclass
class FlowPolicyConfig(GenerativePolicyConfig):
    """Flow-matching head (rectified flow, t=0 noise, t=1 data): velocity regression, ODE sampling."""

    name: str = "flow"
    _target_: str = "robopol.policies.flow.FlowPolicy"
    time_sampling: str = "uniform"
    """Training time distribution: uniform or logit_normal."""
    logit_mean: float = 0.0
    """Mean of the normal that logit_normal squashes through a sigmoid."""
    logit_std: float = 1.0
    """Std of the normal that logit_normal squashes through a sigmoid."""
    sampler: str = "euler"
    """ODE integrator used by sample() unless the caller names one: euler (k calls) or midpoint (2k calls)."""
    inference_steps: int = 10
    """Integration steps used by sample() unless the caller passes steps."""


@dataclass
class MeanFlowPolicyConfig(GenerativePolicyConfig):
    """Mean-flow head (OFQL's generator): average velocity by the MeanFlow identity, one network call per chunk."""

    name: str = "meanflow"
    _target_: str = "robopol.policies.meanflow.MeanFlowPolicy"
    flow_ratio: float = 0.75
    """Probability that r = t in training (plain flow matching); MeanFlow 0.75, OFQL 0.5 (docs/fast-inference.md)."""
    adaptive_power: float = 1.0
    """MeanFlow's adaptive loss weight 1 / (error + eps) ** p; 0 gives plain mean squared error."""
    adaptive_eps: float = 1.0e-3
    """eps of the adaptive loss weight."""
    logit_mean: float = 0.4
    """Mean of the logit-normal (t, r) draws (OFQL's -0.4 with its noise-at-1 convention)."""
    logit_std: float = 1.0
    """Std of the logit-normal (t, r) draws."""
    sampler: str = "one_step"
    """one_step (average-velocity jumps), euler or midpoint (instantaneous velocity u(x, t, t))."""
    inference_steps: int = 1
    """Jumps (one_step) or integration steps (euler, midpoint) used by sample()."""


# Schema of each policy option (``configs/policy/<name>.yaml`` extends ``/schemas/policy/<schema>``).
POLICY_SCHEMAS: dict[str, type[PolicyConfig]] = {
    "mlp": MLPPolicyConfig,
    "diffusion": DiffusionPolicyConfig,
    "flow": FlowPolicyConfig,
    "meanflow": MeanFlowPolicyConfig,
    "gaussian": GaussianPolicyConfig,
    "noisy_flow": NoisyFlowPolicyConfig,
}
