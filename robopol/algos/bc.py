"""Behaviour cloning: minimise the policy's own imitation loss on dataset windows.

AdamW with linear warm-up and cosine decay (diffusers' schedule), optional gradient clipping, and an
exponential moving average of the weights that evaluation and deployment use when enabled.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn

from robopol.distributed import sync_gradients


class BC:
    def __init__(
        self,
        policy: nn.Module,
        total_steps: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        warmup_steps: int = 100,
        ema_decay: float = 0.0,
        grad_clip: float = 0.0,
        name: str = "bc",
    ) -> None:
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"algo.ema_decay must be in [0, 1), got {ema_decay}")
        self.policy = policy
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=min(warmup_steps, total_steps), num_training_steps=total_steps
        )
        self.ema = copy.deepcopy(policy).requires_grad_(False) if ema_decay > 0 else None

    def loss(self, batch: dict[str, torch.Tensor],
             policy: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of ``policy`` (default: the trained one) on a batch: its own imitation loss."""
        return (self.policy if policy is None else policy).loss(batch)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        loss, metrics = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(self.policy.parameters())
        if self.grad_clip > 0:
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            update_ema(self.ema, self.policy, self.ema_decay)
        return {"loss": loss.item(), "lr": self.scheduler.get_last_lr()[0], **metrics}

    @torch.no_grad()
    def validation_loss(self, batch: dict[str, torch.Tensor]) -> float:
        policy = self.eval_policy()
        policy.eval()
        return self.loss(batch, policy)[0].item()

    def eval_policy(self) -> nn.Module:
        """The weights to evaluate and deploy: the EMA copy when enabled."""
        return self.ema if self.ema is not None else self.policy

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"policy": self.policy}
        if self.ema is not None:
            mods["ema"] = self.ema
        return mods

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
