"""PPO fine-tuning of the BLM latent diffusion model toward rule-based rewards (Tianshou 2.0).

Tianshou's own :class:`~tianshou.algorithm.PPO`, unchanged, over the denoising-step MDP of
:mod:`blm_gym.rl.denoising_mdp` (closed loop by default), one advantage per scene; or, with
``credit="agent"``, :class:`~blm_gym.rl.agent_ppo.AgentPPO` on the same actor and envs, one
advantage per planned agent (its own reward terms, a leave-one-out baseline, no critic):

- **actor** (:class:`DenoisingActor`): the denoiser's Gaussian DDIM step
  ``N(mu_theta(x_t, i, ctx), sigma_i^2)`` over the joint latent, ``sigma_i`` from the schedule
  floored at ``std_floor`` (the last DDIM step is deterministic, std 0). ``ctx`` is encoded from
  the observation's model inputs by the model being tuned, batched over every env (scene) of the
  step. With ``eta = 0`` (the closed-loop policy's DDIM) the chain's mean is the policy's exact
  sampler and the floor is the exploration noise; evaluation takes the mean. Log-probs are the
  *per-dimension mean* over the real agents' latent dims (DDPO): a sum over ~800 dims makes every
  ratio leave any clip range after one update.
- **critic** (:class:`ChainCritic`, ``credit="scene"``): a small MLP on the chain's position (DDIM step, chain
  index) and summaries of ``x_t`` and the scene; GAE over the episode's chains uses it.
- **rewards**: the reward terms on what each chain executed, the KL penalty to the frozen model
  (every step), and, from the K copies of each scene stepping in lockstep
  (:class:`~blm_gym.rl.group_env.SceneGroupVectorEnv`), the leave-one-out realism term and the
  leave-one-out baseline.

:func:`finetune` runs it: each iteration every env plays one episode, PPO updates, a CSV row is
logged, an atomic checkpoint written; every ``eval_every`` iterations (from the pretrained weights
on, and once more after the last) the unguided policy is rolled out closed loop on a fixed set of
held-out scenes: the learning curve, in the CSV and as a PNG. With ``val_scenes`` some training
scenes are set aside instead of trained on; the weights they rate best (the pretrained ones
included) are kept as ``<out>.best.pt``: PPO on a few scenes per iteration drifts after a while,
and the held-out scenes must not be the ones that choose when to stop. ``val_metric`` is the
rating: the lowest failure rate (safety objectives) or the highest task reward on the whole
rollouts (any objective, e.g. safety-critical traffic, where fewer failures is not the goal).
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Independent, Normal
from tqdm import tqdm

from blm_gym.atomic_files import atomic_path
from blm_gym.config import config_to_dict
from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneList
from blm_gym.data.splits import hash_fraction
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_checkpoint, load_model, restore_model, save_checkpoint
from blm_gym.rewards.terms import RewardContext, make_reward
from blm_gym.rl.agent_ppo import AgentPPO
from blm_gym.rl.denoising_mdp import DenoisingMDP, Loop, batch_from_obs, masked_dim_mean
from blm_gym.rl.group_env import SceneGroupVectorEnv
from tianshou.algorithm import PPO
from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step, torch_train_mode


# ---- actor and critic -------------------------------------------------------------------------

class LatentGaussian(Independent):
    """Diagonal Gaussian over latents ``(B, N, T', d)``; ``log_prob`` is the mean per real-agent dim ``(B,)``."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, real: torch.Tensor):
        super().__init__(Normal(loc, scale), 3)
        self.real = real[:, :, 0, 0] > 0  # (B, N) from the actor's (B, N, T', d) 0/1 mask

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return masked_dim_mean(self.base_dist.log_prob(value), self.real)

    def agent_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Each agent's own per-dim mean log-prob ``(B, N)`` (padding rows: 0)."""
        return torch.where(self.real, self.base_dist.log_prob(value).mean((2, 3)), 0.0)


def latent_gaussian(params: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> LatentGaussian:
    """Tianshou ``dist_fn``: the actor's ``(mean, std, real)`` as a :class:`LatentGaussian`."""
    return LatentGaussian(*params)


class DenoisingActor(nn.Module):
    """Tianshou actor: ``obs -> ((mean, std, real), None)``, the DDIM step of ``model`` for every row;
    ``real`` marks the real agents' dims with 1.0 (``mean``'s shape: Tianshou stacks the three)."""

    def __init__(self, model: BLMModel, num_steps: int, eta: float, std_floor: float):
        super().__init__()
        if std_floor <= 0:
            raise ValueError(f"std_floor must be > 0 (the last DDIM step has std 0), got {std_floor}")
        self.model = model
        self.timesteps, self.eta, self.std_floor = model.timesteps(num_steps), float(eta), float(std_floor)

    def forward(self, obs, state=None, info=None):
        device = next(self.model.parameters()).device
        batch = batch_from_obs(obs.plan, self.model.config.future_steps, device)
        x = torch.as_tensor(np.asarray(obs.x), dtype=torch.float32, device=device)
        step = torch.as_tensor(np.asarray(obs.step), device=device).long().reshape(-1)
        ctx = self.model.encode_context(batch)  # once for the whole batch of scenes
        mean, std = torch.empty_like(x), torch.empty_like(x)
        for i in step.unique().tolist():  # the model takes one DDIM step index per call
            rows = torch.nonzero(step == i).reshape(-1)
            mean[rows], std[rows] = self.model.denoise_mean_std(x[rows], i, ctx.index(rows), self.timesteps, self.eta)
        r = batch.agent_mask[..., None, None].expand_as(mean)
        return (torch.where(r, mean, 0.0), torch.where(r, std.clamp(min=self.std_floor), 1.0), r.float()), state


class ChainCritic(nn.Module):
    """Value of a denoising state: MLP on [DDIM step / steps, chain / chains, per-channel mean and
    RMS of ``x_t`` over real agents, mean speed (m/s / 10) and share of real agents]."""

    def __init__(self, num_steps: int, num_chains: int, latent_dim: int, hidden: int = 64):
        super().__init__()
        self.num_steps, self.num_chains = num_steps, num_chains
        self.net = nn.Sequential(nn.Linear(4 + 2 * latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, obs, state=None, info=None) -> torch.Tensor:
        device = self.net[0].weight.device
        f = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        x, real = f(obs.x), f(obs.plan["agent_mask"], torch.bool)
        w = real.float()[..., None, None].expand_as(x)
        count = w.sum((1, 2)).clamp(min=1)
        xm, xs = (x * w).sum((1, 2)) / count, ((x.pow(2) * w).sum((1, 2)) / count).sqrt()
        speed = (f(obs.plan["state_world"])[..., 3] * real).sum(1) / real.sum(1).clamp(min=1)
        pos = torch.stack([f(obs.step) / self.num_steps, f(obs.chain) / self.num_chains, speed / 10,
                           real.float().mean(1)], -1)
        return self.net(torch.cat([pos, xm, xs], -1))


# ---- the trainer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneConfig:
    """PPO fine-tuning of a BLM checkpoint (``blm-gym finetune``)."""

    checkpoint: str = "runs/blm/diffusion.pt"  # pretrained BLM model (stages 1 + 2)
    reward: str = "collision=1,offroad(from_road=1)=1"  # make_reward spec, scored on what each chain executed
    sources: tuple[str, ...] = ()  # training scenes: "<kind>:<data_dir>" entries, the train split of each
    env: str = "BLM-Synthetic-v0"  # without sources: the train split of this env id's source
    data_dir: str | None = None  # data folder for a real-data env id
    scene_ids: tuple[str, ...] | None = None  # subset of the env id's scenes (instead of its train split)
    max_scenes: int = 400  # at most this many training scenes per source (the first ones)
    start_steps: tuple[int, ...] = (10, 30, 50)  # log steps episodes start from (those leaving room for the episode)
    eval_sources: tuple[str, ...] = ()  # learning-curve scenes: "<kind>:<data_dir>", held-out split of each
    eval_max_scenes: int = 4  # per eval source (the first ones of its held-out split)
    eval_every: int = 5  # iterations between evaluations (of the weights an iteration starts from; and the final ones)
    eval_samples: int = 2  # closed-loop samples per held-out scene
    eval_start_step: int = 30  # log step the evaluation episodes start from
    eval_horizon_s: float = 8.0
    val_scenes: int = 0  # training scenes set aside to choose the iteration (<out>.best.pt); 0: off
    val_metric: str = "failure_rate"  # what chooses it: lowest failure_rate or highest task_reward (VAL_METRICS)

    loop: Loop = Loop.CLOSED  # closed: chains every replan from simulated states; open: BLM's one plan
    num_chains: int = 8  # closed loop: plans per episode (8 s at the 1 s replan)
    replan_every_s: float = 1.0  # the closed-loop policy's replan interval
    max_agents: int = 32  # agents planned jointly per scene
    controlled: str = "all_vehicles"  # all_vehicles | non_ego (the ego replays its log: an AV under test)
    steps: int = 30  # PPO iterations (each env plays one episode, then one update)
    time_budget_min: float = 0.0  # stop after the iteration that passes this many minutes (0: no limit)
    samples_per_scene: int = 4  # K lockstep copies per scene (the leave-one-out terms compare them)
    # A scene-level reward credits each vehicle's latent with 1/N of its own collision: with 4 scenes per
    # iteration the gradient was mostly noise and the weights drifted (validation failure rose at lr 3e-4
    # and 1e-4); 8 scenes at lr 1e-4 lowered it (benchmarks/finetune_eval.py)
    scenes_per_step: int = 8  # scenes (groups of K copies) per iteration
    num_denoise_steps: int = 5  # DDIM steps of a chain: the closed-loop policy's (model default)
    tuned_denoise_steps: int = 5  # only the last that many DDIM steps are MDP actions
    eta: float = 0.0  # DDIM stochasticity: the closed-loop policy's (deterministic DDIM)
    std_floor: float = 0.3  # minimum policy std (normalised latent units): the exploration noise
    lr: float = 1e-4
    # scene: Tianshou's PPO, one advantage per scene (critic + GAE); agent: each planned agent's own
    # reward terms with a leave-one-out baseline over the scene's copies (blm_gym.rl.agent_ppo)
    credit: str = "scene"
    clip: float = 0.02  # PPO ratio clip (ratios of per-dim mean log-probs)
    kl_coef: float = 0.01  # weight of the KL (per dim) to the pretrained model, paid as reward
    realism_weight: float = 1.0  # weight of the leave-one-out realism term (0: off)
    plan_weight: float = 0.0  # closed loop: weight of the reward terms over the rest of each plan (0: off)
    vf_coef: float = 0.5  # credit=scene: critic loss weight
    gamma: float = 1.0  # credit=scene: discount per MDP step (a chain is tuned_denoise_steps of them)
    gae_lambda: float = 0.95  # credit=scene
    repeat: int = 2  # optimisation epochs per iteration
    batch_size: int = 64  # minibatch (transitions)
    max_grad_norm: float = 1.0
    seed: int = 0
    out: str = "runs/blm/finetuned.pt"  # fine-tuned checkpoint; the CSV log (.csv) and curve (.png) beside it
    device: str = "cpu"

    def __post_init__(self):
        if self.loop not in {m.value for m in Loop} | set(Loop):
            raise ValueError(f"FinetuneConfig.loop must be one of {[m.value for m in Loop]}, got {self.loop!r}")
        object.__setattr__(self, "loop", Loop(self.loop))
        if self.credit not in CREDITS:
            raise ValueError(f"FinetuneConfig.credit must be one of {CREDITS}, got {self.credit!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"FinetuneConfig.gamma is a discount in [0, 1], got {self.gamma}")
        if self.val_scenes < 0:
            raise ValueError(f"FinetuneConfig.val_scenes must be >= 0 (0: no validation scenes), got {self.val_scenes}")
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"FinetuneConfig.val_metric must be one of {list(VAL_METRICS)}, got {self.val_metric!r}")


CREDITS = ("scene", "agent")
RATES = ("failure_rate", "collision_rate_any", "offroad_rate_any")  # of the metric report
EVAL_METRICS = (*RATES, "task_reward")
# how each metric that can choose the kept weights ranks them: the sign that makes lower better
VAL_METRICS = {"failure_rate": 1.0, "task_reward": -1.0}
CSV_FIELDS = ("iteration", "task_reward", "task_reward_std", "realism", "kl_reward", "loss", "vf_loss", "seconds",
              *(f"{prefix}_{k}" for prefix in ("eval", "val") for k in EVAL_METRICS))


def open_scenes(entries: Sequence[str], split: str, limit: int) -> list[Scene]:
    """The first ``limit`` scenes of the ``split`` side of each ``"<kind>:<data_dir>"`` entry."""
    from blm_gym.data.registry import open_source
    from blm_gym.train.common import parse_source

    scenes = []
    for kind, folder in (parse_source(e) for e in entries):
        source = open_source(kind, folder, split=split)
        scenes += [source.load(i) for i in range(min(limit, len(source.scene_ids)))]
    return scenes


def training_scenes(cfg: FinetuneConfig) -> list[Scene]:
    """``cfg.sources``' train splits, else the env id's (or its ``scene_ids``)."""
    from blm_gym.envs import scene_source

    if cfg.sources:
        return open_scenes(cfg.sources, "train", cfg.max_scenes)
    source = scene_source(cfg.env, cfg.data_dir, cfg.scene_ids, split=None if cfg.scene_ids else "train")
    return [source.load(i) for i in range(min(cfg.max_scenes, len(source.scene_ids)))]


def best_checkpoint(out: str | Path) -> Path:
    """Where :func:`finetune` keeps the weights its validation scenes rate best: ``<out>.best.pt``."""
    return Path(out).with_suffix(".best.pt")


def validation_split(scenes: Sequence[Scene], n: int) -> tuple[list[Scene], list[Scene]]:
    """``(train, validation)``: up to ``n`` of ``scenes`` set aside, taken from each source
    (``Scene.source``) in turn so that every source is represented, but at most half of any
    source (small sources keep training scenes); within a source in the order of a hash of the
    scene id (the choice does not depend on the list's order)."""
    if n <= 0:
        return list(scenes), []
    by_source: dict[str, list[Scene]] = {}
    for s in sorted(scenes, key=lambda s: hash_fraction(f"validation/{s.scene_id}")):
        by_source.setdefault(s.source, []).append(s)
    turns = itertools.zip_longest(*(v[:len(v) // 2] for _, v in sorted(by_source.items())))
    chosen = {id(s) for s in itertools.islice((s for turn in turns for s in turn if s is not None), n)}
    return [s for s in scenes if id(s) not in chosen], [s for s in scenes if id(s) in chosen]


def planning_problems(scenes: Sequence[Scene], start_steps: Sequence[int], need: int, seed: int
                      ) -> list[tuple[Scene, int]]:
    """Every ``(scene, start)`` with ``need`` logged steps after ``start``, in an order shuffled by
    ``seed`` (so every iteration mixes sources and start steps)."""
    problems = [(s, t) for t in start_steps for s in scenes if t + need < s.num_steps]
    if not problems:
        raise ValueError(f"finetune: no scene leaves {need} steps after any of the start steps {list(start_steps)}; "
                         "use earlier start_steps or fewer num_chains")
    return [problems[i] for i in np.random.default_rng(seed).permutation(len(problems))]


def build_ppo(cfg: FinetuneConfig, model: BLMModel, reference: BLMModel, problems: Sequence[tuple[Scene, int]]
              ) -> tuple[PPO | AgentPPO, SceneGroupVectorEnv]:
    """The algorithm (actor = ``model``'s denoiser; :class:`PPO` or, ``credit="agent"``,
    :class:`~blm_gym.rl.agent_ppo.AgentPPO`) and ``scenes_per_step`` groups of
    ``samples_per_scene`` lockstep MDP copies."""
    reward = make_reward(cfg.reward)
    model.vae.requires_grad_(False)  # the decoder is not part of the policy
    groups, k = cfg.scenes_per_step, cfg.samples_per_scene
    envs = SceneGroupVectorEnv([
        (lambda j=j: DenoisingMDP(
            model, reference, problems, reward, loop=cfg.loop, num_chains=cfg.num_chains,
            num_steps=cfg.num_denoise_steps, tuned_denoise_steps=cfg.tuned_denoise_steps, eta=cfg.eta,
            std_floor=cfg.std_floor, kl_coef=cfg.kl_coef, max_agents=cfg.max_agents,
            replan_every_s=cfg.replan_every_s, controlled=cfg.controlled, plan_weight=cfg.plan_weight,
            agent_rewards=cfg.credit == "agent", seed=cfg.seed * 1000 + j, offset=j // k, stride=groups))
        for j in range(groups * k)], group_size=k, problems=problems, controlled=cfg.controlled,
        realism_weight=cfg.realism_weight)
    space = envs.get_env_attr("action_space", 0)[0]
    num_chains = envs.get_env_attr("num_chains", 0)[0]
    actor = DenoisingActor(model, cfg.num_denoise_steps, cfg.eta, cfg.std_floor)
    policy = ProbabilisticActorPolicy(actor=actor, dist_fn=latent_gaussian, action_space=space,
                                      action_scaling=False, action_bound_method=None)
    if cfg.credit == "agent":
        return AgentPPO(policy=policy, optim=AdamOptimizerFactory(lr=cfg.lr), group_size=k,
                        realism_weight=cfg.realism_weight, eps_clip=cfg.clip, max_grad_norm=cfg.max_grad_norm), envs
    critic = ChainCritic(cfg.num_denoise_steps, num_chains, model.config.latent_dim).to(cfg.device)
    algo = PPO(policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=cfg.lr), eps_clip=cfg.clip,
               vf_coef=cfg.vf_coef, ent_coef=0.0, max_grad_norm=cfg.max_grad_norm, gae_lambda=cfg.gae_lambda,
               gamma=cfg.gamma, advantage_normalization=True)
    return algo, envs


def evaluate(model: BLMModel, scenes: Sequence[Scene], cfg: FinetuneConfig, prefix: str = "eval") -> dict[str, float]:
    """Closed-loop failure / collision / off-road rates of the unguided policy on ``scenes`` and
    the mean of ``cfg.reward`` over its rollouts (each scored whole), keyed ``<prefix>_<metric>``."""
    from blm_gym.metrics.report import compute_report
    from blm_gym.models.guidance import GuidanceConfig
    from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy
    from blm_gym.rollout.runner import run_rollouts

    source = SceneList(scenes, prefix)
    policy = lambda: LatentDiffusionPolicy(model, replan_every_s=cfg.replan_every_s,  # noqa: E731
                                           max_agents=cfg.max_agents, guidance=GuidanceConfig(steps=0))
    rollouts = run_rollouts(source, policy, scene_ids=source.scene_ids, samples=cfg.eval_samples,
                            start_step=cfg.eval_start_step, horizon_s=cfg.eval_horizon_s, controlled=cfg.controlled, seed=cfg.seed, progress=False)
    drivable = {s.scene_id: s.road.drivable for s in scenes}
    sim = compute_report(rollouts, drivable)["overall"]["sim"]
    reward = make_reward(cfg.reward)
    task = np.mean([reward(RewardContext.from_rollout(r, drivable[r.scene_id])).mean() for r in rollouts])
    return {**{f"{prefix}_{k}": sim[k]["value"] for k in RATES}, f"{prefix}_task_reward": float(task)}


def plot_learning_curve(rows: list[dict], path: Path) -> None:
    """Training reward, and held-out (and validation) failure rates per iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    trained = [r for r in rows if r.get("task_reward") not in (None, "")]
    it = np.array([int(r["iteration"]) for r in trained])
    for key, label in (("task_reward", "task reward per chain"), ("realism", "leave-one-out realism")):
        v = np.array([float(r[key]) for r in trained])
        a.plot(it, v, alpha=0.3)
        if len(v) >= 5:  # scenes differ between iterations: the trend is the 5-iteration mean
            a.plot(it[4:], np.convolve(v, np.ones(5) / 5, "valid"), color=a.lines[-1].get_color(), label=label)
    a.set_xlabel("iteration")
    a.set_title("training batches")
    if any(line.get_label()[:1] != "_" for line in a.lines):
        a.legend()
    for prefix, style in (("eval", "-"), ("val", ":")):
        ev = [r for r in rows if r.get(f"{prefix}_failure_rate") not in (None, "")]
        for k in RATES[:1] if prefix == "val" else RATES:
            b.plot([int(r["iteration"]) for r in ev], [float(r[f"{prefix}_{k}"]) for r in ev], style, marker="o",
                   label=f"{k} ({'held out' if prefix == 'eval' else 'validation'})")
    b.set_xlabel("iteration")
    b.set_title("unguided, closed loop")
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class _TrainState:
    """Optimizer (+ critic) state, stored in the checkpoint's ``optimizer`` slot (tensors only)."""

    def __init__(self, algo: PPO | AgentPPO):
        self.algo = algo

    def state_dict(self) -> dict:
        critic = getattr(self.algo, "critic", None)
        return {"optimizer": self.algo.optim.state_dict(), **({"critic": critic.state_dict()} if critic is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.algo.optim.load_state_dict(state["optimizer"])
        if "critic" in state:
            self.algo.critic.load_state_dict(state["critic"])


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _collected_means(info) -> dict[str, float]:
    """Means over the collected transitions' infos: task reward per chain (mean, std), realism
    per chain, KL reward per step."""
    ends = np.asarray(info.chain_end, bool)
    task, realism = np.asarray(info.task_reward, float)[ends], np.asarray(info.realism, float)[ends]
    return {"task_reward": float(task.mean()), "task_reward_std": float(task.std()), "realism": float(realism.mean()),
            "kl_reward": float(np.mean(info.kl_reward))}


def finetune(cfg: FinetuneConfig, resume: bool = False, scenes: Sequence[Scene] | None = None,
             eval_scenes: Sequence[Scene] | None = None) -> Path:
    """PPO-fine-tune ``cfg.checkpoint`` toward ``cfg.reward``; returns the checkpoint path ``cfg.out``.

    ``scenes`` / ``eval_scenes`` replace the env ids' sources (``cfg.val_scenes`` of ``scenes`` are
    set aside for validation). ``resume`` continues from ``out``
    (weights, optimizer, critic, RNG, iteration); the envs' noise is a function of the seed and
    the episode, so a resumed run equals an uninterrupted one.
    """
    if cfg.samples_per_scene < 2:
        raise ValueError("finetune: samples_per_scene must be >= 2 (the leave-one-out terms compare copies)")
    out, log_path = Path(cfg.out), Path(cfg.out).with_suffix(".csv")
    if out.exists() and not resume:
        raise FileExistsError(f"finetune: {out} exists; pass resume=True (--resume) to continue it or pick another out")
    # Tianshou logs a warning per step for multi-dimensional action stds (our latents); keep the log readable.
    logging.getLogger("tianshou.data.stats").setLevel(logging.ERROR)
    torch.manual_seed(cfg.seed)
    reference = load_model(cfg.checkpoint, cfg.device)
    model = load_model(cfg.checkpoint, cfg.device)
    start, state = 0, None
    if resume:
        ckpt = load_checkpoint(out)
        restore_model(model, ckpt, where=str(out))
        start, state = ckpt["step"], ckpt["optimizer"]
    scenes, val_scenes = validation_split(scenes if scenes is not None else training_scenes(cfg), cfg.val_scenes)
    if eval_scenes is None and cfg.eval_sources:
        eval_scenes = open_scenes(cfg.eval_sources, "heldout", cfg.eval_max_scenes)
    c = model.config
    need = cfg.num_chains * round(cfg.replan_every_s / c.dt) if cfg.loop is Loop.CLOSED else 1
    problems = planning_problems(scenes, cfg.start_steps, need, cfg.seed)
    algo, envs = build_ppo(cfg, model, reference, problems)
    if state is not None:
        _TrainState(algo).load_state_dict(state)
    per_iter = envs.env_num * envs.get_env_attr("num_mdp_steps", 0)[0]
    buffer = VectorReplayBuffer(per_iter, envs.env_num)
    collector = Collector(algo, envs, buffer)
    rows = []
    if resume and log_path.exists():
        with open(log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) < start]
    best_path = best_checkpoint(out)
    val_key, sign = f"val_{cfg.val_metric}", VAL_METRICS[cfg.val_metric]
    best = min((sign * float(r[val_key]) for r in rows if r.get(val_key) not in (None, "")), default=math.inf)

    def evaluations(step: int) -> dict[str, float]:
        """The learning-curve rates of the current weights (``step`` iterations in); keeps them as
        ``best_path`` when their validation rating is the best yet."""
        nonlocal best
        rates = evaluate(model, eval_scenes, cfg) if eval_scenes else {}
        if val_scenes:
            rates.update(evaluate(model, val_scenes, cfg, prefix="val"))
            if sign * rates[val_key] < best:  # ties keep the earlier, less drifted weights
                best = sign * rates[val_key]
                save_checkpoint(best_path, model, step=step, train_config=config_to_dict(cfg))
        return rates

    began = time.time()
    for it in tqdm(range(start, cfg.steps), desc="finetune", initial=start, total=cfg.steps):
        if cfg.time_budget_min and time.time() - began > 60 * cfg.time_budget_min:
            break
        t0 = time.time()
        evaluated = evaluations(it) if it % cfg.eval_every == 0 else {}
        # the policy's noise (torch) and Tianshou's minibatch shuffles (numpy) are a function of
        # (seed, iteration), so a resumed run draws what the uninterrupted one drew
        torch.manual_seed(cfg.seed * 1_000_003 + it)
        np.random.seed((cfg.seed * 1_000_003 + it) % 2**32)
        with policy_within_training_step(algo.policy), torch_train_mode(algo, False):
            # a fresh episode from the updated weights (their prefix DDIM steps use them), numbered by iteration
            collector.collect(n_step=per_iter, reset_before_collect=True, gym_reset_kwargs={"options": {"episode": it}})
        collected = _collected_means(buffer.sample(0)[0].info)
        with policy_within_training_step(algo.policy):
            stats = algo.update(buffer, batch_size=cfg.batch_size, repeat=cfg.repeat)
        buffer.reset()
        vf_loss = getattr(stats, "vf_loss", None)  # credit=agent has no critic
        rows.append({"iteration": it, **collected, "loss": stats.loss.mean, "vf_loss": None if vf_loss is None else vf_loss.mean,
                     "seconds": round(time.time() - t0, 3), **evaluated})
        _write_csv(log_path, rows)
        save_checkpoint(out, model, step=it + 1, train_config=config_to_dict(cfg), optimizer=_TrainState(algo))
    if eval_scenes or val_scenes:  # the final weights: a row of their own after the last iteration
        done = int(load_checkpoint(out)["step"]) if out.exists() else start
        rows.append({"iteration": done, **evaluations(done)})
        _write_csv(log_path, rows)
        plot_learning_curve(rows, out.with_suffix(".png"))
    if not out.exists():  # nothing left to do (steps already reached): still hand back a checkpoint
        save_checkpoint(out, model, step=start, train_config=config_to_dict(cfg), optimizer=_TrainState(algo))
    return out
