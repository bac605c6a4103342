"""Episode-aware window sampler: observation history, action chunks and chunk-critic bookkeeping.

The data is diffusion_policy's layout: every per-step array concatenated over episodes on axis 0, and
``episode_ends`` the int64 cumulative end of each episode. Episode ``i`` covers the steps ``[s, e)`` with
``s = episode_ends[i-1]`` (0 for the first) and ``e = episode_ends[i]``.

A window is *anchored* at a step ``t`` of an episode (the "current" step, the newest observation):

- observation key ``k`` -> ``batch[k]`` of shape ``(B, To, ...)`` from steps ``t-To+1 .. t``; steps before
  ``s`` repeat step ``s`` and are flagged in ``obs_is_pad`` ``(B, To)``;
- the action chunk -> ``batch[action_key]`` ``(B, H, ...)`` from steps ``c .. c+H-1`` with
  ``c = t + latency_steps``; steps at or after ``e`` repeat step ``e-1`` and are flagged in
  ``action_is_pad`` ``(B, H)``. ``step_keys`` (e.g. ``intervention``) are gathered over the same steps.
- ``index`` ``(B,)`` is the global index of ``t``.

Anchors: every step ``t`` with ``t - (To-1) >= s - pad_before`` and ``c + H - 1 <= e - 1 + pad_after``.
The defaults ``pad_before = To-1`` and ``pad_after = H-1`` make every step an anchor when
``latency_steps = 0``; with latency the last ``latency_steps`` steps of an episode are not anchors, because
their whole action chunk would be padding. ``pad_before = 0, pad_after = 0`` keeps only windows that lie
entirely inside their episode.

Critic bookkeeping (``critic=True``), over the action chunk's steps ``c+h``, ``h < H``. Per-step data
flags are ``reward`` and, optionally, ``terminal`` (the episode truly ended after this step: no bootstrap
past it). A store without ``terminal`` has no true terminals, so every episode end is a time limit.

- ``valid`` ``(B, H)``: step ``c+h`` lies inside the episode and not after the first terminal at or after
  ``c`` (the terminal step itself is valid). ``n = valid.sum(1)`` is always at least 1.
- ``reward_sum`` ``(B,)``: ``sum_{h<n} gamma^h r_{c+h}``, the discounted in-chunk return over valid steps.
- ``terminal`` ``(B,)``: a true terminal lies inside the chunk; ``mask = ~terminal`` (bootstrap allowed).
- ``discount`` ``(B,)``: ``gamma**n``, the factor on the bootstrap value, so the chunk TD target is
  ``reward_sum + discount * mask * V(next)``; it equals ``gamma**H`` for full chunks.
- ``next_index`` ``(B,)``: ``min(t + n, e - 1)``, the anchor of the chunk that follows, with its
  observations in ``next_obs.<k>`` ``(B, To, ...)`` and ``next_obs_is_pad``. Full chunks tile: the next
  chunk starts right after this one.
- ``truncated`` ``(B,)``: the chunk ran into the episode end without a terminal (a time limit). The store
  holds no observation after the last step ``e-1``, so such a chunk bootstraps, with ``mask = 1`` and
  ``discount = gamma**n``, from the last stored state ``e-1``: an approximation of the missing ``s_e``
  (algorithms.md §0 lists the four quantities; QC instead drops these windows from the critic loss, which
  an algorithm can reproduce by weighting with ``~truncated``).

Chunk critics with partial chunks (DQC's ``h_a``) index ``valid[:, h_a - 1]``, the validity of the last
step of the partial chunk; the reference DQC code indexes it with ``h_a * |A| - 1`` instead, which JAX
clamps silently to the last step. robopol follows the intended ``h_a - 1``.

Goal relabelling (``goal_key`` set): per sample, with probabilities ``p_current / p_future / p_random``,
the goal is step ``t``, a future step of the same episode (uniform over ``[t, e)`` or geometric offsets
``t + Geom(1-gamma)`` clamped to ``e-1``), or a uniformly random step of any sampled episode.
``batch[goal_out_key]`` holds ``data[goal_key]`` at ``goal_index`` ``(B,)``; rewards are not relabelled,
an algorithm compares ``goal_index`` with the chunk's steps to decide success.

Everything is vectorised over the batch: the per-anchor tables are built once, a batch is a handful of
``np.take`` calls. Arrays keep their stored dtype; masks are bool and indices int64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopol.errors import CheckpointError, ConfigError, StoreError

_RESERVED = {
    "obs_is_pad",
    "action_is_pad",
    "index",
    "reward_sum",
    "valid",
    "terminal",
    "truncated",
    "mask",
    "discount",
    "next_index",
    "next_obs_is_pad",
    "goal_index",
}
_FUTURE_SAMPLING = ("uniform", "geometric")


@dataclass
class WindowConfig:
    """Which windows a :class:`WindowSampler` cuts out of the episodes (see the module docstring)."""

    obs_keys: tuple[str, ...]
    """Data keys returned as observation history, each ``(B, To, ...)``."""
    action_key: str = "action"
    """Data key of the action; returned as the chunk ``(B, H, ...)``."""
    obs_steps: int = 2
    """To: number of observation steps, ending at the anchor step."""
    horizon: int = 16
    """H: number of actions in the chunk."""
    latency_steps: int = 0
    """The action chunk starts this many steps after the anchor (covers a known actuation delay)."""
    pad_before: int | None = None
    """How many history steps may lie before the episode start; None means obs_steps-1 (every step)."""
    pad_after: int | None = None
    """How many chunk steps may lie past the episode end (0..horizon-1); None means horizon-1."""
    step_keys: tuple[str, ...] = ()
    """Extra per-step keys gathered over the action chunk like the action (e.g. 'intervention')."""
    critic: bool = False
    """Also return chunk-critic fields: reward_sum, valid, terminal, truncated, mask, discount, next_*."""
    gamma: float = 0.99
    """Discount for reward_sum, discount and geometric goal sampling."""
    reward_key: str = "reward"
    """Data key of the per-step reward (needed when critic=True)."""
    terminal_key: str = "terminal"
    """Data key of the per-step true-terminal flag; optional (absent: no terminals)."""
    goal_key: str | None = None
    """Data key goals are taken from (e.g. the achieved position); None disables goal relabelling."""
    goal_out_key: str = "goal"
    """Batch key the relabelled goal is written to."""
    p_current: float = 0.0
    """Probability that the goal is the anchor step itself."""
    p_future: float = 1.0
    """Probability that the goal is a future step of the same episode."""
    p_random: float = 0.0
    """Probability that the goal is a random step of any sampled episode."""
    future_sampling: str = "uniform"
    """Future goals: 'uniform' over [t, episode end) or 'geometric' offsets Geom(1-gamma) (OGBench style)."""

    def __post_init__(self) -> None:
        if isinstance(self.obs_keys, str):
            self.obs_keys = (self.obs_keys,)
        self.obs_keys = tuple(self.obs_keys)
        self.step_keys = tuple(self.step_keys)
        for name in ("obs_steps", "horizon"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"WindowConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.latency_steps < 0:
            raise ConfigError(f"WindowConfig.latency_steps must be >= 0, got {self.latency_steps}")
        if self.pad_before is not None and self.pad_before < 0:
            raise ConfigError(f"WindowConfig.pad_before must be >= 0 or None, got {self.pad_before}")
        if self.pad_after is not None and not 0 <= self.pad_after <= self.horizon - 1:
            raise ConfigError(
                f"WindowConfig.pad_after must be in [0, horizon-1={self.horizon - 1}] or None, got "
                f"{self.pad_after}: a larger value would allow chunks made only of padding"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"WindowConfig.gamma must be in (0, 1], got {self.gamma}")
        if not self.obs_keys:
            raise ConfigError("WindowConfig.obs_keys is empty: name at least one observation key")
        out_keys = [*self.obs_keys, self.action_key, *self.step_keys]
        if self.goal_key is not None:
            out_keys.append(self.goal_out_key)
        clash = sorted({k for k in out_keys if k in _RESERVED or out_keys.count(k) > 1})
        if clash:
            raise ConfigError(
                f"WindowConfig: batch key(s) {clash} are used twice or collide with the sampler's own fields "
                f"{sorted(_RESERVED)}; rename them in obs_keys/action_key/step_keys/goal_out_key"
            )
        if self.goal_key is not None:
            probs = (self.p_current, self.p_future, self.p_random)
            if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
                raise ConfigError(
                    f"WindowConfig goal probabilities p_current={self.p_current}, p_future={self.p_future}, "
                    f"p_random={self.p_random} must be >= 0 and sum to 1"
                )
            if self.future_sampling not in _FUTURE_SAMPLING:
                raise ConfigError(
                    f"WindowConfig.future_sampling is '{self.future_sampling}', expected one of {_FUTURE_SAMPLING}"
                )
            if self.future_sampling == "geometric" and self.gamma >= 1.0:
                raise ConfigError(
                    "WindowConfig.future_sampling='geometric' needs gamma < 1 (offsets ~ Geom(1-gamma))"
                )

    @property
    def resolved_pad_before(self) -> int:
        """pad_before with its default applied, capped at obs_steps-1 (more would add nothing)."""
        pad = self.obs_steps - 1 if self.pad_before is None else self.pad_before
        return min(pad, self.obs_steps - 1)

    @property
    def resolved_pad_after(self) -> int:
        """pad_after with its default applied."""
        return self.horizon - 1 if self.pad_after is None else self.pad_after


def split_episodes(n_episodes: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split episode ids into sorted (train, val) int64 arrays, deterministic in ``seed``.

    ``round(n_episodes * val_fraction)`` episodes (at least one when the fraction is positive) go to
    validation, but at least one episode always stays in training.
    """
    if n_episodes < 1:
        raise StoreError(f"cannot split {n_episodes} episodes: the store has no episodes; record some first")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must be in [0, 1) so that some episodes remain for training, got {val_fraction}"
        )
    n_val = 0 if val_fraction == 0 else max(1, round(n_episodes * val_fraction))
    n_val = min(n_val, n_episodes - 1)
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def _length(arr: Any) -> int:
    shape = getattr(arr, "shape", None)
    return int(shape[0]) if shape else len(arr)


def _take(arr: Any, idx: np.ndarray) -> np.ndarray:
    """Rows ``arr[idx]`` for any index shape; reads lazy arrays (zarr, h5py) once per distinct row."""
    if isinstance(arr, np.ndarray):
        return np.take(arr, idx, axis=0)
    uniq, inverse = np.unique(idx, return_inverse=True)
    reader = getattr(arr, "oindex", arr)  # zarr wants orthogonal indexing for integer arrays
    rows = np.asarray(reader[uniq])
    return np.take(rows, inverse.reshape(idx.shape), axis=0)


class WindowSampler:
    """Vectorised window sampler over the episodes ``episodes`` (default: all) of one store.

    ``data`` values may be numpy arrays (fastest) or lazy arrays with ``shape`` and integer-array indexing
    (zarr, h5py), which are read batch by batch. Reward and terminal flags are always read into RAM.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        episode_ends: np.ndarray,
        config: WindowConfig,
        episodes: Sequence[int] | np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config
        cfg = config
        ends = np.asarray(episode_ends)
        if ends.ndim != 1 or ends.size == 0 or not np.issubdtype(ends.dtype, np.integer):
            raise StoreError(
                f"episode_ends must be a non-empty 1-D integer array of cumulative episode ends, got "
                f"shape {ends.shape} dtype {ends.dtype}"
            )
        ends = ends.astype(np.int64)
        if ends[0] < 0 or np.any(np.diff(ends) < 0):
            raise StoreError(f"episode_ends must be non-decreasing and >= 0, got {ends[:8].tolist()}...")
        n_steps = int(ends[-1])
        starts = np.concatenate([[0], ends[:-1]])

        needed = [*cfg.obs_keys, cfg.action_key, *cfg.step_keys]
        if cfg.critic:
            needed.append(cfg.reward_key)
        if cfg.goal_key is not None:
            needed.append(cfg.goal_key)
        missing = [k for k in dict.fromkeys(needed) if k not in data]
        if missing:
            raise StoreError(
                f"data has no key(s) {missing} needed by the window config (data keys: {sorted(data)}); "
                "fix WindowConfig or convert the store so that it has them"
            )
        lengths = {k: _length(data[k]) for k in dict.fromkeys(needed)}
        if cfg.critic and cfg.terminal_key in data:
            lengths[cfg.terminal_key] = _length(data[cfg.terminal_key])
        bad = {k: n for k, n in lengths.items() if n != n_steps}
        if bad:
            raise StoreError(
                f"data key(s) {bad} have a length other than episode_ends[-1] = {n_steps}; the store is "
                "inconsistent (run `robopol data validate`)"
            )
        self._data = {
            k: v if isinstance(v, np.ndarray) or hasattr(v, "shape") else np.asarray(v)
            for k, v in ((k, data[k]) for k in dict.fromkeys([*cfg.obs_keys, cfg.action_key, *cfg.step_keys]))
        }

        if episodes is None:
            ep_ids = np.arange(ends.size, dtype=np.int64)
        else:
            ep_ids = np.asarray(episodes, dtype=np.int64).reshape(-1)
            if ep_ids.size == 0 or ep_ids.min() < 0 or ep_ids.max() >= ends.size:
                raise StoreError(
                    f"episodes must be a non-empty list of ids in [0, {ends.size}), got {ep_ids[:8].tolist()}"
                )
            if np.unique(ep_ids).size != ep_ids.size:
                raise StoreError("episodes contains repeated ids; pass each episode id once")
        self.episodes = ep_ids
        self.n_steps = n_steps
        ep_start, ep_end = starts[ep_ids], ends[ep_ids]

        # Anchor range per episode: [s + (To-1) - pad_before, e - 1 - latency + pad_after - (H-1)].
        first = ep_start + (cfg.obs_steps - 1) - cfg.resolved_pad_before
        last = ep_end - 1 - cfg.latency_steps + cfg.resolved_pad_after - (cfg.horizon - 1)
        counts = np.maximum(last - first + 1, 0)
        if counts.sum() == 0:
            raise StoreError(
                f"no window fits in the {ep_ids.size} selected episode(s) (longest has "
                f"{int((ep_end - ep_start).max())} steps) with obs_steps={cfg.obs_steps}, horizon={cfg.horizon}, "
                f"latency_steps={cfg.latency_steps}, pad_before={cfg.resolved_pad_before}, "
                f"pad_after={cfg.resolved_pad_after}; allow padding or use shorter windows"
            )
        # Per anchor: global step t and its episode's [s, e-1]; built once, gathered per batch.
        owner = np.repeat(np.arange(ep_ids.size), counts)
        offset_in_ep = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
        self._anchor = first[owner] + offset_in_ep
        self._lo = ep_start[owner]
        self._hi = ep_end[owner] - 1
        self._obs_off = np.arange(-(cfg.obs_steps - 1), 1, dtype=np.int64)
        self._act_off = np.arange(cfg.horizon, dtype=np.int64) + cfg.latency_steps

        if cfg.critic:
            self._init_critic(data, ends)
        if cfg.goal_key is not None:
            goal = data[cfg.goal_key]
            self._goal = goal if isinstance(goal, np.ndarray) else np.asarray(goal)
            self._goal_cum = np.cumsum(ep_end - ep_start)
            self._goal_before = self._goal_cum - (ep_end - ep_start)
            self._goal_start = ep_start
            self._goal_total = int(self._goal_cum[-1])

        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._epoch = 0
        self._cursor = 0

    def _init_critic(self, data: Mapping[str, Any], ends: np.ndarray) -> None:
        cfg = self.config
        reward = np.asarray(data[cfg.reward_key])
        if reward.ndim == 2 and reward.shape[1] == 1:
            reward = reward[:, 0]
        if reward.ndim != 1:
            raise StoreError(
                f"data['{cfg.reward_key}'] must have shape ({self.n_steps},) or ({self.n_steps}, 1), got "
                f"{reward.shape}"
            )
        if not np.issubdtype(reward.dtype, np.floating):
            reward = reward.astype(np.float32)
        self._reward = reward
        ep_of_step = np.repeat(np.arange(ends.size), np.diff(np.concatenate([[0], ends])))
        step_end = ends[ep_of_step]
        # stop[i]: one past the first terminal at or after step i in its episode, else the episode end.
        stop = step_end.copy()
        stop_is_terminal = np.zeros(self.n_steps, dtype=bool)
        if cfg.terminal_key in data:
            term = np.asarray(data[cfg.terminal_key]).reshape(self.n_steps, -1).any(axis=1)
            term_pos = np.flatnonzero(term)
            if term_pos.size:
                k = np.searchsorted(term_pos, np.arange(self.n_steps), side="left")
                has_next = k < term_pos.size
                nxt = term_pos[np.minimum(k, term_pos.size - 1)] + 1
                use = has_next & (nxt <= step_end)
                stop[use] = nxt[use]
                stop_is_terminal = use
        self._stop = stop
        self._stop_is_terminal = stop_is_terminal
        self._chunk_pos = np.arange(cfg.horizon, dtype=np.int64)
        self._gamma_pow = cfg.gamma ** np.arange(cfg.horizon + 1, dtype=np.float64)
        self._gamma_pow_r = self._gamma_pow[: cfg.horizon].astype(reward.dtype)
        self._gamma_pow_d = self._gamma_pow.astype(reward.dtype)

    def __len__(self) -> int:
        """Number of anchors (windows in one epoch)."""
        return int(self._anchor.size)

    @property
    def anchors(self) -> np.ndarray:
        """Global step index of every anchor, in epoch order before shuffling."""
        return self._anchor

    def sample(self, batch_size: int, rank: int = 0, world_size: int = 1) -> dict[str, np.ndarray]:
        """A batch of ``batch_size`` windows drawn uniformly (with replacement) over all anchors.

        Data-parallel ranks (``world_size > 1``) share one seed: each draws the same global batch of
        ``batch_size * world_size`` anchors and cuts out its own disjoint ``rank``-th slice, so N ranks x
        batch B see exactly the windows of one process with batch N x B, and the sampler state stays equal
        on every rank (rank 0's checkpoint resumes all of them)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        positions = self._rng.integers(0, self._anchor.size, size=batch_size * world_size)
        return self.windows(positions[rank * batch_size:(rank + 1) * batch_size])

    def windows(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The windows at anchor positions ``positions`` (``0 <= p < len(self)``), one batch row each."""
        cfg = self.config
        pos = np.asarray(positions, dtype=np.int64)
        t = np.take(self._anchor, pos)
        lo = np.take(self._lo, pos)[:, None]
        hi = np.take(self._hi, pos)[:, None]
        batch: dict[str, np.ndarray] = {}

        # History only reaches backwards and chunks only forwards, so one clamp each suffices.
        raw_obs = t[:, None] + self._obs_off
        obs_idx = np.maximum(raw_obs, lo)
        for key in cfg.obs_keys:
            batch[key] = _take(self._data[key], obs_idx)
        batch["obs_is_pad"] = obs_idx != raw_obs
        raw_act = t[:, None] + self._act_off
        act_idx = np.minimum(raw_act, hi)
        batch[cfg.action_key] = _take(self._data[cfg.action_key], act_idx)
        batch["action_is_pad"] = act_idx != raw_act
        for key in cfg.step_keys:
            batch[key] = _take(self._data[key], act_idx)
        batch["index"] = t

        if cfg.critic:
            self._critic_fields(batch, t, lo, hi, act_idx)
        if cfg.goal_key is not None:
            self._goal_fields(batch, t, hi[:, 0])
        return batch

    def _critic_fields(
        self, batch: dict[str, np.ndarray], t: np.ndarray, lo: np.ndarray, hi: np.ndarray, act_idx: np.ndarray
    ) -> None:
        cfg = self.config
        chunk_start = t + cfg.latency_steps
        span = np.take(self._stop, chunk_start) - chunk_start  # >= 1: the chunk starts inside the episode
        n = np.minimum(span, cfg.horizon)
        valid = self._chunk_pos < n[:, None]
        terminal = np.take(self._stop_is_terminal, chunk_start) & (span <= cfg.horizon)
        rewards = np.take(self._reward, act_idx)
        rewards *= valid
        batch["reward_sum"] = rewards @ self._gamma_pow_r
        batch["valid"] = valid
        batch["terminal"] = terminal
        batch["truncated"] = ~terminal & (chunk_start + n > hi[:, 0])
        batch["mask"] = ~terminal
        batch["discount"] = np.take(self._gamma_pow_d, n)
        next_t = np.minimum(t + n, hi[:, 0])
        batch["next_index"] = next_t
        raw_next = next_t[:, None] + self._obs_off
        next_idx = np.maximum(raw_next, lo)
        for key in cfg.obs_keys:
            batch[f"next_obs.{key}"] = _take(self._data[key], next_idx)
        batch["next_obs_is_pad"] = next_idx != raw_next

    def _goal_fields(self, batch: dict[str, np.ndarray], t: np.ndarray, hi: np.ndarray) -> None:
        cfg = self.config
        b = t.size
        u = self._rng.random(b)
        if cfg.future_sampling == "uniform":
            future = t + (self._rng.random(b) * (hi - t + 1)).astype(np.int64)
        else:
            future = t + self._rng.geometric(1.0 - cfg.gamma, size=b)
        future = np.minimum(future, hi)
        r = self._rng.integers(0, self._goal_total, size=b)
        ep = np.searchsorted(self._goal_cum, r, side="right")
        # r counts steps over the sampled episodes; subtract the steps of the episodes before ep.
        random_goal = self._goal_start[ep] + (r - self._goal_before[ep])
        goal_index = np.where(
            u < cfg.p_current, t, np.where(u < cfg.p_current + cfg.p_future, future, random_goal)
        )
        batch["goal_index"] = goal_index
        batch[cfg.goal_out_key] = np.take(self._goal, goal_index, axis=0)

    def iter_epoch(self, batch_size: int, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Batches that visit every anchor once, in a permutation fixed by (seed, epoch).

        Progress is kept on the sampler, so :meth:`state_dict` taken between batches resumes with exactly
        the batches an uninterrupted run would produce next.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        perm = np.random.default_rng([self.seed, self._epoch]).permutation(self._anchor.size)
        while self._cursor < perm.size:
            pos = perm[self._cursor : self._cursor + batch_size]
            if drop_last and pos.size < batch_size:
                break
            self._cursor += pos.size
            yield self.windows(pos)
        self._epoch += 1
        self._cursor = 0

    @property
    def epoch(self) -> int:
        """Number of completed epochs of :meth:`iter_epoch`."""
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact same sequence of batches (JSON-able)."""
        return {
            "seed": self.seed,
            "epoch": self._epoch,
            "cursor": self._cursor,
            "n_anchors": int(self._anchor.size),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the sampler must be built over the same episodes and config."""
        if int(state["n_anchors"]) != self._anchor.size:
            raise CheckpointError(
                f"sampler state is for {state['n_anchors']} windows but this sampler has {self._anchor.size}: "
                "resume with the same store, episode split and window config"
            )
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._cursor = int(state["cursor"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
