"""What each ``robopol`` subcommand does with its composed config."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from robopol.errors import NotLandedError


def not_landed(what: str) -> Callable[[DictConfig], None]:
    def command(cfg: DictConfig) -> None:
        raise NotLandedError(f"{what} has not landed yet; see the open issues (`robopol --help` lists what works)")

    return command


COMMAND_FUNCTIONS: dict[str, Callable[[DictConfig], None]] = {
    "train": not_landed("training"),
    "eval": not_landed("evaluation in simulation"),
    "collect": not_landed("expert collection"),
    "data": not_landed("the episode-store tools"),
    "bench": not_landed("benchmarking"),
    "deploy": not_landed("the real-robot control loop"),
    "demo": not_landed("the demo"),
}
