"""The checkpoint format every robopol run writes and every loader reads.

A checkpoint is a directory ``<run>/checkpoints/step_XXXXXXXX/`` holding

- ``model.safetensors``: weights of every named module, as ``<module>.<parameter>`` tensors;
- ``normalizer.safetensors``: normalizer statistics, with the normalizer spec as JSON metadata;
- ``state.pt``: training state for exact resume (optimizer, scheduler, step, RNG and sampler states),
  loaded with ``weights_only=True`` so a checkpoint can never run code;
- ``config.yaml``: the resolved config of the run;
- ``manifest.json``: format version, robopol and library versions, step, and the size and SHA-256 of
  every file above, so that a truncated or corrupted file is detected before it is parsed.

Directories are written under a temporary name and renamed into place, and ``checkpoints/latest`` names the
newest complete one, so a crash while saving never leaves a checkpoint that loads half-written.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from robopol.errors import CheckpointError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
BEST = "best"
_LIBRARIES = ("robopol", "torch", "numpy", "safetensors", "diffusers", "zarr", "hydra-core", "mujoco")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(
    ckpt_root: str | Path,
    *,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    config: DictConfig | Mapping[str, Any],
    normalizer: tuple[Mapping[str, Any], Mapping[str, torch.Tensor]] | None = None,
    training_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` under ``ckpt_root`` and point ``latest`` at it."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    weights = {
        f"{name}.{key}": tensor.detach().cpu().contiguous()
        for name, module in modules.items()
        for key, tensor in module.state_dict().items()
    }
    save_file(weights, tmp / "model.safetensors", metadata={"format": "robopol", "modules": ",".join(modules)})
    if normalizer is not None:
        spec, tensors = normalizer
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            tmp / "normalizer.safetensors",
            metadata={"spec": json.dumps(spec)},
        )
    if training_state is not None:
        torch.save(dict(training_state), tmp / "state.pt")
    resolved = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    files = sorted(p.name for p in tmp.iterdir())
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "libraries": library_versions(),
        "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files},
        **dict(extra or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _fsync_dir_files(tmp)

    if final.exists():  # re-saving a step (e.g. after a resume) replaces it
        trash = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _write_atomic(root / LATEST, final.name)
    return final


@dataclass
class Checkpoint:
    """A verified checkpoint directory; the heavy files are read on demand."""

    path: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def config(self) -> DictConfig:
        return OmegaConf.load(self.path / "config.yaml")

    def weights(self) -> dict[str, torch.Tensor]:
        return _load_safetensors(self.path / "model.safetensors")

    def module_names(self) -> list[str]:
        """Names of the modules whose weights the checkpoint holds (read from the header only)."""
        path = self.path / "model.safetensors"
        try:
            with safe_open(path, "pt") as f:
                return sorted({key.split(".", 1)[0] for key in f.keys()})  # noqa: SIM118 - not a dict
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} cannot be read ({err}); the file is truncated or not safetensors") from err

    def load_modules(self, modules: Mapping[str, torch.nn.Module]) -> None:
        """Load weights into ``modules`` (name -> module); every key and shape of those modules must match.

        Other modules saved in the checkpoint (e.g. an EMA copy a caller does not need) are left alone.
        """
        weights = self.weights()
        saved_modules = {key.split(".", 1)[0] for key in weights}
        absent = sorted(set(modules) - saved_modules)
        if absent:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'} has no module(s) {absent}; it holds {sorted(saved_modules)}"
            )
        expected: dict[str, torch.Size] = {
            f"{name}.{key}": tensor.shape for name, module in modules.items() for key, tensor in module.state_dict().items()
        }
        saved = {k for k in weights if k.split(".", 1)[0] in modules}
        missing = sorted(set(expected) - saved)
        unexpected = sorted(saved - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'} does not match the model: missing keys {_short(missing)}, "
                f"unexpected keys {_short(unexpected)}; the checkpoint was written for a different policy or "
                "algorithm config (compare its config.yaml with yours)"
            )
        wrong = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(s)}"
                 for k, s in expected.items() if weights[k].shape != s]
        if wrong:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'} has tensors of the wrong shape ({_short(wrong)}); "
                "the checkpoint was written for different network sizes or data dimensions"
            )
        for name, module in modules.items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})

    def normalizer(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The normalizer spec and tensors saved with the weights."""
        path = self.path / "normalizer.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{self.path} has no normalizer.safetensors; it cannot map raw observations")
        tensors = _load_safetensors(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        return json.loads(header["__metadata__"]["spec"]), tensors

    def training_state(self) -> dict[str, Any]:
        path = self.path / "state.pt"
        if not path.is_file():
            raise CheckpointError(f"{self.path} has no state.pt: it holds weights only and cannot be resumed")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged pickle
            raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})") from err


def mark_best(ckpt_root: str | Path, step: int) -> None:
    """Point ``checkpoints/best`` at the (already saved) checkpoint of ``step``."""
    _write_atomic(Path(ckpt_root) / BEST, step_dir_name(step))


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory, its ``checkpoints/`` directory, a ``step_*`` directory, or the
    ``checkpoints/latest`` / ``checkpoints/best`` pointer files."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: the path does not exist")
    if (p / MANIFEST).is_file():
        return p
    if p.is_file() and p.name in (LATEST, BEST):
        target = p.parent / p.read_text().strip()
        if (target / MANIFEST).is_file():
            return target
        raise CheckpointError(f"{p} names {target.name}, which is missing or incomplete")
    for root in (p / "checkpoints", p):
        if (root / LATEST).is_file():
            target = root / (root / LATEST).read_text().strip()
            if (target / MANIFEST).is_file():
                return target
            raise CheckpointError(f"{root / LATEST} names {target.name}, which is missing or incomplete")
    raise CheckpointError(
        f"no checkpoint at {p}: expected {MANIFEST} (a checkpoints/step_* directory) or a run directory "
        "with checkpoints/latest"
    )


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Open and verify a checkpoint: format version, and every file's size and hash against the manifest."""
    ckpt_dir = resolve_checkpoint_dir(path)
    try:
        manifest = json.loads((ckpt_dir / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{ckpt_dir / MANIFEST} is not valid JSON ({err}); the checkpoint is corrupted") from err
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{ckpt_dir / MANIFEST} has no integer format_version; it is not a robopol checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt_dir} uses checkpoint format {version}, newer than this robopol understands ({FORMAT_VERSION}); "
            f"upgrade robopol (it was written with {manifest.get('libraries', {}).get('robopol')})"
        )
    for name, info in manifest.get("files", {}).items():
        file = ckpt_dir / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; the checkpoint is incomplete")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"{file} is truncated or corrupted: {size} bytes on disk, {info['bytes']} when saved"
            )
        if verify and _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{file} is corrupted: its SHA-256 differs from the one recorded when saved")
    return Checkpoint(path=ckpt_dir, manifest=manifest)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); the file is truncated or not safetensors") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_dir_files(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _short(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]" if items else "[]"
