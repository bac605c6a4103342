"""Inference runtime: turns a policy plus its normalizer into an actor over raw observation dicts.

The actor keeps the observation history per env, asks the policy for a normalised chunk ``(B, H, A)``,
clips it to the normaliser's bounds, maps it back to raw action units and executes the first ``Ta`` steps
open loop before planning again. The same actor drives simulation evaluation and (later) the robot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robopol import distributed
from robopol.checkpoint import Checkpoint, load_checkpoint
from robopol.data.normalize import Normalizer
from robopol.data.store import EpisodeStore
from robopol.distributed import Dist
from robopol.envs import BatchedEnv, EnvSpec, SimulatorEnv
from robopol.errors import CheckpointError, ConfigError
from robopol.nets.embeddings import enable_level_cache
from robopol.schemas import RTIConfig
from robopol.video import write_mp4


def obs_features(obs: dict[str, torch.Tensor], keys: Sequence[str], normalizer: Normalizer) -> torch.Tensor:
    """Normalise each observation key and concatenate them on the last axis: ``(B, To, D)``."""
    parts = [normalizer.normalize(k, obs[k]).flatten(2) for k in keys]
    return torch.cat(parts, dim=-1)


EXECUTIONS = ("receding", "ensemble")


class ChunkActor:
    """Turns chunk predictions into one action per step.

    ``receding``: plan a chunk, execute its first ``action_steps`` actions open loop, plan again.
    ``ensemble`` (ACT's temporal ensembling): plan every step and execute, for the current step, the
    average of every still-valid chunk's prediction for it, weighted ``exp(-decay * i)`` with ``i = 0`` for
    the oldest chunk, so older commitments dominate and actions change smoothly.
    ``sampler="rti"`` (RTI-DP, receding only): the first call after a reset runs the policy's full sampler;
    each later call shifts the previous clean chunk by the executed steps (repeating its last action), enters
    the reverse process with it at ``rti.noise_level`` and runs only ``rti.steps`` steps, then executes
    ``rti.action_steps`` actions (1: fully closed loop).

    Action dims the policy declares discrete (``policy.discrete_dims``, or ``rti.discrete_dims``) are
    binarised to the normaliser's bounds at execution. The actor counts network function evaluations
    (``nfe``), executed steps (``steps``) and the wall time of every planning call (``latencies``).
    """

    def __init__(
        self,
        policy: nn.Module,
        normalizer: Normalizer,
        obs_keys: Sequence[str],
        action_key: str = "action",
        device: str | torch.device = "cpu",
        execution: str = "receding",
        ensemble_decay: float = 0.01,
        sampler: str | None = None,
        steps: int | None = None,
        rti: RTIConfig | None = None,
        seed: int | None = None,
    ) -> None:
        """``seed`` gives sampling its own generator, so an evaluation draws the same noise every run; None
        uses torch's global RNG (the trainer's, which exact resume restores)."""
        if execution not in EXECUTIONS:
            raise ConfigError(f"execution must be one of {', '.join(EXECUTIONS)}, got '{execution}'")
        self.policy = policy.eval()
        enable_level_cache(policy)
        self.normalizer = normalizer
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.device = torch.device(device)
        self.obs_steps = policy.obs_steps
        self.horizon = policy.horizon
        self.action_steps = policy.action_steps
        self.execution = execution
        self.ensemble_decay = ensemble_decay
        self.rti = (rti or RTIConfig()) if sampler == "rti" else None
        if self.rti is not None:
            self._check_rti(self.rti)
            self.action_steps = self.rti.action_steps
            sampler = None  # the first call of an episode runs the policy's own full chain
        self.discrete_dims = sorted({*getattr(policy, "discrete_dims", ()),
                                     *(self.rti.discrete_dims if self.rti is not None else ())})
        # Only generative heads take a sampler; pass the choice through only when one was made.
        self._sample_kwargs = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v}
        if seed is not None:
            self._sample_kwargs["generator"] = torch.Generator(self.device).manual_seed(seed)
        self.plans = 0
        self.nfe = 0
        self.steps = 0
        self.latencies: list[float] = []
        self.chunk_latencies: list[float] = []
        self.reset()

    def _check_rti(self, rti: RTIConfig) -> None:
        if self.execution != "receding":
            raise ConfigError("sampler=rti executes chunks receding-horizon; drop execution=ensemble")
        if not hasattr(self.policy, "refine"):
            raise ConfigError(f"sampler=rti needs a diffusion or flow policy, got {type(self.policy).__name__}")
        if not 1 <= rti.action_steps <= self.horizon:
            raise ConfigError(f"rti.action_steps must be in [1, horizon={self.horizon}], got {rti.action_steps}")
        if not 0.0 < rti.noise_level <= 1.0 or rti.steps < 1 or rti.clip_factor < 1.0:
            raise ConfigError(f"rti.noise_level must be in (0, 1], rti.steps >= 1 and rti.clip_factor >= 1, got "
                              f"{rti.noise_level}, {rti.steps} and {rti.clip_factor}")

    def reset(self) -> None:
        """Forget the observation history and pending chunks (episode start, or a human took over)."""
        self._history: list[dict[str, np.ndarray]] = []
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step the chunk was planned at, raw chunk)
        self._t = 0
        self.reset_warm_start()

    def reseed(self, seed: int) -> None:
        """Restart the sampling noise of an actor made with ``seed`` (no effect on one using torch's RNG)."""
        if "generator" in self._sample_kwargs:
            self._sample_kwargs["generator"].manual_seed(seed)

    def reset_warm_start(self) -> None:
        """Make the next RTI call run the full chain again (e.g. after an external correction)."""
        self._guess: torch.Tensor | None = None  # last clean chunk, normalised, before clipping

    @property
    def nfe_per_action(self) -> float:
        """Network function evaluations per executed action (per step of the env batch)."""
        return self.nfe / max(self.steps, 1)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add one control step's raw observations (leading env axis) to the history the policy sees."""
        self._history.append({k: np.asarray(obs[k]) for k in self.obs_keys})
        if not self._history[:-1]:  # first step: pad the history by repeating it, as in training
            self._history = self._history * self.obs_steps
        self._history = self._history[-self.obs_steps:]

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Raw observations of the current step (leading env axis) -> raw actions ``(N, A)``."""
        self.observe(obs)
        t = self._t
        self._t += 1
        self.steps += 1
        if self.execution == "receding":
            if not self._chunks or t - self._chunks[-1][0] >= self.action_steps:
                self._chunks = [(t, self.plan())]
            start, chunk = self._chunks[-1]
            return chunk[:, t - start]
        self._chunks = [(s, c) for s, c in self._chunks if t - s < self.horizon] + [(t, self.plan())]
        weights = np.exp(-self.ensemble_decay * np.arange(len(self._chunks)))
        actions = np.stack([c[:, t - s] for s, c in self._chunks])
        return np.tensordot(weights / weights.sum(), actions, axes=1).astype(actions.dtype)

    @torch.no_grad()
    def plan(self, shift: int | None = None) -> np.ndarray:
        """Plan a whole chunk ``(N, H, A)`` (raw) from the history now. ``act`` calls it on its schedule; the
        deploy loop observes every control step and plans on its own, passing ``shift``: the control steps
        since the previous plan, how far an RTI warm start moves (default ``action_steps``; a shift past the
        horizon runs the full chain)."""
        started = time.perf_counter()
        self.plans += 1
        stacked = {
            k: torch.as_tensor(np.stack([h[k] for h in self._history], axis=1), device=self.device)
            for k in self.obs_keys
        }
        obs = obs_features(stacked, self.obs_keys, self.normalizer)
        # a policy made of several networks (DPPO's frozen and fine-tuned ones) lists them as ``nets``
        with count_calls(*getattr(self.policy, "nets", [getattr(self.policy, "net", self.policy)])) as calls:
            chunk_started = time.perf_counter()
            chunk = self.sample_chunk(obs, self.action_steps if shift is None else shift)
            self.chunk_latencies.append(time.perf_counter() - chunk_started)
        self.nfe += calls[0]
        if self.discrete_dims:
            chunk = chunk.clone()
            chunk[..., self.discrete_dims] = binarize(chunk[..., self.discrete_dims])
        low, high = self.normalizer.bounds(self.action_key, like=chunk)
        chunk = torch.clamp(chunk, low, high)
        raw = self.normalizer.unnormalize(self.action_key, chunk).cpu().numpy()
        self.latencies.append(time.perf_counter() - started)
        return raw

    def sample_chunk(self, obs: torch.Tensor, shift: int) -> torch.Tensor:
        """Normalised observation features ``(N, To, D)`` -> normalised chunk ``(N, H, A)``: the RTI warm start
        from the previous chunk moved ``shift`` steps when one is due, else the full sampler. Counts nothing
        (``plan`` does); benchmarks call it to time sampling alone."""
        if self.rti is not None and self._guess is not None and 0 < shift < self.horizon:
            chunk = self.policy.refine(obs, self._warm_start_guess(shift), self.rti.noise_level, self.rti.steps)
        else:
            chunk = self.policy.sample(obs, **self._sample_kwargs)
        if self.rti is not None:
            self._guess = chunk
        return chunk

    def _warm_start_guess(self, shift: int) -> torch.Tensor:
        """The previous clean chunk moved ``shift`` steps ahead, its last action repeated; clip-variant
        discrete dims set to +-1 / clip_factor."""
        assert self._guess is not None and self.rti is not None
        guess = shift_chunk(self._guess, shift)
        clipped = [d for d in self.rti.discrete_dims if d not in getattr(self.policy, "discrete_dims", ())]
        if clipped:
            guess[..., clipped] = binarize(guess[..., clipped]) / self.rti.clip_factor
        return guess


def shift_chunk(chunk: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, H, A)`` chunk moved ``steps`` ahead, its last action repeated to keep length H (RTI's guess)."""
    return torch.cat([chunk[:, steps:], chunk[:, -1:].expand(-1, steps, -1)], dim=1)


def binarize(values: torch.Tensor) -> torch.Tensor:
    """Normalised binary commands: +1 at or above the middle of the range, -1 below."""
    return torch.where(values >= 0, 1.0, -1.0).to(values.dtype)


def observation_windows(actor: ChunkActor, arrays: dict[str, np.ndarray], times: np.ndarray,
                        first: np.ndarray) -> torch.Tensor:
    """The actor's normalised observation features ``(N, To, D)`` at steps ``times`` of a store's ``arrays``:
    each history of length To repeats its episode's first step ``first`` before the episode starts, as the
    actor pads it at an episode start."""
    index = np.maximum(times[:, None] + np.arange(-actor.obs_steps + 1, 1), first[:, None])
    stacked = {key: torch.as_tensor(arrays[key][index]) for key in actor.obs_keys}
    return obs_features(stacked, actor.obs_keys, actor.normalizer).float()


def pick_rti_noise_level(actor: ChunkActor, store: EpisodeStore, pairs: int = 256, seed: int = 0) -> float:
    """RTI's entry level from data: the noise scale at which a shifted guess looks like a sample of the chain.

    For ``pairs`` random consecutive planning points ``(t, t + k)`` of the store's episodes (``k`` the
    executed steps per call) the policy's full chain gives clean chunks ``A_t`` and ``A_{t+k}``; the guess
    ``G`` is ``A_t`` shifted by ``k``. At noise scale ``s`` the chain expects ``x_s = c_signal(s) A +
    c_noise(s) eps`` and :meth:`GenerativePolicy.refine` starts from ``c_signal(s) G``, so the mean squared
    gap ``E|G - c_signal(s) A_{t+k}|^2`` per entry should equal ``c_noise(s)^2``: the level returned is the
    scale on a 0.01 grid where the two are closest (algorithms.md section 10's offline choice of K').
    """
    policy = actor.policy
    rng = np.random.default_rng(seed)
    ends, starts = store.episode_ends, store.episode_starts
    k = actor.action_steps
    chosen = rng.choice([e for e in range(len(ends)) if ends[e] - starts[e] > k], size=pairs)
    times = np.array([rng.integers(starts[e], ends[e] - k) for e in chosen])
    arrays = store.load(actor.obs_keys)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        now = policy.to_internal(policy.sample(observation_windows(actor, arrays, times, starts[chosen]),
                                               generator=generator))
        later = policy.to_internal(policy.sample(observation_windows(actor, arrays, times + k, starts[chosen]),
                                                 generator=generator))
    guess = shift_chunk(now, k)
    ones = torch.ones(1, 1, 1)
    best, best_gap = 1.0, float("inf")
    for scale in np.round(np.linspace(0.01, 1.0, 100), 4):
        level = policy.level_at(float(scale)).expand(1)
        signal = policy.noised(ones, torch.zeros_like(ones), level).item()
        noise = policy.noised(torch.zeros_like(ones), ones, level).item()
        gap = abs((guess - signal * later).pow(2).mean().item() - noise**2)
        if gap < best_gap:
            best, best_gap = float(scale), gap
    return best


@contextmanager
def count_calls(*modules: nn.Module) -> Iterator[list[int]]:
    """Count forward calls of ``modules`` inside the block: yields a one-element list holding the count."""
    count = [0]

    def hook(*_: object) -> None:
        count[0] += 1

    handles = [module.register_forward_pre_hook(hook) for module in modules]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def actor_stats(actor: ChunkActor) -> dict[str, Any]:
    """An actor's call counters and latencies, to merge across evaluation processes (:func:`absorb_stats`)."""
    return {"plans": actor.plans, "nfe": actor.nfe, "steps": actor.steps, "latencies": list(actor.latencies),
            "chunk_latencies": list(actor.chunk_latencies)}


def absorb_stats(actor: ChunkActor, others: Iterable[dict[str, Any]]) -> None:
    """Add other processes' :func:`actor_stats` to ``actor``'s, so :func:`latency_summary` covers them all."""
    for stats in others:
        actor.plans += stats["plans"]
        actor.nfe += stats["nfe"]
        actor.steps += stats["steps"]
        actor.latencies += stats["latencies"]
        actor.chunk_latencies += stats["chunk_latencies"]


def latency_summary(actor: ChunkActor) -> dict[str, float]:
    """NFE per executed action and latency percentiles (ms) of an actor's calls so far: ``latency_ms`` of a
    whole planning call (observations in, raw actions out), ``chunk_ms`` of the policy's sampling inside it."""
    call = np.asarray(actor.latencies or [0.0]) * 1e3
    chunk = np.asarray(actor.chunk_latencies or [0.0]) * 1e3
    return {"plans": actor.plans, "nfe_per_action": actor.nfe_per_action,
            "latency_ms_p50": float(np.percentile(call, 50)), "latency_ms_p99": float(np.percentile(call, 99)),
            "chunk_ms_p50": float(np.percentile(chunk, 50)), "chunk_ms_p99": float(np.percentile(chunk, 99))}


@dataclass
class EvalResult:
    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    mean_length: float

    def as_dict(self) -> dict[str, float]:
        return {
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "success_ci95_low": self.success_ci95[0],
            "success_ci95_high": self.success_ci95[1],
            "mean_return": self.mean_return,
            "mean_length": self.mean_length,
        }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well behaved at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def check_env_matches(env_spec: EnvSpec, trained_on: dict, obs_keys: Sequence[str]) -> None:
    """Refuse to evaluate a policy on a task whose observations or actions differ from its training task."""
    have = env_spec.describe()
    problems = [
        f"observation '{k}' has shape {have['observation'].get(k)} but the policy was trained on "
        f"{trained_on['observation'].get(k)}"
        for k in obs_keys
        if have["observation"].get(k) != trained_on["observation"].get(k)
    ]
    if have["action"] != trained_on["action"]:
        problems.append(f"actions have shape {have['action']} but the policy emits {trained_on['action']}")
    if problems:
        raise CheckpointError(
            f"the policy was trained on task '{trained_on['task']}' and cannot run on task '{env_spec.task}': "
            + "; ".join(problems)
        )


def evaluate(env: BatchedEnv, actor: ChunkActor, episodes: int, seed: int, ranks: Dist | None = None) -> EvalResult:
    """Run ``episodes`` episodes in batches of ``env.num_envs``; an episode ends at success or time-out.

    Batch ``b`` resets with seed ``seed + b * num_envs``: simulator envs give env ``i`` the episode seed
    ``seed + i``, so every episode of the evaluation has its own seed. A seeded actor restarts its sampling
    noise from the same number, so a batch's outcome does not depend on which batches ran before it. Under
    torchrun (``ranks``) each rank runs every ``world_size``-th batch and all ranks get the combined result,
    the same as one process running them all.
    """
    ranks = ranks or Dist()
    mine = run_eval_batches(env, actor, episodes, seed, range(ranks.rank, eval_batches(episodes, env.num_envs),
                                                                  ranks.world_size))
    merged = {b: out for part in distributed.gather_objects(mine) for b, out in part.items()}
    return summarize_episodes(merged)


def eval_batches(episodes: int, num_envs: int) -> int:
    """How many env batches ``episodes`` episodes take."""
    return -(-episodes // num_envs)


def run_eval_batches(env: BatchedEnv, actor: ChunkActor, episodes: int, seed: int,
                     batches: Iterable[int]) -> dict[int, dict[str, list]]:
    """The episodes of evaluation batches ``batches`` (see :func:`evaluate`): batch -> per-episode
    ``success``, ``return`` and ``length`` lists."""
    n = env.num_envs
    out = {}
    for b in batches:
        obs = env.reset(seed=seed + b * n)
        actor.reset()
        actor.reseed(seed + b * n)
        done = np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
        ret = np.zeros(n)
        length = np.zeros(n, dtype=int)
        while not done.all():
            result = env.step(actor.act(obs))
            live = ~done
            ret[live] += result.reward[live]
            length[live] += 1
            success |= result.success & live
            done |= result.terminated | result.truncated
            obs = result.obs
        take = min(n, episodes - b * n)
        out[b] = {"success": success[:take].tolist(), "return": ret[:take].tolist(), "length": length[:take].tolist()}
    return out


def summarize_episodes(batches: dict[int, dict[str, list]]) -> EvalResult:
    """One :class:`EvalResult` from :func:`run_eval_batches` outputs, episodes in batch order."""
    ordered = [batches[b] for b in sorted(batches)]
    successes = [s for part in ordered for s in part["success"]]
    returns = [r for part in ordered for r in part["return"]]
    lengths = [n for part in ordered for n in part["length"]]
    k = int(sum(successes))
    return EvalResult(
        episodes=len(successes),
        success_rate=k / len(successes),
        success_ci95=wilson_interval(k, len(successes)),
        mean_return=float(np.mean(returns)),
        mean_length=float(np.mean(lengths)),
    )


def record_video(env: BatchedEnv, actor: ChunkActor, path: str | Path, seed: int, width: int = 256,
                 height: int = 256) -> Path | None:
    """Roll out one episode (env 0 of a batch reset with ``seed``) and write it to MP4.

    Returns None for envs that cannot render (they do not implement ``SimulatorEnv``).
    """
    if not isinstance(env, SimulatorEnv):
        return None
    obs = env.reset(seed=seed)
    actor.reset()
    frames = [env.render(0, width, height)]
    done = False
    while not done:
        result = env.step(actor.act(obs))
        done = bool(result.terminated[0] or result.truncated[0])
        obs = result.obs
        frames.append(env.render(0, width, height))
    return write_mp4(path, frames, fps=1.0 / env.spec.dt if env.spec.dt > 0 else 20.0)


def load_actor(path: str, device: str = "cpu", **actor_options: object) -> tuple[ChunkActor, Checkpoint]:
    """Checkpoint (run dir or checkpoint dir) -> actor with the evaluation weights (EMA when saved), and the
    checkpoint it came from.

    ``actor_options`` go to :class:`ChunkActor` (execution, ensemble_decay, sampler, steps, rti, seed).
    """
    from hydra.utils import get_class, instantiate

    ckpt = load_checkpoint(path)
    manifest = ckpt.manifest
    for key in ("obs_dim", "action_dim", "obs_keys", "env_spec"):
        if key not in manifest:
            raise CheckpointError(f"{ckpt.path}/manifest.json has no '{key}': it is not a policy checkpoint")
    policy = instantiate(ckpt.config.policy, obs_dim=manifest["obs_dim"], action_dim=manifest["action_dim"])
    # Critic-based algorithms deploy more than the policy head (best-of-N needs its critic).
    algo_class = get_class(ckpt.config.algo._target_) if "algo" in ckpt.config else None
    if hasattr(algo_class, "load_eval_policy"):
        policy = algo_class.load_eval_policy(ckpt, policy)
    else:
        ckpt.load_modules({"ema" if "ema" in ckpt.module_names() else "policy": policy})
    normalizer = Normalizer.from_state(*ckpt.normalizer())
    actor = ChunkActor(policy.to(device), normalizer, manifest["obs_keys"], manifest.get("action_key", "action"),
                       device, **actor_options)
    return actor, ckpt
