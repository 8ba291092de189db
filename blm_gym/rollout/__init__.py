"""Rollouts you can keep: closed-loop runs of a policy on logged scenes, and their HDF5 files."""
from blm_gym.rollout.h5 import SCHEMA_VERSION, read_rollouts, write_rollouts
from blm_gym.rollout.runner import controlled_mask, record_rollout, run_rollouts, simulate
from blm_gym.sim.record import Rollout, sample_state

__all__ = ["SCHEMA_VERSION", "Rollout", "controlled_mask", "read_rollouts", "record_rollout", "run_rollouts",
           "sample_state", "simulate", "write_rollouts"]
