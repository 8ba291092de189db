"""Training loops of the BLM model: stage 1 (action VAE) and stage 2 (latent diffusion)."""
from blm_gym.train.diffusion import DiffusionTrainConfig, train_diffusion
from blm_gym.train.vae import VAETrainConfig, train_vae

__all__ = ["VAETrainConfig", "train_vae", "DiffusionTrainConfig", "train_diffusion"]
