"""What the offline RL algorithms share: reward modes, optimiser steps, targets, and best-of-N extraction.

Every algorithm in ``robopol.algos`` that learns a critic subclasses :class:`OfflineRL`, which gives it the
trainer's interface (``update``, ``modules``, ``eval_policy``, ``validation_loss``, state dicts) and tells
the trainer which windows to cut (``window_options``: chunk-critic fields with ``gamma`` over
``critic_horizon`` steps) and how to read rewards (``prepare_rewards``). The algorithm's own file holds its
losses as pure functions of a batch and its ``update``.

Batches carry, beside the policy's ``obs`` / ``action`` / ``action_is_pad``, the sampler's chunk-critic
fields as tensors: ``next_obs`` (B, To, D), ``reward_sum``, ``discount``, ``mask``, ``terminal``,
``truncated`` (B,) and ``valid`` (B, H); see :mod:`robopol.data.sampler`.

Actions are normalised by the trainer to [-1, 1] (min-max), the box that every reference clips sampled
actions to (algorithms.md §0); ``clip_action`` is that clip, applied identically wherever a sampled chunk
meets a critic.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from robopol.algos.bc import update_ema
from robopol.critics import aggregate
from robopol.critics.nets import CriticEnsemble
from robopol.distributed import sync_gradients
from robopol.nets.mlp import MLP
from robopol.policies.base import check_choice

REWARD_MODES = ("store", "sparse", "success")
ACTION_BOUND = 1.0


def clip_action(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.clamp(-ACTION_BOUND, ACTION_BOUND)


def transform_rewards(reward: np.ndarray, terminal: np.ndarray | None, mode: str) -> np.ndarray:
    """Per-step rewards as an algorithm reads them.

    ``store``: unchanged. ``sparse`` (QC's ``--sparse``): 0 where the stored reward is 0 (OGBench single-task
    rewards are 0 exactly at success), -1 elsewhere. ``success``: 1 on steps that end an episode with a true
    terminal (robopol's OGBench and maze tasks terminate at success), 0 elsewhere: the [0, 1] success reward
    that logit critics need (DQC).
    """
    check_choice("algo.reward", mode, REWARD_MODES)
    reward = np.asarray(reward, dtype=np.float32)
    if mode == "sparse":
        return np.where(reward == 0, 0.0, -1.0).astype(np.float32)
    if mode == "success":
        if terminal is None:
            raise ValueError("algo.reward=success needs the store's per-step 'terminal' flags, and the store "
                             "has none; use algo.reward=store or sparse")
        return np.asarray(terminal, dtype=np.float32)
    return reward


class OneStepActor(nn.Module):
    """Deterministic map ``mu(s, z) -> chunk`` from observations and Gaussian noise (FQL's one-step policy):
    one network call per chunk, differentiable, so a critic's gradient reaches it directly."""

    def __init__(self, obs_dim: int, obs_steps: int, action_dim: int, horizon: int, action_steps: int,
                 hidden_dims: tuple[int, ...] = (512, 512, 512, 512), layer_norm: bool = False,
                 discrete_dims: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.obs_dim, self.obs_steps, self.action_dim = obs_dim, obs_steps, action_dim
        self.horizon, self.action_steps = horizon, action_steps
        self.discrete_dims = list(discrete_dims)  # binarised at execution by the runtime, like the BC head's
        self.net = MLP(obs_steps * obs_dim + horizon * action_dim, horizon * action_dim, hidden_dims, layer_norm)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.cat([obs.flatten(1), noise.flatten(1)], dim=-1))
        return out.view(-1, self.horizon, self.action_dim)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None) -> torch.Tensor:
        noise = torch.randn((obs.shape[0], self.horizon, self.action_dim), generator=generator,
                            device=obs.device, dtype=obs.dtype)
        return clip_action(self(obs, noise))


class BestOfN(nn.Module):
    """Best-of-N extraction (QC, DQC, IDQL): draw ``n`` chunks from the behaviour policy, score them with a
    critic, return the best. It has a policy's interface, so the runtime executes it like any head; the
    critic reads the first ``critic.horizon`` steps (DQC's partial critic scores ``h_a``-step chunks)."""

    def __init__(self, policy: nn.Module, critic: CriticEnsemble, n: int, aggregation: str = "mean") -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"algo.best_of_n must be at least 1, got {n}")
        self.policy, self.critic, self.n, self.aggregation = policy, critic, n, aggregation
        self.obs_steps, self.horizon, self.action_steps = policy.obs_steps, policy.horizon, policy.action_steps
        self.action_dim = policy.action_dim
        self.discrete_dims = list(getattr(policy, "discrete_dims", ()))

    @property
    def net(self) -> nn.Module:
        """The behaviour policy's network, whose calls the runtime counts as NFE."""
        return self.policy.net

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None) -> torch.Tensor:
        batch = obs.shape[0]
        repeated = obs.repeat_interleave(self.n, dim=0)
        chunks = clip_action(self.policy.sample(repeated, generator=generator, sampler=sampler, steps=steps))
        scores = aggregate(self.critic.values(repeated, chunks), self.aggregation).view(batch, self.n)
        best = scores.argmax(dim=1)
        return chunks.view(batch, self.n, *chunks.shape[1:])[torch.arange(batch, device=obs.device), best]


class OfflineRL:
    """Trainer plumbing for critic-based algorithms (see the module docstring).

    Subclasses register their networks in ``self.nets`` (targets included, saved in checkpoints), one Adam
    per trained group in ``self.optimizers``, and implement ``update``. ``self.policy`` is the generative
    head; ``self.ema`` its moving average when ``ema_decay > 0``.
    """

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str, lr: float, gamma: float, tau: float,
                 reward: str, critic_horizon: int, ema_decay: float = 0.0, grad_clip: float = 0.0,
                 drop_truncated: bool = True) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"algo.gamma must be in (0, 1], got {gamma}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"algo.tau must be in (0, 1], got {tau}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"algo.ema_decay must be in [0, 1), got {ema_decay}")
        if critic_horizon < policy.horizon:
            raise ValueError(f"the critic's chunk (algo.chunk_horizon={critic_horizon}) must be at least the "
                             f"policy's (policy.horizon={policy.horizon})")
        check_choice("algo.reward", reward, REWARD_MODES)
        self.name, self.policy, self.total_steps = name, policy, total_steps
        self.lr, self.gamma, self.tau, self.reward = lr, gamma, tau, reward
        self.critic_horizon, self.ema_decay, self.grad_clip = critic_horizon, ema_decay, grad_clip
        self.drop_truncated = drop_truncated
        self.ema = copy.deepcopy(policy).requires_grad_(False) if ema_decay > 0 else None
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.steps = 0

    # ------------------------------------------------------------------ what the trainer asks

    def window_options(self) -> dict[str, Any]:
        """WindowConfig fields: chunk-critic bookkeeping over the critic's chunk."""
        return {"critic": True, "gamma": self.gamma, "horizon": self.critic_horizon}

    def prepare_rewards(self, reward: np.ndarray, terminal: np.ndarray | None) -> np.ndarray:
        return transform_rewards(reward, terminal, self.reward)

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"policy": self.policy, **self.nets}
        if self.ema is not None:
            mods["ema"] = self.ema
        return mods

    def eval_policy(self) -> nn.Module:
        """What evaluation and deployment run; subclasses wrap it (best-of-N) or replace it (one-step actor)."""
        return self.behaviour_policy()

    def behaviour_policy(self) -> nn.Module:
        return self.ema if self.ema is not None else self.policy

    @torch.no_grad()
    def validation_loss(self, batch: dict[str, torch.Tensor]) -> float:
        """The behaviour policy's imitation loss on held-out windows (a data-fit monitor)."""
        policy = self.behaviour_policy()
        policy.eval()
        return policy.loss(self.policy_batch(batch))[0].item()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.steps = state["steps"]

    @classmethod
    def load_eval_policy(cls, ckpt: Any, policy: nn.Module) -> nn.Module:
        """Rebuild :meth:`eval_policy` from a checkpoint around a freshly built ``policy``."""
        ckpt.load_modules({"ema" if "ema" in ckpt.module_names() else "policy": policy})
        return policy

    # ------------------------------------------------------------------ helpers for subclasses

    def adam(self, *modules: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=self.lr if lr is None else lr)

    def step(self, key: str, loss: torch.Tensor) -> float:
        """One optimiser step of group ``key`` on ``loss``; returns the gradient norm (0 when not clipped)."""
        optimizer = self.optimizers[key]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sync_gradients(params)
        norm = 0.0
        if self.grad_clip > 0:
            norm = float(nn.utils.clip_grad_norm_(params, self.grad_clip))
        optimizer.step()
        return norm

    def after_update(self) -> None:
        """Moving averages after every update: the policy EMA."""
        self.steps += 1
        if self.ema is not None:
            update_ema(self.ema, self.policy, self.ema_decay)

    def policy_batch(self, batch: dict[str, torch.Tensor], horizon: int | None = None) -> dict[str, torch.Tensor]:
        """The policy's view of a critic batch: its own chunk length, and steps past a terminal or the episode
        end masked as padding (QC masks its flow loss with ``valid``)."""
        horizon = self.policy.horizon if horizon is None else horizon
        is_pad = batch["action_is_pad"][:, :horizon]
        if "valid" in batch:
            is_pad = is_pad | ~batch["valid"][:, :horizon]
        return {"obs": batch["obs"], "action": batch["action"][:, :horizon], "action_is_pad": is_pad}

    def critic_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-sample weight of TD losses: windows that ran into a time limit are dropped when
        ``drop_truncated`` (QC's choice; the alternative bootstraps from the last stored state)."""
        return (~batch["truncated"]).float() if self.drop_truncated else None



def build_critic(policy: nn.Module, horizon: int, num_critics: int, hidden_dims: Any, layer_norm: bool,
                 logits: bool = False) -> CriticEnsemble:
    """A critic ensemble over the policy's observations and ``horizon``-step chunks of its actions
    (``horizon=0``: a value net), on the policy's device."""
    return CriticEnsemble(policy.obs_dim, policy.obs_steps, policy.action_dim, horizon, num_critics,
                          tuple(hidden_dims), layer_norm, logits).to(policy_device(policy))


def load_best_of_n(ckpt: Any, policy: nn.Module, critic_name: str, logits: bool = False) -> BestOfN:
    """:class:`BestOfN` around ``policy`` with the checkpoint's critic ``critic_name``, rebuilt from the
    checkpoint's ``algo`` config (its critic fields, ``best_of_n`` and ``q_agg``)."""
    cfg = ckpt.config.algo
    critic = build_critic(policy, policy.horizon, cfg.num_critics, cfg.critic_hidden_dims, cfg.layer_norm, logits)
    ckpt.load_modules({critic_name: critic})
    return BestOfN(policy, critic, cfg.best_of_n, cfg.q_agg)


def policy_device(policy: nn.Module) -> torch.device:
    return next(policy.parameters()).device
