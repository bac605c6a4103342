"""The `recipe` config group of `robopol collect`: every recipe composes as documented, overrides still win,
a bad name is one clear line, and a recipe drives a real (tiny) collection into a valid store."""

from __future__ import annotations

import pytest
from conftest import run_cli

from robopol.cli.app import compose, config_groups
from robopol.collect import collect_episodes
from robopol.data.store import EpisodeStore
from robopol.data.validate import validate_store
from robopol.errors import ConfigError

MANIPULATION = ("cube_single", "cube_double", "scene", "puzzle_3x3")
# Gaussian action-noise std of the noisy recipes (OGBench's per-step perturbation as one isotropic std).
NOISY_STD = {"cube_single": 0.2, "cube_double": 0.2, "scene": 0.2, "puzzle_3x3": 0.25}
MAZES = {"pointmaze_umaze": 0.5, "pointmaze_medium": 0.5, "antmaze_umaze": 0.2}


def expected_recipes() -> dict[str, tuple[str, str, float, int]]:
    """recipe -> (task, expert variant, noise, OGBench task_id or -1 for the mazes)."""
    out: dict[str, tuple[str, str, float, int]] = {}
    for task in MANIPULATION:
        out[f"{task}_play"] = (task, "play", 0.0, 0)
        out[f"{task}_noisy"] = (task, "noisy", NOISY_STD[task], 0)
        out[f"{task}_task1_play"] = (f"{task}_task1", "play", 0.0, 1)
        out[f"{task}_task1_noisy"] = (f"{task}_task1", "noisy", NOISY_STD[task], 1)
    for task, noise in MAZES.items():
        out[f"{task}_noisy"] = (task, "waypoint", noise, -1)
    return out


def test_the_recipe_group_holds_exactly_the_documented_recipes():
    assert set(config_groups("collect")["recipe"]) == set(expected_recipes())
    # Only collect composes recipes: other commands' --help and option checks never see the group.
    assert "recipe" not in config_groups() and "recipe" not in config_groups("train")


@pytest.mark.parametrize("recipe", sorted(expected_recipes()))
def test_every_recipe_composes_with_its_task_expert_and_noise(recipe):
    task, expert, noise, task_id = expected_recipes()[recipe]
    cfg = compose("collect", [f"recipe={recipe}", "out=unused"])
    assert cfg.task.name == task and cfg.expert == expert
    assert cfg.noise == pytest.approx(noise) and cfg.random_fraction == 0.0
    if task_id >= 0:
        assert cfg.task.task_id == task_id
    assert cfg.episodes >= 250 and cfg.num_workers == 2 and cfg.seed == 0


def test_no_recipe_keeps_the_plain_defaults():
    cfg = compose("collect", ["out=unused"])
    assert cfg.task.name == "point_reach" and cfg.expert == "" and cfg.noise == 0.0 and cfg.episodes == 100


def test_command_line_values_and_task_beat_the_recipe_in_any_order():
    for overrides in (["recipe=cube_single_task1_play", "task=cube_single_task3"],
                      ["task=cube_single_task3", "recipe=cube_single_task1_play"]):
        cfg = compose("collect", [*overrides, "episodes=7", "noise=0.05", "out=unused"])
        assert cfg.task.name == "cube_single_task3" and cfg.task.task_id == 3
        assert cfg.expert == "play" and cfg.episodes == 7 and cfg.noise == pytest.approx(0.05)
    cfg = compose("collect", ["recipe=puzzle_3x3_task1_noisy", "task.max_episode_steps=1000", "out=unused"])
    assert cfg.task.name == "puzzle_3x3_task1" and cfg.task.max_episode_steps == 1000


def test_unknown_recipe_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"Could not find 'recipe/cube_single_plya'.*Available options in "
                                          r"'recipe':.*cube_single_play") as err:
        compose("collect", ["recipe=cube_single_plya", "out=unused"])
    assert "\n" not in str(err.value)
    proc = run_cli("collect", "recipe=cube_single_plya", f"out={tmp_path / 'x.zarr'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Could not find 'recipe/cube_single_plya'" in lines[0], proc.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_collect_help_lists_the_recipes(tmp_path):
    text = run_cli("collect", "--help", cwd=tmp_path, check=True).stdout
    assert "  recipe: " in text and "cube_single_task1_play" in text and "pointmaze_umaze_noisy" in text
    assert "  recipe: " not in run_cli("train", "--help", cwd=tmp_path, check=True).stdout


def test_a_recipe_collects_a_valid_store_through_the_cli(tmp_path):
    out = tmp_path / "maze.zarr"
    run_cli("collect", "recipe=pointmaze_umaze_noisy", "episodes=2", "num_workers=0", f"out={out}", cwd=tmp_path,
            check=True)
    assert validate_store(str(out)) == []
    store = EpisodeStore.open(str(out))
    assert len(store) == 2 and store.attrs["task"] == "pointmaze_umaze"
    assert {"observation", "goal", "action", "reward", "terminal", "state"} <= set(store.keys())
    meta = store.meta_arrays()
    assert list(meta["seed"]) == [0, 1] and (meta["noise"] == 0.5).all() and not meta["random"].any()


def test_a_single_task_play_recipe_records_its_task(tmp_path):
    cfg = compose("collect", ["recipe=cube_single_task1_play", "episodes=2", "task.max_episode_steps=15",
                              f"out={tmp_path / 'cube.zarr'}"])
    result = collect_episodes(cfg.task, cfg.out, cfg.episodes, noise=cfg.noise, seed=cfg.seed, expert=cfg.expert,
                              random_fraction=cfg.random_fraction, num_workers=0, progress=False)
    assert result.episodes == 2 and result.steps == 30
    assert validate_store(cfg.out) == []
    store = EpisodeStore.open(cfg.out)
    assert store.attrs["task"] == "cube_single_task1" and "goal" not in store.keys()
    assert (store.meta_arrays()["task_id"] == 1).all()
    assert (store.read("reward") <= 0).all()  # single-task reward: -(cubes away from their goal), 0 at success
