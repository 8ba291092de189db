"""Closed-loop rollouts: a policy drives the chosen agents, the others replay the log.

Each episode is a loop of :func:`blm_gym.sim.state.step` over one :class:`SimulatorState`, the same
step the envs take; the K final states of a scene become one :class:`Rollout` record. A policy
with an ``act_many(policies, states)`` (the BLM policy) can run several episodes in lockstep
(:func:`simulate_lockstep`), its copies' replans going through the model in one batched call.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from blm_gym.data.scene import AgentType, Scene
from blm_gym.data.source import SceneSource
from blm_gym.policies.base import Policy
from blm_gym.sim.record import Rollout
from blm_gym.data.registry import load_scene
from blm_gym.sim.state import ENTRY_CHECK_S, Action, Membership, SimulatorState, merge_actions, step

DEFAULT_START_STEP = 30  # 3 s of history at dt 0.1, so models have context
CONTROLLED_CHOICES = ("all_vehicles", "all", "non_ego")


class Protocol(str, enum.Enum):
    """How episodes are set up. ``closed_loop``: the settings as given. ``wosac``: the Waymo Open
    Sim Agents Challenge protocol: history up to the scene's current step (index 10, 1.1 s), 80
    simulated steps (8 s), 32 samples, every agent valid at the current step simulated by the
    policy for all 80 steps (``persistent`` membership: nobody enters, nobody leaves)."""

    CLOSED_LOOP = "closed_loop"
    WOSAC = "wosac"


WOSAC_CURRENT_STEP, WOSAC_STEPS, WOSAC_SAMPLES = 10, 80, 32


@dataclass(frozen=True)
class RolloutConfig:
    """``blm-gym rollout``: closed-loop runs of a policy on an env id's scenes, to an HDF5 file."""

    env: str = "BLM-Synthetic-v0"  # env id whose scenes to use
    data_dir: str | None = None  # else $BLM_GYM_DATA
    policy: str = "idm"  # log | constant_velocity | idm | blm | blm_unguided
    checkpoint: str | None = None  # BLM weights for the blm policies (default: the shipped model)
    scenes: tuple[str, ...] = ()  # scene ids (empty: all)
    samples: int = 1  # closed-loop samples per scene
    start_step: int = DEFAULT_START_STEP  # log step of the first simulated state
    horizon_s: float = 10.0  # seconds simulated (clamped to the log)
    controlled: str = "all_vehicles"  # all_vehicles | all | non_ego (the others replay the log)
    seed: int = 0
    membership: Membership = Membership.LOG  # who takes part (blm_gym.sim.state.Membership)
    entry_check_s: float = ENTRY_CHECK_S  # newcomers' entry check horizon (0: spawn regardless)
    protocol: Protocol = Protocol.CLOSED_LOOP  # wosac overrides start, horizon, samples, membership, controlled
    scenes_per_batch: int = 1  # episodes run in lockstep, replanned in one batched model call (blm policies)
    out: str = "results/rollout.h5"

    def __post_init__(self):
        object.__setattr__(self, "membership", Membership(self.membership))
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        if self.controlled not in CONTROLLED_CHOICES:
            raise ValueError(f"controlled={self.controlled!r}; choose one of {CONTROLLED_CHOICES}")
        if self.scenes_per_batch < 1:
            raise ValueError(f"scenes_per_batch must be >= 1 (episodes run together), got {self.scenes_per_batch}")

    def resolved(self) -> "RolloutConfig":
        """The settings the protocol implies (``wosac`` overrides; ``closed_loop`` keeps them)."""
        if self.protocol is Protocol.CLOSED_LOOP:
            return self
        return dataclasses.replace(self, start_step=WOSAC_CURRENT_STEP, horizon_s=WOSAC_STEPS * 0.1,
                                   samples=WOSAC_SAMPLES, membership=Membership.PERSISTENT, controlled="all")


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
             rng: np.random.Generator, membership: Membership | str = Membership.LOG,
             entry_check_s: float = ENTRY_CHECK_S) -> SimulatorState:
    """One closed-loop episode of ``num_steps`` steps from the logged state at ``start_step``:
    ``policy`` drives the ``controlled`` agents (bool ``(N,)``), the others replay the log
    (``membership``, ``entry_check_s``: see :func:`blm_gym.sim.state.step`). Returns the final state.
    """
    return simulate_lockstep([scene], [policy], [controlled], start_step, [num_steps], [rng],
                             membership=membership, entry_check_s=entry_check_s)[0]


def simulate_lockstep(scenes: Sequence[Scene], policies: Sequence[Policy], controlled: Sequence[np.ndarray],
                      start_step: int, num_steps: Sequence[int], rngs: Sequence[np.random.Generator],
                      act_many: Callable[[Sequence[Policy], Sequence[SimulatorState]], list[Action]] | None = None,
                      membership: Membership | str = Membership.LOG,
                      entry_check_s: float = ENTRY_CHECK_S) -> list[SimulatorState]:
    """:func:`simulate` of several episodes advancing together, step by step: episode ``i`` is
    ``policies[i]`` (one policy object per episode) on ``scenes[i]`` for ``num_steps[i]`` steps,
    seeded by ``rngs[i]``; ``act_many(policies, states)`` gives the actions of the episodes still
    running, so a batched policy plans them in one call (None: each policy acts on its own).
    Returns the final states, in order."""
    if act_many is None:
        act_many = lambda ps, ss: [p.act(s) for p, s in zip(ps, ss)]  # noqa: E731
    states = [SimulatorState.from_log(s, start_step, membership) for s in scenes]
    for policy, scene, mask, rng in zip(policies, scenes, controlled, rngs):
        policy.reset(scene, start_step, mask, rng)
    for t in range(max(num_steps, default=0)):
        live = [i for i, n in enumerate(num_steps) if t < n]
        actions = act_many([policies[i] for i in live], [states[i] for i in live])
        for i, action in zip(live, actions):
            action = merge_actions(scenes[i].num_agents, (action, controlled[i]))
            states[i] = step(states[i], action, entry_check_s=entry_check_s)
    return states


def record_rollout(states: Sequence[SimulatorState], policy: str, controlled: np.ndarray) -> Rollout:
    """The K final states of one scene's episodes as a :class:`Rollout` over the steps from
    their common start step to their common current step."""
    first = states[0]
    steps = slice(first.start_step, first.current_step + 1)
    sims = [s.sim.select(steps=steps) for s in states]
    stack = lambda name: np.stack([getattr(t, name) for t in sims])  # noqa: E731
    log = first.log.select(steps=steps)
    if first.membership is not Membership.LOG:  # what step() lets stay: valid since the start without a gap
        log = dataclasses.replace(log, valid=np.logical_and.accumulate(log.valid, axis=1))
    scene = first.scene
    return Rollout(
        scene_id=scene.scene_id, source=scene.source, policy=policy, dt=scene.dt, start_step=first.start_step,
        ego_index=scene.ego_index, agent_ids=scene.agent_ids, agent_type=scene.agent_type, controlled=controlled,
        x=stack("x"), y=stack("y"), heading=stack("heading"), speed=stack("speed"), valid=stack("valid"),
        collision=np.stack([s.collision[:, steps] for s in states]),
        offroad=np.stack([s.offroad[:, steps] for s in states]), log=log,
    )


def run_rollouts(source: SceneSource, policy_factory: Callable[[], Policy], *, scene_ids: Sequence[str],
                 samples: int = 1, start_step: int = DEFAULT_START_STEP, horizon_s: float = 10.0,
                 controlled: str | np.ndarray = "all_vehicles", seed: int = 0,
                 membership: Membership | str = Membership.LOG, entry_check_s: float = ENTRY_CHECK_S,
                 scenes_per_batch: int = 1, progress: bool = True) -> list[Rollout]:
    """Roll ``policy_factory()`` out closed loop on each scene ``samples`` times.

    The factory is called once; its policy is reset for every (scene, sample) with a generator
    seeded by ``(seed, scene position, sample)``, so runs are reproducible. The horizon is
    ``horizon_s`` seconds, clamped to what the log has after ``start_step``. Returns one
    :class:`Rollout` per scene, in the order of ``scene_ids``.

    ``membership`` (:class:`~blm_gym.sim.state.Membership`): who takes part; with ``frozen`` or
    ``persistent`` the rollout's log holds just the agents valid at ``start_step`` too (valid until
    their first gap), so the metrics on the log describe the same agents. ``entry_check_s``: the
    newcomers' entry check (:func:`~blm_gym.sim.state.step`); the log keeps every logged track.

    ``scenes_per_batch`` > 1: the (scene, sample) episodes run that many at a time in lockstep
    (:func:`simulate_lockstep`) when the policy has ``act_many`` (the BLM policy: their replans
    go through the model in one batched call; each episode keeps its seed and its own noise, so
    the rollouts are the one-at-a-time ones up to float rounding); other policies run one at a
    time as usual.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if scenes_per_batch < 1:
        raise ValueError(f"scenes_per_batch must be >= 1, got {scenes_per_batch}")
    policy = policy_factory()
    if not isinstance(policy, Policy):
        raise TypeError(f"policy_factory() returned {type(policy).__name__}, which lacks reset()/act() "
                        "(blm_gym.policies.base.Policy)")
    name = getattr(policy, "name", type(policy).__name__)
    out = []
    bar = tqdm(total=len(scene_ids) * samples, desc=f"rollouts ({name})", unit="episode", disable=not progress)

    def episode_setup(pos: int) -> tuple[Scene, int, np.ndarray]:
        scene = load_scene(source, scene_ids[pos])
        if not 0 <= start_step < scene.num_steps - 1:
            raise ValueError(f"start_step={start_step} leaves nothing to simulate in scene {scene_ids[pos]} "
                             f"({scene.num_steps} steps); use a start step below {scene.num_steps - 1}")
        num_steps = min(int(round(horizon_s / scene.dt)), scene.num_steps - 1 - start_step)
        return scene, num_steps, controlled_mask(scene, controlled)

    act_many = getattr(policy, "act_many", None)
    batch = scenes_per_batch if act_many is not None else 1  # a policy without act_many: one at a time
    # the (scene, sample) episodes in order, ``batch`` at a time in lockstep, one policy copy each
    # (a shallow copy shares the model; reset gives it its own episode)
    policies = [policy] + [copy.copy(policy) for _ in range(batch - 1)]
    jobs = [(pos, k) for pos in range(len(scene_ids)) for k in range(samples)]
    setups, runs = {}, {}
    for lo in range(0, len(jobs), batch):
        chunk = jobs[lo:lo + batch]
        for pos, _ in chunk:
            if pos not in setups:
                setups[pos] = episode_setup(pos)
        finals = simulate_lockstep([setups[p][0] for p, _ in chunk], policies[:len(chunk)],
                                   [setups[p][2] for p, _ in chunk], start_step, [setups[p][1] for p, _ in chunk],
                                   [np.random.default_rng([seed, p, k]) for p, k in chunk], act_many,
                                   membership, entry_check_s)
        for (pos, k), state in zip(chunk, finals):
            runs.setdefault(pos, {})[k] = state
            bar.update()
            if len(runs[pos]) == samples:  # the scene's last sample: its record, in scene order
                done = runs.pop(pos)
                out.append(record_rollout([done[i] for i in range(samples)], name, setups.pop(pos)[2]))
    bar.close()
    return out
