"""Agents that act in an env: log replay, constant velocity, IDM and the latent-diffusion BLM model."""
from blm_gym.policies.base import Policy
from blm_gym.policies.baselines import BASELINES, ConstantVelocityPolicy, IDMParams, IDMPolicy, LogReplayPolicy

POLICY_NAMES = (*BASELINES, "blm")


def make_policy(name: str, *, checkpoint: str | None = None) -> Policy:
    """A policy by name: ``log``, ``constant_velocity``, ``idm`` or ``blm`` (``checkpoint`` = BLM weights,
    default: the pretrained nuScenes model shipped with the package)."""
    if name in BASELINES:
        return BASELINES[name]()
    if name == "blm":
        from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy

        return LatentDiffusionPolicy.from_checkpoint(checkpoint)
    raise ValueError(f"unknown policy {name!r}; choose one of {POLICY_NAMES}")


__all__ = ["Policy", "LogReplayPolicy", "ConstantVelocityPolicy", "IDMPolicy", "IDMParams", "make_policy", "POLICY_NAMES"]
