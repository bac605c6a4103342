"""Hydra plumbing behind the ``robopol`` command: pre-validation, resume, help, dispatch."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.resources
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from robopol.errors import ConfigError, RobopolError
from robopol.schemas import register_configs
from robopol.train.run import RUN_OVERRIDES

CONFIG_MODULE = "robopol.configs"

# Hydra flags that take a value, and flags that mean "do not run the command".
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name",
                "-cn", "--config-dir", "-cd", "--experimental-rerun"}
RUN_DIR_COMMANDS = ("train", "demo")
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags (``--cfg job``, ``-m``, ...) from ``key=value`` overrides."""
    flags, overrides = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _VALUE_FLAGS and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def resume_overrides(overrides: list[str]) -> list[str]:
    """With ``resume=RUN_DIR``, replay the run's recorded overrides (new ones win) inside RUN_DIR.

    The record is ``RUN_DIR/overrides.yaml``, which the trainer rewrites only once a run (or a resume) has
    loaded successfully, so a failed resume attempt never changes what the next one replays. Hydra's own
    ``.hydra/`` record of the original invocation is left untouched.
    """
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if not resume or not resume[-1]:
        return overrides
    run_dir = Path(resume[-1])
    saved = run_dir / RUN_OVERRIDES
    if not saved.is_file():
        raise ConfigError(
            f"resume={run_dir}: no {RUN_OVERRIDES} there; pass the run directory that `robopol train` printed "
            "(it holds overrides.yaml and checkpoints/)"
        )
    new_keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    old = [o for o in OmegaConf.to_container(OmegaConf.load(saved)) if isinstance(o, str)]
    kept = [o for o in old if o.split("=", 1)[0].lstrip("+~") not in new_keys]
    return [*kept, *overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every override combination a ``-m`` sweep would run (one combination without ``-m``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"cannot parse the overrides: {first} (quote list items that contain '=', e.g. "
                          f"'extra=[\"algo.lr=1e-4\"]', and check brackets and quotes)") from err
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(combo) for batch in batches for combo in batch] or [[]]


@functools.cache
def _initialised() -> bool:
    register_configs()
    return True


def compose(command: str, overrides: list[str], complete: bool = True) -> DictConfig:
    """Compose and validate the config of ``command`` with ``overrides``; raise ConfigError on any problem.

    ``complete`` also requires every mandatory value (``???``) to be set.
    """
    _initialised()
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra.compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(describe_config_error(err)) from err
    finally:
        GlobalHydra.instance().clear()
    missing = sorted(OmegaConf.missing_keys(cfg))
    if complete and missing:
        raise ConfigError(
            "missing required value(s): " + ", ".join(missing) + " (set them on the command line, e.g. "
            + " ".join(f"{k}=..." for k in missing) + ")"
        )
    return cfg


def describe_config_error(err: BaseException) -> str:
    """One line that names the key or option at fault, from Hydra's and OmegaConf's exceptions."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for exc in chain:
        if isinstance(exc, ConfigKeyError | ConfigAttributeError) and exc.full_key:
            fields = _schema_fields(getattr(exc, "object_type", None))
            hint = f"; valid keys: {', '.join(fields)}" if fields else ""
            return f"unknown config key '{exc.full_key}'{hint}"
        if isinstance(exc, ValidationError) and exc.full_key:
            return f"invalid value for '{exc.full_key}': {exc.msg.splitlines()[0]}"
    for exc in chain:
        if isinstance(exc, MissingConfigException):
            text = str(exc).split("Config search path")[0]
            return " ".join(line.strip() for line in text.splitlines() if line.strip())
    text = str(chain[0]).strip().splitlines()
    return " ".join(line.strip() for line in text if line.strip()) or type(chain[0]).__name__


def _schema_fields(schema: Any) -> list[str]:
    if schema is None or not dataclasses.is_dataclass(schema):
        return []
    return [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]


def field_docs(schema: type) -> dict[str, str]:
    """The one-line docstrings written under each dataclass field, following the MRO."""
    docs: dict[str, str] = {}
    for klass in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = nxt.value.value.strip()
    return docs


def describe_fields(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    """``key: value  doc`` lines for every documented field of a composed config."""
    schema = OmegaConf.get_type(cfg)
    docs = field_docs(schema) if dataclasses.is_dataclass(schema) else {}
    for key in cfg:
        if str(key).startswith("_"):
            continue
        node = cfg._get_node(key)
        name = f"{prefix}{key}"
        if isinstance(node, DictConfig):
            yield from describe_fields(node, prefix=f"{name}.")
        else:
            value = OmegaConf.to_container(node) if OmegaConf.is_list(node) else node._value()
            yield f"  {name} = {value}" + (f"    # {docs[key]}" if key in docs else "")


# Config groups that only some subcommands compose (``recipe``: the collection recipes of `robopol collect`).
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {"recipe": ("collect",)}


def config_groups(command: str | None = None) -> dict[str, list[str]]:
    """The options of every config group shipped in ``configs/`` (schema entries excluded).

    A group of ``COMMAND_GROUPS`` is listed only for the subcommands that compose it (never without one).
    """
    root = importlib.resources.files(CONFIG_MODULE)
    return {
        group.name: sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml"))
        for group in sorted(root.iterdir(), key=lambda p: p.name)
        if group.is_dir() and not group.name.startswith(("_", "."))
        and command in COMMAND_GROUPS.get(group.name, (command,))
    }


def print_help(command: str, overrides: list[str]) -> None:
    """Usage, the config groups with their options, and every config key with its doc line."""
    from robopol.cli import SUBCOMMANDS

    print(f"usage: robopol {command} [args] [key=value ...] [--cfg job|all] [-m] [--help]")
    print(f"\n{SUBCOMMANDS[command]}\n")
    print("Hydra flags: --cfg job prints the resolved config without running; -m key=a,b sweeps;")
    print("--info shows the config search path; see `--hydra-help` for the rest.\n")
    print("== Config groups (group=option) ==")
    for group, options in config_groups(command).items():
        print(f"  {group}: {', '.join(options)}")
    try:
        cfg = compose(command, expand_sweep(overrides)[0], complete=False)
    except ConfigError as err:
        print(f"\n(the config does not compose with these overrides: {err})")
        return
    print("\n== Config (override any key with key=value; ??? must be set) ==")
    print("\n".join(describe_fields(cfg)))


def run_hydra_app(command: str, args: list[str]) -> None:
    """Validate, then hand ``args`` to Hydra with ``configs/<command>.yaml`` as the primary config."""
    flags, overrides = split_args(args)
    if "--help" in flags or "-h" in flags:
        print_help(command, overrides)
        return
    overrides = resume_overrides(overrides)
    if int(os.environ.get("RANK", "0")) > 0 and command in RUN_DIR_COMMANDS:
        # Under torchrun rank 0 owns the run directory (the trainer hands its path to the other ranks).
        overrides = [*overrides, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none",
                     "hydra/hydra_logging=none"]
    runs = not any(f in _NO_RUN_FLAGS for f in flags)
    if runs:
        for combination in expand_sweep(overrides):
            compose(command, combination)

    from robopol.cli.commands import COMMAND_FUNCTIONS

    run_command = COMMAND_FUNCTIONS[command]
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: its failure summary shows the failing rank's error
        from torch.distributed.elastic.multiprocessing.errors import record

        run_command = record(run_command)

    def task(cfg: DictConfig) -> None:
        try:
            run_command(cfg)
        except RobopolError as err:
            print(f"robopol {command}: error: {err}", file=sys.stderr)
            sys.exit(2)

    _initialised()
    sys.argv = [f"robopol {command}", *flags, *overrides]
    app = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=command, version_base="1.3")(task)
    app()
