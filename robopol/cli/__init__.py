"""The ``robopol`` command: one subcommand per stage, each a Hydra app over ``configs/``.

``robopol SUBCOMMAND [positional args] [hydra overrides] [hydra flags]``. The subcommand picks the primary
config (``configs/<subcommand>.yaml``); everything after it is handed to Hydra, so overrides
(``policy.horizon=16``), ``--cfg job``, ``-m`` sweeps and ``--help`` behave as in any Hydra app. Before
Hydra runs, every override combination is composed once against the typed schemas so that an unknown key or
a wrong type ends in one clear line instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from robopol.errors import RobopolError

SUBCOMMANDS: dict[str, str] = {
    "train": "fit a policy: imitation, offline RL, online RL (data-parallel under torchrun)",
    "eval": "roll a checkpoint out in simulation and report success with a 95% CI",
    "collect": "run a scripted expert and write episodes into an episode store",
    "data": "validate | info | convert | replay | merge episode stores",
    "bench": "data | sim | policy | inference | offline | online | control | scale; a table and JSON",
    "deploy": "run a checkpoint on a robot through the real-time control loop",
    "demo": "collect demonstrations, train, evaluate and report in one go",
}

# Subcommands that take positional arguments before the overrides, mapped onto config keys.
POSITIONAL: dict[str, Callable[[list[str]], list[str]]] = {}


def _data_positionals(args: list[str]) -> list[str]:
    """``data ACTION PATH... [--plot]`` -> ``action=ACTION paths=[...] plot=true``."""
    if not args or "=" in args[0] or args[0].startswith("-"):
        return args
    action, rest = args[0], args[1:]
    paths = []
    while rest and "=" not in rest[0] and not rest[0].startswith("-"):
        paths.append(rest.pop(0))
    flags = ["plot=true"] if "--plot" in rest else []
    rest = [a for a in rest if a != "--plot"]
    quoted = ",".join(_quote(p) for p in paths)
    return [f"action={action}", f"paths=[{quoted}]", *flags, *rest]


def _bench_positionals(args: list[str]) -> list[str]:
    """``bench SUITE ...`` -> ``suite=SUITE ...``."""
    if args and "=" not in args[0] and not args[0].startswith("-"):
        return [f"suite={args[0]}", *args[1:]]
    return args


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


POSITIONAL.update({"data": _data_positionals, "bench": _bench_positionals})


def usage() -> str:
    lines = ["usage: robopol SUBCOMMAND [args] [key=value ...] [--cfg job] [-m] [--help]", "", "subcommands:"]
    lines += [f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items()]
    lines += [
        "",
        "Each subcommand composes Hydra config groups (task=, policy=, algo=, robot=) from configs/;",
        "`robopol SUBCOMMAND --help` lists the groups, their options and the resulting config.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"robopol: unknown subcommand '{command}'; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        sys.exit(2)
    rest = POSITIONAL.get(command, lambda a: a)(rest)

    from robopol.cli.app import run_hydra_app

    try:
        run_hydra_app(command, rest)
    except RobopolError as err:
        print(f"robopol {command}: error: {err}", file=sys.stderr)
        sys.exit(2)
