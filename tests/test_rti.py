"""RTI warm start in the actor: shift, reset, discrete dims (scaling and clip), NFE counting, the level picker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopol.data.normalize import Normalizer
from robopol.data.store import EpisodeStore
from robopol.errors import ConfigError
from robopol.policies.flow import FlowPolicy
from robopol.runtime import (
    ChunkActor,
    binarize,
    count_calls,
    latency_summary,
    observation_windows,
    pick_rti_noise_level,
    shift_chunk,
)
from robopol.schemas import RTIConfig


class WarmStartPolicy(torch.nn.Module):
    """Full-chain call p returns :func:`planned` (p); refine records its guess and returns it plus 0.25 in
    dim 0. Full chains call ``net`` 10 times, refine ``steps`` times."""

    obs_steps, horizon, action_steps = 1, 4, 2

    def __init__(self, discrete_dims=()):
        super().__init__()
        self.net = torch.nn.Identity()
        self.discrete_dims = list(discrete_dims)
        self.samples = 0
        self.guesses: list[torch.Tensor] = []
        self.refine_args: list[tuple[float, int]] = []

    def sample(self, obs, **kwargs):
        self.samples += 1
        for _ in range(10):
            self.net(obs)
        return planned(self.samples).expand(obs.shape[0], -1, -1).clone()

    def refine(self, obs, guess, noise_scale, steps):
        self.guesses.append(guess.clone())
        self.refine_args.append((noise_scale, steps))
        for _ in range(steps):
            self.net(obs)
        return guess + torch.tensor([0.25, 0.0])


def planned(p: int) -> torch.Tensor:
    """Normalised chunk (1, 4, 2) of full-chain call p: dim 0 is 0.1 p + h / 100, dim 1 a fixed pattern."""
    h = torch.arange(4, dtype=torch.float32)
    return torch.stack([0.1 * p + h / 100, torch.tensor([0.3, -0.2, 0.05, -0.7])], dim=-1)[None]


def test_shift_chunk_moves_ahead_and_repeats_the_last_action_and_binarize_splits_at_zero():
    chunk = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    assert shift_chunk(chunk, 1).flatten().tolist() == [2.0, 3.0, 4.0, 4.0]
    assert shift_chunk(chunk, 3).flatten().tolist() == [4.0, 4.0, 4.0, 4.0]
    assert binarize(torch.tensor([-0.3, 0.0, 0.2])).tolist() == [-1.0, 1.0, 1.0]


def normalizer():
    data = {"x": np.zeros((2, 1), np.float32), "action": np.array([[-10.0, -1.0], [10.0, 1.0]], np.float32)}
    return Normalizer.fit(data, {"x": "identity", "action": "minmax"})


def act(actor, n=1):
    return [actor.act({"x": np.zeros((1, 1), np.float32)}) for _ in range(n)]


def test_rti_runs_the_full_chain_first_then_refines_the_shifted_previous_chunk_every_step():
    policy = WarmStartPolicy()
    actor = ChunkActor(policy, normalizer(), ["x"], sampler="rti", rti=RTIConfig(noise_level=0.1, steps=3))
    actions = act(actor, 3)
    assert policy.samples == 1 and len(policy.guesses) == 2 and policy.refine_args == [(0.1, 3), (0.1, 3)]
    torch.testing.assert_close(policy.guesses[0], shift_chunk(planned(1), 1))  # one executed step, last repeated
    second = shift_chunk(planned(1), 1) + torch.tensor([0.25, 0.0])
    torch.testing.assert_close(policy.guesses[1], shift_chunk(second, 1))
    # each step executes the first action of the newest chunk (raw = 10 x normalised in dim 0)
    np.testing.assert_allclose([a[0, 0] for a in actions], [1.0, 10 * (0.11 + 0.25), 10 * (0.12 + 0.5)], rtol=1e-5)
    assert actor.nfe == 10 + 3 + 3 and actor.nfe_per_action == pytest.approx(16 / 3)


def test_rti_executes_rti_action_steps_and_shifts_by_them():
    policy = WarmStartPolicy()
    actor = ChunkActor(policy, normalizer(), ["x"], sampler="rti", rti=RTIConfig(action_steps=2))
    actions = act(actor, 4)
    assert policy.samples == 1 and len(policy.guesses) == 1 and actor.plans == 2
    torch.testing.assert_close(policy.guesses[0], shift_chunk(planned(1), 2))
    np.testing.assert_allclose([a[0, 0] for a in actions], [1.0, 1.1, 3.7, 3.8], rtol=1e-5)


def test_deploy_entry_plans_whole_chunks_and_shifts_the_warm_start_by_the_steps_that_passed():
    policy = WarmStartPolicy()
    actor = ChunkActor(policy, normalizer(), ["x"], sampler="rti")
    obs = {"x": np.zeros((1, 1), np.float32)}
    actor.observe(obs)
    first = actor.plan()
    assert first.shape == (1, 4, 2) and policy.samples == 1 and not policy.guesses
    for _ in range(3):  # three control steps observed before the next plan (latency dropped two actions)
        actor.observe(obs)
    actor.plan(shift=3)
    torch.testing.assert_close(policy.guesses[0], shift_chunk(planned(1), 3))
    actor.plan(shift=4)  # the robot moved past the whole previous chunk: nothing to warm-start from
    assert policy.samples == 2 and len(policy.guesses) == 1


def test_reset_and_an_external_request_restart_the_full_chain():
    policy = WarmStartPolicy()
    actor = ChunkActor(policy, normalizer(), ["x"], sampler="rti")
    act(actor, 2)
    actor.reset()
    act(actor, 1)
    assert policy.samples == 2
    actor.reset_warm_start()  # e.g. a human took over: next call is a full chain, history is kept
    act(actor, 1)
    assert policy.samples == 3 and len(policy.guesses) == 1


def test_discrete_dims_are_binarised_to_the_action_bounds_at_execution():
    policy = WarmStartPolicy(discrete_dims=[1])
    actor = ChunkActor(policy, normalizer(), ["x"])
    chunk = [a[0] for a in act(actor, 2)]
    # dim 1 of the chunk is 0.3, -0.2 in normalised units -> +1, -1 -> raw bounds 1, -1
    assert [c[1] for c in chunk] == [1.0, -1.0]


def test_clip_variant_sets_discrete_guess_entries_to_plus_minus_one_over_the_factor():
    policy = WarmStartPolicy()  # trained without discrete dims
    actor = ChunkActor(policy, normalizer(), ["x"], sampler="rti",
                       rti=RTIConfig(discrete_dims=[1], clip_factor=10.0))
    actions = act(actor, 2)
    assert actions[0][0, 1] == 1.0  # binarised at execution as well
    torch.testing.assert_close(policy.guesses[0][0, :, 1], torch.tensor([-0.1, 0.1, -0.1, -0.1]))


def test_scaling_variant_keeps_the_guess_continuous():
    policy = WarmStartPolicy(discrete_dims=[1])  # trained scaled: the policy declares the dim itself
    actor = ChunkActor(policy, normalizer(), ["x"], sampler="rti", rti=RTIConfig(discrete_dims=[1], clip_factor=10))
    act(actor, 2)
    torch.testing.assert_close(policy.guesses[0][0, :, 1], torch.tensor([-0.2, 0.05, -0.7, -0.7]))


@pytest.mark.parametrize("options, message", [
    (dict(execution="ensemble"), "sampler=rti executes chunks receding-horizon"),
    (dict(rti=RTIConfig(action_steps=5)), "rti.action_steps must be in \\[1, horizon=4\\], got 5"),
    (dict(rti=RTIConfig(noise_level=0.0)), "rti.noise_level must be in \\(0, 1\\]"),
])
def test_bad_rti_settings_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        ChunkActor(WarmStartPolicy(), normalizer(), ["x"], sampler="rti", **options)


def test_rti_needs_a_policy_that_can_refine():
    class Plain(torch.nn.Module):
        obs_steps, horizon, action_steps = 1, 4, 2

    with pytest.raises(ConfigError, match="sampler=rti needs a diffusion or flow policy, got Plain"):
        ChunkActor(Plain(), normalizer(), ["x"], sampler="rti")


def test_call_counting_and_latency_summary():
    net = torch.nn.Linear(1, 1)
    with count_calls(net) as calls:
        net(torch.zeros(1, 1))
        net(torch.zeros(1, 1))
    net(torch.zeros(1, 1))
    assert calls == [2] and not net._forward_pre_hooks
    actor = ChunkActor(WarmStartPolicy(), normalizer(), ["x"])
    act(actor, 4)
    summary = latency_summary(actor)
    assert summary["plans"] == 2 and summary["nfe_per_action"] == 5.0
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    assert 0 < summary["chunk_ms_p50"] <= summary["chunk_ms_p99"] and summary["chunk_ms_p50"] <= summary["latency_ms_p50"]


def test_level_picker_grows_with_the_gap_between_a_shifted_guess_and_the_next_chunk(tmp_path):
    store = EpisodeStore.create(str(tmp_path / "s.zarr"))
    for _ in range(4):
        steps = np.arange(30, dtype=np.float32)[:, None]
        store.add_episode({"x": steps, "action": np.zeros((30, 1), np.float32)})
    norm = Normalizer.fit({"x": np.array([[0.0], [29.0]], np.float32), "action": np.array([[-1.0], [1.0]])},
                          {"x": "identity", "action": "minmax"})

    def level(speed: float) -> float:
        policy = FlowPolicy(1, 1, 1, 4, 1, backbone="mlp", hidden_dims=[4])
        # the clean chunk planned at step x is x * speed + h * speed: a shifted guess is exact when the chunk
        # moves with the plan; the 0.1 * sin term makes consecutive plans disagree by an amount set by speed
        policy.sample = lambda obs, generator=None: speed * (obs + torch.arange(4.0)[None, :, None]
                                                              + torch.sin(7 * obs))
        actor = ChunkActor(policy, norm, ["x"], sampler="rti")
        return pick_rti_noise_level(actor, store, pairs=64)

    small, large = level(0.001), level(0.05)
    assert 0.0 < small < large <= 1.0


def test_observation_windows_stack_the_history_and_repeat_the_episode_start():
    policy = WarmStartPolicy()
    policy.obs_steps = 3
    actor = ChunkActor(policy, normalizer(), ["x"])
    arrays = {"x": np.arange(20, dtype=np.float32)[:, None] * 10}  # two episodes: steps 0-9 and 10-19
    windows = observation_windows(actor, arrays, np.array([1, 15, 10]), np.array([0, 10, 10]))
    assert windows.shape == (3, 3, 1) and windows.dtype == torch.float32
    expected = torch.tensor([[0.0, 0.0, 10.0], [130.0, 140.0, 150.0], [100.0, 100.0, 100.0]])[..., None]
    torch.testing.assert_close(windows, expected)  # x's normaliser is the identity
