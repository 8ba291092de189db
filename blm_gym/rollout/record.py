"""The rollout record: one scene simulated K times, next to its log, as a struct of arrays."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from blm_gym.data.scene import AgentType, Scene, Trajectories


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
    log: Trajectories

    def __post_init__(self):
        k_n_t = self.x.shape
        if len(k_n_t) != 3:
            raise ValueError(f"Rollout {self.scene_id}: simulated states must be (K, N, T), got shape {k_n_t}")
        if k_n_t[2] < 2:
            raise ValueError(f"Rollout {self.scene_id}: T={k_n_t[2]}; a rollout needs the initial state and at "
                             "least one simulated step")
        for name in ("y", "heading", "speed", "valid"):
            if getattr(self, name).shape != k_n_t:
                raise ValueError(f"Rollout {self.scene_id}: {name} has shape {getattr(self, name).shape}, "
                                 f"x has {k_n_t}; all simulated arrays must be (K, N, T)")
        if self.log.x.shape != k_n_t[1:]:
            raise ValueError(f"Rollout {self.scene_id}: log is {self.log.x.shape}, simulated states are "
                             f"{k_n_t}; the log must cover the same (N, T) agents and steps")
        n = k_n_t[1]
        if self.agent_type.shape != (n,) or self.controlled.shape != (n,) or len(self.agent_ids) != n:
            raise ValueError(f"Rollout {self.scene_id}: agent_type, controlled and agent_ids need {n} entries")

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

    def sample_trajectories(self, sample: int) -> Trajectories:
        """The simulated states of one sample as :class:`Trajectories` ``(N, T)``."""
        return Trajectories.from_states(
            self.x[sample], self.y[sample], self.heading[sample], self.speed[sample],
            self.log.length, self.log.width, self.valid[sample],
        )

    def log_as_rollout(self) -> "Rollout":
        """The logged ground truth as a 1-sample rollout, so every metric runs on it unchanged."""
        return dataclasses.replace(
            self, policy="log", x=self.log.x[None], y=self.log.y[None], heading=self.log.heading[None],
            speed=self.log.speed[None], valid=self.log.valid[None],
        )


def rollout_to_scene(rollout: Rollout, sample: int, scene: Scene) -> Scene:
    """The scene as simulated in ``sample``: its map and agents from ``scene`` (the source's scene
    with id ``rollout.scene_id``), its tracks the simulated steps ``start_step .. start_step + T - 1``.
    Renderers draw it like any logged scene.
    """
    if scene.scene_id != rollout.scene_id:
        raise ValueError(f"rollout_to_scene: the rollout is of scene {rollout.scene_id!r}, the map given is of "
                         f"{scene.scene_id!r}; load the scene by id (blm_gym.rollout.load_scene(source, scene_id))")
    if not 0 <= sample < rollout.num_samples:
        raise ValueError(f"rollout_to_scene: sample {sample} out of range; the rollout has {rollout.num_samples}")
    return dataclasses.replace(
        scene, agent_ids=rollout.agent_ids, agent_type=rollout.agent_type, ego_index=rollout.ego_index,
        traj=rollout.sample_trajectories(sample),
    )
