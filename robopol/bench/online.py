"""``robopol bench online``: the on-policy methods against Gaussian PPO on locomotion, and mode coverage on a
multi-goal task.

For each task in ``tasks`` (default Hopper and HalfCheetah), each method in ``methods`` (``ppo``,
``policyflow``, ``dppo``) and each seed, the suite trains ``iterations`` iterations from scratch with the
method's defaults (2048 env steps per iteration; envs in the training process), then reports per task and
method: the training-episode return at the end (mean of the last tenth of the logged iterations, then mean and
std over seeds), the evaluation return of the deterministic policy, the median seconds per iteration, and
both against Gaussian PPO: ``return_gap_pct``, the return's difference to PPO's in percent of PPO's
magnitude, and ``time_vs_ppo``, the ratio of seconds per iteration. The issue's targets read off them:
PolicyFlow within 10% of PPO's return (``return_gap_pct >= -10``) at at most 1.5 times its wall-clock
(``time_vs_ppo <= 1.5``). A plot shows return against env steps and against wall-clock, mean +- std over
seeds. Each part writes its own table and JSON: ``online``, ``online_coverage`` and ``online_finetune``.

With ``coverage=true`` every method also trains on ``task=multigoal`` (6 equally good goals around the
start) and ``coverage_episodes`` episodes of its *stochastic* policy (the rollout sampler) are counted by the
goal they reach (or as misses); ``modes`` counts the goals reached in at least 5% of the episodes, and
``heading`` whether the policy acts on its position (:class:`Coverage`). The draws are seeded;
``online_coverage.png`` shows each method's first-seed paths.

With ``init=<BC run>`` (a diffusion policy), DPPO also fine-tunes that checkpoint on its own task for
``finetune_iterations`` iterations per seed; the table gives the BC policy's success and the fine-tuned one's on
the same evaluation episodes (``episodes`` of them, the seeds the training run evaluates with).

Runs live in ``out_dir/online/<task>/<method>/seed<k>``; finished runs are reused and interrupted ones resume,
and ``jobs=N`` trains N runs side by side (see ``robopol bench offline``). Budgets scale by overrides alone
(``iterations``, ``extra=[algo.num_envs=64,...]``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from robopol.bench.offline import _checkpoint_step, _train_side_by_side, _trained_to
from robopol.bench.report import pyplot, save_figure, write_report
from robopol.errors import ConfigError
from robopol.train.run import read_metrics

console = Console(soft_wrap=True)

# Per method: its policy and algorithm. The generative policies get networks sized for a CPU budget: the flow
# as wide as the Gaussian actor (64 x 64; the port's 3 x 256 costs 2.3x PPO's wall-clock per iteration),
# the diffusion MLP 3 x 256 (with DPPO's 3 x 512 a Hopper iteration took 6.3 s). Larger: an extra= override.
# PolicyFlow's flow input z has std 0.1 (the port: 1). Only the Gaussian noise carries the credit for exploring
# (the ratio sees the endpoint as given), so the z-spread the identity flow starts with is exploration without
# credit, which the flow is slow to shrink (docs/online-rl.md, "Prior scale").
RECIPES: dict[str, list[str]] = {
    "ppo": ["algo=ppo", "policy=gaussian"],
    "policyflow": ["algo=policyflow", "policy=noisy_flow", "policy.hidden_dims=[64,64]", "policy.prior_std=0.1"],
    # from scratch: DPPO's gym rates (its defaults are robomimic's, for fine-tuning a BC policy)
    "dppo": ["algo=dppo", "policy=diffusion_mlp", "policy.horizon=1", "policy.action_steps=1", "policy.obs_steps=1",
             "policy.hidden_dims=[256,256,256]", "algo.lr=1e-4", "algo.critic_warmup=0"],
}
COVERAGE_TASK = "multigoal"
MODE_SHARE = 0.05
"""A goal counts as a kept mode when at least this share of the episodes reaches it."""
HEADING_RADIUS = 0.3
"""Where on each goal's ray the heading share is measured, as a fraction of the way to the goal."""
HEADING_DRAWS = 10
"""Batches of actions (one per env) drawn at each of those points."""


def bench_online(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train (or reuse) every (task, method, seed) run, print the table, write JSON and the plot."""
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    if not cfg.methods:
        raise ConfigError(f"methods is empty; name at least one of {', '.join(RECIPES)}")
    unknown = [m for m in cfg.methods if m not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; available: {', '.join(RECIPES)}")
    if cfg.iterations < 1:
        raise ConfigError(f"iterations must be at least 1, got {cfg.iterations}")
    tasks = [*cfg.tasks, *([COVERAGE_TASK] if cfg.coverage else [])]
    finetune = _finetune_runs(cfg) if cfg.init else {}
    root = Path(cfg.out_dir) / "online"
    quick = ["algo.num_envs=2", "algo.rollout_steps=16", "algo.minibatches=2", "algo.critic_hidden_dims=[16]",
             "policy.hidden_dims=[16]"] if cfg.quick else []
    runs: dict[tuple[str, str], list[Path]] = {}
    pending: list[tuple[Path, list[str]]] = []
    for task in tasks:
        backend = ["task.backend=inprocess"] if "backend" in compose("train", [f"task={task}", *RECIPES["ppo"]]).task \
            else []
        for method in cfg.methods:
            for seed in cfg.seeds:
                run = root / task / method / f"seed{seed}"
                runs.setdefault((task, method), []).append(run)
                if _trained_to(run, cfg.iterations):
                    continue
                overrides = [*RECIPES[method], f"task={task}", *backend, f"trainer.steps={cfg.iterations}",
                             "trainer.log_every=1", f"trainer.eval_every={cfg.iterations}",
                             f"trainer.eval_episodes={cfg.episodes}", f"trainer.ckpt_every={cfg.iterations}",
                             "trainer.videos=false", f"trainer.progress={not cfg.quick}", "trainer.num_threads=1",
                             f"seed={seed}", *quick, *cfg.extra]
                if _checkpoint_step(run) > 0:
                    overrides.append(f"resume={run.resolve()}")
                pending.append((run, overrides))
    for run, overrides in finetune.values():
        if not _trained_to(run, cfg.finetune_iterations):
            pending.append((run, [*overrides, *([f"resume={run.resolve()}"] if _checkpoint_step(run) > 0 else [])]))
    if cfg.jobs > 1:
        _train_side_by_side(pending, cfg.jobs)
    for run, overrides in pending if cfg.jobs <= 1 else []:
        console.print(f"[bold]{run.parent.parent.name} {run.parent.name}[/] {run.name}: training -> {run}")
        train(compose("train", overrides), run, overrides)
    rows = summarise(runs, cfg.tasks)
    if rows:
        write_report("online", rows, cfg.out_dir, notes=(
            f"{cfg.iterations} iterations from scratch per run, seeds {list(cfg.seeds)}; final_return = "
            f"training-episode return over the last tenth of the iterations; eval_return = deterministic policy "
            f"over {cfg.episodes} episodes; s_per_iter = median wall-clock per iteration (rollout + update); "
            f"return_gap_pct and time_vs_ppo against ppo on the same task"))
        plot_online(runs, cfg.tasks, Path(cfg.out_dir) / "online.png")
    if cfg.coverage:
        coverage, first_seeds = [], {}
        for method in cfg.methods:
            results = [coverage_rollouts(run, cfg.coverage_episodes, seed=20_000 + i)
                       for i, run in enumerate(runs[(COVERAGE_TASK, method)])]
            counts = [r.counts for r in results]
            first_seeds[method] = results[0]
            coverage.append({"task": COVERAGE_TASK, "method": method, "seeds": len(counts),
                             "modes_per_seed": json.dumps([kept_modes(c) for c in counts]),
                             "success": float(np.mean([1 - c[-1] / c.sum() for c in counts])),
                             "heading": float(np.mean([r.heading for r in results])),
                             "goal_counts": json.dumps([c.tolist() for c in counts])})
        write_report("online_coverage", coverage, cfg.out_dir, notes=(
            f"{cfg.iterations} iterations on {COVERAGE_TASK} per run; {cfg.coverage_episodes} episodes of the "
            f"stochastic rollout policy per seed, counted by the goal reached (last count: none); modes = goals "
            f"reached in >= {MODE_SHARE:.0%} of the episodes; heading = share of the actions drawn "
            f"{HEADING_RADIUS:.0%} of the way out along each goal's ray that head for that goal"))
        plot_coverage(first_seeds, Path(cfg.out_dir) / "online_coverage.png")
        rows += coverage
    if finetune:
        row = finetune_row(cfg, [run for run, _ in finetune.values()], list(finetune))
        write_report("online_finetune", [row], cfg.out_dir, notes=(
            f"DPPO fine-tuning {cfg.init} for {cfg.finetune_iterations} iterations per seed; success of the BC "
            f"checkpoint and of the fine-tuned policy on the same {cfg.episodes} evaluation episodes per seed"))
        rows.append(row)
    return rows


def _finetune_runs(cfg: DictConfig) -> dict[int, tuple[Path, list[str]]]:
    """Per seed: the DPPO run fine-tuning ``cfg.init`` and its overrides."""
    from robopol.checkpoint import load_checkpoint

    task = load_checkpoint(cfg.init).config.task
    backend = ["task.backend=inprocess"] if "backend" in task else []
    quick = ["algo.num_envs=2", "algo.rollout_steps=8", "algo.minibatches=2", "algo.critic_hidden_dims=[16]"] \
        if cfg.quick else []
    return {seed: (Path(cfg.out_dir) / "online" / task.name / "dppo_finetune" / f"seed{seed}",
                   ["algo=dppo", f"init={Path(cfg.init).resolve()}", f"task={task.name}", *backend,
                    "algo.rollout_steps=64", f"trainer.steps={cfg.finetune_iterations}", "trainer.log_every=1",
                    f"trainer.eval_every={cfg.finetune_iterations}", f"trainer.eval_episodes={cfg.episodes}",
                    f"trainer.ckpt_every={cfg.finetune_iterations}", "trainer.videos=false",
                    f"trainer.progress={not cfg.quick}", "trainer.num_threads=1", f"seed={seed}", *quick])
            for seed in cfg.seeds}


def finetune_row(cfg: DictConfig, runs: list[Path], seeds: list[int]) -> dict[str, Any]:
    """The BC checkpoint's success and the fine-tuned runs', each on its run's evaluation episodes."""
    from robopol.runtime import evaluate, load_actor
    from robopol.tasks import make_env

    actor, ckpt = load_actor(cfg.init)
    env = make_env(ckpt.config.task, num_envs=min(10, cfg.episodes), seed=0)
    try:  # the episodes the online loop evaluates with: seed 10_000 + run seed
        before = [evaluate(env, actor, cfg.episodes, seed=10_000 + seed).success_rate for seed in seeds]
    finally:
        env.close()
    after = [[r["eval/success_rate"] for r in read_metrics(run / "metrics.jsonl") if "eval/success_rate" in r][-1]
             for run in runs]
    return {"task": ckpt.config.task.name, "method": "dppo fine-tuning BC", "seeds": len(runs),
            "bc_success": float(np.mean(before)), "success": float(np.mean(after)),
            "gain_points": 100 * float(np.mean(after) - np.mean(before)),
            "per_seed": json.dumps([[round(b, 3), round(a, 3)] for b, a in zip(before, after, strict=True)])}


def curves(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Env steps, cumulative wall-clock (s) and training-episode return of the iterations that logged one."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if "train/iteration_s" in r]
    seconds = np.cumsum([r["train/iteration_s"] for r in records])  # every iteration, with an episode end or not
    ended = [i for i, r in enumerate(records) if "train/episode_return" in r]
    return (np.array([records[i]["train/env_steps"] for i in ended]), seconds[ended],
            np.array([records[i]["train/episode_return"] for i in ended]))


def summarise(runs: dict[tuple[str, str], list[Path]], tasks: list[str]) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        stats = {}
        for (run_task, method), paths in runs.items():
            if run_task != task:
                continue
            finals, evals, per_iter, env_steps = [], [], [], 0
            for run in paths:
                _, _, returns = curves(run)
                # no episode ended (a budget shorter than an episode): no training return to report
                finals.append(float(returns[-max(1, len(returns) // 10):].mean()) if len(returns) else float("nan"))
                records = read_metrics(run / "metrics.jsonl")
                evals += [r["eval/mean_return"] for r in records if "eval/mean_return" in r][-1:]
                per_iter += [r["train/iteration_s"] for r in records if "train/iteration_s" in r]
                env_steps = max([env_steps, *(r["train/env_steps"] for r in records if "train/env_steps" in r)])
            stats[method] = {"task": task, "method": method, "seeds": len(paths),
                             "final_return": float(np.mean(finals)), "final_return_std": float(np.std(finals)),
                             "per_seed": json.dumps([round(f, 1) for f in finals]),
                             "eval_return": float(np.mean(evals)) if evals else float("nan"),
                             "env_steps": int(env_steps), "s_per_iter": float(np.median(per_iter))}
        for method, row in stats.items():
            if "ppo" in stats and method != "ppo":
                ppo = stats["ppo"]
                # signed, relative to |PPO's return|: locomotion returns can be negative early on
                row["return_gap_pct"] = 100 * (row["final_return"] - ppo["final_return"]) / abs(ppo["final_return"])
                row["time_vs_ppo"] = row["s_per_iter"] / ppo["s_per_iter"]
            rows.append(row)
    return rows


@dataclass
class Coverage:
    """One multi-goal run's stochastic rollouts: goals reached, paths, and how state-dependent it acts."""

    counts: np.ndarray
    """Episodes per goal reached; the last entry counts the episodes that reached none."""
    paths: list[np.ndarray]
    """Positions (steps + 1, 2) of the first batch of episodes, each up to its end."""
    goals: np.ndarray
    """The task's goals (G, 2) around the start at the origin."""
    tolerance: float
    """The distance to a goal that counts as reaching it."""
    heading: float
    """Share of the actions drawn on each goal's ray, ``HEADING_RADIUS`` of the way out, that head for that
    goal, averaged over goals: near 1 for a policy that keeps to the side it is on, about 1 / goals for one
    that acts the same everywhere."""


@torch.no_grad()
def coverage_rollouts(run: Path, episodes: int, seed: int) -> Coverage:
    """Episodes of the run's stochastic rollout policy on the multi-goal task, counted by the goal they
    reached, with the paths of the first batch and the heading share (:class:`Coverage`)."""
    from robopol.checkpoint import load_checkpoint
    from robopol.tasks import make_env
    from robopol.train.online import ACTION_KEY, flat_obs, policy_normalizer
    from robopol.train.trainer import build

    ckpt = load_checkpoint(run)
    cfg = ckpt.config
    env = make_env(cfg.task, num_envs=min(episodes, 50), seed=seed)
    # seeded draws: the same run gives the same counts, and the caller's random stream is left as it was
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            obs_keys = sorted(env.spec.observation)
            policy = build(cfg.policy, "policy", obs_dim=ckpt.manifest["obs_dim"],
                           action_dim=ckpt.manifest["action_dim"])
            algo = build(cfg.algo, "algo", policy=policy, total_steps=cfg.trainer.steps)
            ckpt.load_modules(algo.modules())
            normalizer = policy_normalizer(algo, env.spec, obs_keys)

            def actions(obs: dict[str, np.ndarray]) -> np.ndarray:
                action = algo.act(algo.normalize_obs(flat_obs(obs, obs_keys)))["action"].clamp(-1, 1).double()
                return normalizer.unnormalize(ACTION_KEY, action).numpy()

            counts, paths = _goal_episodes(env, actions, episodes, seed)
            heading = []
            for k, goal in enumerate(env.goals):
                on_ray = {"pos": np.repeat(HEADING_RADIUS * goal[None].astype(np.float32), env.num_envs, axis=0)}
                drawn = np.concatenate([actions(on_ray) for _ in range(HEADING_DRAWS)])
                heading.append(heading_share(drawn, env.goals, k))
            return Coverage(counts, paths, env.goals, env.goal_tolerance, float(np.mean(heading)))
        finally:
            env.close()


def _goal_episodes(env: Any, actions: Callable[[dict[str, np.ndarray]], np.ndarray], episodes: int,
                   seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``episodes`` episodes of ``actions`` on the multi-goal ``env``: per goal reached, then the misses, and
    the paths of the first batch (see :class:`Coverage`)."""
    missed = len(env.goals)
    counts = np.zeros(missed + 1, dtype=np.int64)
    paths: list[np.ndarray] = []
    batch = 0
    while counts.sum() < episodes:
        obs = env.reset(seed=seed + batch * env.num_envs)
        done = np.zeros(env.num_envs, dtype=bool)
        final = np.full(env.num_envs, missed, dtype=np.int64)
        positions, steps = [obs["pos"]], np.zeros(env.num_envs, dtype=np.int64)
        while not done.all():
            result = env.step(actions(obs))
            reached = result.success & ~done
            final[reached] = env.nearest_goal(result.obs["pos"][reached])
            steps[~done] += 1
            done |= result.terminated | result.truncated
            obs = result.obs
            positions.append(obs["pos"])
        take = min(env.num_envs, episodes - int(counts.sum()))
        counts += np.bincount(final[:take], minlength=len(counts))
        if batch == 0:
            paths = [np.stack(positions)[: steps[i] + 1, i] for i in range(take)]
        batch += 1
    return counts, paths


def heading_share(actions: np.ndarray, goals: np.ndarray, goal: int) -> float:
    """Share of ``actions`` (N, 2) whose direction is closest to that of ``goals[goal]`` (goals: (G, 2) around
    the origin, the start)."""
    unit = goals / np.linalg.norm(goals, axis=1, keepdims=True)
    return float(((actions @ unit.T).argmax(axis=1) == goal).mean())


def kept_modes(counts: np.ndarray) -> int:
    """Goals reached in at least ``MODE_SHARE`` of all episodes (``counts``: per goal, then the misses)."""
    return int((counts[:-1] >= MODE_SHARE * counts.sum()).sum())


def plot_coverage(results: dict[str, Coverage], out: Path) -> Path:
    """One panel per method: the paths of its first seed's stochastic episodes on the multi-goal task."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 4.3), squeeze=False)
    for ax, (method, result) in zip(axes[0], results.items(), strict=True):
        for path in result.paths:
            ax.plot(path[:, 0], path[:, 1], lw=0.7, alpha=0.6)
        for goal in result.goals:
            ax.add_patch(plt.Circle(tuple(goal), result.tolerance, color="k", fill=False))
        ax.plot(0, 0, "k+")
        reach = 1.1 * max(np.abs(result.goals).max(), *(np.abs(path).max() for path in result.paths))
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{method} (first seed): {kept_modes(result.counts)} of {len(result.goals)} goals kept\n"
                     f"{1 - result.counts[-1] / result.counts.sum():.0%} reached, heading {result.heading:.2f}",
                     fontsize=9)
    return save_figure(fig, out)


def plot_online(runs: dict[tuple[str, str], list[Path]], tasks: list[str], out: Path) -> Path | None:
    """Training return against env steps (top) and wall-clock (bottom), one column per task."""
    if not tasks:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        for (run_task, method), paths in runs.items():
            if run_task != task:
                continue
            data = [curves(run) for run in paths]
            length = min(len(d[0]) for d in data)
            returns = np.array([d[2][:length] for d in data])
            mean, std = returns.mean(0), returns.std(0)
            for row, x in enumerate((data[0][0][:length], np.mean([d[1][:length] for d in data], axis=0))):
                ax = axes[row, col]
                ax.plot(x, mean, label=f"{method} ({len(paths)} seeds)")
                ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        axes[0, col].set_title(f"robopol bench online: {task}")
        axes[0, col].set_xlabel("env steps")
        axes[1, col].set_xlabel("wall-clock (s)")
        for ax in axes[:, col]:
            ax.set_ylabel("training-episode return")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return save_figure(fig, out)
