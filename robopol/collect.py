"""Run a task's scripted expert and append every episode to an episode store, in parallel worker processes.

Each worker builds the task's env (in-process back end) and expert once, then runs whole episodes for the
seeds it is sent; the parent writes the episodes in seed order, so the store's content does not depend on
how many workers ran or how fast each one was. Episode seeds are consecutive: ``seed, seed+1, ...``; when
appending, they continue after the largest seed in the store, so a resumed collection never repeats one.

Per-step data: every observation key, ``action``, ``reward``, ``terminal`` (the episode truly ended there,
not a time-out) and, for simulator envs, ``state`` (the flat simulator state before the step, which
``robopol.sim.replay`` restores). Per episode: ``source`` (``expert``, or ``policy`` for the uniformly
random episodes of the ``random_fraction`` knob), ``success`` (reached at any step), ``seed``, ``task_id``,
``random`` and ``noise``. An episode whose simulation failed is reported and left out.

Workers start with the ``forkserver`` method, so a script that calls ``collect_episodes`` with workers
needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from robopol.data.store import EpisodeStore
from robopol.envs import SimulatorEnv
from robopol.errors import ConfigError, StoreError
from robopol.tasks import make_env, make_expert

log = logging.getLogger("robopol.collect")


@dataclass
class CollectResult:
    episodes: int
    steps: int
    success_rate: float
    """Over every episode written by this call (expert and random)."""
    seconds: float = 0.0
    """Collection time once the workers' envs were built."""
    startup_seconds: float = 0.0
    """Time to start the workers and build their envs and experts."""
    expert_episodes: int = 0
    expert_success_rate: float = float("nan")
    failed: int = 0
    """Episodes left out because the simulator failed."""
    per_task: dict[int, tuple[int, float]] = field(default_factory=dict)
    """task_id -> (expert episodes, expert success rate)."""
    first_seed: int = 0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def collect_episodes(
    task: DictConfig,
    out: str,
    episodes: int,
    noise: float = 0.0,
    seed: int = 0,
    num_envs: int = 1,
    progress: bool = True,
    expert: str = "",
    random_fraction: float = 0.0,
    num_workers: int = 0,
) -> CollectResult:
    """Append ``episodes`` episodes of ``task`` to the store at ``out`` (created if missing).

    ``expert`` picks the expert variant (empty: the task's default), ``noise`` the std of Gaussian action
    noise, ``random_fraction`` the share of episodes driven by uniformly random actions instead;
    ``num_workers`` processes run episodes in parallel (0: in this process), each stepping ``num_envs``
    envs together.
    """
    if episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {episodes}")
    if not 0.0 <= random_fraction <= 1.0:
        raise ConfigError(f"random_fraction must be in [0, 1], got {random_fraction}")
    if num_workers < 0 or num_envs < 1:
        raise ConfigError(f"num_workers must be >= 0 and num_envs >= 1, got {num_workers} and {num_envs}")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    if not task.get("expert") and random_fraction < 1.0:
        raise ConfigError(f"task '{task.name}' has no scripted expert: collect it with random_fraction=1")
    try:
        store = EpisodeStore.open(out, mode="a")
    except StoreError:  # nothing there yet; create() refuses to overwrite anything that is not a store
        store = EpisodeStore.create(out)
    recorded = store.attrs.get("task")
    if recorded is not None and recorded != task.name:
        raise ConfigError(f"store {out} holds episodes of task '{recorded}', not '{task.name}': "
                          f"collect into another store")
    if len(store) and "seed" in store.meta_fields():
        seed = max(seed, int(store.meta_arrays()["seed"].max()) + 1)
    spec = dict(task=OmegaConf.to_container(task, resolve=True), num_envs=num_envs, noise=noise, seed=seed,
                variant=expert, random_fraction=random_fraction)

    t_start = time.perf_counter()
    pool = _Pool(spec, num_workers) if num_workers > 0 else _InProcess(spec)
    t0 = time.perf_counter()  # throughput is measured once the envs are built
    written: list[dict[str, Any]] = []
    buffer: list[dict[str, Any]] = []
    last_flush = time.perf_counter()
    failed = 0

    def flush() -> None:
        # One commit per batch: a store append costs ~60 ms whatever its size, as much as simulating a
        # short episode, so committing episodes one by one would halve collection speed.
        if buffer:
            _append(store, buffer)
            buffer.clear()

    bar = tqdm(total=episodes, desc=f"collect {task.name}", unit="ep", disable=not progress,
               dynamic_ncols=True)
    try:
        next_seed = seed
        while len(written) < episodes:
            need = episodes - len(written)
            jobs = []
            while need > 0:
                n = min(num_envs, need)
                jobs.append((next_seed, n))
                next_seed += n
                need -= n
            for eps in pool.run(jobs):
                for ep in eps:
                    if ep is None:
                        failed += 1
                        continue
                    if len(written) == episodes:
                        break
                    if not written and not len(store):
                        store.set_attrs(task=task.name)
                    buffer.append(ep)
                    if len(buffer) >= 32 or time.perf_counter() - last_flush > 5.0:
                        flush()
                        last_flush = time.perf_counter()
                    written.append(ep["meta"] | {"steps": len(ep["steps"]["action"])})
                    bar.update(1)
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(success=f"{np.mean([w['success'] for w in written]):.2f}",
                                    steps_s=f"{sum(w['steps'] for w in written) / max(elapsed, 1e-9):.0f}")
        flush()
    finally:
        bar.close()
        pool.close()
    seconds = time.perf_counter() - t0
    startup = t0 - t_start
    expert_eps = [w for w in written if not w["random"]]
    per_task: dict[int, tuple[int, float]] = {}
    for tid in sorted({w["task_id"] for w in expert_eps}):
        group = [w["success"] for w in expert_eps if w["task_id"] == tid]
        per_task[tid] = (len(group), float(np.mean(group)))
    return CollectResult(
        episodes=len(written), steps=sum(w["steps"] for w in written),
        success_rate=float(np.mean([w["success"] for w in written])), seconds=seconds,
        expert_episodes=len(expert_eps),
        expert_success_rate=(float(np.mean([w["success"] for w in expert_eps])) if expert_eps
                             else float("nan")),
        failed=failed, per_task=per_task, first_seed=seed, startup_seconds=startup,
    )


def _append(store: EpisodeStore, episodes: list[dict[str, Any]]) -> None:
    """Append finished episodes to the store in one atomic commit."""
    keys = episodes[0]["steps"].keys()
    data = {k: np.concatenate([ep["steps"][k] for ep in episodes]) for k in keys}
    ends = np.cumsum([len(ep["steps"]["action"]) for ep in episodes])
    meta = {f: np.asarray([ep["meta"][f] for ep in episodes]) for f in episodes[0]["meta"] if f != "source"}
    meta["source"] = np.asarray([ep["meta"]["source"] for ep in episodes], dtype=object)
    store.add_episodes(data, ends, meta)


# ============================================================================================ episodes


def _substream(seed: int, key: int) -> np.random.Generator:
    """A generator for one purpose (``key``) of one episode, independent of the env's own seeding."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


class _Runner:
    """A task's env (in-process) and expert; runs batches of consecutive seeds to completion."""

    def __init__(self, spec: dict[str, Any]) -> None:
        task = OmegaConf.create(spec["task"])
        if "backend" in task:  # the expert reads the simulator, so the env must live in this process
            task.backend = "inprocess"
        self.task, self.spec = task, spec
        self.env = make_env(task, num_envs=spec["num_envs"], seed=spec["seed"])
        self.expert = (make_expert(task, self.env, spec["noise"], spec["seed"], spec["variant"])
                       if task.get("expert") else None)
        self.stateful = isinstance(self.env, SimulatorEnv)

    def run(self, first_seed: int, count: int) -> list[dict[str, Any] | None]:
        env, n = self.env, self.env.num_envs
        act = env.spec.action
        # Random episodes act uniformly within the bounds (in [-1, 1] where an action is unbounded).
        low = np.broadcast_to(np.asarray(-1.0 if act.low is None else act.low, dtype=np.float64), act.shape)
        high = np.broadcast_to(np.asarray(1.0 if act.high is None else act.high, dtype=np.float64), act.shape)
        seeds = first_seed + np.arange(n)
        random_ep = np.array([_substream(int(s), 2).uniform() < self.spec["random_fraction"] for s in seeds])
        if self.expert is None:
            random_ep[:] = True
        random_rng = [_substream(int(s), 3) for s in seeds]
        obs = env.reset(seed=first_seed)
        if self.expert is not None:
            self.expert.reset(seed=first_seed)
        traces = [_Trace() for _ in range(n)]
        task_ids = [int(env.episode_info(i)["task_id"]) if self.stateful else 0 for i in range(n)]
        done = np.zeros(n, dtype=bool)
        broken = np.zeros(n, dtype=bool)
        while not done.all():
            use_expert = self.expert is not None and not random_ep.all()
            actions = self.expert.act(obs).astype(np.float64) if use_expert else np.zeros((n, *act.shape))
            for i in np.flatnonzero(random_ep & ~done):
                actions[i] = random_rng[i].uniform(low, high)
            states = [env.get_state(i) if self.stateful and not done[i] else None for i in range(n)]
            result = env.step(actions)
            for err in result.info.get("errors", []):
                broken[err["env"]] = True
            for i in np.flatnonzero(~done):
                traces[i].add(obs, i, actions[i], states[i], result.reward[i], result.terminated[i],
                              result.success[i])
            done |= result.terminated | result.truncated
            obs = result.obs
        out: list[dict[str, Any] | None] = []
        for i in range(count):
            if broken[i]:
                out.append(None)
                continue
            meta = dict(source="policy" if random_ep[i] else "expert", success=traces[i].success,
                        seed=int(seeds[i]), task_id=task_ids[i], random=bool(random_ep[i]),
                        noise=float(self.spec["noise"]))
            out.append({"steps": traces[i].arrays(), "meta": meta})
        return out

    def close(self) -> None:
        self.env.close()


class _Trace:
    """Per-step records of one env's episode, stacked into store arrays at the end."""

    def __init__(self) -> None:
        self.obs: dict[str, list[np.ndarray]] = {}
        self.action: list[np.ndarray] = []
        self.state: list[np.ndarray] = []
        self.reward: list[float] = []
        self.terminal: list[bool] = []
        self.success = False

    def add(self, obs: dict[str, np.ndarray], i: int, action: np.ndarray, state: np.ndarray | None,
            reward: float, terminal: bool, success: bool) -> None:
        for key, value in obs.items():
            self.obs.setdefault(key, []).append(value[i])
        self.action.append(action)
        if state is not None:
            self.state.append(state)
        self.reward.append(reward)
        self.terminal.append(bool(terminal))
        self.success |= bool(success)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {key: np.stack(values) for key, values in self.obs.items()}
        arrays["action"] = np.stack(self.action).astype(np.float32)
        arrays["reward"] = np.asarray(self.reward, dtype=np.float32)
        arrays["terminal"] = np.asarray(self.terminal, dtype=bool)
        if self.state:
            arrays["state"] = np.stack(self.state).astype(np.float64)
        return arrays


# ================================================================================================ pools


class _InProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.runner = _Runner(spec)

    def run(self, jobs: Sequence[tuple[int, int]]):
        for first, count in jobs:
            yield self.runner.run(first, count)

    def close(self) -> None:
        self.runner.close()


def _worker_main(conn: Any, spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes the workers
    try:
        runner = _Runner(spec)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            break
        try:
            conn.send(("ok", runner.run(*job)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    runner.close()


class _Pool:
    """Worker processes that each run whole episodes; results come back in job order."""

    def __init__(self, spec: dict[str, Any], num_workers: int) -> None:
        try:
            self.ctx = mp.get_context("forkserver")
        except ValueError:
            self.ctx = mp.get_context("spawn")
        self.spec = spec
        self.workers: list[tuple[Any, Any]] = []
        for _ in range(num_workers):
            self.workers.append(self._start())
        for proc, conn in self.workers:
            kind, payload = self._recv(proc, conn, "starting")
            if kind != "ready":
                self.close()
                hint = (" (a script that starts worker processes needs an `if __name__ == '__main__':` "
                        "guard)" if kind == "died" else "")
                raise ConfigError(f"cannot build task '{spec['task']['name']}' in a worker: {payload}{hint}")

    def _start(self) -> tuple[Any, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.spec), daemon=True,
                                name="robopol-collect")
        proc.start()
        child.close()
        return proc, parent

    @staticmethod
    def _recv(proc: Any, conn: Any, what: str) -> tuple[str, Any]:
        try:
            return conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=5)
            return "died", f"worker process died while {what} (exit code {proc.exitcode})"

    def run(self, jobs: Sequence[tuple[int, int]]):
        """Yield each job's episodes (None for a failed one) in job order."""
        pending = list(enumerate(jobs))
        busy: dict[int, tuple[int, tuple[int, int]]] = {}  # worker -> (job index, job)
        done: dict[int, list[Any]] = {}
        emit = 0
        while emit < len(jobs):
            for w in range(len(self.workers)):
                if w not in busy and pending:
                    j, job = pending.pop(0)
                    self.workers[w][1].send(job)
                    busy[w] = (j, job)
            ready = wait([self.workers[w][1] for w in busy])
            for w in [w for w in list(busy) if self.workers[w][1] in ready]:
                j, (first, count) = busy.pop(w)
                proc, conn = self.workers[w]
                kind, payload = self._recv(proc, conn, f"running seeds {first}..{first + count - 1}")
                if kind == "ok":
                    done[j] = payload
                    continue
                log.warning("task '%s': episodes with seeds %d..%d failed and are left out: %s",
                            self.spec["task"]["name"], first, first + count - 1,
                            str(payload).strip().splitlines()[-1])
                done[j] = [None] * count
                if kind == "died":
                    conn.close()
                    self.workers[w] = self._start()
                    kind, payload = self._recv(*self.workers[w], "restarting")
                    if kind != "ready":
                        raise RuntimeError(f"a collection worker could not restart: {payload}")
            while emit in done:
                yield done.pop(emit)
                emit += 1

    def close(self) -> None:
        for _proc, conn in self.workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self.workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()
        self.workers = []
