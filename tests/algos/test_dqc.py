"""Decoupled Q-chunking (robopol.algos.dqc): its three critic losses on tiny hand batches with stand-in critics,
the valid-prefix mask, reward handling (robopol.algos.offline.transform_rewards) and configuration errors."""

from __future__ import annotations

import copy
import math
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from robopol.algos import dqc as dqc_module
from robopol.algos.dqc import DQC, backup_loss, chunk_critic_loss, distill_loss, logit
from robopol.algos.offline import BestOfN, transform_rewards
from robopol.data.store import EpisodeStore
from robopol.errors import ConfigError
from robopol.policies.flow import FlowPolicy
from robopol.policies.mlp import MLPPolicy
from robopol.train.trainer import _load_rewards

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75


class FixedCritic(nn.Module):
    """Stand-in critic ``forward(obs, chunk) = scale * fn(obs, chunk)`` (scale = 1, trainable), logits or
    values; records the chunks it is shown."""

    def __init__(self, fn, logits: bool = True) -> None:
        super().__init__()
        self.fn, self.logits = fn, logits
        self.scale = nn.Parameter(torch.ones(()))
        self.chunks: list[torch.Tensor] = []

    def forward(self, obs, chunk=None):
        if chunk is not None:
            self.chunks.append(chunk.detach().clone())
        return self.scale * self.fn(obs, chunk)

    def values(self, obs, chunk=None):
        out = self(obs, chunk)
        return torch.sigmoid(out) if self.logits else out


def const(rows, logits: bool = True) -> FixedCritic:
    table = torch.tensor(rows)
    return FixedCritic(lambda obs, chunk: table.clone(), logits)


def bce(p: float, y: float) -> float:
    """Binary cross-entropy of probability p against target y."""
    out = 0.0
    if y > 0:
        out -= y * math.log(p)
    if y < 1:
        out -= (1 - y) * math.log(1 - p)
    return out


def hand_batch() -> dict[str, torch.Tensor]:
    return {
        "obs": torch.zeros(3, 1, 1),
        "action": torch.tensor([[[2.0], [0.0]], [[0.5], [0.0]], [[-0.5], [0.0]]]),
        "next_obs": torch.zeros(3, 1, 1),
        "reward_sum": torch.tensor([0.0, 1.0, 0.8]),
        "discount": torch.tensor([0.81, 0.9, 0.81]),
        "mask": torch.tensor([True, False, True]),
    }


# ------------------------------------------------------------------ term 1: chunk critic


def test_chunk_critic_loss_is_bce_against_the_clipped_td_target_onto_the_value():
    chunk_critic = const([[0.0, LN3, -LN3], [LN3, 0.0, 0.0]])  # sigmoid: [.5, .75, .25], [.75, .5, .5]
    value = const([[LN3, 0.0, 0.0]])  # V(s') = [0.75, 0.5, 0.5]
    batch = hand_batch()
    # y = R + discount * mask * V(s'): [0 + 0.81 * 0.75, 1 (terminal), 0.8 + 0.81 * 0.5 = 1.205 -> clipped to 1]
    y = [0.6075, 1.0, 1.0]
    errors = [[bce(0.5, y[0]), bce(0.75, y[1]), bce(0.25, y[2])],
              [bce(0.75, y[0]), bce(0.5, y[1]), bce(0.5, y[2])]]
    loss, metrics = chunk_critic_loss(chunk_critic, value, batch, None)
    assert loss.item() == pytest.approx(sum(map(sum, errors)) / 6, rel=1e-5)
    assert metrics["chunk_target_mean"] == pytest.approx(sum(y) / 3, rel=1e-6)
    assert metrics["chunk_q_mean"] == pytest.approx((0.5 + 0.75 + 0.25 + 0.75 + 0.5 + 0.5) / 6, rel=1e-6)
    torch.testing.assert_close(chunk_critic.chunks[0][:, 0, 0], torch.tensor([1.0, 0.5, -0.5]))  # clipped

    weighted, _ = chunk_critic_loss(chunk_critic, value, batch, torch.tensor([1.0, 1.0, 0.0]))
    kept = errors[0][0] + errors[0][1] + errors[1][0] + errors[1][1]
    assert weighted.item() == pytest.approx(kept / 4, rel=1e-5)
    weighted.backward()
    assert chunk_critic.scale.grad is not None and value.scale.grad is None


def test_chunk_critic_loss_without_logits_is_a_squared_error_against_the_raw_target():
    chunk_critic = const([[0.0, 1.0, -1.0], [1.0, 0.0, 0.0]], logits=False)
    value = const([[0.75, 0.5, 0.5]], logits=False)
    loss, metrics = chunk_critic_loss(chunk_critic, value, hand_batch(), None)
    y = [0.6075, 1.0, 1.205]  # not clipped
    errors = [(0 - y[0]) ** 2, (1 - y[1]) ** 2, (-1 - y[2]) ** 2, (1 - y[0]) ** 2, (0 - y[1]) ** 2, (0 - y[2]) ** 2]
    assert loss.item() == pytest.approx(sum(errors) / 6, rel=1e-5)
    assert metrics["chunk_target_mean"] == pytest.approx(sum(y) / 3, rel=1e-6)


# ------------------------------------------------------------------ term 2: partial-critic distillation


def test_distill_loss_is_a_bce_expectile_onto_the_chunk_critic_masked_by_the_valid_prefix():
    # chunk-critic values (targets), member by member: [[0.8, 0.25], [0.5, 0.9]]
    chunk_critic = const([[math.log(4.0), math.log(1 / 3)], [0.0, math.log(9.0)]])
    partial = const([[0.0, LN3], [LN3, LN3]])  # sigmoid [[0.5, 0.75], [0.75, 0.75]]
    batch = {"obs": torch.zeros(2, 1, 1), "action": torch.tensor([[[3.0], [0.0]], [[0.0], [0.0]]])}
    kappa = 0.8
    # weight kappa where the target is at or above the partial critic's value, 1 - kappa below
    errors = [[kappa * bce(0.5, 0.8), (1 - kappa) * bce(0.75, 0.25)],
              [(1 - kappa) * bce(0.75, 0.5), kappa * bce(0.75, 0.9)]]
    loss, metrics = distill_loss(partial, chunk_critic, batch, kappa, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((errors[0][0] + errors[1][0]) / 2, rel=1e-5)  # sample 1 masked out
    full, _ = distill_loss(partial, chunk_critic, batch, kappa, torch.tensor([1.0, 1.0]))
    assert full.item() == pytest.approx(sum(map(sum, errors)) / 4, rel=1e-5)
    assert metrics["partial_q_mean"] == pytest.approx((0.5 + 0.75 + 0.75 + 0.75) / 4, rel=1e-6)
    # both critics see the clipped dataset chunk; the target side passes no gradient
    assert chunk_critic.chunks[0][0, 0, 0].item() == 1.0 and partial.chunks[0][0, 0, 0].item() == 1.0
    loss.backward()
    assert partial.scale.grad is not None and chunk_critic.scale.grad is None


def test_distill_loss_without_logits_is_a_plain_expectile():
    chunk_critic = const([[0.8, 0.25]], logits=False)
    partial = const([[0.5, 0.75]], logits=False)
    batch = {"obs": torch.zeros(2, 1, 1), "action": torch.zeros(2, 2, 1)}
    loss, _ = distill_loss(partial, chunk_critic, batch, 0.8, torch.ones(2))
    assert loss.item() == pytest.approx((0.8 * 0.3**2 + 0.2 * 0.5**2) / 2, rel=1e-5)


# ------------------------------------------------------------------ term 3: implicit value backup


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_backup_loss_is_a_quantile_of_the_target_partial_critic_in_logit_space(q_agg):
    value = const([[0.0, LN3]])  # V = [0.5, 0.75]
    partial_target = const([[LN3, 0.0], [LN3, math.log(9.0)]])  # values [[0.75, 0.5], [0.75, 0.9]]
    batch = {"obs": torch.zeros(2, 1, 1), "action": torch.zeros(2, 2, 1)}
    kappa = 0.9
    loss, metrics = backup_loss(value, partial_target, batch, kappa, q_agg, torch.ones(2))
    if q_agg == "mean":
        # qbar = [0.75, 0.7]; logit(0.75) - 0 = ln 3 > 0 (weight kappa);
        # logit(0.7) - ln 3 = ln(7/3) - ln 3 = ln(7/9) < 0 (weight 1 - kappa)
        expected = (kappa * LN3 + (1 - kappa) * math.log(9 / 7)) / 2
        q = [0.75, 0.7]
    else:
        # qbar = [0.75, 0.5]: logit(0.5) - ln 3 = -ln 3
        expected = (kappa * LN3 + (1 - kappa) * LN3) / 2
        q = [0.75, 0.5]
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert metrics["v_mean"] == pytest.approx((0.5 + 0.75) / 2, rel=1e-6)
    assert metrics["advantage"] == pytest.approx(((q[0] - 0.5) + (q[1] - 0.75)) / 2, rel=1e-4, abs=1e-6)
    masked, _ = backup_loss(value, partial_target, batch, kappa, q_agg, torch.tensor([1.0, 0.0]))
    assert masked.item() == pytest.approx(kappa * LN3, rel=1e-4)
    masked.backward()
    assert value.scale.grad is not None and partial_target.scale.grad is None


def test_backup_loss_without_logits_is_a_quantile_of_values():
    value = const([[0.5, 0.75]], logits=False)
    partial_target = const([[0.75, 0.5], [0.75, 0.9]], logits=False)
    batch = {"obs": torch.zeros(2, 1, 1), "action": torch.zeros(2, 2, 1)}
    loss, _ = backup_loss(value, partial_target, batch, 0.9, "mean", torch.ones(2))
    assert loss.item() == pytest.approx((0.9 * 0.25 + 0.1 * 0.05) / 2, rel=1e-5)


def test_logit_clamps_probabilities_of_zero_and_one():
    out = logit(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    edge = math.log((1 - 1e-5) / 1e-5)  # 11.51
    torch.testing.assert_close(out, torch.tensor([-edge, 0.0, edge], dtype=torch.float64))
    assert torch.isfinite(logit(torch.tensor([0.0, 1.0]))).all()


# ------------------------------------------------------------------ the algorithm


def flow_policy(action_dim: int = 1, horizon: int = 2, action_steps: int | None = None) -> FlowPolicy:
    torch.manual_seed(0)
    return FlowPolicy(1, action_dim, obs_steps=1, horizon=horizon,
                      action_steps=horizon if action_steps is None else action_steps, backbone="mlp",
                      hidden_dims=[8])


def dqc(policy=None, **kw) -> DQC:
    args = dict(chunk_horizon=4, critic_hidden_dims=(8,))
    args.update(kw)
    return DQC(flow_policy() if policy is None else policy, 10, **args)


def window_batch(action_dim: int) -> dict[str, torch.Tensor]:
    """Three 4-step windows with 2-d actions: valid for 4, 2 and 1 steps."""
    g = torch.Generator().manual_seed(0)
    return {
        "obs": torch.randn(3, 1, 1, generator=g),
        "action": torch.rand(3, 4, action_dim, generator=g) * 2 - 1,
        "action_is_pad": torch.tensor([[False] * 4, [False, False, True, True], [False, True, True, True]]),
        "next_obs": torch.randn(3, 1, 1, generator=g),
        "reward_sum": torch.tensor([0.0, 0.0, 1.0]),
        "discount": torch.tensor([0.999**4, 0.999**2, 0.999]),
        "mask": torch.tensor([True, True, False]),
        "terminal": torch.tensor([False, False, True]),
        "truncated": torch.tensor([False, True, False]),
        "valid": torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]]),
    }


def test_update_masks_the_partial_and_value_terms_by_valid_at_the_last_policy_step(monkeypatch):
    # 2-d actions, h_a = 2: the intended index is h_a - 1 = 1, the reference's h_a * |A| - 1 = 3
    algo = dqc(flow_policy(action_dim=2), tau=0.5)
    seen = {}

    def spy(name, fn):
        def wrapped(*args):
            seen[name] = args[-1].clone()
            return fn(*args)
        monkeypatch.setattr(dqc_module, name, wrapped)

    spy("distill_loss", dqc_module.distill_loss)
    spy("backup_loss", dqc_module.backup_loss)
    old_partial_target = copy.deepcopy(algo.partial_target)
    old = {k: copy.deepcopy(algo.nets[k]) for k in ("chunk_critic", "partial_critic", "value")}
    metrics = algo.update(window_batch(action_dim=2))
    torch.testing.assert_close(seen["distill_loss"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(seen["backup_loss"], torch.tensor([1.0, 1.0, 0.0]))
    assert {"loss", "chunk_critic_loss", "distill_loss", "value_loss", "velocity_mse"} <= set(metrics)
    assert metrics["loss"] == pytest.approx(metrics["chunk_critic_loss"] + metrics["distill_loss"]
                                            + metrics["value_loss"], rel=1e-5)
    for key, before in old.items():  # one optimiser step moved all three critics
        assert any(not torch.equal(p, q) for p, q in zip(algo.nets[key].parameters(), before.parameters(),
                                                          strict=True)), key
    for t, t_old, p in zip(algo.partial_target.parameters(), old_partial_target.parameters(),
                           algo.partial.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * t_old + 0.5 * p)


def test_networks_and_the_deployed_policy():
    algo = dqc(num_critics=3, q_agg="min", best_of_n=4)
    assert (algo.chunk_critic.horizon, algo.partial.horizon, algo.value.horizon) == (4, 2, 0)
    assert (algo.chunk_critic.num, algo.partial.num, algo.value.num) == (3, 3, 1)
    assert algo.chunk_critic.logits and algo.partial.logits and algo.value.logits
    assert algo.window_options() == {"critic": True, "gamma": 0.999, "horizon": 4}
    best = algo.eval_policy()
    assert isinstance(best, BestOfN) and best.critic is algo.partial and (best.n, best.aggregation) == (4, "min")
    chunk = best.sample(torch.zeros(5, 1, 1))
    assert chunk.shape == (5, 2, 1) and chunk.abs().max() <= 1


def test_prepare_rewards_rejects_rewards_outside_zero_one_for_logit_critics():
    with pytest.raises(ValueError, match=r"algo.logits=true needs rewards in \[0, 1\], the data's "
                                         r"\(algo.reward=store\) span \[-1, 0\]: use algo.reward=success or "
                                         r"algo.logits=false"):
        dqc(reward="store").prepare_rewards(np.array([-1.0, 0.0], dtype=np.float32), None)
    with pytest.raises(ValueError, match=r"span \[0, 2\]"):
        dqc(reward="store").prepare_rewards(np.array([0.0, 2.0], dtype=np.float32), None)
    np.testing.assert_array_equal(
        dqc(reward="store", logits=False).prepare_rewards(np.array([-1.0, 0.0], dtype=np.float32), None),
        [-1.0, 0.0])
    np.testing.assert_array_equal(
        dqc().prepare_rewards(np.array([-3.0, -1.0, 0.0], dtype=np.float32), np.array([False, False, True])),
        [0.0, 0.0, 1.0])  # the default reward=success reads the terminals


def test_the_trainer_reports_a_reward_mismatch_as_a_config_error_naming_both_settings():
    location = f"memory://robopol-dqc-{uuid.uuid4().hex}/s.zarr"
    store = EpisodeStore.create(location)
    store.add_episode({"obs": np.zeros((3, 1), np.float32), "action": np.zeros((3, 1), np.float32),
                       "reward": np.array([-1.0, -0.5, 0.0], np.float32),
                       "terminal": np.array([False, False, True])})
    algo = dqc(reward="store")
    algo.name = "dqc"
    with pytest.raises(ConfigError, match=r"algo=dqc on memory://.*algo.reward=store.*algo.logits=false"):
        _load_rewards(store, location, algo)
    loaded = _load_rewards(store, location, dqc())
    np.testing.assert_array_equal(loaded["reward"], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(loaded["terminal"], [False, False, True])


def test_transform_rewards_modes():
    reward = np.array([0.0, -0.5, -1.0, 0.0, 2.0])
    terminal = np.array([False, False, False, False, True])
    store = transform_rewards(reward, terminal, "store")
    assert store.dtype == np.float32
    np.testing.assert_array_equal(store, reward)
    # sparse (QC's --sparse): 0 where the stored reward is exactly 0, -1 elsewhere
    np.testing.assert_array_equal(transform_rewards(reward, terminal, "sparse"), [0, -1, -1, 0, -1])
    # success: 1 on true terminal steps
    success = transform_rewards(reward, terminal, "success")
    assert success.dtype == np.float32
    np.testing.assert_array_equal(success, [0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="algo.reward=success needs the store's per-step 'terminal' flags"):
        transform_rewards(reward, None, "success")
    with pytest.raises(ValueError, match="algo.reward must be one of store, sparse, success, got 'dense'"):
        transform_rewards(reward, terminal, "dense")


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"algo.kappa_d must be in \(0, 1\), got 1.0"):
        dqc(kappa_d=1.0)
    with pytest.raises(ValueError, match=r"algo.kappa_b must be in \(0, 1\), got 0.0"):
        dqc(kappa_b=0.0)
    with pytest.raises(ValueError, match="algo.q_agg must be one of min, mean, got 'max'"):
        dqc(q_agg="max")
    with pytest.raises(ValueError, match=r"set policy.action_steps=policy.horizon \(got 1 and 2\)"):
        dqc(flow_policy(horizon=2, action_steps=1))
    with pytest.raises(ValueError, match=r"the critic's chunk \(algo.chunk_horizon=1\) must be at least the "
                                         r"policy's \(policy.horizon=2\)"):
        dqc(chunk_horizon=1)
    with pytest.raises(ValueError, match=r"DQC needs a generative \(flow or diffusion\) policy"):
        dqc(MLPPolicy(1, 1, obs_steps=1, horizon=2, action_steps=2, hidden_dims=(8,)))


# ------------------------------------------------------------------ end to end on the toy task


def test_train_dqc_on_point_reach_then_load_and_evaluate_best_of_n_over_the_partial_critic(tmp_path, toy_store):
    from safetensors.torch import load_file

    from robopol.checkpoint import load_checkpoint
    from robopol.cli.app import compose
    from robopol.runtime import evaluate, load_actor
    from robopol.tasks import make_env
    from robopol.train.run import read_metrics
    from robopol.train.trainer import train

    cfg = compose("train", ["algo=dqc", "algo.chunk_horizon=6", "algo.best_of_n=4", "policy=flow_mlp",
                            "policy.horizon=2", "policy.action_steps=2", f"data={toy_store}",
                            "policy.hidden_dims=[32,32]", "algo.critic_hidden_dims=[64,64]", "trainer.steps=30",
                            "trainer.batch_size=32", "trainer.log_every=10", "trainer.eval_episodes=2",
                            "trainer.progress=false", "trainer.num_threads=1"])
    run = train(cfg, tmp_path / "run").run_dir
    logged = {k for record in read_metrics(run / "metrics.jsonl") for k in record}
    assert {"train/chunk_critic_loss", "train/distill_loss", "train/value_loss", "eval/success_rate"} <= logged
    ckpt = load_checkpoint(run)
    assert set(ckpt.module_names()) == {"chunk_critic", "partial_critic", "partial_critic_target", "policy",
                                        "value"}

    actor, ckpt = load_actor(str(run))
    best = actor.policy
    assert isinstance(best, BestOfN) and best.n == 4 and best.aggregation == "mean"
    assert best.critic.horizon == 2 and best.critic.logits  # the partial critic over h_a = 2 steps
    weights = load_file(ckpt.path / "model.safetensors")
    for module, net in (("partial_critic", best.critic), ("policy", best.policy)):
        state = net.state_dict()
        expected = {k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".", 1)[0] == module}
        assert set(state) == set(expected)
        for key, value in state.items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=f"{module}.{key}")
    env = make_env(ckpt.config.task, num_envs=2, seed=0)
    try:
        result = evaluate(env, actor, episodes=2, seed=0)
    finally:
        env.close()
    assert result.episodes == 2 and 0.0 <= result.success_rate <= 1.0 and actor.plans > 0


def test_dqc_training_resumes_bit_exactly(assert_resume_is_exact):
    assert_resume_is_exact(["algo=dqc", "algo.chunk_horizon=6", "algo.best_of_n=4",
                            "policy=flow_mlp", "policy.horizon=2", "policy.action_steps=2"])


# ------------------------------------------------------------------ goal-conditioned training (relabel=true)


def test_goal_rewards_by_hand():
    gamma = 0.9
    batch = {
        # goals: at the anchor, 2 steps ahead inside a 4-step chunk, at the bootstrap state (4 ahead), in
        # the past, ahead inside a chunk cut short by the episode end, and beyond a time-limited end
        "goal_offset": torch.tensor([0, 2, 4, -3, 1, 5]),
        "valid": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0],
                               [1, 1, 1, 0]], dtype=torch.bool),
        "discount": torch.tensor([gamma**4] * 4 + [gamma**2, gamma**3]),
        "terminal": torch.tensor([False, False, False, False, True, False]),
        "truncated": torch.tensor([False, False, False, False, False, True]),
        "reward_sum": torch.full((6,), -7.0),  # stored rewards are ignored
        "mask": torch.ones(6, dtype=torch.bool),
    }
    out = dqc_module.goal_rewards(batch, gamma)
    torch.testing.assert_close(out["reward_sum"], torch.tensor([1.0, 0.81, 0.0, 0.0, 0.9, 0.0]))
    assert out["mask"].tolist() == [False, False, True, True, False, True]
    # reaching the goal ends the chunk; an episode end before the goal leaves nothing to bootstrap from
    assert out["truncated"].tolist() == [False, False, False, False, False, True]
    assert out["terminal"].tolist() == [True, True, False, False, True, False]


def test_relabelled_windows_put_the_goal_state_into_the_goal_observation(toy_store):
    from robopol.data.normalize import Normalizer
    from robopol.data.sampler import WindowConfig, WindowSampler
    from robopol.train.trainer import RELABELLED_GOAL, to_batch

    store = EpisodeStore.open(toy_store)
    arrays = store.load(["goal", "pos", "action", "reward", "terminal"])
    window = WindowConfig(obs_keys=("goal", "pos"), obs_steps=2, horizon=4, critic=True, goal_key="pos",
                          goal_out_key=RELABELLED_GOAL, p_current=0.2, p_future=0.5, p_random=0.3)
    windows = WindowSampler(arrays, store.episode_ends, window, seed=3).sample(64)
    identity = Normalizer.fit({k: arrays[k] for k in ("goal", "pos", "action")},
                              modes={k: "identity" for k in ("goal", "pos", "action")})
    batch = to_batch(windows, ["goal", "pos"], identity, torch.device("cpu"), goal_key="goal")
    goal_state = torch.as_tensor(arrays["pos"][windows["goal_index"]])
    for step in range(2):  # every history step of obs and next_obs carries the relabelled goal
        torch.testing.assert_close(batch["obs"][:, step, :2], goal_state)
        torch.testing.assert_close(batch["next_obs"][:, step, :2], goal_state)
    torch.testing.assert_close(batch["obs"][:, -1, 2:], torch.as_tensor(windows["pos"][:, -1]))
    assert batch["goal_offset"].tolist() == (windows["goal_index"] - windows["index"]).tolist()
    assert (batch["goal_offset"] == 0).any() and (batch["goal_offset"] > 0).any()


def test_relabelling_needs_a_goal_task_and_valid_probabilities(tmp_path, toy_store):
    from robopol.cli.app import compose
    from robopol.train.trainer import train

    with pytest.raises(ValueError, match=r"algo.p_current, algo.p_future and algo.p_random must be >= 0 and "
                                         r"sum to 1"):
        dqc(relabel=True, p_current=0.5, p_future=0.5, p_random=0.5)
    common = [f"data={toy_store}", "algo=dqc", "algo.relabel=true", "algo.chunk_horizon=4", "policy=flow_mlp",
              "policy.horizon=2", "policy.action_steps=2", "policy.hidden_dims=[16]", "trainer.steps=2",
              "trainer.eval_episodes=0", "trainer.progress=false", "algo.critic_hidden_dims=[16]"]
    with pytest.raises(ConfigError, match=r"algo.goal_from=action must be an observation key of task "
                                          r"'point_reach' shaped like its goal \(2,\): one of \['pos'\]"):
        train(compose("train", [*common, "algo.goal_from=action"]), tmp_path / "bad")
    result = train(compose("train", common), tmp_path / "run")  # goals come from 'pos', the key shaped like them
    assert result.steps == 2


def test_goal_source_errors_name_the_task_and_the_fix():
    from robopol.envs import ArraySpec, EnvSpec
    from robopol.train.trainer import _goal_source

    box = ArraySpec((2,))
    no_goal = EnvSpec(task="cube1", observation={"observation": box}, action=box, max_episode_steps=10)
    with pytest.raises(ConfigError, match=r"algo=dqc relabels goals, and task 'cube1' has no goal observation"):
        _goal_source(no_goal, "", "dqc")
    ambiguous = EnvSpec(task="two", observation={"goal": box, "a": box, "b": box}, action=box,
                        max_episode_steps=10, goal_key="goal")
    with pytest.raises(ConfigError, match=r"task 'two' has 2 observation keys shaped like its goal \(2,\) "
                                          r"\(\['a', 'b'\]\); name the one goals come from with algo.goal_from="):
        _goal_source(ambiguous, "", "dqc")
    assert _goal_source(ambiguous, "b", "dqc") == "b"
