"""Checkpoint format: round trip, and a clear error for every way a checkpoint can be wrong."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robopol.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from robopol.data.normalize import Normalizer
from robopol.errors import CheckpointError


def tiny_modules(width: int = 4) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"policy": torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 2))}


@pytest.fixture
def saved(tmp_path):
    modules = tiny_modules()
    normalizer = Normalizer.fit({"action": np.arange(12, dtype=np.float32).reshape(6, 2)}, {"action": "minmax"})
    optimizer = torch.optim.AdamW(modules["policy"].parameters())
    modules["policy"](torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = save_checkpoint(
        tmp_path / "checkpoints", step=7, modules=modules, config=OmegaConf.create({"a": 1, "b": "${a}"}),
        normalizer=(normalizer.spec(), normalizer.state_dict()),
        training_state={"step": 7, "optimizer": optimizer.state_dict(), "rng": torch.Generator().manual_seed(123).get_state()},
        extra={"obs_dim": 3},
    )
    return tmp_path, path, modules, normalizer, optimizer


def test_round_trip(saved):
    run_dir, path, modules, normalizer, optimizer = saved
    assert path.name == "step_00000007" and (run_dir / "checkpoints" / "latest").read_text() == path.name
    ckpt = load_checkpoint(run_dir)  # a run directory resolves to checkpoints/latest
    assert ckpt.path == path and ckpt.step == 7 and ckpt.manifest["obs_dim"] == 3
    assert ckpt.manifest["format_version"] == FORMAT_VERSION
    assert ckpt.manifest["libraries"]["torch"] == importlib.metadata.version("torch")
    assert ckpt.config.b == 1, "the config is stored resolved"
    fresh = tiny_modules(width=4)
    for p in fresh["policy"].parameters():
        p.data.zero_()
    ckpt.load_modules(fresh)
    for a, b in zip(fresh["policy"].parameters(), modules["policy"].parameters(), strict=True):
        assert torch.equal(a, b)
    restored = Normalizer.from_state(*ckpt.normalizer())
    x = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(restored.normalize("action", x), normalizer.normalize("action", x))
    state = ckpt.training_state()
    assert state["step"] == 7 and torch.equal(state["rng"], torch.Generator().manual_seed(123).get_state())
    assert state["optimizer"]["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert ckpt.module_names() == ["policy"]


def test_resaving_a_step_replaces_it_atomically(saved):
    run_dir, path, modules, *_ = saved
    save_checkpoint(run_dir / "checkpoints", step=7, modules=modules, config={"a": 2})
    assert load_checkpoint(path).config.a == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_00000007"]


def test_missing_and_unexpected_keys(saved):
    _, path, *_ = saved
    ckpt = load_checkpoint(path)
    wider = {"policy": torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))}
    with pytest.raises(CheckpointError, match=r"missing keys \[policy\.2\.bias, policy\.2\.weight\]"):
        ckpt.load_modules(wider)
    narrower = {"policy": torch.nn.Sequential(torch.nn.Linear(3, 4))}
    with pytest.raises(CheckpointError, match=r"unexpected keys \[policy\.1\.bias, policy\.1\.weight\]"):
        ckpt.load_modules(narrower)
    with pytest.raises(CheckpointError, match=r"wrong shape.*policy\.0\.weight: checkpoint \(4, 3\) vs model \(5, 3\)"):
        ckpt.load_modules(tiny_modules(width=5))
    with pytest.raises(CheckpointError, match=r"has no module\(s\) \['critic'\]; it holds \['policy'\]"):
        ckpt.load_modules({"critic": torch.nn.Linear(1, 1)})


def test_newer_format_version_is_refused(saved):
    _, path, *_ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"format {FORMAT_VERSION + 1}, newer than .*upgrade robopol"):
        load_checkpoint(path)


def test_truncated_file_is_detected(saved):
    _, path, *_ = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated or corrupted: \d+ bytes on disk"):
        load_checkpoint(path)


def test_corrupted_bytes_are_detected(saved):
    _, path, *_ = saved
    state = path / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"state.pt is corrupted: its SHA-256 differs"):
        load_checkpoint(path)


def test_missing_paths_and_files(saved, tmp_path):
    run_dir, path, *_ = saved
    with pytest.raises(CheckpointError, match="the path does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="expected manifest.json"):
        load_checkpoint(tmp_path / "empty")
    (path / "normalizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"normalizer.safetensors is missing; the checkpoint is incomplete"):
        load_checkpoint(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is not valid JSON"):
        load_checkpoint(path)


def test_weights_only_checkpoint_cannot_resume(tmp_path):
    path = save_checkpoint(tmp_path, step=1, modules=tiny_modules(), config={})
    with pytest.raises(CheckpointError, match="has no state.pt: it holds weights only"):
        load_checkpoint(path).training_state()
    with pytest.raises(CheckpointError, match="has no normalizer.safetensors"):
        load_checkpoint(path).normalizer()
