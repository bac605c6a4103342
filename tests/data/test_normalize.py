"""Normalizer modes against hand-computed values, round trips, torch/numpy agreement and loud mismatches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robopol.data.normalize import Normalizer
from robopol.errors import CheckpointError, ConfigError, StoreError


def _x() -> np.ndarray:
    """(5, 3): a ramp 0..4, a constant 7, and a symmetric spike."""
    return np.array(
        [[0, 7, -2], [1, 7, 0], [2, 7, 0], [3, 7, 0], [4, 7, 2]],
        dtype=np.float32,
    )


def _fit(mode: str) -> Normalizer:
    return Normalizer.fit({"x": _x()}, {"x": mode})


def test_minmax_maps_range_to_unit_interval_and_only_centres_constant_dims():
    n = _fit("minmax")
    y = n.normalize("x", np.array([[0, 7, -2], [1, 8, 1], [4, 7, 2]], dtype=np.float32))
    np.testing.assert_allclose(y, [[-1, 0, -1], [-0.5, 1, 0.5], [1, 0, 1]], atol=1e-7)
    assert y.dtype == np.float32
    lo, hi = n.bounds("x")
    np.testing.assert_allclose(lo, [-1, 0, -1])
    np.testing.assert_allclose(hi, [1, 0, 1])


def test_meanstd():
    n = _fit("meanstd")
    # means (2, 7, 0); population stds (sqrt 2, 0 -> only centred, sqrt 1.6)
    y = n.normalize("x", np.array([4, 9, 2], dtype=np.float64))
    np.testing.assert_allclose(y, [2 / np.sqrt(2), 2, 2 / np.sqrt(1.6)], rtol=1e-12)
    assert y.dtype == np.float64
    lo, hi = n.bounds("x")
    np.testing.assert_allclose(lo, [-2 / np.sqrt(2), 0, -2 / np.sqrt(1.6)], rtol=1e-12)
    np.testing.assert_allclose(hi, [2 / np.sqrt(2), 0, 2 / np.sqrt(1.6)], rtol=1e-12)


def test_quantile_maps_q01_q99_to_unit_interval_without_clipping():
    x = np.arange(101, dtype=np.float64)[:, None]  # q01 = 1, q99 = 99 (linear interpolation)
    n = Normalizer.fit({"a": x}, {"a": "quantile"})
    y = n.normalize("a", np.array([[1.0], [99.0], [0.0], [100.0]]))
    np.testing.assert_allclose(y[:, 0], [-1, 1, -100 / 98, 100 / 98], rtol=1e-12)
    np.testing.assert_allclose(n.bounds("a"), [[-100 / 98], [100 / 98]], rtol=1e-12)


def test_identity():
    n = _fit("identity")
    x = np.array([[3.5, -1.0, 1e6]], dtype=np.float32)
    np.testing.assert_array_equal(n.normalize("x", x), x)
    np.testing.assert_array_equal(n.unnormalize("x", x), x)


def test_near_constant_dim_is_only_centred():
    x = np.stack([np.full(50, 3.0), 3.0 + 1e-9 * np.arange(50)], axis=1)
    for mode in ("minmax", "meanstd", "quantile"):
        n = Normalizer.fit({"a": x}, {"a": mode})
        np.testing.assert_allclose(n.stats("a")["scale"], [1.0, 1.0])
        y = n.normalize("a", np.array([3.001, 3.001]))
        assert np.all(np.abs(y) < 2e-3), (mode, y)  # a division by ~0 would give ~1e6
        assert n.unnormalize("a", n.normalize("a", np.array([3.0, 3.0])))[0] == 3.0


@pytest.mark.parametrize("mode", ["minmax", "meanstd", "quantile", "identity"])
def test_round_trip(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(500.0, 3.0, size=(200, 4))  # far from zero: precision needs the centred form
    x[:, 2] = -5.0
    n = Normalizer.fit({"a": x}, {"a": mode})
    batch = rng.normal(500.0, 3.0, size=(8, 5, 4))
    np.testing.assert_allclose(n.unnormalize("a", n.normalize("a", batch)), batch, rtol=1e-14)
    b32 = batch.astype(np.float32)
    back = n.unnormalize("a", n.normalize("a", b32))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, b32, rtol=2 * np.finfo(np.float32).eps)


def test_torch_and_numpy_agree_and_keep_dtype():
    n = _fit("minmax")
    x = np.random.default_rng(1).normal(size=(2, 3, 3)).astype(np.float32)
    y_np = n.normalize("x", x)
    for dtype in (torch.float32, torch.float64):
        t = torch.as_tensor(x, dtype=dtype)
        y_t = n.normalize("x", t)
        assert isinstance(y_t, torch.Tensor) and y_t.dtype == dtype and y_t.shape == (2, 3, 3)
        np.testing.assert_allclose(y_t.numpy(), y_np, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(n.unnormalize("x", y_t), t)
    lo, hi = n.bounds("x", like=torch.zeros(1, dtype=torch.float16))
    assert lo.dtype == torch.float16 and torch.equal(hi, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float16))
    if torch.cuda.is_available():
        y_gpu = n.normalize("x", torch.as_tensor(x, device="cuda"))
        assert y_gpu.device.type == "cuda"
        np.testing.assert_allclose(y_gpu.cpu().numpy(), y_np, rtol=1e-6, atol=1e-6)


def test_integer_inputs_become_float32_and_scalar_keys_work():
    n = Normalizer.fit({"x": _x(), "r": np.array([0.0, 2.0, 4.0])}, {"x": "minmax", "r": "minmax"})
    y = n.normalize("x", np.array([[4, 7, 2]], dtype=np.int64))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[1, 0, 1]])
    assert n.normalize("x", torch.tensor([[0, 7, -2]])).dtype == torch.float32
    assert n.shape("r") == ()
    np.testing.assert_allclose(n.normalize("r", np.array([0.0, 1.0, 4.0])), [-1, -0.5, 1])


def test_state_round_trip_through_json_spec():
    n = Normalizer.fit({"x": _x(), "obs.pos": _x()[:, :2]}, {"x": "quantile", "obs.pos": "meanstd"})
    spec = json.loads(json.dumps(n.spec()))
    assert spec == {"x": {"mode": "quantile", "shape": [3]}, "obs.pos": {"mode": "meanstd", "shape": [2]}}
    state = n.state_dict()
    assert "x.scale" in state and "obs.pos.center" in state and state["x.scale"].dtype == torch.float64
    m = Normalizer.from_state(spec, state)
    x = np.random.default_rng(2).normal(size=(4, 3))
    np.testing.assert_array_equal(m.normalize("x", x), n.normalize("x", x))
    np.testing.assert_array_equal(m.bounds("obs.pos")[0], n.bounds("obs.pos")[0])
    m.check_matches({"x": (3,), "obs.pos": [2]})


def test_from_state_mismatches_raise_checkpoint_error_naming_the_key():
    n = _fit("minmax")
    spec, state = n.spec(), n.state_dict()
    with pytest.raises(CheckpointError, match="tensor 'x.scale' is missing"):
        Normalizer.from_state(spec, {k: v for k, v in state.items() if k != "x.scale"})
    with pytest.raises(CheckpointError, match=r"\['y.scale'\] belong to no key"):
        Normalizer.from_state(spec, {**state, "y.scale": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"'x.center' has shape \(3,\), spec says \(4,\)"):
        Normalizer.from_state({"x": {"mode": "minmax", "shape": [4]}}, state)
    with pytest.raises(CheckpointError, match="key 'x' has unknown mode 'zscore'"):
        Normalizer.from_state({"x": {"mode": "zscore", "shape": [3]}}, state)


def test_check_matches_names_missing_extra_and_reshaped_keys():
    n = Normalizer.fit({"x": _x(), "a": _x()[:, :1]}, {"x": "minmax", "a": "identity"})
    with pytest.raises(CheckpointError, match="key 'img' is in the data but the normalizer has no stats"):
        n.check_matches({"x": (3,), "a": (1,), "img": (3, 8, 8)})
    with pytest.raises(CheckpointError, match="key 'a' has normalizer stats but is not in the data"):
        n.check_matches({"x": (3,)})
    with pytest.raises(
        CheckpointError, match=r"key 'x' has shape \(4,\) in the data but \(3,\) in the normalizer"
    ):
        n.check_matches({"x": (4,), "a": (1,)})


def test_fit_and_use_errors():
    with pytest.raises(ConfigError, match="mode 'zscore' for key 'x' is unknown"):
        Normalizer.fit({"x": _x()}, {"x": "zscore"})
    with pytest.raises(StoreError, match="no such key"):
        Normalizer.fit({"x": _x()}, {"y": "minmax"})
    bad = _x()
    bad[1, 1] = np.nan
    with pytest.raises(StoreError, match=r"data\['x'\] holds 1 NaN/inf"):
        Normalizer.fit({"x": bad}, {"x": "meanstd"})
    n = _fit("minmax")
    with pytest.raises(StoreError, match="no stats for key 'action'"):
        n.normalize("action", np.zeros(3))
    with pytest.raises(StoreError, match=r"expects arrays of shape \(\.\.\., 3\), got \(2, 4\)"):
        n.normalize("x", np.zeros((2, 4)))
