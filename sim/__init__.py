"""Simulators: batched env backends, scripted experts, collection, rendering (imports as robopol.sim)."""

import os

# Headless machines have no display: MuJoCo must render through EGL (Mesa llvmpipe works without a GPU).
# mujoco reads the variable when it is first imported, so it is set here, before any sim module imports it;
# an explicit user choice (glfw on a desktop) is kept.
os.environ.setdefault("MUJOCO_GL", "egl")
