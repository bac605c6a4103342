"""Shared output for benchmarks: one rich table on the terminal and one JSON file per run."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, stored next to them."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch CPU threads (0: leave torch's setting as it is), then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_report(name: str, rows: Sequence[dict[str, Any]], out_dir: str | Path, notes: str = "") -> Path:
    """Print ``rows`` as a table titled ``name`` and write them with machine info to ``out_dir/<name>.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = Table(title=f"robopol bench {name}")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) for c in columns))
    console = Console()
    console.print(table)
    if notes:
        console.print(notes)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"bench": name, "machine": machine_info(), "rows": list(rows), "notes": notes}, indent=2))
    console.print(f"wrote {path}")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg back end: benchmarks draw their plots headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path) -> Path:
    """Lay out, write (creating its folder) and close a benchmark's figure; returns ``out``."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    pyplot().close(fig)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)
