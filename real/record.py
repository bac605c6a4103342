"""Recording deployed episodes into an episode store that the offline-RL algorithms read as is.

One record per control step (the policy's action period), on the scheduler's grid:

| key | meaning |
|---|---|
| observation keys | the task observation at the step (what the policy saw) |
| ``action`` | the action in force: the policy's (after merging) or the human's; what ``aloe`` learns from |
| ``policy_action`` | the policy's action for the step (zeros when it was not in control) |
| ``command`` | the command target the safety filter sent at the step's first servo tick |
| ``source`` | 0 policy, 1 human, 2 nothing in force (the robot held) |
| ``intervention`` | the human acted (ALOE's intervention flag) |
| ``chunk_id`` / ``chunk_index`` | which chunk and which of its actions (-1: none) |
| ``latency`` | the chunk's observation-to-ready latency (s) |
| ``safety_flags`` | bitmask of the safety stages that acted during the step (``FLAG_BITS``) |
| ``reward`` / ``terminal`` | the task's reward after the step; success |

Episode metadata: ``source='policy'``, ``success``, ``seed``, whether a servo fault ended it (``faulted``),
the number of takeovers, of safety events and of intervened steps, and the calibration latencies of
the cell (``state_latency_s``, ``exec_latency_s``, ``inference_latency_s``). Each episode is one atomic commit:
a crash mid-write leaves the store readable with the episodes before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robopol.data.store import EpisodeStore

SOURCE_POLICY, SOURCE_HUMAN, SOURCE_NONE = 0, 1, 2
FLAG_BITS = {"acceleration": 1, "velocity": 2, "relative": 4, "joint_limit": 8, "workspace": 16, "latched": 32}


class EpisodeRecorder:
    """Appends deployed episodes to the store at ``path`` (created on the first episode)."""

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.attrs = attrs or {}
        self.episodes = 0

    def add(self, data: dict[str, np.ndarray], **meta: Any) -> int:
        """Append one episode; returns its index in the store."""
        if Path(self.path).exists():
            store = EpisodeStore.open(self.path, mode="a")
        else:
            store = EpisodeStore.create(self.path)
            store.set_attrs(**self.attrs)
        with store:
            index = store.add_episode(data, source="policy", **meta)
        self.episodes += 1
        return index
