"""Run directories: resolved config, JSONL + TensorBoard metrics, checkpoints, plots and videos.

Layout of ``runs/<command>/<time>_<task>_<policy>_<algo>/``::

    config.yaml        the resolved config (Hydra's own record is in .hydra/)
    overrides.yaml     the command-line overrides that reproduce the run; ``resume=`` replays them
    metrics.jsonl      one JSON object per record: {"step": ..., "<split>/<name>": value, ...}
    tb/                TensorBoard event files
    checkpoints/       step_XXXXXXXX/ directories and `latest` (see robopol.checkpoint)
    plots/             PNG figures (training curves, evaluation)
    videos/            MP4 rollouts
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

RUN_OVERRIDES = "overrides.yaml"
# Evaluation bookkeeping that is drawn as part of another panel (the CI band) or is not a curve at all.
_NOT_PLOTTED = {"episodes", "success_ci95_low", "success_ci95_high"}


class RunDir:
    def __init__(self, root: str | Path, create: bool = True) -> None:
        """``create=False`` names the paths without making them (data-parallel ranks other than 0)."""
        self.root = Path(root)
        for sub in (self.checkpoints, self.plots, self.videos) if create else ():
            sub.mkdir(parents=True, exist_ok=True)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    def save_config(self, cfg: DictConfig) -> None:
        self.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def record_overrides(self, overrides: list[str]) -> None:
        """Write the overrides that reproduce the run (what ``resume=`` replays), minus Hydra's and resume's."""
        keep = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "resume="))]
        (self.root / RUN_OVERRIDES).write_text(OmegaConf.to_yaml(OmegaConf.create(keep)))


class MetricsLogger:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard.

    On resume, records past the resumed step (written after the last checkpoint before a crash) are dropped
    so that the file describes exactly one trajectory of the run.
    """

    def __init__(self, run: RunDir, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = run.metrics
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run.tensorboard), purge_step=resume_step)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file; a torn last line (crash mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_metrics(metrics_path: str | Path, out_png: str | Path) -> Path:
    """One panel per metric name, every split of that metric on the same axes; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    bands: dict[str, tuple[list[float], list[float]]] = {}  # eval success: its 95% interval
    for record in read_metrics(metrics_path):
        for key, value in record.items():
            if key == "step" or "/" not in key:
                continue
            split, name = key.split("/", 1)
            if name in _NOT_PLOTTED:
                continue
            xs, ys = series.setdefault(name, {}).setdefault(split, ([], []))
            xs.append(record["step"])
            ys.append(value)
        if "eval/success_ci95_low" in record:
            low, high = bands.setdefault("success_rate", ([], []))
            low.append(record["eval/success_ci95_low"])
            high.append(record["eval/success_ci95_high"])
    names = sorted(series)
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for split, (xs, ys) in sorted(series[name].items()):
            ax.plot(xs, ys, label=split, marker="." if len(xs) < 30 else None)
            if split == "eval" and name in bands:
                ax.fill_between(xs, *bands[name], alpha=0.2, label="95% CI")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        if name in ("loss", "mse") and all(y > 0 for _, ys in series[name].values() for y in ys):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
