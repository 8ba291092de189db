"""Closed-loop rollouts: a policy drives the chosen agents, the others replay the log."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from blm_gym.data.scene import AgentType, Scene
from blm_gym.data.source import SceneSource
from blm_gym.policies.base import Policy
from blm_gym.rollout.record import Rollout
from blm_gym.sim.state import ENTRY_CHECK_S, Action, SimState, step

DEFAULT_START_STEP = 30  # 3 s of history at dt 0.1, so models have context
CONTROLLED_CHOICES = ("all_vehicles", "all", "non_ego")


def load_scene(source: SceneSource, scene_id: str) -> Scene:
    """Load the scene with id ``scene_id`` from ``source``."""
    ids = list(source.scene_ids)
    if scene_id not in ids:
        raise KeyError(f"Scene {scene_id!r} is not in source {source.name!r} ({len(ids)} scenes, "
                       f"e.g. {ids[:3]}); pick one of source.scene_ids")
    return source.load(ids.index(scene_id))


def controlled_mask(scene: Scene, controlled: str | np.ndarray) -> np.ndarray:
    """Bool ``(N,)`` of the agents a policy drives.

    ``"all_vehicles"``: every vehicle, ego included; ``"all"``: every agent;
    ``"non_ego"``: every vehicle except the ego (which then replays its log); or a bool mask.
    """
    if isinstance(controlled, np.ndarray):
        if controlled.shape != (scene.num_agents,) or controlled.dtype != bool:
            raise ValueError(f"controlled mask must be bool ({scene.num_agents},), got {controlled.dtype} "
                             f"{controlled.shape}")
        return controlled
    if controlled == "all":
        return np.ones(scene.num_agents, bool)
    vehicles = scene.agent_type == AgentType.VEHICLE
    if controlled == "all_vehicles":
        return vehicles
    if controlled == "non_ego":
        return vehicles & (np.arange(scene.num_agents) != scene.ego_index)
    raise ValueError(f"controlled={controlled!r}; choose one of {CONTROLLED_CHOICES} or pass a bool mask")


def simulate(scene: Scene, policy: Policy, controlled: np.ndarray, start_step: int, num_steps: int,
             rng: np.random.Generator, freeze_agents: bool = False, entry_check_s: float = ENTRY_CHECK_S
             ) -> tuple[np.ndarray, np.ndarray]:
    """One closed-loop episode of ``num_steps`` steps from the logged state at ``start_step``
    (``freeze_agents``, ``entry_check_s``: see :func:`blm_gym.sim.state.step`).

    Returns states ``(4, N, num_steps + 1)`` (x, y, heading, speed; index 0 is the initial state)
    and validity ``(N, num_steps + 1)``.
    """
    log = scene.traj
    state = SimState.from_log(log, start_step)
    policy.reset(scene, start_step, controlled, rng)
    states = np.empty((4, scene.num_agents, num_steps + 1), np.float32)
    valid = np.empty((scene.num_agents, num_steps + 1), bool)

    def record(t, s):
        states[:, :, t] = s.x, s.y, s.heading, s.speed
        valid[:, t] = s.valid

    record(0, state)
    for t in range(1, num_steps + 1):
        action = policy.act(state)
        # Rows of agents the policy does not control are ignored: those agents replay the log.
        action = Action(np.where(controlled[:, None], action.accel_yaw, 0.0).astype(np.float32),
                        action.replay_log | ~controlled)
        state = step(state, action, log, scene.dt, freeze_agents=freeze_agents, entry_check_s=entry_check_s)
        record(t, state)
    return states, valid


def run_rollouts(source: SceneSource, policy_factory: Callable[[], Policy], *, scene_ids: Sequence[str],
                 samples: int = 1, start_step: int = DEFAULT_START_STEP, horizon_s: float = 10.0,
                 controlled: str | np.ndarray = "all_vehicles", seed: int = 0, freeze_agents: bool = False,
                 entry_check_s: float = ENTRY_CHECK_S, progress: bool = True) -> list[Rollout]:
    """Roll ``policy_factory()`` out closed loop on each scene ``samples`` times.

    The factory is called once; its policy is reset for every (scene, sample) with a generator
    seeded by ``(seed, scene position, sample)``, so runs are reproducible. The horizon is
    ``horizon_s`` seconds, clamped to what the log has after ``start_step``. Returns one
    :class:`Rollout` per scene, in the order of ``scene_ids``.

    ``freeze_agents``: only the agents valid at ``start_step`` take part (:func:`~blm_gym.sim.state.step`);
    the rollout's log then holds just those tracks too (valid until their first gap), so the
    metrics on the log describe the same agents. ``entry_check_s``: the newcomers' entry check
    (:func:`~blm_gym.sim.state.step`); the log keeps every logged track.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    policy = policy_factory()
    if not isinstance(policy, Policy):
        raise TypeError(f"policy_factory() returned {type(policy).__name__}, which lacks reset()/act() "
                        "(blm_gym.policies.base.Policy)")
    name = getattr(policy, "name", type(policy).__name__)
    out = []
    bar = tqdm(total=len(scene_ids) * samples, desc=f"rollouts ({name})", unit="episode", disable=not progress)
    for pos, scene_id in enumerate(scene_ids):
        scene = load_scene(source, scene_id)
        if not 0 <= start_step < scene.num_steps - 1:
            raise ValueError(f"start_step={start_step} leaves nothing to simulate in scene {scene_id} "
                             f"({scene.num_steps} steps); use a start step below {scene.num_steps - 1}")
        num_steps = min(int(round(horizon_s / scene.dt)), scene.num_steps - 1 - start_step)
        mask = controlled_mask(scene, controlled)
        runs = []
        for k in range(samples):
            runs.append(simulate(scene, policy, mask, start_step, num_steps, np.random.default_rng([seed, pos, k]),
                                 freeze_agents, entry_check_s))
            bar.update()
        states = np.stack([s for s, _ in runs])  # (K, 4, N, T)
        log = scene.traj.select(steps=slice(start_step, start_step + num_steps + 1))
        if freeze_agents:  # what step() lets stay: valid since start_step without a gap
            log = dataclasses.replace(log, valid=np.logical_and.accumulate(log.valid, axis=1))
        out.append(Rollout(
            scene_id=scene.scene_id, source=scene.source, policy=name, dt=scene.dt, start_step=start_step,
            ego_index=scene.ego_index, agent_ids=scene.agent_ids, agent_type=scene.agent_type, controlled=mask,
            x=states[:, 0], y=states[:, 1], heading=states[:, 2], speed=states[:, 3],
            valid=np.stack([v for _, v in runs]),
            log=log,
        ))
    bar.close()
    return out
