"""Typed config schemas, registered with Hydra's ConfigStore.

Each YAML file in ``configs/<group>/`` extends one of these schemas (its defaults list names the schema),
so an unknown key or a value of the wrong type is rejected when the config is composed. Objects are
built from the ``_target_`` fields with ``hydra.utils.instantiate``; robopol's core reaches ``robopol.sim``
and ``robopol.real`` only through such targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ---------------------------------------------------------------------------------------------- groups


@dataclass
class TaskConfig:
    """A simulated task: how to build its batched environment and its expert."""

    name: str = MISSING
    """Short task name, used in run directory names and checked when a checkpoint is evaluated."""
    _target_: str = MISSING
    """Batched-env class or factory (called with ``num_envs`` and ``seed``)."""
    expert: str = ""
    """Scripted expert class (called with ``env``, ``noise`` and ``seed``); empty if the task has none."""
    max_episode_steps: int = 100
    """Steps before an episode is truncated."""


@dataclass
class PolicyConfig:
    """A policy: backbone plus head, predicting action chunks from an observation history."""

    name: str = MISSING
    """Short policy name, used in run directory names."""
    _target_: str = MISSING
    """Policy class, called with this config's fields plus the data shapes."""
    obs_steps: int = 1
    """Observation history length To."""
    horizon: int = 8
    """Predicted action-chunk length H."""
    action_steps: int = 4
    """Executed steps per chunk Ta (at most H)."""


@dataclass
class AlgoConfig:
    """A learning algorithm: what one update step does with a batch."""

    name: str = MISSING
    """Short algorithm name, used in run directory names."""
    _target_: str = MISSING
    """Algorithm class, called with the policy and this config."""


@dataclass
class BCConfig(AlgoConfig):
    """Behaviour cloning: minimise the policy's imitation loss on dataset windows."""

    name: str = "bc"
    _target_: str = "robopol.algos.bc.BC"
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps before the cosine decay."""
    ema_decay: float = 0.0
    """Decay of the exponential moving average of the weights used for evaluation; 0 disables EMA."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value; 0 disables clipping."""


@dataclass
class DistillConfig(BCConfig):
    """Consistency distillation of a diffusion or flow teacher (``teacher=``) into a one-step student."""

    name: str = "distill"
    _target_: str = "robopol.algos.distill.Distill"
    loss: str = "consistency"
    """consistency (LCM-style: teacher solver step + EMA target + boundary scalings) or action_matching."""
    solver_steps: int = 20
    """Equal noise-scale intervals of the teacher's solver grid (consistency loss)."""
    target_decay: float = 0.95
    """EMA decay of the consistency target network."""


@dataclass
class OfflineRLConfig(AlgoConfig):
    """Fields shared by the critic-based offline RL algorithms (robopol.algos.offline)."""

    lr: float = 3e-4
    """Adam learning rate of every network."""
    gamma: float = 0.99
    """Discount per environment step (a chunk of n steps bootstraps with gamma**n)."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    reward: str = "store"
    """How rewards are read: store (as stored), sparse (0 where the stored reward is 0, else -1; QC's --sparse) or success (1 on true terminal steps, else 0)."""
    num_critics: int = 2
    """Members of each critic ensemble."""
    critic_hidden_dims: list[int] = field(default_factory=lambda: [512, 512, 512, 512])
    """Hidden widths of every critic / value MLP."""
    layer_norm: bool = True
    """LayerNorm in the critic MLPs."""
    ema_decay: float = 0.0
    """EMA of the policy weights (evaluation and deployment use it); 0 disables it."""
    grad_clip: float = 0.0
    """Clip every gradient norm to this value; 0 disables clipping."""
    drop_truncated: bool = True
    """Leave windows that run into a time limit out of the TD losses (QC); false bootstraps them from the last stored state."""


@dataclass
class QCConfig(OfflineRLConfig):
    """Q-chunking: a critic over the policy's whole chunk with the unbiased h-step backup (algorithms.md §5a)."""

    name: str = "qc"
    _target_: str = "robopol.algos.qc.QC"
    q_agg: str = "mean"
    """Ensemble aggregation in the TD target and best-of-N scores: mean or min."""
    extraction: str = "best_of_n"
    """best_of_n (QC: pick the best of N flow-policy chunks by Q) or distill (QC-FQL: a one-step actor)."""
    best_of_n: int = 32
    """Chunks drawn per decision by best-of-N extraction."""
    backup: str = "best_of_n"
    """best_of_n: the TD target's next chunk is the best of best_of_n policy chunks (QC); sample: one policy chunk (cheaper)."""
    alpha: float = 100.0
    """distill: weight of the one-step actor's distillation term (QC's README: 100)."""
    normalize_q_loss: bool = False
    """distill: divide the actor's Q term by stopgrad(mean |Q|)."""
    actor_hidden_dims: list[int] = field(default_factory=lambda: [512, 512, 512, 512])
    """distill: hidden widths of the one-step actor."""


@dataclass
class DQCConfig(OfflineRLConfig):
    """Decoupled Q-chunking: critic chunk h, policy chunk h_a = policy.horizon, distilled partial critic (§5b)."""

    name: str = "dqc"
    _target_: str = "robopol.algos.dqc.DQC"
    gamma: float = 0.999
    reward: str = "success"
    critic_hidden_dims: list[int] = field(default_factory=lambda: [1024, 1024, 1024, 1024])
    chunk_horizon: int = 25
    """h: steps of the chunk critic's backup (at least policy.horizon)."""
    logits: bool = True
    """Value nets output logits of [0, 1] values, trained with BCE (needs reward=success or [0, 1] rewards)."""
    kappa_d: float = 0.8
    """Expectile of the partial critic's distillation onto the chunk critic."""
    kappa_b: float = 0.9
    """Quantile of the implicit value backup from the partial critic."""
    q_agg: str = "mean"
    """Partial-critic ensemble aggregation in the backup and best-of-N scores: mean or min."""
    best_of_n: int = 32
    """Chunks drawn per decision by best-of-N extraction."""
    relabel: bool = False
    """Goal-conditioned training: relabel each window's goal with a state of the data and reward reaching it (DQC's CGCDataset)."""
    goal_from: str = ""
    """relabel: observation key goals are taken from; empty picks the one key shaped like the task's goal."""
    p_current: float = 0.2
    """relabel: probability that the goal is the anchor's own state."""
    p_future: float = 0.5
    """relabel: probability that the goal is a uniformly drawn later state of the same episode."""
    p_random: float = 0.3
    """relabel: probability that the goal is a random state of the data."""


@dataclass
class OFQLConfig(OfflineRLConfig):
    """One-step flow Q-learning: mean-flow policy + double-Q critic, one network call per chunk (§4)."""

    name: str = "ofql"
    _target_: str = "robopol.algos.ofql.OFQL"
    eta: float = 0.1
    """Weight of the actor's Q term relative to the flow BC loss (alpha = eta / mean|Q|, or eta / q_scale)."""
    q_scale: float = 0.0
    """0: normalise the Q term by the batch's mean |Q| (OFQL); > 0: by this fixed scale, e.g. 1/(1-gamma)
    for rewards in [-1, 0], so alpha cannot grow when an exploited critic's |Q| shrinks."""
    actor_q_agg: str = "mean"
    """Ensemble aggregation in the actor's Q term: mean (OFQL) or min (pessimistic, SAC-N / EDAC)."""
    backup: str = "actor"
    """TD target: actor (OFQL: the target actor's next chunk) or expectile (IQL's in-sample V backup)."""
    expectile: float = 0.9
    """backup=expectile: expectile tau of the value loss (IQL on OGBench: 0.9)."""
    ema_decay: float = 0.995
    """EMA of the policy: the target actor of the TD target and the evaluated policy."""
    q_agg: str = "min"
    """Ensemble aggregation in the TD target: min (DQL, OFQL) or mean (QC); also scores best_of_n's chunks."""
    best_of_n: int = 1
    """Chunks the evaluated policy draws (one batched actor call) for the critic to pick from (DQL); 1: OFQL's single sample."""


@dataclass
class IQLConfig(OfflineRLConfig):
    """Implicit Q-learning: expectile V, chunk Q backed up onto V, AWR into a flow/diffusion head (§1)."""

    name: str = "iql"
    _target_: str = "robopol.algos.iql.IQL"
    critic_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the critic and value MLPs (IQL: 256, 256)."""
    layer_norm: bool = False
    """LayerNorm in the critic and value MLPs (IQL: none)."""
    expectile: float = 0.7
    """Expectile tau of the value loss (IQL: 0.7 locomotion and kitchen, 0.9 antmaze)."""
    beta: float = 3.0
    """Inverse temperature of the AWR weights exp(beta * (Q - V)) (IQL: 3 locomotion, 10 antmaze, 0.5 kitchen)."""
    max_weight: float = 100.0
    """Clip of the AWR weights (IQL: 100)."""
    actor_lr_decay: bool = True
    """Cosine decay of the policy's learning rate from lr to 0 over trainer.steps (IQL)."""


@dataclass
class ALOEConfig(OfflineRLConfig):
    """ALOE: chunked TD evaluation of the current policy by a pessimistic ensemble, advantage-weighted flow matching (§6)."""

    name: str = "aloe"
    _target_: str = "robopol.algos.aloe.ALOE"
    num_critics: int = 5
    """Members of the chunk-critic ensemble (at least 2)."""
    critic_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of every critic MLP (a lightweight ensemble)."""
    pessimism: str = "min"
    """Ensemble aggregation of the TD target and the advantages: min or mean_minus_std."""
    pessimism_coef: float = 1.0
    """mean_minus_std: c in mean - c * std over the members."""
    policy_samples: int = 4
    """K: policy chunks per state whose pessimistic Q is averaged into V^pi(s)."""
    temperature: float = 1.0
    """alpha in the advantage weights exp(A / alpha)."""
    max_weight: float = 20.0
    """w_max: clip of the advantage weights."""
    interventions: bool = False
    """Read the store's per-step 'intervention' flags (human takeovers in a mixed buffer)."""
    intervention_weight: float = 1.0
    """Weight floor of chunks holding a human-intervention step (0: weighted like any chunk)."""


@dataclass
class RL100Config(OfflineRLConfig):
    """RL-100's offline stage: IQL critics, PPO over the last DDIM steps against an OPE-gated reference (§7)."""

    name: str = "rl100"
    _target_: str = "robopol.algos.rl100.RL100"
    critic_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the critic and value MLPs."""
    expectile: float = 0.7
    """Expectile tau of IQL's value loss."""
    bc_steps: int = 5000
    """Imitation updates before PPO starts (RL-100's stage 1); 0 starts PPO from the initial weights."""
    ppo_lr: float = 1e-5
    """Adam rate of the policy during PPO (DPPO's fine-tuning rate); lr serves imitation and the critics."""
    ft_steps: int = 5
    """Fine-tuned (last) DDIM steps; the earlier ones run the frozen imitation network."""
    sampling_std: float = 0.1
    """Exploration std added at each fine-tuned step of the reference's chain."""
    logprob_std: float = 0.1
    """Floor of the std in the step log-densities."""
    clip: float = 0.01
    """PPO clip of the last (cleanest) denoising step."""
    clip_base: float = 0.001
    """PPO clip of the noisiest fine-tuned step."""
    clip_rate: float = 3.0
    """Exponential rate from clip_base to clip (0: linear)."""
    gamma_denoise: float = 0.99
    """Advantage discount per denoising step away from the last."""
    gate_every: int = 100
    """PPO updates between OPE gate decisions."""
    gate_margin: float = 0.0
    """How much the policy's critic estimate must exceed the reference's to replace it."""


@dataclass
class PPOConfig(AlgoConfig):
    """Gaussian PPO on batched env rollouts (cleanrl/rsl_rl details): the on-policy reference point (§8).

    ``trainer.steps``, ``log_every``, ``eval_every`` and ``ckpt_every`` count iterations of
    ``num_envs * rollout_steps`` env steps."""

    name: str = "ppo"
    _target_: str = "robopol.algos.ppo.PPO"
    num_envs: int = 8
    """Envs stepped together for rollouts."""
    rollout_steps: int = 256
    """Steps per env per iteration."""
    epochs: int = 10
    """Passes over each rollout."""
    minibatches: int = 32
    """Minibatches per pass."""
    lr: float = 3e-4
    """Adam learning rate (start value under the linear and adaptive schedules)."""
    lr_schedule: str = "fixed"
    """fixed, linear (annealed to 0 over trainer.steps) or adaptive (KL-driven, rsl_rl)."""
    desired_kl: float = 0.01
    """adaptive: the KL between old and new policy the learning rate steers towards."""
    gamma: float = 0.99
    """Discount per env step."""
    lam: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """Ratio clip epsilon of the surrogate."""
    value_clip: float = 0.2
    """Clip of the value change in the value loss (0: plain squared error)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Clip of the global gradient norm (0: off)."""
    norm_advantages: bool = True
    """Normalise advantages per minibatch."""
    critic_hidden_dims: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the value MLP (tanh)."""
    critic_lr: float = 0.0
    """Adam rate of the value MLP (0: the policy's, following its schedule; else fixed, annealed by linear)."""
    critic_warmup: int = 0
    """First iterations in which only the value MLP learns (a fine-tuned policy waits for its critic)."""
    obs_norm: bool = True
    """Normalise observations by running mean and std."""
    reward_norm: bool = True
    """Divide rewards by the running std of the discounted return."""


@dataclass
class PolicyFlowConfig(PPOConfig):
    """PolicyFlow: PPO over a flow policy with learned Gaussian noise, likelihood-free ratio, Brownian regulariser (§8c)."""

    name: str = "policyflow"
    _target_: str = "robopol.algos.policyflow.PolicyFlow"
    brownian_coef: float = 0.002
    """w_b: weight of the Brownian regulariser mean(eta_t^2)."""
    entropy_coef: float = 0.004
    """w_g: weight of the Gaussian noise's entropy."""
    max_grad_norm: float = 1.0
    """Clip of the global gradient norm (the port: 1.0)."""


@dataclass
class DPPOConfig(PPOConfig):
    """Denoising-step PPO (DPPO / RL-100): each fine-tuned DDIM step of a diffusion policy is a Gaussian action (§8a, §7b)."""

    name: str = "dppo"
    _target_: str = "robopol.algos.dppo.DPPO"
    ft_steps: int = 5
    """K': the last denoising steps that are fine-tuned (the earlier ones run a frozen copy)."""
    sampling_std: float = 0.1
    """Std of the Gaussian noise added at each fine-tuned step (DPPO's min_sampling_denoising_std)."""
    logprob_std: float = 0.1
    """Floor of the std in the step log-densities (DPPO's min_logprob_denoising_std)."""
    clip: float = 0.01
    """Ratio clip of the last (least noisy) denoising step."""
    clip_base: float = 0.001
    """Ratio clip of the noisiest fine-tuned step; the clip grows exponentially from it to clip."""
    clip_rate: float = 3.0
    """Rate of that exponential growth (0: linear)."""
    gamma_denoise: float = 0.99
    """Advantage discount per denoising step away from the last one."""
    lr: float = 1e-5
    """Adam rate of the diffusion network (DPPO: 1e-5 robomimic fine-tuning, 1e-4 gym)."""
    critic_lr: float = 1e-3
    """Adam rate of the value MLP."""
    critic_warmup: int = 2
    """First iterations in which only the value MLP learns (DPPO: 2)."""
    epochs: int = 5
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per pass."""
    value_clip: float = 0.0
    """Clip of the value change in the value loss (0: plain squared error, DPPO's default)."""
    critic_hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])
    """Hidden widths of the value MLP (tanh; DPPO: 3 x 256)."""
    student: bool = False
    """Distil a one-step consistency head from the current chain after every iteration (RL-100's CD head)."""
    student_lr: float = 1e-4
    """Adam rate of the consistency head."""
    student_epochs: int = 1
    """Passes of action matching over each rollout's observations."""
    deploy: str = "chain"
    """What evaluation and deployment run: chain (the fine-tuned DDIM chain) or student (the one-step head)."""


@dataclass
class StandinFaults:
    """Faults the MuJoCo stand-in robot injects (``robot.faults.*``); times in seconds since the episode
    started, 0 / None: off."""

    state_latency_s: float = 0.0
    """Each state sample reaches the loop this late (the driver still stamps it with its capture time)."""
    jitter_s: float = 0.0
    """Extra uniform random latency in [0, jitter_s] per read."""
    drop_rate: float = 0.0
    """Fraction of command packets silently lost."""
    freeze_at_s: float | None = None
    """The state stream stops updating from this time."""
    heartbeat_dead_at_s: float | None = None
    """The heartbeat reports the robot dead from this time."""
    protective_stop_at_s: float | None = None
    """The controller stops the arm from this time; commands raise ProtectiveStop."""
    seed: int = 0
    """Seed of the random faults."""


@dataclass
class RobotConfig:
    """A robot profile: driver, rates, limits and watchdog bounds used by the control loop (``configs/robot/``)."""

    name: str = MISSING
    """Robot profile name."""
    driver: str = MISSING
    """Driver class implementing the robot driver protocol (``robopol.real.driver``)."""
    driver_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the driver (host, frequency, ...)."""
    control_rate_hz: float = 500.0
    """Servo loop rate."""
    joint_names: list[str] = field(default_factory=list)
    """Joint names in command order."""
    joint_lower: list[float] = field(default_factory=list)
    """Lower joint position limits (rad)."""
    joint_upper: list[float] = field(default_factory=list)
    """Upper joint position limits (rad)."""
    max_joint_velocity: list[float] = field(default_factory=list)
    """Per-joint velocity limits of the command (rad/s)."""
    max_joint_acceleration: list[float] = field(default_factory=list)
    """Per-joint acceleration limits of the command (rad/s^2); also the deceleration of a hold."""
    limit_margin: float = 0.05
    """Safety margin kept inside the joint limits (rad)."""
    max_relative: float = 0.5
    """Largest distance between a joint command and the measured joint (rad)."""
    jump_fault: float = 0.5
    """A requested joint target this far from the last command latches a fault (rad)."""
    gripper: bool = False
    """The command ends with a gripper opening in [0, 1]."""
    gripper_max_velocity: float = 25.0
    """Largest gripper opening speed of the command (1/s)."""
    gripper_close_action: float = 1.0
    """The policy's gripper action value that closes the hand (OGBench: +1); a teleop takeover starts there
    when the hand is closed, so that taking over a grasp does not drop the object."""
    workspace_low: list[float] = field(default_factory=list)
    """Lower corner of the effector workspace box (m); empty: no box (needs driver forward kinematics)."""
    workspace_high: list[float] = field(default_factory=list)
    """Upper corner of the effector workspace box (m)."""
    interpolation: str = "step"
    """How the servo approaches a new action's target: step | linear."""
    command_timeout_s: float = 0.15
    """Hold when no new waypoint came into force for this long after the last one."""
    policy_timeout_s: float = 1.0
    """Hold when the policy worker has been silent this long."""
    stale_state_s: float = 0.05
    """Hold when the robot state has not updated for this long."""
    driver_timeout_s: float = 0.02
    """Hold when the driver heartbeat has been dead for this long."""
    overrun_streak: int = 20
    """Hold after this many consecutive servo overruns."""
    auto_rearm: bool = False
    """Re-arm after a watchdog hold at the next episode without asking (stand-in only; never after an e-stop)."""
    faults: StandinFaults = field(default_factory=StandinFaults)
    """Faults to inject (the stand-in robot only)."""


# ------------------------------------------------------------------------------------- command parts


@dataclass
class TrainerConfig:
    """The optimisation loop shared by all algorithms."""

    steps: int = 2000
    """Total gradient steps (the learning-rate schedule spans them); iterations for online algorithms (algo=ppo)."""
    stop_after: int = 0
    """End this invocation after this step and checkpoint it (0: run to ``steps``); ``resume=`` continues."""
    batch_size: int = 256
    """Windows per gradient step."""
    val_fraction: float = 0.05
    """Share of episodes held out for validation loss."""
    log_every: int = 50
    """Steps between metric records."""
    ckpt_every: int = 1000
    """Steps between checkpoints (the last step is always saved)."""
    eval_every: int = 0
    """Steps between evaluations in simulation; 0 evaluates only at the end."""
    eval_episodes: int = 50
    """Episodes per evaluation."""
    videos: bool = True
    """Render one MP4 rollout after each evaluation (simulator tasks)."""
    num_threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    progress: bool = True
    """Show a progress bar."""
    precision: str = "fp32"
    """fp32, or bf16: bfloat16 autocast around each update (weights and optimiser stay fp32; GPUs with bf16)."""
    compile: bool = False
    """torch.compile each network in place (pays a compile at the first steps; helps large nets on GPU)."""
    dist_timeout_s: float = 1800.0
    """Under torchrun: seconds a rank waits for the others in a collective before the job fails."""


@dataclass
class OnlineConfig:
    """Offline-to-online fine-tuning (qc, dqc, ofql): act in the simulator after the offline steps (QC's protocol)."""

    steps: int = 0
    """Env steps of the online phase after trainer.steps gradient steps (0: offline only)."""
    envs: int = 1
    """Envs acting in lockstep (QC: 1)."""
    utd: int = 1
    """Gradient steps per env step (update-to-data ratio; QC: 1)."""
    ratio: float = 0.5
    """Share of each batch drawn from the online episodes once there are any (RLPD's symmetric sampling: 0.5)."""
    start: int = 0
    """Env steps collected before the online updates begin (QC: 5000 from scratch; 0 continues at once)."""
    eval_every: int = 0
    """Env steps between evaluations in the online phase (0: only at its end)."""


# ------------------------------------------------------------------------------------- commands


@dataclass
class TrainCommand:
    """``robopol train``: fit a policy on an episode store."""

    task: Any = MISSING
    policy: Any = MISSING
    algo: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """Offline-to-online fine-tuning after the offline steps (qc, dqc, ofql)."""
    data: str = ""
    """Episode store path or URL; empty collects expert demonstrations for the task first."""
    data_cache: str = ""
    """Folder caching remote stores (``data`` at a non-local fsspec URL) on local disk, refreshed when the store changes; empty reads remotely."""
    demos: int = 100
    """Expert episodes to collect when ``data`` is empty."""
    seed: int = 0
    """Seed for everything random in the run."""
    device: str = "cpu"
    """torch device (cpu, cuda, cuda:1, ...)."""
    resume: str = ""
    """Run directory to continue from its latest checkpoint."""
    teacher: str = ""
    """algo=distill: the teacher's run or checkpoint directory (its task, policy, data and normaliser are used)."""
    init: str = ""
    """Online algorithms (algo=dppo): a policy run or checkpoint to fine-tune (its policy config, weights and normaliser)."""


@dataclass
class RTIConfig:
    """RTI warm start (``sampler=rti``): refine the previous chunk, shifted, in a few reverse steps."""

    noise_level: float = 0.05
    """Noise scale in (0, 1] the shifted guess enters the reverse process at (diffusion: timestep about scale x K; flow: t = 1 - scale)."""
    steps: int = 3
    """Reverse steps (network calls) from that level down to the clean chunk."""
    action_steps: int = 1
    """Actions executed per call before the next warm-started call (1: fully closed loop)."""
    discrete_dims: list[int] = field(default_factory=list)
    """Binary action dims (a gripper) of a policy trained without policy.discrete_dims (the clip variant)."""
    clip_factor: float = 1.0
    """Clip variant: discrete entries of the guess are set to +-1 / clip_factor (RTI-DP: 1 low-dim, 10 image)."""


@dataclass
class EvalCommand:
    """``robopol eval``: roll a checkpoint out in simulation."""

    ckpt: str = MISSING
    """Run directory or checkpoint directory."""
    task: Any = None
    """Task to evaluate on; default: the task the checkpoint was trained on."""
    episodes: int = 100
    """Episodes to run."""
    num_envs: int = 10
    """Environments stepped together."""
    workers: int = 1
    """Processes sharing the episodes (each steps num_envs envs); results equal one process's for the same seed."""
    execution: str = "receding"
    """Chunk execution: receding (execute action_steps, replan) or ensemble (ACT temporal ensembling)."""
    ensemble_decay: float = 0.01
    """Temporal ensembling weight decay m in exp(-m * i), i = 0 for the oldest chunk."""
    sampler: str = ""
    """ddpm, ddim (diffusion), euler, midpoint (flow), one_step (mean-flow), consistency (distilled), rti
    (warm start of a diffusion or flow policy); empty keeps the policy's own."""
    inference_steps: int = 0
    """Sampler steps; 0 keeps the policy's own (with rti: the steps of the first, full-chain call)."""
    rti: RTIConfig = field(default_factory=RTIConfig)
    """RTI warm-start settings, used with sampler=rti."""
    seed: int = 1000
    """Seed of the first episode and of the policy's sampling noise."""
    device: str = "cpu"
    """torch device."""
    out: str = ""
    """Where to write the JSON summary; empty writes into the checkpoint's run directory."""
    videos: int = 2
    """Episodes to render to MP4 next to the summary (tasks that can render)."""


@dataclass
class CollectCommand:
    """``robopol collect``: run a scripted expert and write episodes into a store."""

    task: Any = MISSING
    expert: str = ""
    """Expert variant of the task (e.g. plan or markov oracles); empty picks the task's default."""
    episodes: int = 100
    """Episodes to collect."""
    out: str = MISSING
    """Episode store path or URL (appended to if it exists; seeds continue where it stopped)."""
    noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions (quality knob)."""
    random_fraction: float = 0.0
    """Share of episodes driven by uniformly random actions instead of the expert (quality knob)."""
    num_workers: int = 2
    """Worker processes stepping environments; 0 steps them in this process."""
    num_envs: int = 1
    """Envs each process steps as one batch (raise it for Isaac Lab tasks, whose step costs little more per env)."""
    seed: int = 0
    """Seed of the first episode."""


@dataclass
class DataCommand:
    """``robopol data ACTION PATH...``: inspect, validate, convert and replay episode stores."""

    action: str = MISSING
    """One of: validate, info, convert, replay, merge."""
    paths: list[str] = field(default_factory=list)
    """Store paths or URLs the action works on (convert: SOURCE DESTINATION; merge: SHARD... DESTINATION, globs allowed)."""
    task: Any = None
    """Task whose simulator replays the episodes (replay only)."""
    plot: bool = False
    """Also write a PNG plot (info)."""
    out: str = ""
    """Output file: the PNG of ``info --plot`` (default ``<store name>_info.png`` here) or replay's MP4 folder."""
    format: str = ""
    """Source format for convert (ogbench, robomimic, lerobot, minari, zarr); empty guesses it from the path."""
    overwrite: bool = False
    """convert, merge: replace an existing destination store."""
    episodes: list[int] = field(default_factory=list)
    """replay: episode indices to replay; empty replays all."""


@dataclass
class BenchCommand:
    """``robopol bench SUITE``: measure speed, print a table, write JSON."""

    suite: str = MISSING
    """What to benchmark: data, sim, policy, inference, offline, online, control or scale."""
    out_dir: str = "runs/bench"
    """Where the JSON results go."""
    quick: bool = False
    """Smaller sizes, for a smoke run."""
    task: Any = None
    """inference, offline: the task to train and evaluate on (inference default: cube_single_task1); scale: the task of its demonstrations (default point_reach)."""
    demos: int = 200
    """inference, scale: expert demonstrations to train on."""
    sim_suites: list[str] = field(default_factory=lambda: ["mujoco", "isaaclab"])
    """sim: suites to measure: mujoco (every MuJoCo task, both back ends) and isaaclab (the Isaac Lab UR5e reach and push rows, where Isaac Lab is installed, beside the MuJoCo pool on OGBench's UR5e task)."""
    isaaclab_envs: list[int] = field(default_factory=lambda: [4, 16, 64, 256, 1024])
    """sim: env counts of the Isaac Lab rows (quick: the first two)."""
    latency_plans: int = 300
    """inference: planning calls timed at batch 1 per sampler (whole episodes, run until this many), then as many back-to-back chunk samplings."""
    latency_threads: int = 1
    """inference: torch CPU threads while latency is measured (deploy's policy_threads default; 0 keeps torch's)."""
    train_steps: int = 15000
    """inference: gradient steps of each imitation model (the consistency student gets a third); offline: of every run."""
    episodes: int = 100
    """inference: evaluation episodes per sampler; offline: per evaluation; online: at the end of each run."""
    data: str = ""
    """offline: the episode store (with rewards) every algorithm trains on; scale: a store to train on instead of collected demonstrations."""
    algos: list[str] = field(default_factory=lambda: ["bc", "qc", "dqc", "ofql"])
    """offline: algorithms to run (bc, qc, qc_fql, dqc, ofql, iql, aloe, rl100); bc is the baseline."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """offline, online: seeds of every algorithm."""
    tasks: list[str] = field(default_factory=lambda: ["hopper", "halfcheetah"])
    """online: the tasks every method trains on from scratch."""
    methods: list[str] = field(default_factory=lambda: ["ppo", "policyflow", "dppo"])
    """online: on-policy methods to run (ppo, policyflow, dppo); ppo is the baseline."""
    iterations: int = 40
    """online: iterations of every run (2048 env steps each with the methods' defaults)."""
    coverage: bool = True
    """online: also train every method on the multi-goal task and count the goals its stochastic policy reaches."""
    coverage_episodes: int = 300
    """online: episodes counted per multi-goal run."""
    init: str = ""
    """online: a BC diffusion-policy run that DPPO also fine-tunes on its task (empty: none)."""
    finetune_iterations: int = 30
    """online: iterations of each DPPO fine-tuning run (64 decisions per env each)."""
    eval_every: int = 0
    """offline: gradient steps between evaluations (0: only at the end)."""
    horizon: int = 5
    """offline: action chunk planned and executed whole by every algorithm (QC's h)."""
    dqc_horizon: int = 25
    """offline: DQC's critic chunk h (its policy chunk is horizon)."""
    batch_size: int = 256
    """offline: windows per gradient step; scale: windows per step of each process."""
    device: str = "cpu"
    """offline, scale: torch device of training (and evaluation)."""
    extra: list[str] = field(default_factory=list)
    """offline, online, scale: further train overrides for every run (e.g. paper-scale network widths)."""
    procs: list[int] = field(default_factory=lambda: [1, 2])
    """scale: process counts to launch with torchrun (one GPU each on device=cuda)."""
    train_policy: str = "diffusion"
    """scale: the policy config it trains (the train command's policy=...)."""
    steps: int = 50
    """scale: gradient steps per process count (the first fifth is warm-up)."""
    jobs: int = 1
    """offline, online: runs trained side by side in worker processes (one torch thread each); 1 trains them here, in turn."""
    seconds: float = 60.0
    """control: duration of the servo soak at 500 Hz (quick: 2 s)."""
    latencies: list[float] = field(default_factory=list)
    """control: injected inference latencies (s) for the merge strategies; empty: 0, 0.05, 0.1, 0.2, 0.3."""
    strategies: list[str] = field(default_factory=lambda: ["replace", "queue_merge", "temporal_ensemble", "rti"])
    """control: chunk merge strategies to compare."""
    switch: float = 0.2
    """control: probability per chunk that the scripted policy switches mode."""


@dataclass
class DeployCommand:
    """``robopol deploy``: run a checkpoint on a robot through the real-time control loop."""

    robot: Any = MISSING
    ckpt: str = ""
    """Run directory or checkpoint directory of the policy."""
    record: str = ""
    """Episode store to append every step to; empty records nothing."""
    episodes: int = 3
    """Episodes to run."""
    seed: int = 0
    """Seed of the first episode (stand-in scene layout); later episodes count up."""
    max_steps: int = 0
    """Control steps per episode; 0 takes the checkpoint's task limit."""
    realtime: bool = False
    """Run the servo loop in its own process against the wall clock; false runs lockstep on a virtual clock."""
    strategy: str = "replace"
    """How chunks merge: replace | queue_merge | temporal_ensemble | rti."""
    dt: float = 0.0
    """The policy's control period (s); 0 takes the checkpoint's (or the stand-in scene's)."""
    steps_per_inference: int = 0
    """Control steps between inferences; 0 takes the policy's action_steps."""
    exec_latency_s: float = 0.01
    """Actions due sooner than this after a chunk is ready are dropped."""
    action_offset: int = 0
    """Action i of a chunk is due at obs_t + (i + action_offset) * dt (diffusion_policy's action_offset)."""
    inference_latency_s: float = -1.0
    """Inject this inference latency (s); negative uses the measured one."""
    merge_weight: float = 0.7
    """queue_merge: weight of the new chunk where chunks overlap."""
    ensemble_decay: float = 0.01
    """temporal_ensemble: exp(-decay * i) weights, oldest chunk first."""
    sampler: str = ""
    """Sampler override of the policy (e.g. rti); empty keeps the checkpoint's."""
    teleop: str = "none"
    """Human takeover device: none | keyboard | spacemouse."""
    device: str = "cpu"
    """Torch device of the policy."""
    policy_threads: int = 1
    """Torch CPU threads of the policy (more spin against the servo process on small machines)."""


@dataclass
class DemoCommand(TrainCommand):
    """``robopol demo``: collect demonstrations, train, evaluate and report, with no flags needed."""


COMMANDS: dict[str, type] = {
    "train": TrainCommand,
    "eval": EvalCommand,
    "collect": CollectCommand,
    "data": DataCommand,
    "bench": BenchCommand,
    "deploy": DeployCommand,
    "demo": DemoCommand,
}

def group_schemas() -> dict[str, dict[str, type]]:
    """Schemas of the group options, by group; task and policy schemas live beside their code.

    Group YAML files extend these with ``- /schemas/<group>/<name>@_here_`` in their defaults list.
    """
    from robopol.policies.configs import POLICY_SCHEMAS
    from robopol.tasks import TASK_SCHEMAS

    return {
        "task": TASK_SCHEMAS,
        "policy": POLICY_SCHEMAS,
        "algo": {"bc": BCConfig, "distill": DistillConfig, "qc": QCConfig, "dqc": DQCConfig, "ofql": OFQLConfig,
                 "iql": IQLConfig, "aloe": ALOEConfig, "rl100": RL100Config, "ppo": PPOConfig,
                 "policyflow": PolicyFlowConfig, "dppo": DPPOConfig},
        "robot": {"robot": RobotConfig},
    }


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for command, schema in COMMANDS.items():
        store.store(name=f"{command}_schema", node=schema)
    for group, schemas in group_schemas().items():
        for name, schema in schemas.items():
            store.store(group=f"schemas/{group}", name=name, node=schema)
