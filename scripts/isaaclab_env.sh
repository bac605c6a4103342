#!/usr/bin/env bash
# Build, or bring up to date, the Python 3.12 environment in which robopol runs Isaac Lab 3 (kit-less, Newton
# physics, CPU or GPU), and install this checkout into it. One command; re-running it is cheap.
#
#   scripts/isaaclab_env.sh            # then: $ROBOPOL_ISAACLAB_VENV/bin/robopol ... task=isaaclab/ur5e_reach
#   scripts/isaaclab_env.sh --warm     # also build each robopol Isaac Lab task once, so that Warp compiles its
#                                      # kernels now (2-3 min on 2 cores when cold) instead of in the first run
#
# ROBOPOL_ISAACLAB_VENV  where the environment lives (default ~/.cache/robopol/isaaclab-venv: ~8 GB, outside the
#                        checkout, so that clones and CI runs share it). It is rebuilt from scratch when
#                        pyproject.toml's dependencies change (a stamp file records their hash).
# PYTHON312              the Python 3.12 interpreter (default: python3.12 on PATH, else pyenv's 3.12.x).
# Exit status 3: no Python 3.12 interpreter was found.
set -euo pipefail
warm=false
[ "${1:-}" = "--warm" ] && warm=true
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ROBOPOL_ISAACLAB_VENV:-$HOME/.cache/robopol/isaaclab-venv}"

is312() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; }
py="${PYTHON312:-}"
if [ -z "$py" ]; then
    # pyenv's shim exists even where no 3.12 is selected, so each candidate is tried, not just found
    for candidate in "$(command -v python3.12 || true)" $(ls -d "$HOME"/.pyenv/versions/3.12.*/bin/python 2>/dev/null); do
        if is312 "$candidate"; then py="$candidate"; break; fi
    done
fi
if ! is312 "$py"; then
    echo "isaaclab_env: no Python 3.12 interpreter found (set PYTHON312); Isaac Lab 3 requires Python 3.12" >&2
    exit 3
fi

# The dependency list (not the whole pyproject) decides whether the environment must be rebuilt.
stamp="$(sed -n '/^dependencies = \[/,/^\[tool.setuptools\]/p' "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.robopol-deps" 2>/dev/null)" != "$stamp" ]; then
    echo "isaaclab_env: building $venv with $py (isaaclab 3.0.0 and its ~190 packages: a few minutes)"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q -U pip
    "$venv/bin/pip" install -q -e "$root[isaaclab,dev]"
    echo "$stamp" > "$venv/.robopol-deps"
else
    # Up to date: only point the editable install at this checkout.
    "$venv/bin/pip" install -q --no-deps -e "$root"
fi
echo "isaaclab_env: ready: $venv ($("$venv/bin/python" -c 'import isaaclab, torch; print(f"isaaclab {isaaclab.__version__}, torch {torch.__version__}")' 2>/dev/null))"
if $warm; then
    # Warp caches compiled kernels in ~/.cache/warp (WARP_CACHE_PATH); one step of each task fills it.
    "$venv/bin/python" - <<'PY'
import time

import numpy as np

from robopol.cli.app import compose
from robopol.tasks import make_env

for name in ("isaaclab/ur5e_reach", "isaaclab/ur5e_push"):
    t0 = time.perf_counter()
    env = make_env(compose("collect", [f"task={name}", "out=unused"]).task, num_envs=2, seed=0)
    env.reset(seed=0)
    env.step(np.zeros((2, 3)))
    env.close()
    print(f"isaaclab_env: {name} built and stepped in {time.perf_counter() - t0:.0f} s (Warp kernel cache warm)")
PY
fi
