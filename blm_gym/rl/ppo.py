"""PPO fine-tuning of the BLM latent diffusion model toward rule-based rewards (Tianshou 2.0).

Actor: the denoiser's Gaussian DDIM step ``N(mu_theta(x_t, i, ctx), sigma_i^2)`` over the whole
joint latent, with ``sigma_i`` from the schedule floored at ``std_floor`` (the last DDIM step is
deterministic, std 0: its log-prob is undefined, so it is never taken unfloored). With ``eta = 0``
(the closed-loop policy's deterministic DDIM) the chain's prefix is the policy's exact sampler and
the floor is the exploration noise of the fine-tuned steps; evaluation takes the mean.

Log-probs are the *per-dimension mean* over the real agents' latent dims (DDPO): a sum over
~800 dims makes every ratio leave any clip range after one update. Padded agents get mean 0 and
std 1 and are masked out of log-probs and the KL.

Critic: a small MLP on (pooled frozen scene context, step ``i``, pooled ``x_t``); it is trained
and logged but, as in DDPO, the advantage is the final reward normalised over the samples of
the same plan (bank entry) and DDIM step: with 8-16 samples that beats a learned baseline.

Loss per minibatch (:class:`DiffusionPPO`, a subclass of ``tianshou.algorithm.PPO``): the
clipped surrogate, the critic's squared error, and a KL penalty to the frozen pretrained
model, closed form per step for Gaussians of equal std, averaged like the log-probs:
``KL = mean ||mu_theta - mu_ref||^2 / (2 sigma^2)``.

:func:`finetune` runs it: Tianshou collects ``samples_per_scene`` lockstep copies of the
:class:`~blm_gym.rl.denoising_mdp.DenoisingMDP` (so every scene gets that many samples per
iteration), updates, logs a CSV row and writes an atomic BLM checkpoint each iteration.
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.distributions import Independent, Normal
from tqdm import tqdm

from blm_gym.config import config_to_dict
from blm_gym.atomic_files import atomic_path
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_checkpoint, load_model, restore_model, save_checkpoint
from blm_gym.rewards.terms import RewardTerm, make_reward
from blm_gym.rl.denoising_mdp import DenoisingMDP, SceneBank
from tianshou.algorithm import PPO
from tianshou.algorithm.modelfree.a2c import A2CTrainingStats
from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, ReplayBuffer, SequenceSummaryStats, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step, torch_train_mode


# ---- actor and critic -------------------------------------------------------------------------

def gaussian_step(model: BLMModel, bank: SceneBank, obs, timesteps: torch.Tensor, eta: float, std_floor: float,
                  frozen_context: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and floored std ``(B, N, T', d)`` of the policy's next latent for observations ``obs``,
    and the real-agent mask as floats of the same shape (Tianshou stacks the three).

    ``obs`` has ``scene`` ``(B,)``, ``step`` ``(B,)`` and ``x`` ``(B, N, T', d)``. Rows are grouped by
    DDIM step (the model takes one step index per call). ``frozen_context`` uses the bank's
    cached reference contexts instead of encoding with ``model``.
    """
    device = bank.batches[0].hist.device
    scene = torch.as_tensor(np.asarray(obs.scene), device=device).long().reshape(-1)
    step = torch.as_tensor(np.asarray(obs.step), device=device).long().reshape(-1)
    x = torch.as_tensor(np.asarray(obs.x), dtype=torch.float32, device=device)
    means, stds, order = [], [], []
    for i in step.unique().tolist():
        rows = torch.nonzero(step == i).reshape(-1)
        idx = scene[rows].tolist()
        ctx = bank.reference_context(idx) if frozen_context else model.encode_context(bank.batch(idx))
        m, s = model.denoise_mean_std(x[rows], i, ctx, timesteps, eta)
        means.append(m)
        stds.append(s)
        order.append(rows)
    inverse = torch.argsort(torch.cat(order))
    mean, std = torch.cat(means)[inverse], torch.cat(stds)[inverse]
    real = bank.agent_mask(scene.tolist())[:, :, None, None]
    return torch.where(real, mean, 0.0), torch.where(real, std.clamp(min=std_floor), 1.0), real.expand_as(mean).float()


def masked_dim_mean(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, N, T', d)`` over the dims where ``real`` (0/1, same shape): ``(B,)``."""
    return (values * real).sum((1, 2, 3)) / real.sum((1, 2, 3)).clamp(min=1)


class LatentGaussian(Independent):
    """Diagonal Gaussian over latents ``(B, N, T', d)``; ``log_prob`` is the mean per real-agent dim ``(B,)``."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, real: torch.Tensor):
        super().__init__(Normal(loc, scale), 3)
        self.real = real

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return masked_dim_mean(self.base_dist.log_prob(value), self.real)


def latent_gaussian(params: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> LatentGaussian:
    """Tianshou ``dist_fn``: the actor's ``(mean, std, real)`` as a :class:`LatentGaussian`."""
    return LatentGaussian(*params)


class DiffusionActor(nn.Module):
    """Tianshou actor: ``obs -> ((mean, std, real), None)`` of the denoising step of ``model``."""

    def __init__(self, model: BLMModel, bank: SceneBank, num_steps: int, eta: float, std_floor: float):
        super().__init__()
        if std_floor <= 0:
            raise ValueError(f"std_floor must be > 0 (the last DDIM step has std 0), got {std_floor}")
        self.model, self.bank = model, bank
        self.timesteps, self.eta, self.std_floor = model.timesteps(num_steps), float(eta), float(std_floor)

    def forward(self, obs, state=None, info=None):
        return gaussian_step(self.model, self.bank, obs, self.timesteps, self.eta, self.std_floor), state


class LatentCritic(nn.Module):
    """Value of a denoising state: MLP on [pooled reference agent context, i / num_steps,
    per-channel mean and RMS of ``x_t`` over real agents and latent steps]."""

    def __init__(self, bank: SceneBank, num_steps: int, latent_dim: int, hidden: int = 64):
        super().__init__()
        self.bank, self.num_steps = bank, num_steps
        ctx = bank.contexts[0]
        self.net = nn.Sequential(nn.Linear(ctx.agent_emb.shape[-1] + 1 + 2 * latent_dim, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, obs, state=None, info=None) -> torch.Tensor:
        device = self.bank.batches[0].hist.device
        scene = np.asarray(obs.scene).reshape(-1).tolist()
        ctx = self.bank.reference_context(scene)
        mask = ctx.agent_mask.float()[..., None]  # (B, N, 1)
        count = mask.sum(1).clamp(min=1)
        pooled_ctx = (ctx.agent_emb * mask).sum(1) / count
        x = torch.as_tensor(np.asarray(obs.x), dtype=torch.float32, device=device)  # (B, N, T', d)
        xm = (x * mask[..., None]).sum((1, 2)) / (count * x.shape[2])
        xs = ((x.pow(2) * mask[..., None]).sum((1, 2)) / (count * x.shape[2])).sqrt()
        step = torch.as_tensor(np.asarray(obs.step), dtype=torch.float32, device=device).reshape(-1, 1)
        return self.net(torch.cat([pooled_ctx, step / self.num_steps, xm, xs], -1))


# ---- the algorithm ----------------------------------------------------------------------------

@dataclass(kw_only=True)
class DiffusionPPOStats(A2CTrainingStats):
    kl: SequenceSummaryStats  # per-sample KL to the reference, mean per real latent dim
    clip_fraction: SequenceSummaryStats  # share of samples whose ratio left [1 - clip, 1 + clip]
    initial_ratio_error: float  # max |ratio - 1| on the update's first minibatch (0 up to round-off)
    initial_kl: float  # KL on the update's first minibatch


class DiffusionPPO(PPO):
    """Tianshou PPO plus a closed-form KL penalty to ``reference`` and per-scene advantages.

    ``reference``: the frozen pretrained model; ``kl_coef`` weights the KL in the loss. Other
    arguments are :class:`tianshou.algorithm.PPO`'s (the advantage is the return normalised per
    (bank entry, step), replacing ``advantage_normalization`` and the critic's baseline).
    """

    def __init__(self, *, reference: BLMModel, kl_coef: float, **kwargs):
        kwargs.setdefault("ent_coef", 0.0)  # the std is fixed by the schedule: entropy has no gradient
        super().__init__(advantage_normalization=False, gamma=1.0, gae_lambda=1.0, **kwargs)
        self.reference = reference.requires_grad_(False).eval()
        self.kl_coef = float(kl_coef)

    @property
    def actor(self) -> DiffusionActor:
        return cast(DiffusionActor, self.policy.actor)

    def _preprocess_batch(self, batch, buffer: ReplayBuffer, indices: np.ndarray):
        batch = super()._preprocess_batch(batch, buffer, indices)
        a = self.actor
        with torch.no_grad():
            ref = [gaussian_step(self.reference, a.bank, mb.obs, a.timesteps, a.eta, a.std_floor, frozen_context=True)[0]
                   for mb in batch.split(self.max_batchsize, shuffle=False, merge_last=True)]
        batch.mu_ref = torch.cat(ref)
        batch.adv = normalise_per_group(batch.returns, np.asarray(batch.obs.scene), np.asarray(batch.obs.step))
        return batch

    def _update_with_batch(self, batch, batch_size: int | None, repeat: int) -> DiffusionPPOStats:
        losses, clip_losses, vf_losses, kls, clip_fracs = [], [], [], [], []
        first_ratio_err = first_kl = None
        for _ in range(repeat):
            for mb in batch.split(batch_size or -1, merge_last=True):
                dist = self.policy(mb).dist
                ratio = (dist.log_prob(mb.act) - mb.logp_old).exp()
                surrogate = torch.min(ratio * mb.adv, ratio.clamp(1 - self.eps_clip, 1 + self.eps_clip) * mb.adv)
                clip_loss = -surrogate.mean()
                var = dist.base_dist.scale.pow(2)
                kl = masked_dim_mean((dist.base_dist.loc - mb.mu_ref).pow(2) / (2 * var), dist.real).mean()
                vf_loss = (mb.returns - self.critic(mb.obs).flatten()).pow(2).mean()
                loss = clip_loss + self.vf_coef * vf_loss + self.kl_coef * kl
                if first_ratio_err is None:
                    first_ratio_err, first_kl = (ratio - 1).abs().max().item(), kl.item()
                self.optim.step(loss)
                losses.append(loss.item())
                clip_losses.append(clip_loss.item())
                vf_losses.append(vf_loss.item())
                kls.append(kl.item())
                clip_fracs.append(float(((ratio - 1).abs() > self.eps_clip).float().mean()))
        stats = SequenceSummaryStats.from_sequence
        return DiffusionPPOStats(
            loss=stats(losses), actor_loss=stats(clip_losses), vf_loss=stats(vf_losses), ent_loss=stats([0.0]),
            gradient_steps=len(losses), kl=stats(kls), clip_fraction=stats(clip_fracs),
            initial_ratio_error=first_ratio_err, initial_kl=first_kl,
        )


def normalise_per_group(adv: torch.Tensor, *keys: np.ndarray, eps: float = 1e-8) -> torch.Tensor:
    """``(adv - mean_g) / (std_g + eps)`` within groups of equal ``keys`` (e.g. scene and step).

    A group of one sample gets advantage 0 (nothing to compare it with).
    """
    _, group = np.unique(np.stack([np.asarray(k).reshape(-1) for k in keys], 1), axis=0, return_inverse=True)
    g = torch.as_tensor(group.reshape(-1), device=adv.device)
    count = torch.bincount(g).to(adv.dtype)
    mean = torch.zeros_like(count).index_add_(0, g, adv) / count
    centred = adv - mean[g]
    std = (torch.zeros_like(count).index_add_(0, g, centred.pow(2)) / count).sqrt()
    return centred / (std[g] + eps)


# ---- the trainer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneConfig:
    """PPO fine-tuning of a BLM checkpoint (``blm-gym finetune``)."""

    checkpoint: str = "runs/blm/diffusion.pt"  # pretrained BLM model (stages 1 + 2)
    reward: str = "collision=1,offroad(from_road=1)=1"  # make_reward spec (offroad: vehicles leaving the road)
    env: str = "BLM-Synthetic-v0"  # env id whose scene source provides the scenes
    data_dir: str | None = None  # data folder for real-data env ids
    scene_ids: tuple[str, ...] | None = None  # subset of scenes (default: all)
    max_scenes: int = 8  # at most this many scenes (the first ones)
    start_steps: tuple[int, ...] = (30, 50, 70, 90, 110, 130)  # log steps every scene is planned from

    max_agents: int = 32  # agents planned jointly per scene
    ego_replays_log: bool = False  # score plans with the ego on its logged track (safety-critical traffic)
    steps: int = 30  # PPO iterations (collect + update); ~3 min on 2 CPU cores with these defaults
    samples_per_scene: int = 16  # parallel chains per plan (advantages are normalised over them)
    scenes_per_step: int = 4  # plans (bank entries: scene x start step) collected per iteration
    num_denoise_steps: int = 5  # DDIM steps of a chain: the closed-loop policy's (model default)
    tuned_denoise_steps: int = 5  # K: only the last K DDIM steps are MDP actions (5 of 5 measured best)
    eta: float = 0.0  # DDIM stochasticity: the closed-loop policy's (deterministic DDIM)
    std_floor: float = 0.3  # minimum policy std (normalised latent units): the exploration noise
    lr: float = 3e-4
    clip: float = 0.02  # PPO ratio clip (ratios of per-dim mean log-probs)
    kl_coef: float = 0.01  # weight of the closed-form KL (per dim) to the pretrained model
    vf_coef: float = 0.5
    repeat: int = 2  # optimisation epochs per iteration
    batch_size: int = 64  # minibatch (transitions)
    max_grad_norm: float = 1.0
    seed: int = 0
    out: str = "runs/blm/finetuned.pt"  # fine-tuned checkpoint; the CSV log goes beside it (.csv)
    device: str = "cpu"


CSV_FIELDS = ("iteration", "reward_mean", "reward_std", "kl", "clip_fraction", "loss", "vf_loss", "seconds")


def _load_scenes(cfg: FinetuneConfig):
    """The first ``max_scenes`` scenes of the env id's source."""
    from blm_gym.envs import scene_source

    source = scene_source(cfg.env, cfg.data_dir, cfg.scene_ids)
    scenes = [source.load(i) for i in range(min(len(source.scene_ids), cfg.max_scenes))]
    if not scenes:
        raise ValueError(f"finetune: the source of {cfg.env} has no scenes")
    return scenes


def build_ppo(cfg: FinetuneConfig, model: BLMModel, reference: BLMModel, scenes, reward: RewardTerm,
              first_episode: int = 0) -> tuple[DiffusionPPO, DummyVectorEnv]:
    """The algorithm (actor = ``model``'s denoiser) and ``samples_per_scene`` lockstep MDP copies."""
    bank = SceneBank(scenes, reference, step=cfg.start_steps, max_agents=cfg.max_agents, device=cfg.device)
    model.vae.requires_grad_(False)  # the decoder is not part of the policy
    envs = DummyVectorEnv([
        (lambda j=j: DenoisingMDP(model, bank, reward, num_steps=cfg.num_denoise_steps,
                                  tuned_denoise_steps=cfg.tuned_denoise_steps, eta=cfg.eta,
                                  seed=cfg.seed * 1000 + j + first_episode, first_episode=first_episode,
                                  ego_replays_log=cfg.ego_replays_log))
        for j in range(cfg.samples_per_scene)])
    space = envs.get_env_attr("action_space", 0)[0]
    actor = DiffusionActor(model, bank, cfg.num_denoise_steps, cfg.eta, cfg.std_floor)
    policy = ProbabilisticActorPolicy(actor=actor, dist_fn=latent_gaussian, action_space=space,
                                      action_scaling=False, action_bound_method=None)
    critic = LatentCritic(bank, cfg.num_denoise_steps, model.config.latent_dim).to(cfg.device)
    algo = DiffusionPPO(policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=cfg.lr), reference=reference,
                        kl_coef=cfg.kl_coef, eps_clip=cfg.clip, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm)
    return algo, envs


class _TrainState:
    """Optimizer + critic state, stored in the checkpoint's ``optimizer`` slot (tensors only)."""

    def __init__(self, algo: DiffusionPPO):
        self.algo = algo

    def state_dict(self) -> dict:
        return {"optimizer": self.algo.optim.state_dict(), "critic": self.algo.critic.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.algo.optim.load_state_dict(state["optimizer"])
        self.algo.critic.load_state_dict(state["critic"])


def finetune(cfg: FinetuneConfig, resume: bool = False, scenes=None) -> Path:
    """PPO-fine-tune ``cfg.checkpoint`` toward ``cfg.reward``; returns the checkpoint path ``cfg.out``.

    ``scenes`` (a list of :class:`~blm_gym.data.scene.Scene`) replaces the env id's source.
    Each iteration collects ``samples_per_scene x scenes_per_step`` chains, updates, appends a
    row to ``<out>.csv`` (mean/std final reward, KL, clip fraction, losses) and writes ``out``
    atomically. ``resume`` continues from ``out`` (its weights, optimizer, critic, iteration).
    """
    if cfg.samples_per_scene < 2:
        raise ValueError("finetune: samples_per_scene must be >= 2 (advantages are normalised per plan)")
    out, log_path = Path(cfg.out), Path(cfg.out).with_suffix(".csv")
    if out.exists() and not resume:
        raise FileExistsError(f"finetune: {out} exists; pass resume=True (--resume) to continue it or pick another out")
    # Tianshou logs a warning per step for multi-dimensional action stds (our latents); keep the log readable.
    logging.getLogger("tianshou.data.stats").setLevel(logging.ERROR)
    torch.manual_seed(cfg.seed)
    reward = make_reward(cfg.reward)
    reference = load_model(cfg.checkpoint, cfg.device)
    model = load_model(cfg.checkpoint, cfg.device)
    start = 0
    state = None
    if resume:
        ckpt = load_checkpoint(out)
        restore_model(model, ckpt, where=str(out))
        start, state = ckpt["step"], ckpt["optimizer"]
        torch.set_rng_state(ckpt["rng"]["torch"])
    scenes = list(scenes) if scenes is not None else _load_scenes(cfg)
    algo, envs = build_ppo(cfg, model, reference, scenes[:cfg.max_scenes], reward,
                           first_episode=start * cfg.scenes_per_step)
    if state is not None:
        _TrainState(algo).load_state_dict(state)
    per_iter = cfg.samples_per_scene * cfg.scenes_per_step * cfg.tuned_denoise_steps
    buffer = VectorReplayBuffer(per_iter, cfg.samples_per_scene)
    collector = Collector(algo, envs, buffer)
    collector.reset()
    rows = []
    if resume and log_path.exists():
        with open(log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) < start]
    for it in tqdm(range(start, cfg.steps), desc="finetune", initial=start, total=cfg.steps):
        t0 = time.time()
        with policy_within_training_step(algo.policy), torch_train_mode(algo, False):
            collected = collector.collect(n_step=per_iter)
        with policy_within_training_step(algo.policy):
            stats = algo.update(buffer, batch_size=cfg.batch_size, repeat=cfg.repeat)
        buffer.reset()
        rows.append({"iteration": it, "reward_mean": collected.returns_stat.mean,
                     "reward_std": collected.returns_stat.std, "kl": stats.kl.mean,
                     "clip_fraction": stats.clip_fraction.mean, "loss": stats.loss.mean,
                     "vf_loss": stats.vf_loss.mean, "seconds": round(time.time() - t0, 3)})
        with atomic_path(log_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        save_checkpoint(out, model, step=it + 1, train_config=config_to_dict(cfg), optimizer=_TrainState(algo))
    if not out.exists():  # nothing left to do (steps already reached): still hand back a checkpoint
        save_checkpoint(out, model, step=start, train_config=config_to_dict(cfg), optimizer=_TrainState(algo))
    return out
