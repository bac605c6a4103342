"""Shared test doubles for the on-policy algorithm tests."""

from __future__ import annotations

import torch


def bandit_rollout(algo, steps: int = 8) -> dict[str, torch.Tensor]:
    """A ``(steps, num_envs)`` rollout of a contextual bandit from ``algo.act``: obs s ~ U[-1, 1]^2, reward
    -(a - s_0)^2, and every step ends an episode (next value 0)."""
    rows = []
    for _ in range(steps):
        obs = torch.rand(algo.num_envs, 2) * 2 - 1
        out = algo.act(obs)
        reward = -(out["action"][:, 0].clamp(-1, 1) - obs[:, 0]).pow(2)
        rows.append({"obs": obs, **out, "reward": reward, "next_value": torch.zeros(algo.num_envs),
                     "episode_end": torch.ones(algo.num_envs, dtype=torch.bool)})
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
