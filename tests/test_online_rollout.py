"""The on-policy loop's rollout collection (robopol.train.online.collect_rollout): one action per decision
and open-loop chunks, with rewards summed up to the chunk's or the episode's end (the rest of the chunk is
not executed), next values from the last observation on time-outs and 0 on terminals, ended envs restarted
at the next decision, and the episode tracker counting every env step taken."""

from __future__ import annotations

import numpy as np
import torch

from robopol.envs import ArraySpec, EnvSpec, StepResult
from robopol.train.online import EpisodeTracker, collect_rollout, policy_normalizer


class CountingEnv:
    """Two envs whose observation is the step count in the episode; reward 1 per step. Env 0 terminates at
    its 3rd step, env 1 times out at its 4th. Without auto-reset an ended env waits (is not stepped) until
    ``reset_done``."""

    num_envs = 2
    spec = EnvSpec("counting", {"t": ArraySpec((1,))}, ArraySpec((1,), low=(-1.0,), high=(1.0,)), 4)

    def __init__(self) -> None:
        self.t = np.zeros(2)
        self.done = np.zeros(2, dtype=bool)
        self.actions: list[np.ndarray] = []

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self.t[:] = 0
        self.done[:] = False
        return {"t": self.t[:, None].copy()}

    def reset_done(self) -> dict[str, np.ndarray]:
        self.t[self.done] = 0
        self.done[:] = False
        return {"t": self.t[:, None].copy()}

    def step(self, actions: np.ndarray) -> StepResult:
        self.actions.append(np.where(self.done[:, None], np.nan, actions))  # NaN: not stepped
        self.t += ~self.done
        terminated = np.array([self.t[0] == 3, False])
        truncated = np.array([False, self.t[1] == 4])
        reward = np.where(self.done, 0.0, 1.0)
        self.done |= terminated | truncated
        return StepResult({"t": self.t[:, None].copy()}, reward, terminated, truncated, terminated)


class ChunkAlgo:
    """Acts with a fixed chunk of ``steps`` actions; the value of an observation is 10 + its step count."""

    rollout_steps = 3

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.obs_norm = False

    def normalize_obs(self, raw: torch.Tensor, update: bool = False) -> torch.Tensor:
        return raw.float()

    def act(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        action = torch.linspace(-0.5, 0.5, self.steps)[None, :, None].expand(2, -1, -1)
        return {"action": action if self.steps > 1 else action[:, 0], "value": self.value(obs)}

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return 10 + obs[:, 0].float()

    def scale_rewards(self, rewards: torch.Tensor, episode_end: torch.Tensor) -> torch.Tensor:
        return rewards


def rollout(steps: int):
    env, algo, tracker = CountingEnv(), ChunkAlgo(steps), EpisodeTracker(2)
    normalizer = policy_normalizer(algo, env.spec, ["t"])
    data, _ = collect_rollout(env, algo, env.reset(), ["t"], normalizer, tracker)
    return data, env, tracker


def test_one_action_per_decision():
    data, env, tracker = rollout(1)
    assert data["reward"].tolist() == [[1, 1], [1, 1], [1, 1]]
    assert data["episode_end"].tolist() == [[False, False], [False, False], [True, False]]
    assert data["next_value"].tolist() == [[11, 11], [12, 12], [0, 13]]  # env 0 terminated at step 3
    assert len(env.actions) == 3


def test_chunks_sum_rewards_until_the_episode_ends():
    data, env, tracker = rollout(2)  # decisions of 2 steps: env 0 ends at step 3, env 1 times out at step 4
    np.testing.assert_allclose(env.actions[1][:, 0], [0.5, 0.5])  # the chunk's second action, executed
    assert data["reward"].tolist() == [[2, 2], [1, 2], [2, 2]]  # env 0's 2nd chunk: the terminal cut it at 1
    assert np.isnan(env.actions[3][0, 0])  # ... and the rest of that chunk was not executed
    assert data["episode_end"].tolist() == [[False, False], [True, True], [False, False]]
    # terminals value 0; env 1's time-out values its last observation (t = 4)
    assert data["next_value"].tolist() == [[12, 12], [0, 14], [12, 12]]
    assert data["obs"][2].tolist() == [[0.0], [0.0]]  # both start their next episode at the next decision
    assert tracker.drain()["episode_length"] == 3.5  # episodes of 3 and 4 env steps
