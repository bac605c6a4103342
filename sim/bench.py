"""``robopol bench sim``: env steps/s per suite, one process against the worker pool, and collection speed.

For each task, envs take uniformly random actions with auto-reset (resets are part of the cost), in this
process one after the other and in two worker processes; the speed-up is their ratio. The pool is measured
twice: 2 envs with one per worker (every step is a message per env) and 8 envs with 4 per worker
(``task.envs_per_worker=4``: one message carries 4 steps). Collection throughput is ``collect_episodes``
with its expert, in this process and with two workers (whole episodes per worker, so no per-step
messages), measured after the envs are built.

Where Isaac Lab 3 is installed (the Python 3.12 environment), the ``isaaclab`` suite adds one row per env count
(4 ... 1024) for the Isaac Lab UR5e reach and push tasks on the tensor path, each in a fresh process, beside the
MuJoCo worker pool on OGBench's UR5e cube task, and plots them (``sim_isaaclab.png``); ``sim_suites=[isaaclab]``
measures only those.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from robopol.bench.report import write_report
from robopol.cli.app import compose
from robopol.collect import collect_episodes
from robopol.errors import ConfigError
from robopol.tasks import make_env

# One task per suite entry; the expert tasks also measure collection.
STEP_TASKS = ("cube_single", "cube_double", "scene", "puzzle_3x3", "pointmaze_umaze", "antmaze_umaze",
              "fetch_push", "halfcheetah", "hopper", "walker2d", "ant")
QUICK_STEP_TASKS = ("cube_single", "pointmaze_umaze", "fetch_push", "hopper")
COLLECT_TASKS = {"cube_single": 40, "pointmaze_umaze": 100, "antmaze_umaze": 10, "fetch_push": 100}
QUICK_COLLECT_TASKS = {"cube_single": 6}
SUITE = {"cube_single": "ogbench", "cube_double": "ogbench", "scene": "ogbench", "puzzle_3x3": "ogbench",
         "pointmaze_umaze": "maze", "antmaze_umaze": "maze", "fetch_push": "fetch",
         "halfcheetah": "locomotion", "hopper": "locomotion", "walker2d": "locomotion", "ant": "locomotion"}


def _task(name: str, backend: str | None = None, envs_per_worker: int = 1) -> Any:
    overrides = [f"task={name}", "out=unused"] + ([f"task.backend={backend}"] if backend else [])
    overrides.append(f"task.envs_per_worker={envs_per_worker}")
    return compose("collect", overrides).task


def backend_rates(name: str, num_envs: int, seconds: float, windows: int = 8, seed: int = 0,
                  envs_per_worker: int = 1) -> tuple[float, float, float]:
    """Env steps/s (summed over envs) in this process and with the worker pool, and their ratio.

    Random actions with auto-reset. The two back ends take turns in ``windows`` short windows, so that load
    from other users of a shared machine hits both alike; the results are medians over the windows.
    """
    envs = {b: make_env(_task(name, b, envs_per_worker), num_envs=num_envs, seed=seed)
            for b in ("inprocess", "workers")}
    try:
        spec = envs["inprocess"].spec.action
        low, high = np.asarray(spec.low, dtype=np.float64), np.asarray(spec.high, dtype=np.float64)
        rng = np.random.default_rng(seed)

        def run(env: Any, duration: float) -> float:
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < duration:
                env.step(rng.uniform(low, high, size=(num_envs, *spec.shape)))
                steps += num_envs
            return steps / (time.perf_counter() - t0)

        for env in envs.values():
            env.autoreset = True
            env.reset(seed=seed)
            run(env, 0.2)  # warm-up: the first steps touch cold caches and lazily built objects
        rates: dict[str, list[float]] = {b: [] for b in envs}
        for _ in range(windows):
            for b, env in envs.items():
                rates[b].append(run(env, seconds / windows))
    finally:
        for env in envs.values():
            env.close()
    single, pool = np.array(rates["inprocess"]), np.array(rates["workers"])
    return float(np.median(single)), float(np.median(pool)), float(np.median(pool / single))


def _count(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def cpu_ceiling(processes: int = 2, work: int = 6_000_000) -> float:
    """How much faster ``processes`` pure-Python loops finish side by side than one after the other.

    On a machine shared with other users this is the best speed-up any worker pool could reach at that
    moment (2.0 on two idle cores); the bench reports it next to each pool measurement.
    """
    import multiprocessing as mp

    with mp.get_context("forkserver").Pool(processes) as pool:
        pool.map(_count, [1000] * processes)  # the workers are up before the clock starts
        t0 = time.perf_counter()
        for _ in range(processes):
            _count(work)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.map(_count, [work] * processes, chunksize=1)
        parallel = time.perf_counter() - t0
    return serial / parallel


def collect_rate(name: str, episodes: int, num_workers: int) -> tuple[float, float]:
    """(steps/s once the envs are built, expert success rate) of collecting ``episodes`` episodes."""
    with tempfile.TemporaryDirectory() as tmp:
        result = collect_episodes(_task(name), str(Path(tmp) / "bench.zarr"), episodes=episodes,
                                  num_workers=num_workers, progress=False)
    return result.steps_per_second, result.expert_success_rate


ISAACLAB_TASKS = ("isaaclab/ur5e_reach", "isaaclab/ur5e_push")
ISAACLAB_REFERENCE = "cube_single"
"""The MuJoCo task the Isaac Lab rows are compared with: OGBench's UR5e arm (with its gripper and a cube)."""


def _isaaclab_worker(task: str, num_envs: int, seconds: float, seed: int) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    env = make_env(compose("collect", [f"task={task}", "out=unused"]).task, num_envs=num_envs, seed=seed)
    try:
        startup = time.perf_counter() - t0
        env.autoreset = True
        env.reset_tensors(seed)
        generator = torch.Generator(device=env.device).manual_seed(seed)

        def actions() -> torch.Tensor:
            return torch.rand((num_envs, *env.spec.action.shape), generator=generator, device=env.device) * 2 - 1

        for _ in range(5):  # warm-up: the first steps run lazily built kernels
            env.step_tensors(actions())
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            env.step_tensors(actions())
            steps += num_envs
        return {"steps_s": steps / (time.perf_counter() - t0), "startup_s": startup, "device": str(env.device)}
    finally:
        env.close()


def isaaclab_rate(task: str, num_envs: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    """Env steps/s of an Isaac Lab task with ``num_envs`` envs and random actions (auto-reset), on the tensor
    path; a fresh process per measurement, as Isaac Lab runs one simulation per process."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_isaaclab_worker, (task, num_envs, seconds, seed))


def plot_isaaclab(rows: list[dict[str, Any]], path: Path) -> None:
    """Env steps/s against the number of envs (log-log), with the MuJoCo pool as a horizontal line."""
    from robopol.bench.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for task in dict.fromkeys(r["task"] for r in rows if r["suite"] == "isaaclab"):
        isaac = [r for r in rows if r["task"] == task]
        ax.plot([r["envs"] for r in isaac], [r["isaaclab_steps_s"] for r in isaac], "o-",
                label=f"Isaac Lab {task} ({isaac[0]['device']})")
    for r in rows:
        if r["task"] == ISAACLAB_REFERENCE and "grouped_pool_steps_s" in r:
            ax.axhline(r["grouped_pool_steps_s"], color="gray", ls="--",
                       label=f"MuJoCo pool, {r['task']} ({r['grouped_envs']} envs)")
    ax.set(xscale="log", yscale="log", xlabel="parallel envs", ylabel="env steps / s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def bench_isaaclab(env_counts: list[int], seconds: float, reference: bool = True) -> list[dict[str, Any]]:
    """Isaac Lab rows (one per task and env count) and, with ``reference``, a row for the MuJoCo worker pool
    on the OGBench UR5e task to compare them with (the MuJoCo suite's own cube_single row serves otherwise)."""
    import importlib.util

    if importlib.util.find_spec("isaaclab_newton") is None:
        print("bench sim: Isaac Lab rows skipped: Isaac Lab 3 is not installed in this environment "
              "(Python 3.12 with the 'isaaclab' extra: scripts/isaaclab_env.sh)")
        return []
    rows = []
    for task in ISAACLAB_TASKS:
        for n in env_counts:
            result = isaaclab_rate(task, n, seconds)
            rows.append({"suite": "isaaclab", "task": task, "envs": n, "device": result["device"],
                         "isaaclab_steps_s": result["steps_s"], "startup_s": result["startup_s"]})
    if reference:
        _, pool8, _ = backend_rates(ISAACLAB_REFERENCE, 8, seconds, envs_per_worker=4)
        rows.append({"suite": "ogbench", "task": ISAACLAB_REFERENCE, "grouped_envs": 8, "device": "cpu",
                     "grouped_pool_steps_s": pool8})
    return rows


def bench_sim(out_dir: str, quick: bool = False, suites: tuple[str, ...] = ("mujoco", "isaaclab"),
              isaaclab_envs: tuple[int, ...] = (4, 16, 64, 256, 1024)) -> list[dict[str, Any]]:
    """Measure, print the table and write ``out_dir/sim.json``; returns the rows."""
    unknown = set(suites) - {"mujoco", "isaaclab"}
    if unknown:
        raise ConfigError(f"bench sim: unknown suites {sorted(unknown)}; choose from mujoco, isaaclab")
    if any(n < 1 for n in isaaclab_envs):
        raise ConfigError(f"bench sim: isaaclab_envs must all be at least 1, got {list(isaaclab_envs)}")
    seconds = 1.0 if quick else 4.0
    rows: list[dict[str, Any]] = []
    if quick:
        isaaclab_envs = isaaclab_envs[:2]
    if "mujoco" not in suites:
        rows += bench_isaaclab(list(isaaclab_envs), seconds)
        if rows:
            plot_isaaclab(rows, Path(out_dir) / "sim_isaaclab.png")
        write_report("sim", rows, out_dir, notes=_ISAACLAB_NOTE)
        return rows
    for name in QUICK_STEP_TASKS if quick else STEP_TASKS:
        ceiling = cpu_ceiling(2)
        single, pool, speedup = backend_rates(name, 2, seconds)
        single8, pool8, speedup8 = backend_rates(name, 8, seconds, envs_per_worker=4)
        rows.append({"suite": SUITE[name], "task": name, "envs": 2,
                     "single_process_steps_s": single, "worker_pool_steps_s": pool, "speedup": speedup,
                     "grouped_envs": 8, "grouped_single_process_steps_s": single8,
                     "grouped_pool_steps_s": pool8, "grouped_speedup": speedup8, "cpu_ceiling": ceiling})
    for name, episodes in (QUICK_COLLECT_TASKS if quick else COLLECT_TASKS).items():
        row = next((r for r in rows if r["task"] == name), None)
        if row is None:
            row = {"suite": SUITE[name], "task": name}
            rows.append(row)
        row["collect_steps_s_1proc"], _ = collect_rate(name, max(2, episodes // 2), 0)
        row["collect_steps_s_2workers"], row["expert_success"] = collect_rate(name, episodes, 2)
    cube = next((r for r in rows if r["task"] == "cube_single"), None)
    notes = (f"Random actions with auto-reset; each back end stepped {seconds:.0f} s in 8 alternating windows, "
             f"medians reported (speed-up: median of the per-window ratios). Pool: 2 worker processes, with 1 env "
             f"each (envs=2) and with 4 envs each (grouped_*, 8 envs; task.envs_per_worker=4). cpu_ceiling: "
             f"speed-up of 2 pure-Python loops run side by side, measured just before (the most a pool could "
             f"reach on this machine then). Collection with the task's expert at zero noise, after the workers' "
             f"envs are built.")
    if cube is not None:
        best = max(cube["speedup"], cube["grouped_speedup"])
        verdict = "meets" if best >= 1.7 else "misses"
        notes += (f" cube_single worker-pool speed-up {cube['speedup']:.2f}x with 1 env per worker, "
                  f"{cube['grouped_speedup']:.2f}x with 4 ({verdict} the 1.7x target).")
    if "isaaclab" in suites:
        isaac = bench_isaaclab(list(isaaclab_envs), seconds, reference=cube is None)
        if isaac:
            rows += isaac
            notes += " " + _ISAACLAB_NOTE
            plot_isaaclab(rows, Path(out_dir) / "sim_isaaclab.png")
    write_report("sim", rows, out_dir, notes=notes)
    return rows


_ISAACLAB_NOTE = ("Isaac Lab rows: the UR5e reach and push tasks (kit-less Newton, MuJoCo-Warp solver; a 0.05 s "
                  "control step of 2 physics steps for reach, 5 for push, which has the cube's contacts), random "
                  "actions with auto-reset on the tensor path, one fresh process per task and env count (startup_s: "
                  "to the first step, with the Warp kernel cache warm). Beside them, the MuJoCo worker pool (2 "
                  f"workers x 4 envs) on {ISAACLAB_REFERENCE}, OGBench's UR5e with a gripper and a cube.")
