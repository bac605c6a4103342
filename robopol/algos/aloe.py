"""ALOE: action-level off-policy evaluation for post-training a flow policy on mixed buffers
(arXiv 2602.12691; algorithms.md §6).

A replay buffer that mixes demonstrations, rollouts of earlier policies, early-stopped fragments and human
takeovers says little about the *current* policy through Monte-Carlo returns. ALOE instead evaluates the
current policy off-policy with a chunked TD critic, then improves it by advantage-weighted flow matching.

- Critic (chunked TD *policy evaluation*): an ensemble of ``num_critics`` chunk critics ``Q_m(s, a_{t:t+h})``
  (``h = policy.horizon``), all regressing one target
  ``y = sum_{k<n} gamma^k r_{t+k} + gamma^n * mask * Q'_pess(s_{t+n}, a')`` with ``a' ~ pi(s_{t+n})`` the
  current policy's clipped sample (not the dataset's next chunk: that would be SARSA, the behaviour's value).
  ``Q'`` is the Polyak target ensemble; the sampler supplies ``reward_sum``, ``discount = gamma**n`` and
  ``mask``, so values never cross a terminal or an episode end.
- Pessimism (``algo.pessimism``): ``Q_pess = min_m Q_m`` (the paper's approximate lower confidence bound) or
  ``mean_m Q_m - c * std_m Q_m`` (``mean_minus_std``, ``c = pessimism_coef``, population std over members).
- Advantage of a buffer chunk: ``A = Q_pess(s, a_data) - V^pi(s)`` with
  ``V^pi(s) = 1/K sum_k Q_pess(s, a_k)``, ``a_k ~ pi(s)`` (``K = policy_samples``), from the online ensemble
  just after its update.
- Actor: ``w = clip(exp(A / temperature), 0, max_weight)`` as ``batch["sample_weight"]`` of the policy's
  flow-matching loss, ``E[w ||v_theta(a_tau, tau, s) - (a - eps)||^2]`` (robopol's t=0-noise convention).

"The current policy" is the one evaluation and deployment run: the EMA when ``ema_decay > 0``, else the
trained head. Update order per batch: critic, actor, Polyak, EMA.

Human interventions (``algo.interventions=true`` reads the store's per-step ``intervention`` flags as
``batch["intervention"]`` (B, H); a batch without them is all autonomous):

- values back up through what was executed: the stored action of a takeover step is the human's, and the
  critic is trained on it like any other chunk. The TD target still bootstraps with the current policy's
  chunk, so the critic evaluates "execute this chunk, then follow pi". Episode ends and terminals come from
  the sampler's ``mask``/``discount``, so no value crosses an episode boundary; an early-stopped fragment
  ends without a terminal and is handled like a time limit (dropped from the TD loss when
  ``drop_truncated``).
- a chunk counts as human-corrected when any of its valid (non-padded, not past a terminal) steps is flagged.
  Its weight is raised to at least ``intervention_weight`` (default 1: plain imitation), so a correction
  is never ignored because the critic, still learning, under-rates it; set 0 to treat human chunks like any
  other. Chunks mixing policy and human steps count as human.

Deviations and choices (no public code exists): the defaults (K = 4 samples, temperature 1, ``max_weight``
20 as in AWR, 5 members of (256, 256)) are robopol's; the weights are not normalised over the batch;
windows that run into a time limit are left out of the TD loss when ``drop_truncated`` (the actor still
learns from them). The policy chunk is executed whole (``policy.action_steps == policy.horizon``), as the
chunk critic assumes.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from robopol.algos.offline import OfflineRL, build_critic, clip_action
from robopol.critics import chunk_td_target, polyak_update, td_loss
from robopol.critics.nets import CriticEnsemble
from robopol.policies.base import GenerativePolicy, check_choice

PESSIMISM = ("min", "mean_minus_std")
INTERVENTION_KEY = "intervention"


def pessimistic(values: torch.Tensor, how: str, coef: float = 1.0) -> torch.Tensor:
    """Combine an ensemble's ``(E, B)`` values into ``(B,)``: ``min`` over members, or
    ``mean - coef * std`` with the population std (``mean_minus_std``)."""
    if how == "min":
        return values.min(dim=0).values
    if how == "mean_minus_std":
        return values.mean(dim=0) - coef * values.std(dim=0, correction=0)
    raise ValueError(f"algo.pessimism must be one of {', '.join(PESSIMISM)}, got '{how}'")


def critic_loss(critic: CriticEnsemble, critic_target: CriticEnsemble, policy: nn.Module,
                batch: dict[str, torch.Tensor], how: str, coef: float,
                weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """Chunked TD evaluation of ``policy``: every member regresses the pessimistic target at ``a' ~ pi(s')``."""
    next_obs = batch["next_obs"]
    with torch.no_grad():
        next_chunk = clip_action(policy.sample(next_obs))
        next_q = pessimistic(critic_target(next_obs, next_chunk), how, coef)
        target = chunk_td_target(batch["reward_sum"], batch["discount"], batch["mask"], next_q)
    q = critic(batch["obs"], clip_action(batch["action"]))
    loss = td_loss(q, target, weight)
    return loss, {"critic_loss": loss.item(), "q_mean": q.mean().item(), "target_mean": target.mean().item(),
                  "q_ensemble_std": q.std(dim=0, correction=0).mean().item()}


@torch.no_grad()
def policy_value(critic: CriticEnsemble, policy: nn.Module, obs: torch.Tensor, num_samples: int, how: str,
                 coef: float) -> torch.Tensor:
    """``V^pi(s)`` ``(B,)``: the mean of ``Q_pess(s, a_k)`` over ``num_samples`` clipped chunks ``a_k ~ pi(s)``
    (sample ``k`` of state ``b`` is row ``b * K + k`` of the repeated batch)."""
    repeated = obs.repeat_interleave(num_samples, dim=0)
    q = pessimistic(critic(repeated, clip_action(policy.sample(repeated))), how, coef)
    return q.view(obs.shape[0], num_samples).mean(dim=1)


@torch.no_grad()
def advantages(critic: CriticEnsemble, policy: nn.Module, batch: dict[str, torch.Tensor], num_samples: int,
               how: str, coef: float) -> torch.Tensor:
    """``A = Q_pess(s, a_data) - V^pi(s)`` of every buffer chunk ``(B,)``."""
    q_data = pessimistic(critic(batch["obs"], clip_action(batch["action"])), how, coef)
    return q_data - policy_value(critic, policy, batch["obs"], num_samples, how, coef)


def intervention_chunks(batch: dict[str, torch.Tensor], horizon: int) -> torch.Tensor | None:
    """``(B,)`` bool: the first ``horizon`` steps of the chunk hold a flagged step that is real (not padding
    past the episode end, not after a terminal); None when the batch carries no intervention flags."""
    if INTERVENTION_KEY not in batch:
        return None
    real = ~batch["action_is_pad"][:, :horizon]
    if "valid" in batch:
        real = real & batch["valid"][:, :horizon]
    return (batch[INTERVENTION_KEY][:, :horizon].bool() & real).any(dim=1)


def advantage_weights(advantage: torch.Tensor, temperature: float, max_weight: float,
                      human: torch.Tensor | None = None, human_weight: float = 0.0) -> torch.Tensor:
    """``clip(exp(A / temperature), 0, max_weight)``, raised to at least ``human_weight`` where ``human``."""
    weight = torch.exp((advantage / temperature).clamp(max=math.log(max_weight)))
    if human is not None:
        weight = torch.where(human, weight.clamp_min(human_weight), weight)
    return weight


class ALOE(OfflineRL):
    """Chunked off-policy evaluation + advantage-weighted flow matching (see the module docstring)."""

    def __init__(self, policy: nn.Module, total_steps: int, *, name: str = "aloe", lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005, reward: str = "store", num_critics: int = 5,
                 critic_hidden_dims: tuple[int, ...] = (256, 256), layer_norm: bool = True,
                 pessimism: str = "min", pessimism_coef: float = 1.0, policy_samples: int = 4,
                 temperature: float = 1.0, max_weight: float = 20.0, interventions: bool = False,
                 intervention_weight: float = 1.0, ema_decay: float = 0.0, grad_clip: float = 0.0,
                 drop_truncated: bool = True) -> None:
        if not isinstance(policy, GenerativePolicy):
            raise ValueError(f"ALOE trains a generative head by weighted flow matching: use a flow or diffusion "
                             f"policy, got {type(policy).__name__}")
        if policy.action_steps != policy.horizon:
            raise ValueError(f"ALOE's chunk critic evaluates whole chunks executed open loop: set "
                             f"policy.action_steps=policy.horizon (got action_steps={policy.action_steps}, "
                             f"horizon={policy.horizon})")
        check_choice("algo.pessimism", pessimism, PESSIMISM)
        if num_critics < 2:
            raise ValueError(f"algo.num_critics must be at least 2 for a pessimistic ensemble, got {num_critics}")
        if pessimism_coef < 0:
            raise ValueError(f"algo.pessimism_coef must be >= 0, got {pessimism_coef}")
        if isinstance(policy_samples, bool) or not isinstance(policy_samples, int) or policy_samples < 1:
            raise ValueError(f"algo.policy_samples must be a positive integer, got {policy_samples!r}")
        if temperature <= 0:
            raise ValueError(f"algo.temperature must be > 0, got {temperature}")
        if max_weight <= 0:
            raise ValueError(f"algo.max_weight must be > 0, got {max_weight}")
        if intervention_weight < 0:
            raise ValueError(f"algo.intervention_weight must be >= 0, got {intervention_weight}")
        super().__init__(policy, total_steps, name=name, lr=lr, gamma=gamma, tau=tau, reward=reward,
                         critic_horizon=policy.horizon, ema_decay=ema_decay, grad_clip=grad_clip,
                         drop_truncated=drop_truncated)
        self.pessimism, self.pessimism_coef, self.policy_samples = pessimism, pessimism_coef, policy_samples
        self.temperature, self.max_weight = temperature, max_weight
        self.interventions, self.intervention_weight = interventions, intervention_weight
        self.critic = build_critic(policy, policy.horizon, num_critics, critic_hidden_dims, layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.nets = {"critic": self.critic, "critic_target": self.critic_target}
        self.optimizers = {"critic": self.adam(self.critic), "policy": self.adam(policy)}

    def window_options(self) -> dict:
        options = super().window_options()
        if self.interventions:
            options["step_keys"] = (INTERVENTION_KEY,)
        return options

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.policy.train()
        current = self.behaviour_policy()  # the policy being evaluated: what evaluation and deployment run
        loss, metrics = critic_loss(self.critic, self.critic_target, current, batch, self.pessimism,
                                    self.pessimism_coef, self.critic_weight(batch))
        self.step("critic", loss)
        advantage = advantages(self.critic, current, batch, self.policy_samples, self.pessimism,
                               self.pessimism_coef)
        human = intervention_chunks(batch, self.policy.horizon)
        weight = advantage_weights(advantage, self.temperature, self.max_weight, human, self.intervention_weight)
        actor_loss, actor_metrics = self.policy.loss({**self.policy_batch(batch), "sample_weight": weight})
        self.step("policy", actor_loss)
        polyak_update(self.critic_target, self.critic, self.tau)
        self.after_update()
        metrics.update(actor_metrics)
        metrics.update({"actor_loss": actor_loss.item(), "advantage": advantage.mean().item(),
                        "weight_mean": weight.mean().item(), "weight_max": weight.max().item()})
        if human is not None:
            metrics["human_chunks"] = human.float().mean().item()
        return {"loss": loss.item(), **metrics}
