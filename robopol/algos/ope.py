"""Off-policy evaluation gate for iterative policy improvement (Uni-O4 / RL-100; algorithms.md §7c).

An iterative improver (PPO over denoising steps, ALOE rounds, any offline fine-tuning) proposes candidate
policies that may only look better under its own surrogate. :class:`OPEGate` keeps the score of the current
reference policy and lets a candidate replace it only when an off-policy estimate of its value is higher:

    gate = OPEGate(functools.partial(critic_estimate, critic=critic, start_obs=obs))
    gate.reset(reference_policy)
    if gate.consider(candidate):   # estimate(candidate) > reference + margin; the reference moves up
        reference_policy = candidate

Two estimators, both ``estimate(policy) -> float`` over start states drawn from the buffer:

- :func:`critic_estimate`: ``mean_s agg_m Q_m(s, pi(s))`` with a given chunk critic;
- :func:`amq_estimate` (AM-Q, Uni-O4's ``dynamics_eval.rollout``): roll the policy out for ``steps``
  environment steps in a learned :class:`DynamicsEnsemble` and average ``agg_m Q_m(s, pi(s))`` over every
  state it plans from along the rollouts. The model is trained by :func:`fit` on buffer transitions.

Policies are "deterministic" through common random numbers: every candidate samples its chunks from a
generator seeded with the same ``seed``, so two policies are compared on identical noise (a deterministic
policy ignores it). Chunks are clipped to [-1, 1] like everywhere a chunk meets a critic. Everything works
in the normalised spaces the policy and critic see: ``obs`` (B, To, D) observation features, actions in
[-1, 1]. Chunk policies plan every ``policy.action_steps`` steps of a rollout and execute those actions
through the model one at a time, shifting the observation history.

Deviations from Uni-O4: its dynamics model is a Gaussian ensemble (NLL loss, elites, a random elite member
per sample and a termination function); here it is a deterministic ensemble fit by squared error whose
member mean drives the rollout, with no terminations, which keeps the comparison noise-free. Its predicted
reward is reported beside the score (Uni-O4 returns it too) but is not part of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robopol.algos.offline import clip_action
from robopol.critics import aggregate
from robopol.critics.nets import EnsembleLinear


class OPEGate:
    """Accept a candidate only if ``estimate(candidate) > reference + margin``; an accepted candidate's
    score becomes the reference. Before any reference is set (:meth:`reset`), the first candidate passes."""

    def __init__(self, estimate: Callable[[nn.Module], float], margin: float = 0.0,
                 reference: float = -math.inf) -> None:
        if not margin >= 0:
            raise ValueError(f"OPEGate margin must be >= 0, got {margin}")
        self.estimate, self.margin, self.reference = estimate, margin, reference
        self.history: list[tuple[float, bool]] = []

    def reset(self, policy: nn.Module) -> float:
        """Make ``policy`` the reference; returns its score."""
        self.reference = float(self.estimate(policy))
        return self.reference

    def consider(self, candidate: nn.Module) -> bool:
        score = float(self.estimate(candidate))
        accepted = score > self.reference + self.margin
        if accepted:
            self.reference = score
        self.history.append((score, accepted))
        return accepted


def plan(policy: nn.Module, obs: torch.Tensor, seed: int) -> torch.Tensor:
    """The policy's clipped chunk at ``obs`` from a generator seeded with ``seed`` (common random numbers)."""
    generator = torch.Generator(device=obs.device).manual_seed(seed)
    return clip_action(policy.sample(obs, generator=generator))


@torch.no_grad()
def critic_estimate(policy: nn.Module, critic: nn.Module, start_obs: torch.Tensor, aggregation: str = "mean",
                    seed: int = 0) -> float:
    """``mean_s agg_m Q_m(s, pi(s))`` over the start states ``start_obs`` (B, To, D)."""
    return aggregate(critic.values(start_obs, plan(policy, start_obs, seed)), aggregation).mean().item()


class DynamicsEnsemble(nn.Module):
    """``num`` MLPs ``(o, a) -> (o' - o, r)`` over flat observation features ``o`` (D) and actions ``a`` (A),
    with SiLU activations; outputs are standardised by the statistics :func:`fit` stores."""

    def __init__(self, obs_dim: int, action_dim: int, num: int = 5, hidden_dims: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if num < 1:
            raise ValueError(f"a dynamics ensemble needs at least one member, got num={num}")
        self.obs_dim, self.action_dim, self.num = obs_dim, action_dim, num
        widths = [obs_dim + action_dim, *hidden_dims, obs_dim + 1]
        self.layers = nn.ModuleList(EnsembleLinear(num, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.register_buffer("out_mean", torch.zeros(obs_dim + 1))
        self.register_buffer("out_std", torch.ones(obs_dim + 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``(B, D)``, ``(B, A)`` (shared by the members) or ``(E, B, .)`` -> standardised ``(E, B, D + 1)``."""
        x = torch.cat([obs, action], dim=-1)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num, -1, -1)
        for layer in self.layers[:-1]:
            x = F.silu(layer(x))
        return self.layers[-1](x)

    @torch.no_grad()
    def step(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' mean prediction: next observation features ``(B, D)`` and reward ``(B,)``."""
        out = self(obs, action).mean(dim=0) * self.out_std + self.out_mean
        return obs + out[:, :-1], out[:, -1]


def fit(model: DynamicsEnsemble, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor,
        reward: torch.Tensor, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
        generator: torch.Generator | None = None) -> float:
    """Train ``model`` on transitions ``obs`` (N, D), ``action`` (N, A), ``next_obs`` (N, D), ``reward`` (N,)
    (e.g. a 1-step critic window batch's ``obs[:, -1]``, ``action[:, 0]``, ``next_obs[:, -1]``,
    ``reward_sum``, keeping ``mask & ~truncated``: the rows whose next observation is the true next step).
    Each member draws its own minibatches. Returns the last minibatch's mean squared error (standardised)."""
    if obs.shape[0] < 1 or steps < 1:
        raise ValueError(f"fit needs at least one transition and one step, got {obs.shape[0]} and {steps}")
    target = torch.cat([next_obs - obs, reward.reshape(-1, 1)], dim=-1)
    model.out_mean.copy_(target.mean(dim=0))
    model.out_std.copy_(target.std(dim=0, correction=0).clamp_min(1e-6))
    target = (target - model.out_mean) / model.out_std
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, obs.shape[0], (model.num, batch_size), generator=generator).to(obs.device)
        loss = (model(obs[idx], action[idx]) - target[idx]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


@torch.no_grad()
def model_rollout(policy: nn.Module, model: DynamicsEnsemble, critic: nn.Module, start_obs: torch.Tensor,
                  steps: int, aggregation: str = "mean", seed: int = 0) -> tuple[float, float]:
    """Roll ``policy`` out ``steps`` environment steps from ``start_obs`` (B, To, D) in ``model``; returns
    ``(mean of agg Q(s, pi(s)) over the planning states, mean predicted reward)``."""
    if steps < 1:
        raise ValueError(f"AM-Q needs a rollout of at least one step, got steps={steps}")
    obs, q, rewards, done, call = start_obs, [], [], 0, 0
    while done < steps:
        chunk = plan(policy, obs, seed + call)
        q.append(aggregate(critic.values(obs, chunk), aggregation))
        for k in range(min(policy.action_steps, steps - done)):
            next_obs, reward = model.step(obs[:, -1], chunk[:, k])
            obs = torch.cat([obs[:, 1:], next_obs[:, None]], dim=1)
            rewards.append(reward)
            done += 1
        call += 1
    return torch.stack(q).mean().item(), torch.stack(rewards).mean().item()


def amq_estimate(policy: nn.Module, model: DynamicsEnsemble, critic: nn.Module, start_obs: torch.Tensor,
                 steps: int = 10, aggregation: str = "mean", seed: int = 0) -> float:
    """AM-Q: the mean ``agg Q(s, pi(s))`` along ``steps``-step model rollouts from ``start_obs``."""
    return model_rollout(policy, model, critic, start_obs, steps, aggregation, seed)[0]
