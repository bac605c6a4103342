"""robopol.data"""

# ``convert`` (the function) stays in robopol.data.convert: re-exporting it here would shadow the module.
from robopol.data.convert import (
    EpisodeArrays,
    detect_format,
    export_lerobot,
    read_lerobot,
    read_minari,
    read_ogbench,
    read_robomimic,
)
from robopol.data.info import plot_store_info, print_store_info, store_info
from robopol.data.normalize import Normalizer
from robopol.data.sampler import WindowConfig, WindowSampler, split_episodes
from robopol.data.store import SOURCES, EpisodeStore, KeySpec
from robopol.data.validate import StoreProblem, check_store, validate_store

__all__ = [
    "SOURCES",
    "EpisodeArrays",
    "EpisodeStore",
    "KeySpec",
    "Normalizer",
    "StoreProblem",
    "WindowConfig",
    "WindowSampler",
    "check_store",
    "detect_format",
    "export_lerobot",
    "plot_store_info",
    "print_store_info",
    "read_lerobot",
    "read_minari",
    "read_ogbench",
    "read_robomimic",
    "split_episodes",
    "store_info",
    "validate_store",
]
