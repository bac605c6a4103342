"""Config schemas of the policy heads (the ``policy=`` group), one per option."""

from __future__ import annotations

from dataclasses import dataclass, field

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


# Schema of each policy option (``configs/policy/<name>.yaml`` extends ``/schemas/policy/<schema>``).
POLICY_SCHEMAS: dict[str, type[PolicyConfig]] = {"mlp": MLPPolicyConfig}
