"""Batched envs over ``SimEnv`` instances: in-process (tests, cheap envs) or in worker processes.

Both back ends share ``VectorEnv``, which owns everything that must behave the same whatever runs the
physics: action checks (wrong shape or NaN raise ``ConfigError``; out-of-bounds values are clipped and
counted), the time limit, per-env episode seeds, the explicit auto-reset policy, and failure handling: a step
that raises or returns NaN/inf (or a worker process that dies) is reported with the env index and its
episode seed, that env alone is reset (with a dead worker: each of the envs it ran), and the step reports it
as truncated.

Seeds: ``reset(seed=s)`` starts env ``i`` with episode seed ``s + i``; every later episode of env ``i``
(auto-reset or reset after a failure) takes ``num_envs`` more than its previous one, so the episodes of a
batch use the seeds ``s, s+1, s+2, ...`` each once. ``reset()`` without a seed continues that sequence.

Workers are started with the ``forkserver`` method: a fork of a process that has threads (torch, zarr's
event loop) can deadlock, and MuJoCo/EGL contexts must be created in the process that uses them. A step
sends every worker its actions (one message for its ``envs_per_worker`` envs) before it waits for any
result, and idle workers poll for their next command for a couple of milliseconds before blocking, which
saves a kernel wake-up per message.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import pickle
import signal
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from robopol.envs import EnvSpec, StepResult
from robopol.errors import ConfigError

from .base import SimEnv, Transition

log = logging.getLogger("robopol.sim")

EnvFactory = Callable[[], SimEnv]
BACKENDS = ("auto", "inprocess", "workers")
SPIN_S = 0.002
"""Seconds a worker polls for its next command before it blocks (see ``_spin_until_readable``)."""


@dataclass
class _Failure:
    """A reset or step that raised, returned non-finite values, or whose worker died."""

    message: str


def _finite(t: Transition) -> bool:
    return bool(np.isfinite(t.reward)) and all(np.isfinite(v).all() for v in t.obs.values())


class VectorEnv:
    """``num_envs`` SimEnvs behind the ``BatchedEnv`` protocol; subclasses only move calls to the envs."""

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int, autoreset: bool) -> None:
        self.spec = spec
        self.num_envs = num_envs
        self.autoreset = autoreset
        self.clipped_actions = 0
        """Env-steps whose action had at least one component outside the bounds (clipped)."""
        self.clipped_per_env = np.zeros(num_envs, dtype=np.int64)
        self.failures: list[dict[str, Any]] = []
        """Every reported failure: env index, episode seed, step and message."""
        self.episode_seeds = np.full(num_envs, -1, dtype=np.int64)
        self.episode_ids = np.zeros(num_envs, dtype=np.int64)
        """Counts the resets of each env, so that an expert can notice a new episode under auto-reset."""
        self.task_ids = np.zeros(num_envs, dtype=np.int64)
        self._next_seeds = seed + np.arange(num_envs, dtype=np.int64)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._done = np.ones(num_envs, dtype=bool)
        self._started = False
        self._terminated = np.zeros(num_envs, dtype=bool)
        self._truncated = np.zeros(num_envs, dtype=bool)
        self._success = np.zeros(num_envs, dtype=bool)
        self._obs = {k: np.zeros((num_envs, *s.shape), dtype=np.float32) for k, s in spec.observation.items()}
        self._low = np.asarray(-np.inf if spec.action.low is None else spec.action.low, dtype=np.float64)
        self._high = np.asarray(np.inf if spec.action.high is None else spec.action.high, dtype=np.float64)
        self._warned_clip = False

    # ------------------------------------------------------------------ back-end hooks

    def _reset_many(self, idx: list[int], seeds: list[int], options: dict | None) -> list[Any]:
        """Reset envs ``idx``; per env the obs dict and task id, or a ``_Failure``."""
        raise NotImplementedError

    def _step_many(self, idx: list[int], actions: np.ndarray) -> list[Transition | _Failure]:
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol

    def reset(self, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
              ) -> dict[str, np.ndarray]:
        """Start every env anew (see the module docstring for the seeds); ``options`` go to every env."""
        n = self.num_envs
        if seed is None:
            seeds = self._next_seeds.copy()  # continue each env's sequence
        elif np.ndim(seed) == 0:
            seeds = int(seed) + np.arange(n, dtype=np.int64)
        else:
            seeds = np.asarray(seed, dtype=np.int64)
            if seeds.shape != (n,):
                raise ConfigError(f"task '{self.spec.task}': reset needs one seed per env ({n}), got "
                                  f"{len(seeds)}")
        self._next_seeds = seeds.copy()
        self._restart(list(range(n)), options)
        self._done[:] = False
        self._started = True
        self._terminated[:] = self._truncated[:] = self._success[:] = False
        return {k: v.copy() for k, v in self._obs.items()}

    def step(self, actions: np.ndarray) -> StepResult:
        if not self._started:
            raise ConfigError(f"task '{self.spec.task}': call reset() before step()")
        actions, clipped = self._check_actions(actions)
        n = self.num_envs
        reward = np.zeros(n, dtype=np.float32)
        active = np.flatnonzero(~self._done)
        errors: list[dict[str, Any]] = []
        results = self._step_many(active.tolist(), actions[active]) if len(active) else []
        failed = []
        for i, res in zip(active.tolist(), results, strict=True):
            if isinstance(res, Transition) and not _finite(res):
                res = _Failure("the step returned NaN or inf in its observation or reward")
            self._t[i] += 1
            if isinstance(res, _Failure):
                errors.append(self._report(i, res.message))
                failed.append(i)
                self._terminated[i], self._truncated[i], self._success[i] = False, True, False
                continue
            for k, v in res.obs.items():
                self._obs[k][i] = v
            reward[i] = res.reward
            self._terminated[i] = res.terminated
            self._success[i] = res.success
            self._truncated[i] = not res.terminated and self._t[i] >= self.spec.max_episode_steps
        ended = active[(self._terminated | self._truncated)[active]]
        self._done[ended] = True
        info: dict[str, Any] = {"clipped": clipped}
        if errors:
            info["errors"] = errors
        if self.autoreset and len(ended):
            info["final_obs"] = {k: v.copy() for k, v in self._obs.items()}
        # A failed env is reset at once (its state is garbage); the others only under auto-reset.
        restart = sorted(set(failed) | (set(ended.tolist()) if self.autoreset else set()))
        if restart:
            self._restart(restart, None)
            if self.autoreset:
                self._done[restart] = False
        return StepResult(
            obs={k: v.copy() for k, v in self._obs.items()}, reward=reward,
            terminated=self._terminated.copy(), truncated=self._truncated.copy(),
            success=self._success.copy(), info=info,
        )

    def reset_done(self) -> dict[str, np.ndarray]:
        """Start new episodes (with their next seeds) in the envs whose episode ended and that wait for a reset,
        e.g. between the open-loop chunks of a rollout; returns every env's observation."""
        idx = np.flatnonzero(self._done)
        if len(idx):
            self._restart(idx.tolist(), None)
            self._done[idx] = False
            self._terminated[idx] = self._truncated[idx] = self._success[idx] = False
        return {k: v.copy() for k, v in self._obs.items()}

    @property
    def done(self) -> np.ndarray:
        """Envs whose episode has ended and that wait for ``reset`` (always all False with auto-reset)."""
        return self._done.copy()

    def episode_info(self, index: int) -> dict[str, Any]:
        return {"seed": int(self.episode_seeds[index]), "task_id": int(self.task_ids[index])}

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ helpers

    def _check_actions(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(actions, dtype=np.float64)
        expected = (self.num_envs, *self.spec.action.shape)
        if a.shape != expected:
            raise ConfigError(f"task '{self.spec.task}': actions must have shape {expected} (num_envs, "
                              f"action dim), got {a.shape}")
        bad = ~np.isfinite(a).reshape(self.num_envs, -1).all(axis=1)
        if bad.any():
            which = ", ".join(f"env {i} (seed {self.episode_seeds[i]})" for i in np.flatnonzero(bad))
            raise ConfigError(f"task '{self.spec.task}': actions contain NaN or inf for {which}")
        clipped_a = np.clip(a, self._low, self._high)
        clipped = (clipped_a != a).reshape(self.num_envs, -1).any(axis=1) & ~self._done
        if clipped.any():
            self.clipped_actions += int(clipped.sum())
            self.clipped_per_env += clipped
            if not self._warned_clip:
                self._warned_clip = True
                log.warning("task '%s': actions outside [%s, %s] are clipped (counted in clipped_actions)",
                            self.spec.task, self.spec.action.low, self.spec.action.high)
        return clipped_a, clipped

    def _restart(self, idx: list[int], options: dict | None) -> None:
        """Reset envs ``idx`` with their next seeds; a reset that fails moves on to the following seed."""
        pending = list(idx)
        for _attempt in range(3):
            seeds = [int(self._next_seeds[i]) for i in pending]
            outs = self._reset_many(pending, seeds, options)
            retry = []
            for i, s, out in zip(pending, seeds, outs, strict=True):
                self._next_seeds[i] = s + self.num_envs
                if isinstance(out, _Failure) or not all(np.isfinite(v).all() for v in out[0].values()):
                    msg = out.message if isinstance(out, _Failure) else "reset returned NaN or inf"
                    self._report(i, f"reset failed: {msg}", seed=s)
                    retry.append(i)
                    continue
                obs, task_id = out
                for k, v in obs.items():
                    self._obs[k][i] = v
                self.episode_seeds[i] = s
                self.task_ids[i] = task_id
                self.episode_ids[i] += 1
                self._t[i] = 0
            if not retry:
                return
            pending = retry
        raise RuntimeError(f"task '{self.spec.task}': env(s) {pending} failed to reset three times in a row; "
                           f"see the errors logged above")

    def _report(self, i: int, message: str, seed: int | None = None) -> dict[str, Any]:
        seed = int(self.episode_seeds[i]) if seed is None else seed
        record = {"env": int(i), "seed": seed, "step": int(self._t[i]), "error": message}
        self.failures.append(record)
        last_line = message.strip().splitlines()[-1] if message.strip() else ""
        log.warning("task '%s': env %d (episode seed %d) failed at step %d: %s; resetting that env",
                    self.spec.task, i, seed, record["step"], last_line)
        return record


# ============================================================================================ in-process


class InProcessVectorEnv(VectorEnv):
    """All envs in this process, stepped one after the other."""

    def __init__(self, factory: EnvFactory, num_envs: int = 1, seed: int = 0, autoreset: bool = False,
                 spec: EnvSpec | None = None) -> None:
        self.envs: list[SimEnv] = [factory() for _ in range(num_envs)]
        super().__init__(spec or self.envs[0].spec, num_envs, seed, autoreset)

    def _reset_many(self, idx, seeds, options):
        outs = []
        for i, s in zip(idx, seeds, strict=True):
            try:
                obs = self.envs[i].reset(s, options)
                outs.append((obs, self.envs[i].task_id))
            except Exception as err:
                outs.append(_Failure(_describe(err)))
        return outs

    def _step_many(self, idx, actions):
        outs: list[Transition | _Failure] = []
        for i, a in zip(idx, actions, strict=True):
            try:
                outs.append(self.envs[i].step(a))
            except Exception as err:
                outs.append(_Failure(_describe(err)))
        return outs

    def get_state(self, index: int) -> np.ndarray:
        return self.envs[index].get_state()

    def set_state(self, index: int, state: np.ndarray) -> None:
        self.envs[index].set_state(state)

    def render(self, index: int = 0, width: int = 256, height: int = 256) -> np.ndarray:
        return self.envs[index].render(width, height)

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ============================================================================================== workers


def _describe(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip() + "\n" + traceback.format_exc()


# Messages to a worker: b"S" + one byte n + n bytes (which of its envs) + their raw float64 actions (a step:
# no pickling on the hot path), or b"P" + a pickled (command, [(env, argument), ...]). A step's answer holds
# one part per env, each prefixed by its uint32 length: b"k" + raw float32 observations (the spec's keys in
# order) + float64 reward, terminated, success; or b"e" + an error message. Other answers: a pickled list of
# (kind, payload), one per env.
_STEP, _PICKLED, _OK, _ERROR = b"S", b"P", b"k", b"e"
_LENGTH = struct.Struct("<I")
MAX_ENVS_PER_WORKER = 255


def _pack_transition(t: Transition, keys: Sequence[str]) -> bytes:
    obs = [np.asarray(t.obs[k], dtype=np.float32).ravel() for k in keys]
    flags = np.array([t.reward, t.terminated, t.success], dtype=np.float64)
    return _OK + np.concatenate(obs).tobytes() + flags.tobytes()


def _obs_layout(spec: EnvSpec) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(key, start, stop, shape) of each observation in a packed step answer."""
    layout, at = [], 0
    for k, s in spec.observation.items():
        size = int(np.prod(s.shape))
        layout.append((k, at, at + size, tuple(s.shape)))
        at += size
    return layout


def _unpack_transition(msg: bytes, layout: list[tuple[str, int, int, tuple[int, ...]]]) -> Transition:
    flat = np.frombuffer(msg, dtype=np.float32, count=(len(msg) - 25) // 4, offset=1)
    reward, terminated, success = np.frombuffer(msg, dtype=np.float64, offset=len(msg) - 24)
    obs = {k: flat[a:b].reshape(shape) for k, a, b, shape in layout}
    return Transition(obs, float(reward), bool(terminated), bool(success))


def _join_parts(parts: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def _split_parts(msg: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(msg):
        (size,) = _LENGTH.unpack_from(msg, at)
        parts.append(msg[at + 4:at + 4 + size])
        at += 4 + size
    return parts


def _worker_main(conn: Any, factory: EnvFactory, count: int = 1, spin_s: float = 0.0) -> None:
    """``count`` envs in their own process: answer commands until 'close' or until the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us.
    try:
        envs = [factory() for _ in range(count)]
    except BaseException as err:  # noqa: BLE001 - report anything, including SystemExit from a bad import
        conn.send(("error", _describe(err)))
        return
    conn.send(("ready", envs[0].spec))
    keys = list(envs[0].spec.observation)
    while True:
        _spin_until_readable(conn, spin_s)
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if msg[:1] == _STEP:
            n = msg[1]
            actions = np.frombuffer(msg, dtype=np.float64, offset=2 + n).reshape(n, -1)
            parts = []
            for j, action in zip(msg[2:2 + n], actions, strict=True):
                try:
                    parts.append(_pack_transition(envs[j].step(action), keys))
                except Exception as err:
                    parts.append(_ERROR + _describe(err).encode())
            conn.send_bytes(_join_parts(parts))
            continue
        cmd, calls = pickle.loads(msg[1:])
        if cmd == "close":
            for env in envs:
                env.close()
            conn.send([("ok", None)])
            break
        outs = []
        for j, arg in calls:
            env = envs[j]
            try:
                if cmd == "reset":
                    out: Any = (env.reset(*arg), env.task_id)
                elif cmd == "get_state":
                    out = env.get_state()
                elif cmd == "set_state":
                    out = env.set_state(arg)
                elif cmd == "render":
                    out = env.render(*arg)
                else:
                    raise ValueError(f"unknown worker command {cmd!r}")
                outs.append(("ok", out))
            except Exception as err:
                outs.append(("error", _describe(err)))
        conn.send(outs)
    conn.close()


def _spin_until_readable(conn: Any, seconds: float) -> None:
    """Poll (yielding the CPU) for up to ``seconds`` before the caller blocks on ``conn``.

    A process blocked on a pipe is woken by the kernel, which on small VMs costs a few hundred
    microseconds per message (the idle vCPU must be woken too): as much as a third of a MuJoCo step.
    Polling for a moment keeps a worker awake between the steps of a busy loop; an idle pool goes back
    to blocking after ``seconds``.
    """
    if seconds <= 0:
        return
    deadline = time.perf_counter() + seconds
    while not conn.poll(0) and time.perf_counter() < deadline:
        os.sched_yield()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _mp_context() -> Any:
    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # platforms without forkserver
        return mp.get_context("spawn")
    # Imported once by the fork server, so that each worker starts without re-importing numpy and MuJoCo.
    ctx.set_forkserver_preload(["robopol.sim.vector", "mujoco"])
    return ctx


class WorkerVectorEnv(VectorEnv):
    """Envs in worker processes, ``envs_per_worker`` each (1: one process per env); a step sends every
    worker its actions before it waits for any result.

    Grouping envs amortises the per-message cost (a kernel wake-up and a round trip, ~0.3 ms on small
    machines) over several steps: cheap envs, or more envs than cores, step faster that way. An env that
    raises or returns NaN is reset alone; a worker that dies takes its envs with it: each is reported and
    reset, by the step or reset that found the worker dead or else at its own next step.
    """

    def __init__(self, factory: EnvFactory, num_envs: int = 1, seed: int = 0, autoreset: bool = False,
                 start_timeout: float = 300.0, spin_s: float = SPIN_S, envs_per_worker: int = 1) -> None:
        if not 1 <= envs_per_worker <= MAX_ENVS_PER_WORKER:
            raise ConfigError(f"envs_per_worker must be between 1 and {MAX_ENVS_PER_WORKER}, got {envs_per_worker}")
        self._factory = factory
        # Worker w hosts envs w*k ... w*k + k-1 (the last one fewer when k does not divide num_envs).
        self._envs_per_worker = envs_per_worker
        self._members = [list(range(a, min(a + envs_per_worker, num_envs)))
                         for a in range(0, num_envs, envs_per_worker)]
        self._lost: set[int] = set()
        """Envs whose worker died while serving others: rebuilt but not reset, so they must fail once."""
        workers = len(self._members)
        # With more workers than CPUs a polling worker would take CPU time from one that is stepping.
        self._spin_s = spin_s if workers <= usable_cpus() else 0.0
        self._ctx = _mp_context()
        self._start_timeout = start_timeout
        self._procs: list[Any] = [None] * workers
        self._conns: list[Any] = [None] * workers
        self._closed = False
        try:
            for w in range(workers):  # start them all, then wait: construction runs in parallel
                self._spawn(w)
            specs = [self._await_ready(w) for w in range(workers)]
        except BaseException:
            self.close()
            raise
        self._layout = _obs_layout(specs[0])  # where each observation sits in a step answer
        super().__init__(specs[0], num_envs, seed, autoreset)

    def _spawn(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self._factory, len(self._members[w]),
                                                            self._spin_s),
                                 daemon=True, name=f"robopol-env-worker-{w}")
        proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent

    def _await_ready(self, w: int) -> EnvSpec:
        conn = self._conns[w]
        if not conn.poll(self._start_timeout):
            raise RuntimeError(f"env worker {w} did not start within {self._start_timeout:.0f} s")
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError) as err:
            raise RuntimeError(f"env worker {w} died while building its env (exit code "
                               f"{self._procs[w].exitcode})") from err
        if kind != "ready":
            first_line = payload.strip().splitlines()[0]
            raise ConfigError(f"cannot build the env in worker {w}: {first_line}\n{payload}")
        return payload

    def _respawn(self, w: int) -> None:
        proc = self._procs[w]
        if proc is not None and proc.is_alive():
            proc.kill()
        if proc is not None:
            proc.join(timeout=5)
        self._conns[w].close()
        self._spawn(w)
        self._await_ready(w)

    def _request(self, idx: list[int], cmd: str, args: Sequence[Any]) -> list[Any]:
        """Send ``cmd`` for the envs ``idx`` to their workers first, then collect the answers (``_Failure``s)."""
        outs: dict[int, Any] = {}
        calls: dict[int, list[tuple[int, Any]]] = {}  # worker -> [(env, argument)] in the order of idx
        for i, arg in zip(idx, args, strict=True):
            if i in self._lost and cmd != "reset":
                if cmd == "step":  # the failed step is followed by a reset
                    self._lost.discard(i)
                outs[i] = _Failure("its worker process died while serving another env; the env was rebuilt")
                continue
            self._lost.discard(i)
            calls.setdefault(i // self._envs_per_worker, []).append((i, arg))
        died: dict[int, str] = {}
        for w, wcalls in calls.items():
            first = self._members[w][0]
            if cmd == "step":
                actions = np.stack([np.asarray(a, dtype=np.float64) for _, a in wcalls])
                msg = _STEP + bytes([len(wcalls)]) + bytes(i - first for i, _ in wcalls) + actions.tobytes()
            else:
                msg = _PICKLED + pickle.dumps((cmd, [(i - first, a) for i, a in wcalls]),
                                              protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self._conns[w].send_bytes(msg)
            except (BrokenPipeError, OSError) as err:
                died[w] = f"worker process is gone ({err})"
        for w, wcalls in calls.items():
            if w not in died:
                try:
                    answers = self._receive(w, cmd)
                except (EOFError, OSError):
                    self._procs[w].join(timeout=5)
                    died[w] = f"worker process died (exit code {self._procs[w].exitcode})"
            if w in died:
                for i, _ in wcalls:
                    outs[i] = _Failure(died[w])
                continue
            for (i, _), answer in zip(wcalls, answers, strict=True):
                outs[i] = answer
        # The dead worker's envs are rebuilt. A failed step or reset is followed by a reset of the envs it
        # named (with their next seeds); every other env of that worker fails at its next use instead.
        for w in died:
            self._respawn(w)
            self._lost.update(set(self._members[w]) - (set(idx) if cmd in ("step", "reset") else set()))
        return [outs[i] for i in idx]

    def _receive(self, w: int, cmd: str) -> list[Any]:
        reply = self._conns[w].recv_bytes()
        if cmd == "step":
            return [_unpack_transition(p, self._layout) if p[:1] == _OK else _Failure(p[1:].decode())
                    for p in _split_parts(reply)]
        return [payload if kind == "ok" else _Failure(payload) for kind, payload in pickle.loads(reply)]

    def _reset_many(self, idx, seeds, options):
        return self._request(idx, "reset", [(s, options) for s in seeds])

    def _step_many(self, idx, actions):
        return self._request(idx, "step", list(actions))

    def _call(self, index: int, cmd: str, arg: Any = None) -> Any:
        (out,) = self._request([index], cmd, [arg])
        if isinstance(out, _Failure):
            raise RuntimeError(f"task '{self.spec.task}': env {index}: {cmd} failed: {out.message}")
        return out

    def get_state(self, index: int) -> np.ndarray:
        return self._call(index, "get_state")

    def set_state(self, index: int, state: np.ndarray) -> None:
        self._call(index, "set_state", np.asarray(state))

    def render(self, index: int = 0, width: int = 256, height: int = 256) -> np.ndarray:
        return self._call(index, "render", (width, height))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            if conn is None:
                continue
            try:
                conn.send_bytes(_PICKLED + pickle.dumps(("close", [])))
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in zip(self._procs, self._conns, strict=True):
            if proc is None:
                continue
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean up with
            pass


# ============================================================================================= factory


def make_vector_env(factory: EnvFactory, num_envs: int, seed: int = 0, backend: str = "auto",
                    autoreset: bool = False, name: str | None = None,
                    max_episode_steps: int | None = None, spin_s: float = SPIN_S,
                    envs_per_worker: int = 1) -> VectorEnv:
    """Batch ``num_envs`` envs from ``factory``.

    ``backend``: ``inprocess``, ``workers`` (worker processes with ``envs_per_worker`` envs each; 0 spreads
    the envs evenly over the usable CPUs, one worker per CPU) or ``auto`` (workers when there are several
    envs and more than one CPU). ``name`` and ``max_episode_steps`` override the task name and time limit
    of the env's own spec; ``spin_s`` is how long idle workers poll before blocking (0: block at once).
    """
    if num_envs < 1:
        raise ConfigError(f"num_envs must be at least 1, got {num_envs}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if envs_per_worker < 0:
        raise ConfigError(f"envs_per_worker must be >= 0 (0: spread the envs over the CPUs), got {envs_per_worker}")
    if backend == "auto":
        backend = "workers" if num_envs > 1 and usable_cpus() > 1 else "inprocess"
    if envs_per_worker == 0:
        envs_per_worker = math.ceil(num_envs / usable_cpus())
    env: VectorEnv
    if backend == "workers":
        env = WorkerVectorEnv(factory, num_envs, seed, autoreset, spin_s=spin_s,
                              envs_per_worker=envs_per_worker)
    else:
        env = InProcessVectorEnv(factory, num_envs, seed, autoreset)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["task"] = name
    if max_episode_steps is not None:
        if max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
        changes["max_episode_steps"] = max_episode_steps
    if changes:
        env.spec = replace(env.spec, **changes)
    return env
