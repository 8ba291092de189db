"""blm_gym: realistic and controllable multi-agent traffic behind the Gymnasium API.

``import blm_gym`` registers the env ids ``BLM-nuScenes-v0``, ``BLM-ScenarioNet-v0`` and
``BLM-Synthetic-v0``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blm_gym")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

from blm_gym import rewards  # noqa: E402  (blm_gym.rewards.CollisionPenalty(env) after `import blm_gym`)
from blm_gym.envs import ENV_IDS, register_envs  # noqa: E402

register_envs()

__all__ = ["__version__", "ENV_IDS", "rewards"]
