"""The rollout record: one scene simulated K times, next to its log, as a struct of arrays."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from blm_gym.data.scene import AgentType, DrivableArea, Scene, Trajectories
from blm_gym.sim.state import SimulatorState, trajectory_checks


@dataclass(frozen=True)
class Rollout:
    """K closed-loop samples of one scene, over the steps ``start_step .. start_step + T - 1``.

    Simulated states are ``(K, N, T)``: ``x, y`` (m), ``heading`` (rad), ``speed`` (m/s, along
    ``heading``) and ``valid`` (bool). Index ``t = 0`` is the initial state, taken from the log;
    steps ``1 .. T - 1`` are simulated. ``log`` holds the logged states of the same N agents over
    the same T steps (``(N, T)``, extents ``log.length, log.width`` ``(N,)`` in metres).
    ``agent_type`` is int8 ``(N,)`` of :class:`AgentType`; ``controlled`` bool ``(N,)`` marks the
    agents the policy drove (the others replayed the log).
    """

    scene_id: str
    source: str
    policy: str
    dt: float
    start_step: int
    ego_index: int
    agent_ids: tuple[str, ...]
    agent_type: np.ndarray
    controlled: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    speed: np.ndarray
    valid: np.ndarray
    collision: np.ndarray
    offroad: np.ndarray
    log: Trajectories

    def __post_init__(self):
        k_n_t = self.x.shape
        if len(k_n_t) != 3:
            raise ValueError(f"Rollout {self.scene_id}: simulated states must be (K, N, T), got shape {k_n_t}")
        if k_n_t[2] < 2:
            raise ValueError(f"Rollout {self.scene_id}: T={k_n_t[2]}; a rollout needs the initial state and at "
                             "least one simulated step")
        for name in ("y", "heading", "speed", "valid", "collision", "offroad"):
            if getattr(self, name).shape != k_n_t:
                raise ValueError(f"Rollout {self.scene_id}: {name} has shape {getattr(self, name).shape}, "
                                 f"x has {k_n_t}; all simulated arrays must be (K, N, T)")
        if self.log.x.shape != k_n_t[1:]:
            raise ValueError(f"Rollout {self.scene_id}: log is {self.log.x.shape}, simulated states are "
                             f"{k_n_t}; the log must cover the same (N, T) agents and steps")
        n = k_n_t[1]
        if self.agent_type.shape != (n,) or self.controlled.shape != (n,) or len(self.agent_ids) != n:
            raise ValueError(f"Rollout {self.scene_id}: agent_type, controlled and agent_ids need {n} entries")

    @staticmethod
    def from_states(drivable: DrivableArea, **fields) -> "Rollout":
        """A rollout from every field but ``collision`` and ``offroad``, which are computed from
        the states (:func:`blm_gym.sim.state.trajectory_checks`) against the scene's ``drivable`` area."""
        x, y, heading, valid = (np.asarray(fields[k]) for k in ("x", "y", "heading", "valid"))
        states = Trajectories.from_states(x, y, heading, np.zeros_like(x), fields["log"].length,
                                          fields["log"].width, valid)
        collision, offroad = trajectory_checks(states, drivable,
                                               np.asarray(fields["agent_type"]) == AgentType.VEHICLE)
        return Rollout(**fields, collision=collision, offroad=offroad)

    @property
    def num_samples(self) -> int:
        return self.x.shape[0]

    @property
    def num_agents(self) -> int:
        return self.x.shape[1]

    @property
    def num_steps(self) -> int:
        return self.x.shape[2]

    @property
    def is_vehicle(self) -> np.ndarray:
        return self.agent_type == AgentType.VEHICLE

    def log_as_rollout(self, drivable: DrivableArea) -> "Rollout":
        """The logged ground truth as a 1-sample rollout, so every metric runs on it unchanged
        (its per-step checks against the scene's ``drivable`` area)."""
        collision, offroad = trajectory_checks(self.log, drivable, self.is_vehicle)
        return dataclasses.replace(
            self, policy="log", x=self.log.x[None], y=self.log.y[None], heading=self.log.heading[None],
            speed=self.log.speed[None], valid=self.log.valid[None], collision=collision[None], offroad=offroad[None],
        )


def sample_state(rollout: Rollout, sample: int, scene: Scene) -> SimulatorState:
    """The final :class:`SimulatorState` of one sample of ``rollout``, on ``scene`` (the source's
    scene with id ``rollout.scene_id``): the log up to the start step, then the simulated steps.
    ``dataclasses.replace(state, current_step=t)`` shows it at an earlier step ``t`` (renderers do).
    """
    if scene.scene_id != rollout.scene_id:
        raise ValueError(f"sample_state: the rollout is of scene {rollout.scene_id!r}, the scene given is "
                         f"{scene.scene_id!r}; load the scene by id (blm_gym.data.registry.load_scene(source, scene_id))")
    if not 0 <= sample < rollout.num_samples:
        raise ValueError(f"sample_state: sample {sample} out of range; the rollout has {rollout.num_samples}")
    t0, t1 = rollout.start_step, rollout.start_step + rollout.num_steps
    state = SimulatorState.from_log(scene, t0)
    sim = state.sim
    steps = {k: getattr(sim, k).copy() for k in ("x", "y", "heading", "speed", "valid")}
    for k, a in steps.items():
        a[:, t0:t1] = getattr(rollout, k)[sample]
    sim = Trajectories.from_states(**steps, length=sim.length, width=sim.width)
    collision, offroad = state.collision.copy(), state.offroad.copy()
    collision[:, t0:t1], offroad[:, t0:t1] = rollout.collision[sample], rollout.offroad[sample]
    return dataclasses.replace(state, sim=sim, collision=collision, offroad=offroad, current_step=t1 - 1)
