"""Stage 1: train the action VAE of a new BLM model (``blm-gym train vae``).

Loss per agent with a fully logged future: ``state_weight * ADE`` (metres, decoded actions
integrated by the unicycle model vs the logged positions) ``+ action_weight * MSE`` (normalised
actions) ``+ beta * KL``. After training, the per-channel std of the posterior means on the
training windows is stored as ``model.latent_scale`` so that stage 2 diffuses unit-scale latents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneSource
from blm_gym.models.batch import AgentBatch
from blm_gym.models.blm import BLMConfig, BLMModel
from blm_gym.train.common import train_loop, training_data
from blm_gym.train.loader import InMemoryWindows, Windows


@dataclass(frozen=True)
class VAETrainConfig:
    # data
    data: str = "scenarionet"  # "scenarionet" (data_dir: a ScenarioNet folder) or "synthetic"
    data_dir: str | None = None  # None: $BLM_GYM_DATA
    sources: tuple[str, ...] = ()  # more training data, "<kind>:<data_dir>" each (e.g. "interaction:/data/interaction"),
    #                                 train split only (blm_gym.data.splits; train.common.open_sources)
    val_scenes: tuple[str, ...] = ()  # validation scene ids of the data; (): its last train-split scene
    synthetic_scenes: int = 8  # scenes recorded when data == "synthetic"
    window_stride: int = 2  # steps between training windows (0.1 s each)
    max_agents: int = 32  # ego + nearest vehicles per window
    mirror: bool = False  # reflect half the training windows left-right (did not help on nuScenes-mini)
    window_cache: str | None = None  # folder of the on-disk window caches; None: ~/.cache/blm_gym/windows
    rebuild_cache: str = "auto"  # a cache whose data or config changed: "auto" rebuilds it, "never" raises
    loader_workers: int = 2  # DataLoader processes reading batches ahead (0: read in the training process,
    #                          cheaper while the cache sits in the page cache; workers hide disk reads)
    # model architecture (stored in the checkpoint; the diffusion stage keeps it)
    latent_dim: int = 4
    vae_channels: int = 64
    d_model: int = 64
    num_layers: int = 2
    agent_lane_points: int = 0  # nearest lanes, in each agent's frame, in the denoiser's agent embedding (0: none)
    # optimisation
    steps: int = 1500
    batch_size: int = 16  # windows per step (all their agents with a full future)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at steps)
    grad_clip: float = 1.0
    beta: float = 3e-3  # KL weight
    state_weight: float = 1.0  # per metre of ADE
    action_weight: float = 1.0
    seed: int = 0
    # bookkeeping
    out: str = "runs/vae.pt"  # checkpoint; the CSV log is written beside it (runs/vae.csv)
    device: str = "cpu"  # "cpu" or "cuda"
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    log_every: int = 50
    val_every: int = 250
    save_every: int = 500


def model_config(cfg: VAETrainConfig) -> BLMConfig:
    return BLMConfig(latent_dim=cfg.latent_dim, vae_channels=cfg.vae_channels, d_model=cfg.d_model,
                     num_layers=cfg.num_layers, agent_lane_points=cfg.agent_lane_points)


def train_vae(cfg: VAETrainConfig, resume: bool = False,
              scenes: tuple[list[Scene], list[Scene]] | None = None,
              sources: tuple[Sequence[SceneSource], SceneSource | None] | None = None) -> BLMModel:
    """Train stage 1; writes ``cfg.out`` (checkpoint) and its ``.csv`` log; returns the model.

    Data (:func:`~blm_gym.train.common.training_data`): ``scenes``: (train, val) scenes in memory;
    else ``sources``: (train sources, val source), else ``cfg.data``'s, read through window caches.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model = BLMModel(model_config(cfg)).to(cfg.device)
    train, val = training_data(cfg, model, scenes, sources)

    def loss_fn(m: BLMModel, batch, rng):
        parts = m.vae_losses(batch, generator=rng)
        loss = cfg.state_weight * parts["ade"] + cfg.action_weight * parts["action"] + cfg.beta * parts["kl"]
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def val_fn(m: BLMModel):
        parts = m.vae_losses(val.to(cfg.device), sample=False)  # posterior mean: reconstruction error
        return {k: float(v) for k, v in parts.items()}

    def finalize(m: BLMModel):
        m.latent_scale.copy_(latent_std(m, train, cfg.device))

    model, _ = train_loop(cfg, model, list(model.vae.parameters()), train, loss_fn,
                          val_fn if val is not None else None, resume, desc="vae", finalize=finalize)
    return model


@torch.no_grad()
def latent_std(model: BLMModel, train: Windows | AgentBatch, device: str, chunk: int = 256) -> torch.Tensor:
    """Per-channel std ``(d,)`` (unbiased) of the posterior means over all training agents.

    Streams ``train`` ``chunk`` windows at a time, combining per-chunk counts, means and squared
    deviations in float64 (Chan et al.), so memory does not grow with the data.
    """
    windows = InMemoryWindows(train) if isinstance(train, AgentBatch) else train
    count, mean, m2 = 0, None, None
    for batch in windows.chunks(chunk):
        mu, _ = model.vae.encode(batch.fut_actions[batch.train_mask].to(device))
        x = mu.flatten(0, -2).double().cpu()  # (agents x T', d)
        if len(x) == 0:
            continue
        k, xm = len(x), x.mean(0)
        xm2 = ((x - xm) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = k, xm, xm2
        else:
            delta, total = xm - mean, count + k
            mean = mean + delta * k / total
            m2 = m2 + xm2 + delta ** 2 * count * k / total
            count = total
    if mean is None:
        raise ValueError("latent_std: no training agent has a fully logged future")
    return (m2 / (count - 1)).sqrt().float().clamp(min=1e-3).to(device)
