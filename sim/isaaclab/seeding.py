"""Per-env random numbers that are a pure function of each env's episode seed, computed on the env's device.

A GPU simulation resets many envs at once from one global generator, so which numbers an env gets would
depend on which other envs reset in the same step. robopol's contract is that an episode is a function of
its seed (collection records the seed; evaluation reuses seeds); ``seeded_uniform`` keeps it by hashing
(seed, draw index) with SplitMix64 in int64 tensor arithmetic, which wraps on overflow on every device.
"""

from __future__ import annotations

import torch


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function."""
    x = (x ^ _shift_right(x, 30)) * _MUL1
    x = (x ^ _shift_right(x, 27)) * _MUL2
    return x ^ _shift_right(x, 31)


def seeded_uniform(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """``(N, count)`` float32 in [0, 1): draw ``k`` of the env with seed ``seeds[i]`` (int64, any device)."""
    draws = torch.arange(1, count + 1, dtype=torch.int64, device=seeds.device)
    stream = _mix(seeds.to(torch.int64)[:, None] * _GAMMA + _GAMMA)  # one SplitMix64 stream per seed
    return _shift_right(_mix(stream + draws * _GAMMA), 40).to(torch.float32) / float(1 << 24)
