"""blm_gym: realistic and controllable multi-agent traffic behind the Gymnasium API.

``import blm_gym`` registers the env ids ``BLM-nuScenes-v0``, ``BLM-ScenarioNet-v0`` and
``BLM-Synthetic-v0`` and nothing else: subpackages (``blm_gym.rewards``, ...) load on first use.
"""
from importlib import import_module

from blm_gym.envs import ENV_IDS, register_envs

register_envs()

_SUBPACKAGES = ("data", "envs", "metrics", "models", "policies", "render", "rewards", "rl", "rollout", "sim", "train")


def __getattr__(name: str):
    if name == "__version__":  # importlib.metadata costs more than the rest of the import
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("blm_gym")
        except PackageNotFoundError:  # a source tree that was not installed
            return "0.0.0+local"
    if name in _SUBPACKAGES:  # blm_gym.rewards.CollisionPenalty(env) after a bare `import blm_gym`
        return import_module(f"blm_gym.{name}")
    raise AttributeError(f"module 'blm_gym' has no attribute {name!r}")


__all__ = ["__version__", "ENV_IDS", "rewards"]
