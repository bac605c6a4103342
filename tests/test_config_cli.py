"""Config composition, overrides, validation errors and the CLI's behaviour as a user sees it."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from robopol.cli.app import compose, config_groups, expand_sweep, field_docs, resume_overrides
from robopol.errors import ConfigError
from robopol.schemas import COMMANDS, TrainerConfig, group_schemas
from robopol.train.run import RunDir


def test_defaults_compose_into_typed_groups():
    cfg = compose("train", [])
    assert cfg.task.name == "point_reach" and cfg.policy.name == "mlp" and cfg.algo.name == "bc"
    assert OmegaConf.get_type(cfg.trainer) is TrainerConfig
    assert cfg.trainer.steps == 2000


def test_overrides_apply_and_are_typed():
    cfg = compose("train", ["policy.horizon=16", "trainer.batch_size=32", "algo.lr=3e-4"])
    assert cfg.policy.horizon == 16 and isinstance(cfg.policy.horizon, int)
    assert cfg.trainer.batch_size == 32
    assert cfg.algo.lr == pytest.approx(3e-4)


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose("train", ["policy.hidden_dim=64"])
    message = str(err.value)
    assert "unknown config key 'policy.hidden_dim'" in message and "hidden_dims" in message
    assert "\n" not in message


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"invalid value for 'policy.horizon'.*'abc'"):
        compose("train", ["policy.horizon=abc"])
    with pytest.raises(ConfigError, match=r"invalid value for 'trainer.progress'"):
        compose("train", ["trainer.progress=maybe"])


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"policy/no_such_head.*Available options in 'policy':.* mlp") as err:
        compose("train", ["policy=no_such_head"])
    assert "\n" not in str(err.value) and "Config search path" not in str(err.value)


def test_missing_required_value_is_named():
    with pytest.raises(ConfigError, match=r"missing required value\(s\): ckpt"):
        compose("eval", [])
    assert OmegaConf.is_missing(compose("eval", [], complete=False), "ckpt")


def test_sweep_expands_to_every_combination():
    combos = expand_sweep(["trainer.steps=1,2", "policy.horizon=4,8", "seed=3"])
    assert len(combos) == 4
    assert sorted(tuple(sorted(c)) for c in combos)[0] == ("policy.horizon=4", "seed=3", "trainer.steps=1")
    assert expand_sweep([]) == [[]]


def test_resume_replays_the_saved_overrides(tmp_path):
    RunDir(tmp_path).record_overrides(["policy.horizon=4", "trainer.steps=10", "data=x.zarr", "hydra.run.dir=y"])
    merged = resume_overrides([f"resume={tmp_path}", "trainer.steps=20"])
    assert "policy.horizon=4" in merged and "data=x.zarr" in merged
    assert "trainer.steps=10" not in merged and "trainer.steps=20" in merged
    assert f"hydra.run.dir={tmp_path}" in merged and "hydra.run.dir=y" not in merged
    with pytest.raises(ConfigError, match="no overrides.yaml there"):
        resume_overrides([f"resume={tmp_path / 'nope'}"])


def test_every_schema_field_has_a_doc_line():
    schemas = [*COMMANDS.values(), TrainerConfig, *(s for group in group_schemas().values() for s in group.values())]
    for schema in schemas:
        docs = field_docs(schema)
        nested = {"task", "policy", "algo", "robot", "trainer"}
        undocumented = [f.name for f in dataclasses.fields(schema)
                        if f.name not in docs and f.name not in nested and not f.name.startswith("_")]
        assert not undocumented, f"{schema.__name__} fields without a doc line: {undocumented}"


def test_config_groups_hide_schema_entries():
    groups = config_groups()
    assert "mlp" in groups["policy"] and "standin" in groups["robot"] and "point_reach" in groups["task"]
    assert not [o for options in groups.values() for o in options if "schema" in o]
    assert {"task", "policy", "algo", "robot"} <= set(groups)


def test_every_group_option_composes():
    for group, options in config_groups().items():
        command = "deploy" if group == "robot" else "train"
        for option in options:
            cfg = compose(command, [f"{group}={option}"], complete=False)
            assert cfg[group].name == option


# ----------------------------------------------------------------------------------------- CLI


def test_cli_prints_resolved_config(tmp_path):
    proc = run_cli("train", "--cfg", "job", "policy.horizon=16", cwd=tmp_path, check=True)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.policy.horizon == 16 and cfg.task.name == "point_reach"
    assert not (tmp_path / "runs").exists(), "--cfg job must not start a run"


def test_cli_config_errors_are_one_line(tmp_path):
    for args, needle in [(["policy.foo=1"], "unknown config key 'policy.foo'"),
                         (["trainer.steps=ten"], "invalid value for 'trainer.steps'"),
                         (["-m", "trainer.steps=1,x"], "invalid value for 'trainer.steps'")]:
        proc = run_cli("train", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_help_lists_groups_options_and_field_docs(tmp_path):
    top = run_cli("--help", cwd=tmp_path, check=True).stdout
    for sub in ("train", "eval", "collect", "data", "bench", "deploy", "demo"):
        assert f"  {sub} " in top
    help_text = run_cli("train", "--help", cwd=tmp_path, check=True).stdout
    assert "  policy: " in help_text and "mlp" in help_text and "point_reach" in help_text and "standin" in help_text
    assert "trainer.batch_size = 256    # Windows per gradient step." in help_text


def test_cli_unknown_subcommand_and_bad_bench_and_deploy_input(tmp_path):
    proc = run_cli("fly", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown subcommand 'fly'" in proc.stderr
    proc = run_cli("bench", "scale", "procs=[0]", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "robopol bench: error: procs must list process counts of at least 1, got [0]"
    ]
    assert proc.stdout == ""
    proc = run_cli("deploy", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "robopol deploy: error: robopol deploy needs ckpt=<run dir or checkpoint dir>, e.g. the output of "
        "robopol demo"
    ]


def test_demo_defaults_to_a_flow_policy_on_cube_single_task1():
    cfg = compose("demo", [])
    assert cfg.task.name == "cube_single_task1" and cfg.task.task_id == 1
    assert cfg.policy.name == "flow_mlp" and cfg.policy.backbone == "mlp" and cfg.policy.sampler == "euler"
    assert cfg.demos == 200 and cfg.trainer.eval_episodes == 100 and cfg.data == ""
