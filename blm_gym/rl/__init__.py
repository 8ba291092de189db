"""Stage 3: the denoising chain as an MDP over closed-loop rollouts and Tianshou PPO fine-tuning."""
from blm_gym.rl.denoising_mdp import DenoisingMDP, Loop
from blm_gym.rl.group_env import SceneGroupVectorEnv, chunk_realism

__all__ = ["DenoisingMDP", "Loop", "SceneGroupVectorEnv", "chunk_realism"]
