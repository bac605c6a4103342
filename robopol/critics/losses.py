"""Losses and targets of chunk critics, as pure functions of tensors (algorithms.md §0, §1, §5).

Sign convention: ``diff = target - prediction``. The asymmetric losses weight a positive ``diff`` (the
prediction is below its target) by ``tau`` and a negative one by ``1 - tau``, so ``tau > 0.5`` pulls the
prediction towards an upper expectile / quantile of the targets: the "implicit max" of IQL and DQC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AGGREGATIONS = ("min", "mean")


def asymmetric_weight(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """``|tau - 1(diff < 0)|``: ``tau`` where the target lies above the prediction, ``1 - tau`` below."""
    return torch.where(diff < 0, 1.0 - tau, tau).to(diff.dtype)


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Elementwise expectile loss ``|tau - 1(diff < 0)| diff^2`` (IQL's value loss)."""
    return asymmetric_weight(diff, tau) * diff.pow(2)


def quantile_loss(diff: torch.Tensor, kappa: float) -> torch.Tensor:
    """Elementwise quantile (pinball) loss ``|kappa - 1(diff < 0)| |diff|`` (DQC's implicit value backup)."""
    return asymmetric_weight(diff, kappa) * diff.abs()


def bce_expectile_loss(logits: torch.Tensor, target: torch.Tensor, kappa: float) -> torch.Tensor:
    """Elementwise expectile in BCE form (DQC's critic distillation): binary cross-entropy of ``logits``
    against probabilities ``target``, weighted ``kappa`` where ``target >= sigmoid(logits)``, else
    ``1 - kappa``."""
    weight = torch.where(target >= torch.sigmoid(logits), kappa, 1.0 - kappa).to(logits.dtype)
    return weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def chunk_td_target(reward_sum: torch.Tensor, discount: torch.Tensor, mask: torch.Tensor,
                    next_value: torch.Tensor) -> torch.Tensor:
    """Chunk TD target ``sum_{k<n} gamma^k r_{t+k} + gamma^n * mask * V(s_{t+n})``.

    ``reward_sum``, ``discount`` (``gamma**n``) and ``mask`` (no terminal inside the chunk) come from the
    window sampler (``critic=True``), so a terminal inside the chunk cuts the bootstrap and ``n`` counts the
    chunk's valid steps.
    """
    return reward_sum + discount * mask.to(reward_sum.dtype) * next_value


def aggregate(values: torch.Tensor, how: str) -> torch.Tensor:
    """Combine an ensemble's ``(E, B)`` outputs into ``(B,)``: ``min`` (pessimistic) or ``mean``."""
    if how == "min":
        return values.min(dim=0).values
    if how == "mean":
        return values.mean(dim=0)
    raise ValueError(f"ensemble aggregation must be one of {', '.join(AGGREGATIONS)}, got '{how}'")


def q_loss_scale(q: torch.Tensor, eta: float, eps: float = 1e-6) -> torch.Tensor:
    """``eta / stopgrad(mean |Q|)``: the factor on an actor's Q term that makes ``eta`` scale-free (DQL's
    normalisation, OFQL's ``alpha``, FQL's ``normalize_q_loss``)."""
    return eta / q.detach().abs().mean().clamp_min(eps)


def masked_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over its leading dims weighted by ``weight`` (broadcast from the right-most
    batch dim); the plain mean when ``weight`` is None. An all-zero weight gives 0, not NaN."""
    if weight is None:
        return values.mean()
    weight = torch.broadcast_to(weight.to(values.dtype), values.shape)
    total = weight.sum()
    return torch.where(total > 0, (values * weight).sum() / total.clamp_min(torch.finfo(total.dtype).tiny),
                       total.new_zeros(()))


def td_loss(q: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared TD error of every ensemble member's ``(E, B)`` prediction against a shared ``(B,)`` target,
    averaged over members and (weighted) samples."""
    return masked_mean((q - target.detach()).pow(2), weight)
