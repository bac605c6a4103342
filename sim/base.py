"""One simulated environment: the unit that the batched envs in ``robopol.sim.vector`` step in-process or host
one per worker process.

A ``SimEnv`` has no time limit, no batching and no auto-reset: the vector layer adds those once for every
back end. ``MujocoSim`` adds what every MuJoCo task shares: the flat physics state that replay restores, and
offscreen rendering (``MUJOCO_GL=egl`` on headless machines; the GL context is made lazily in the process that
renders, never inherited across a fork).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import numpy as np

from robopol.envs import EnvSpec


class Transition(NamedTuple):
    """What one step of one env returns."""

    obs: dict[str, np.ndarray]
    reward: float
    terminated: bool
    success: bool


class SimEnv(ABC):
    """One environment. ``spec`` describes a single env (shapes without the env axis)."""

    spec: EnvSpec
    task_id: int = 0
    """Sub-task of the current episode (OGBench task 1-5); 0 where a task has none."""

    @abstractmethod
    def reset(self, seed: int, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Start an episode whose initial state is a deterministic function of ``seed`` (and ``options``)."""

    @abstractmethod
    def step(self, action: np.ndarray) -> Transition:
        """Apply one action that the vector layer has already checked and clipped to the spec's bounds."""

    def get_state(self) -> np.ndarray:
        """Flat float64 simulator state (what replay restores); empty if the env has none."""
        return np.zeros(0)

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state``; the observation is then recomputed by the next step."""
        if np.size(state):
            raise NotImplementedError(f"{type(self).__name__} has no simulator state to restore")

    def render(self, width: int = 256, height: int = 256) -> np.ndarray:
        """RGB frame ``(height, width, 3)`` uint8."""
        raise NotImplementedError(f"{type(self).__name__} cannot render")

    def close(self) -> None:  # noqa: B027 - optional hook: most envs hold nothing to release
        """Release what the env holds (renderer, simulator handles)."""


# Physics state that replay stores and restores: time, qpos, qvel, actuator activations and mocap poses
# (Fetch moves its gripper through a mocap body; OGBench keeps goal markers in mocap bodies).
def _state_spec() -> int:
    import mujoco

    return int(mujoco.mjtState.mjSTATE_FULLPHYSICS | mujoco.mjtState.mjSTATE_MOCAP_POS
               | mujoco.mjtState.mjSTATE_MOCAP_QUAT)


class MujocoSim(SimEnv):
    """A SimEnv over one MuJoCo model; subclasses set ``model``/``data`` and may extend the state."""

    model: Any
    data: Any
    camera: str | dict[str, Any] | None = None
    """Named camera, or free-camera settings (lookat, distance, azimuth, elevation); None: the default."""

    _renderer: Any = None

    def physics_state(self) -> np.ndarray:
        import mujoco

        spec = _state_spec()
        out = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, out, spec)
        return out

    def set_physics_state(self, state: np.ndarray) -> None:
        import mujoco

        spec = _state_spec()
        size = mujoco.mj_stateSize(self.model, spec)
        if state.shape != (size,):
            raise ValueError(f"{self.spec.task}: a physics state has {size} values, got shape {state.shape}")
        mujoco.mj_setState(self.model, self.data, np.asarray(state, dtype=np.float64), spec)
        mujoco.mj_forward(self.model, self.data)

    def get_state(self) -> np.ndarray:
        return self.physics_state()

    def set_state(self, state: np.ndarray) -> None:
        self.set_physics_state(np.asarray(state, dtype=np.float64))

    def camera_settings(self) -> str | dict[str, Any] | None:
        """The camera of the next frame (override to follow a moving robot)."""
        return self.camera

    def render(self, width: int = 256, height: int = 256) -> np.ndarray:
        import mujoco

        if self._renderer is None or (self._renderer.width, self._renderer.height) != (width, height):
            if self._renderer is not None:
                self._renderer.close()
            # The offscreen buffer in the model caps the frame size; raise it instead of failing.
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            self._renderer = mujoco.Renderer(self.model, height=height, width=width)
        camera: Any = -1
        settings = self.camera_settings()
        if isinstance(settings, str):
            camera = settings
        elif isinstance(settings, dict):
            camera = mujoco.MjvCamera()
            mujoco.mjv_defaultFreeCamera(self.model, camera)
            for key, value in settings.items():
                if key == "lookat":
                    camera.lookat[:] = value
                else:
                    setattr(camera, key, value)
        self._renderer.update_scene(self.data, camera=camera)
        # Software GL (llvmpipe, the headless default) spends ~80% of a frame on shadows and reflections.
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def actuator_names(model: Any) -> tuple[str, ...]:
    """Names of the model's actuators in control order, or of the joints they drive when unnamed."""
    import mujoco

    names = []
    for i in range(model.nu):
        name = model.actuator(i).name
        if not name and model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT:
            name = model.joint(int(model.actuator_trnid[i, 0])).name
        names.append(name or f"actuator_{i}")
    return tuple(names)
