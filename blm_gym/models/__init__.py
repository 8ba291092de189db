"""Neural nets of the BLM traffic model: action VAE, scene latent denoiser, schedule, checkpoints."""
from blm_gym.models.batch import AgentBatch, collate, make_agent_batch, scene_windows
from blm_gym.models.blm import BLMConfig, BLMModel
from blm_gym.models.checkpoint import ArchitectureMismatchError, load_model, save_checkpoint
from blm_gym.models.denoiser import SceneContext

__all__ = ["AgentBatch", "collate", "make_agent_batch", "scene_windows", "BLMConfig", "BLMModel",
           "ArchitectureMismatchError", "load_model", "save_checkpoint", "SceneContext"]
