"""Agents that act in an env: log replay, constant velocity, IDM and the latent-diffusion BLM model."""
from blm_gym.policies.base import Policy
from blm_gym.policies.baselines import BASELINES, ConstantVelocityPolicy, IDMParams, IDMPolicy, LogReplayPolicy

POLICY_NAMES = (*BASELINES, "blm", "blm_unguided")


def make_policy(name: str, *, checkpoint: str | None = None) -> Policy:
    """A policy by name: ``log``, ``constant_velocity``, ``idm``, ``blm`` (the BLM model with
    sampling-time guidance and the cheapest of 4 joint plans per replan) or ``blm_unguided`` (the
    bare model: one plan, no guidance). ``checkpoint`` = BLM weights, default: the pretrained
    nuScenes model shipped with the package."""
    if name in BASELINES:
        return BASELINES[name]()
    if name in ("blm", "blm_unguided"):
        from blm_gym.models.guidance import GuidanceConfig
        from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy

        bare = {"guidance": GuidanceConfig(steps=0)} if name == "blm_unguided" else {}
        policy = LatentDiffusionPolicy.from_checkpoint(checkpoint, **bare)
        policy.name = name  # rollout files and tables say which of the two ran
        return policy
    raise ValueError(f"unknown policy {name!r}; choose one of {POLICY_NAMES}")


__all__ = ["Policy", "LogReplayPolicy", "ConstantVelocityPolicy", "IDMPolicy", "IDMParams", "make_policy", "POLICY_NAMES"]
