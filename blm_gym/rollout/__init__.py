"""Rollouts you can keep: closed-loop runs of a policy on logged scenes, and their HDF5 files."""
from blm_gym.rollout.h5 import SCHEMA_VERSION, read_rollouts, write_rollouts
from blm_gym.rollout.record import Rollout, rollout_to_scene
from blm_gym.rollout.runner import controlled_mask, load_scene, run_rollouts

__all__ = ["SCHEMA_VERSION", "Rollout", "controlled_mask", "load_scene", "read_rollouts", "rollout_to_scene",
           "run_rollouts", "write_rollouts"]
