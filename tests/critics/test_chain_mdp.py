"""A chunk critic learns the known optimal chunk values of a tiny deterministic chain.

States 0..5 on a line; action +1 moves right, -1 moves left (state 0 stays put). Reaching state 5 pays reward
1 and ends the episode with a true terminal. With discount g, the optimal value of state s is
V*(s) = g^(4 - s) (the goal is 5 - s steps away and its reward arrives on the last of them), so the optimal
2-step chunk value is

    Q*(s, (a1, a2)) = 1                    if a1 reaches the goal (s = 4, a1 = +1),
                    = g                    if a2 reaches it,
                    = g^2 * V*(s2) = g^(6 - s2)   otherwise, s2 the state after both actions.

Random episodes (both actions everywhere, time limits) go through a real EpisodeStore and WindowSampler; the
critic is trained by policy evaluation of the optimal policy with QC's chunk TD loss (next chunks (+1, +1)),
which converges to Q*.
"""

from __future__ import annotations

import copy
import uuid

import numpy as np
import torch

from robopol.algos.qc import critic_loss
from robopol.critics import CriticEnsemble, polyak_update
from robopol.data.sampler import WindowConfig, WindowSampler
from robopol.data.store import EpisodeStore

GOAL = 5
GAMMA = 0.9
H = 2


def step(state: int, action: float) -> int:
    return min(GOAL, state + 1) if action > 0 else max(0, state - 1)


def optimal_q(state: int, chunk: tuple[float, float]) -> float:
    s1 = step(state, chunk[0])
    if s1 == GOAL:
        return 1.0
    s2 = step(s1, chunk[1])
    if s2 == GOAL:
        return GAMMA
    return GAMMA ** (6 - s2)


def one_hot(states: list[int]) -> np.ndarray:
    return np.eye(GOAL + 1, dtype=np.float32)[states]


def chain_store(episodes: int, seed: int) -> EpisodeStore:
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(f"memory://robopol-chain-{uuid.uuid4().hex}/s.zarr")
    obs, actions, rewards, terminals, ends = [], [], [], [], []
    for _ in range(episodes):
        state = int(rng.integers(0, GOAL))
        for _t in range(12):  # time limit
            action = 1.0 if rng.random() < 0.6 else -1.0
            nxt = step(state, action)
            obs.append(state)
            actions.append(action)
            rewards.append(1.0 if nxt == GOAL else 0.0)
            terminals.append(nxt == GOAL)
            state = nxt
            if nxt == GOAL:
                break
        ends.append(len(obs))
    store.add_episodes({"obs": one_hot(obs), "action": np.array(actions, dtype=np.float32)[:, None],
                        "reward": np.array(rewards, dtype=np.float32), "terminal": np.array(terminals)},
                       ends)
    return store


def test_chunk_td_converges_to_the_closed_form_optimal_chunk_values():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = chain_store(episodes=300, seed=0)
        assert store.load(["terminal"])["terminal"].sum() > 100  # many episodes reach the goal
        sampler = WindowSampler(store.load(), store.episode_ends,
                                WindowConfig(obs_keys=("obs",), obs_steps=1, horizon=H, critic=True,
                                             gamma=GAMMA), seed=0)
        critic = CriticEnsemble(GOAL + 1, 1, 1, H, num_critics=2, hidden_dims=(64, 64))
        target = copy.deepcopy(critic).requires_grad_(False)
        opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
        for _ in range(600):
            w = sampler.sample(256)
            batch = {"obs": torch.as_tensor(w["obs"]), "action": torch.as_tensor(w["action"]),
                     "next_obs": torch.as_tensor(w["next_obs.obs"]),
                     **{k: torch.as_tensor(w[k]) for k in ("reward_sum", "discount", "mask")}}
            optimal_next = torch.ones(256, H, 1)  # the optimal policy's next chunk: right, right
            loss, _ = critic_loss(critic, target, batch, optimal_next, "mean",
                                  (~torch.as_tensor(w["truncated"])).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            polyak_update(target, critic, 0.05)

        chunks = [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)]
        states = [s for s in range(GOAL) for _ in chunks]
        with torch.no_grad():
            q = critic(torch.as_tensor(one_hot(states))[:, None],
                       torch.tensor([c for _ in range(GOAL) for c in chunks])[..., None]).mean(0)
        expected = torch.tensor([optimal_q(s, c) for s in range(GOAL) for c in chunks])
        # the optimal chunk (+1, +1) is worth g^(4 - s): 0.6561, 0.729, 0.81, 0.9, 1
        torch.testing.assert_close(expected[::4], torch.tensor([GAMMA ** (4 - s) for s in range(GOAL)]))
        errors = (q - expected).abs().view(GOAL, len(chunks))
        # (4, (+1, -1)) never occurs in the data: a chunk that hits the terminal at its first step is padded
        # with that step's action, so state 4's data chunks starting with +1 are all (+1, +1)
        errors[4, 1] = 0.0
        assert errors.max() < 0.05, errors
        # and the critic ranks the optimal chunk first wherever it is strictly best
        best = q.view(GOAL, len(chunks)).argmax(1)
        assert best[:3].tolist() == [0, 0, 0], q.view(GOAL, len(chunks))
    finally:
        torch.set_num_threads(threads)
