"""Stage 3: the denoising chain as an MDP and Tianshou PPO fine-tuning toward rule-based rewards."""
from blm_gym.rl.denoising_mdp import DenoisingMDP, SceneBank, decoded_reward_context

__all__ = ["DenoisingMDP", "SceneBank", "decoded_reward_context"]
