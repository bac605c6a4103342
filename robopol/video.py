"""MP4 writing for rollouts and replays (imageio + its bundled ffmpeg; no display needed)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write RGB ``(H, W, 3)`` uint8 frames to an H.264 MP4 at ``path`` (parent folders are created)."""
    import imageio.v2 as imageio

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(out, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    return out
