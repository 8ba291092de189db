"""The one state of a closed-loop simulation and the one pure step that advances it.

Following waymax's ``SimulatorState``: simulated and logged trajectories of every agent over the
scene's whole time axis, ``(N, T)`` struct-of-arrays with validity, plus the current step. The
env, the rollout runner, the policies, the reward terms, the metrics and the renderer all read
this record; :func:`step` is the only code that writes it.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import numpy as np

from blm_gym.data.scene import DrivableArea, Scene, Trajectories
from blm_gym.sim.geometry import agent_collisions, boxes_overlap, offroad
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, ActionBounds, unicycle_step
from blm_gym.sim.ttc import time_to_collision

ENTRY_CHECK_S = 3.0  # default horizon of the entry check (see step): a common critical time to collision
ENTRY_SLACK_S = 0.1  # "sooner" means by more than this, so float noise on parked cars does not count


class Membership(str, enum.Enum):
    """Which agents take part in a simulation, and for how long.

    ``log``: agents enter and leave when the log says (a newcomer enters at its logged state once
    the entry check lets it). ``frozen``: only the agents valid at the start take part, and each
    leaves when its logged track ends (trajdata's ``SimulationScene(freeze_agents=True)``, the
    tbsim/CTG closed-loop set-up). ``persistent``: only the agents valid at the start take part,
    and they stay for the whole episode (the WOSAC protocol: nobody enters, nobody leaves).
    """

    LOG = "log"
    FROZEN = "frozen"
    PERSISTENT = "persistent"


@dataclass(frozen=True)
class SimulatorState:
    """Simulated and logged states of a scene's N agents over its T steps.

    ``sim``: :class:`Trajectories` ``(N, T)``: up to ``start_step`` the log, from there to
    ``current_step`` what the simulation did; later steps are invalid (zeros). ``collision`` and
    ``offroad``: bool ``(N, T)``, the per-step checks of the simulated states (box overlaps any
    other valid agent's box; a vehicle's centre is off the drivable area), written with each step.
    The properties ``x, y, heading, speed, vx, vy, valid`` are the current step's ``(N,)`` arrays.
    """

    scene: Scene
    sim: Trajectories
    collision: np.ndarray
    offroad: np.ndarray
    start_step: int
    current_step: int
    membership: Membership = Membership.LOG

    @staticmethod
    def from_log(scene: Scene, start_step: int, membership: Membership | str = Membership.LOG) -> "SimulatorState":
        """The state at ``start_step``: the log up to there, nothing simulated yet."""
        log = scene.traj
        if not 0 <= start_step < log.num_steps:
            raise ValueError(f"start_step {start_step} is outside the scene's {log.num_steps} steps")
        membership = Membership(membership)
        keep = np.arange(log.num_steps) <= start_step
        sim = log.mask_steps(keep)
        collision, offroad = np.zeros(log.valid.shape, bool), np.zeros(log.valid.shape, bool)
        state = SimulatorState(scene, sim, collision, offroad, start_step, start_step, membership)
        return state._with_checks(start_step)

    # ---- the current step, (N,) each
    @property
    def log(self) -> Trajectories:
        return self.scene.traj

    @property
    def step(self) -> int:
        return self.current_step

    def _now(self, name: str) -> np.ndarray:
        return getattr(self.sim, name)[:, self.current_step]

    x = property(lambda self: self._now("x"))
    y = property(lambda self: self._now("y"))
    heading = property(lambda self: self._now("heading"))
    speed = property(lambda self: self._now("speed"))
    vx = property(lambda self: self._now("vx"))
    vy = property(lambda self: self._now("vy"))
    valid = property(lambda self: self._now("valid"))

    @property
    def length(self) -> np.ndarray:
        return self.sim.length

    @property
    def width(self) -> np.ndarray:
        return self.sim.width

    def _with_checks(self, t: int) -> "SimulatorState":
        """This state with the per-step checks of step ``t`` written (in place: ``t`` is new)."""
        now = self.sim.select(steps=slice(t, t + 1))
        self.collision[:, t:t + 1], self.offroad[:, t:t + 1] = trajectory_checks(
            now, self.scene.road.drivable, self.scene.is_vehicle)
        return self


_PAIR_CHUNK = 500_000  # (step, i, j) elements per chunk of the pairwise checks: temporaries stay a few MB


def trajectory_checks(traj: Trajectories, drivable: DrivableArea, is_vehicle: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The per-step checks of states ``(..., N, T)``: bool ``(..., N, T)`` twice.

    ``collision``: the agent's oriented box overlaps the box of any other valid agent at that
    step (any type; :func:`~blm_gym.sim.geometry.boxes_overlap`). ``offroad``: the agent is a
    vehicle (``is_vehicle`` ``(N,)``) whose centre lies outside the drivable area (raster look-up).
    The simulator writes them with each step; the log's come from here too.
    """
    valid = np.asarray(traj.valid, bool)
    n, t = valid.shape[-2:]
    per_step = lambda a: np.moveaxis(np.asarray(a), -1, 0)  # noqa: E731  (T, ..., N): geometry's agent axis is last
    x, y, heading, ok = per_step(traj.x), per_step(traj.y), per_step(traj.heading), per_step(valid)
    size = max(1, _PAIR_CHUNK // max(1, n * n * int(np.prod(valid.shape[:-2], dtype=np.int64))))
    collision = np.concatenate([
        agent_collisions(x[c], y[c], heading[c], traj.length, traj.width, ok[c])
        for c in (slice(i, i + size) for i in range(0, t, size))] or [np.zeros(ok.shape, bool)])
    off = offroad(drivable, traj.x, traj.y, valid & np.asarray(is_vehicle, bool)[:, None])
    return np.moveaxis(collision, 0, -1), off


@dataclass(frozen=True)
class Action:
    """What the drivers ask of the simulator for all N agents.

    ``accel_yaw``: ``(N, 2)`` acceleration [m/s^2] and yaw rate [rad/s], integrated by the
    unicycle model. ``replay_log``: ``(N,)`` bool; those agents take their logged next state
    instead (log replay, as waymax's expert actor does).
    """

    accel_yaw: np.ndarray
    replay_log: np.ndarray

    @staticmethod
    def zeros(num_agents: int) -> "Action":
        return Action(np.zeros((num_agents, 2), np.float32), np.zeros(num_agents, bool))


def merge_actions(num_agents: int, *parts: tuple[Action, np.ndarray]) -> Action:
    """One action from several drivers: ``parts`` are ``(action, agents)`` pairs, ``agents`` a bool
    ``(N,)`` mask of the rows that driver decides (later parts win). Agents no driver decides
    replay the log: the one rule the env, the parallel env and the rollout runner share."""
    accel_yaw = np.zeros((num_agents, 2), np.float32)
    replay = np.ones(num_agents, bool)
    for action, agents in parts:
        agents = np.asarray(agents, bool)
        accel_yaw[agents] = action.accel_yaw[agents]
        replay[agents] = action.replay_log[agents]
    return Action(accel_yaw, replay)


def check_entry_check_s(entry_check_s: float) -> None:
    """Raise a clear error unless ``entry_check_s`` (the entry check's horizon, s) is a number >= 0."""
    if not entry_check_s >= 0:  # also catches NaN
        raise ValueError(f"entry_check_s must be >= 0 seconds, a number (0 turns the entry check off), "
                         f"got {entry_check_s}")


def entry_conflicts(x, y, heading, speed, log: Trajectories, step: int, entering: np.ndarray,
                    present: np.ndarray, horizon_s: float) -> np.ndarray:
    """Bool ``(N,)``: the ``entering`` agents whose logged state at ``step`` is worse placed among
    the ``present`` agents' simulated states ``x, y, heading, speed`` (``(N,)``) than among their
    logged states at ``step``: its box overlaps one it did not overlap in the log, or it would
    touch one sooner (by more than ``ENTRY_SLACK_S``) than in the log, under constant velocity
    within ``horizon_s`` seconds (3-disc time to collision, :func:`blm_gym.sim.ttc.time_to_collision`).

    Where the simulation still matches the log nothing conflicts, so log replay is unchanged.
    """
    e, p = np.flatnonzero(entering), np.flatnonzero(present)
    conflict = np.zeros(len(entering), bool)
    if len(e) == 0 or len(p) == 0:
        return conflict
    rows = np.concatenate([e, p])

    def worlds(logged, sim):  # (2, E + P): entrants at their logged states; present agents logged, then simulated
        return np.stack([logged[rows], np.concatenate([logged[e], sim[p]])])

    xs, ys, hs = worlds(log.x[:, step], x), worlds(log.y[:, step], y), worlds(log.heading[:, step], heading)
    vs = worlds(log.speed[:, step], speed)
    length, width = log.length[rows], log.width[rows]
    ttc = time_to_collision(xs, ys, vs * np.cos(hs), vs * np.sin(hs), length, width, True, horizon_s,
                            heading=hs, num_discs=3)[:, :len(e), len(e):]  # (2, E, P)
    overlap = boxes_overlap(xs, ys, hs, length, width, True)[:, :len(e), len(e):]
    conflict[e] = ((overlap[1] & ~overlap[0]) | (ttc[1] < ttc[0] - ENTRY_SLACK_S)).any(axis=1)
    return conflict


def step(state: SimulatorState, action: Action, bounds: ActionBounds = DEFAULT_BOUNDS,
         entry_check_s: float = ENTRY_CHECK_S) -> SimulatorState:
    """Advance every agent by one step of ``state.scene.dt``; pure (returns a new state).

    Agents follow the unicycle model unless ``action.replay_log`` is set. Who is valid next
    follows ``state.membership``: with ``log``, agents leave when their logged track ends, and an
    agent that appears at the next step is spawned at its logged state, after the entry check
    (SUMO-style insertion, ``entry_check_s`` > 0): the simulated agents may no longer be where the
    log has them, so a newcomer waits (stays invalid) while its logged box would overlap one of
    them, or reach one sooner than it reached that agent in the log
    (:func:`entry_conflicts`); it enters at a later step's logged state once
    the way is clear, or never. With ``frozen`` nobody enters; with ``persistent`` nobody enters
    and nobody leaves (an agent past its log end replays nothing: it follows its action).
    """
    check_entry_check_s(entry_check_s)
    log, t0 = state.log, state.current_step
    t1 = t0 + 1
    if t1 >= log.num_steps:
        raise ValueError(f"step: the log has {log.num_steps} steps; cannot step past step {t0}")
    valid_now = state.valid
    x, y, heading, speed = unicycle_step(state.x, state.y, state.heading, state.speed,
                                         action.accel_yaw[:, 0], action.accel_yaw[:, 1], state.scene.dt, bounds)
    logged = (log.x[:, t1], log.y[:, t1], log.heading[:, t1], log.speed[:, t1])
    replay = action.replay_log & log.valid[:, t1]
    moved = [np.where(replay, lg, sim) for sim, lg in zip((x, y, heading, speed), logged)]
    if state.membership is Membership.PERSISTENT:
        valid_next = valid_now.copy()
    elif state.membership is Membership.FROZEN:
        valid_next = log.valid[:, t1] & valid_now
    else:
        valid_next = log.valid[:, t1].copy()
        if entry_check_s > 0:
            valid_next &= ~entry_conflicts(*moved, log, t1, valid_next & ~valid_now, valid_next & valid_now,
                                           entry_check_s)
    spawned = valid_next & ~valid_now  # newcomers take their logged state
    x, y, heading, speed = (np.where(spawned, lg, m) for m, lg in zip(moved, logged))
    sim = state.sim.with_step(t1, x, y, heading, speed, valid_next)
    out = dataclasses.replace(state, sim=sim, collision=state.collision.copy(), offroad=state.offroad.copy(),
                              current_step=t1)
    return out._with_checks(t1)
