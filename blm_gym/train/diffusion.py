"""Stage 2: train the scene-level latent denoiser on a frozen VAE (``blm-gym train diffusion``).

Loss: x0-prediction MSE on normalised VAE latents of all agents of a window jointly, at uniform
random diffusion steps (:meth:`BLMModel.diffusion_loss`). Validation: the same loss with fixed
noise, and the ADE/FDE (metres, world frame) of one DDIM-sampled joint plan to the log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneSource
from blm_gym.models.batch import to_world_frame
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_model
from blm_gym.train.common import train_loop, training_data


@dataclass(frozen=True)
class DiffusionTrainConfig:
    vae_checkpoint: str = "runs/vae.pt"  # stage-1 output; its architecture is kept
    # data
    data: str = "scenarionet"  # "scenarionet" (data_dir: a ScenarioNet folder) or "synthetic"
    data_dir: str | None = None  # None: $BLM_GYM_DATA
    sources: tuple[str, ...] = ()  # more training data, "<kind>:<data_dir>" each (e.g. "interaction:/data/interaction"),
    #                                 train split only (blm_gym.data.splits; train.common.open_sources)
    val_scenes: tuple[str, ...] = ()  # validation scene ids of the data; (): its last train-split scene
    synthetic_scenes: int = 8
    window_stride: int = 2
    max_agents: int = 32
    mirror: bool = False  # reflect half the training windows left-right (did not help on nuScenes-mini)
    window_cache: str | None = None  # folder of the on-disk window caches; None: ~/.cache/blm_gym/windows
    rebuild_cache: str = "auto"  # a cache whose data or config changed: "auto" rebuilds it, "never" raises
    loader_workers: int = 2  # DataLoader processes reading batches ahead (0: read in the training process,
    #                          cheaper while the cache sits in the page cache; workers hide disk reads)
    # optimisation
    steps: int = 1000  # phase 1 of the shipped blm.pt (README model card; phase 2: 700 more at 64 agents)
    batch_size: int = 16  # windows (scenes) per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at steps)
    grad_clip: float = 1.0
    seed: int = 0
    val_sample_steps: int = 5  # DDIM steps for the validation plans
    # bookkeeping
    out: str = "runs/blm.pt"  # checkpoint (the full model: VAE + denoiser); log at runs/blm.csv
    device: str = "cpu"
    num_threads: int = 0
    log_every: int = 50
    val_every: int = 500
    save_every: int = 500


def plan_errors(model: BLMModel, batch, num_steps: int, seed: int = 0) -> dict[str, float]:
    """ADE/FDE (m) of one sampled joint plan to the logged future, over ``batch.train_mask`` agents."""
    g = torch.Generator(device=batch.hist.device).manual_seed(seed)
    latents = model.sample(batch, 1, num_steps, 0.0, g)[:, 0]
    _, states = model.decode(latents, batch)
    fx, fy, _ = to_world_frame(batch.fut_states[..., 0], batch.fut_states[..., 1], batch.fut_states[..., 2],
                               batch.frame)
    err = (states[..., :2] - torch.stack([fx, fy], -1)).norm(dim=-1)[batch.train_mask]
    return {"plan_ade": float(err.mean()), "plan_fde": float(err[:, -1].mean())}


def train_diffusion(cfg: DiffusionTrainConfig, resume: bool = False,
                    scenes: tuple[list[Scene], list[Scene]] | None = None,
                    sources: tuple[Sequence[SceneSource], SceneSource | None] | None = None) -> BLMModel:
    """Train stage 2 from ``cfg.vae_checkpoint``; writes ``cfg.out`` + ``.csv``; returns the model.

    Data (:func:`~blm_gym.train.common.training_data`): ``scenes``: (train, val) scenes in memory;
    else ``sources``: (train sources, val source), else ``cfg.data``'s, read through window caches.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.vae_checkpoint, cfg.device)
    if model.latent_scale.eq(1).all():
        raise ValueError(f"{cfg.vae_checkpoint} has no latent scale: finish stage 1 (`blm-gym train vae`) first")
    model.vae.requires_grad_(False)
    train, val = training_data(cfg, model, scenes, sources)

    def loss_fn(m: BLMModel, batch, rng):
        return m.diffusion_loss(batch, generator=rng), {}

    def val_fn(m: BLMModel):
        batch = val.to(cfg.device)
        g = torch.Generator(device=batch.hist.device).manual_seed(cfg.seed)
        return {"loss": float(m.diffusion_loss(batch, generator=g)),
                **plan_errors(m, batch, cfg.val_sample_steps, cfg.seed)}

    model, _ = train_loop(cfg, model, list(model.denoiser.parameters()), train, loss_fn,
                          val_fn if val is not None else None, resume, desc="diffusion")
    return model
