"""Simulator state and the one pure, batched simulation step."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from blm_gym.data.scene import Trajectories
from blm_gym.sim.geometry import boxes_overlap
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, ActionBounds, unicycle_step
from blm_gym.sim.ttc import time_to_collision

ENTRY_CHECK_S = 3.0  # default horizon of the entry check (see step): a common critical time to collision
ENTRY_SLACK_S = 0.1  # "sooner" means by more than this, so float noise on parked cars does not count


@dataclass(frozen=True)
class SimState:
    """State of all N agents at one step; arrays ``(N,)`` float32 (``valid`` bool).

    ``step`` is the index into the scene's log time axis that this state corresponds to.
    """

    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    speed: np.ndarray
    length: np.ndarray
    width: np.ndarray
    valid: np.ndarray
    step: int

    @property
    def vx(self) -> np.ndarray:
        return self.speed * np.cos(self.heading)

    @property
    def vy(self) -> np.ndarray:
        return self.speed * np.sin(self.heading)

    @staticmethod
    def from_log(log: Trajectories, step: int) -> "SimState":
        """The logged state of every agent at ``step``."""
        return SimState(
            x=log.x[:, step].copy(), y=log.y[:, step].copy(), heading=log.heading[:, step].copy(),
            speed=log.speed[:, step].copy(), length=log.length, width=log.width,
            valid=log.valid[:, step].copy(), step=step,
        )


@dataclass(frozen=True)
class Action:
    """What a policy asks of the simulator for all N agents.

    ``accel_yaw``: ``(N, 2)`` acceleration [m/s^2] and yaw rate [rad/s], integrated by the
    unicycle model. ``replay_log``: ``(N,)`` bool; those agents take their logged next state
    instead (log replay, as waymax's expert actor does). Rows of agents a policy does not control
    are ignored by the env.
    """

    accel_yaw: np.ndarray
    replay_log: np.ndarray

    @staticmethod
    def zeros(num_agents: int) -> "Action":
        return Action(np.zeros((num_agents, 2), np.float32), np.zeros(num_agents, bool))


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


def step(state: SimState, action: Action, log: Trajectories, dt: float,
         bounds: ActionBounds = DEFAULT_BOUNDS, freeze_agents: bool = False,
         entry_check_s: float = ENTRY_CHECK_S) -> SimState:
    """Advance every agent by one ``dt``; pure.

    Agents follow the unicycle model unless ``action.replay_log`` is set. Validity follows the
    log: agents leave when their logged track ends, and an agent that appears at the next step is
    spawned at its logged state. Entry check (SUMO-style insertion, ``entry_check_s`` > 0): the
    simulated agents may no longer be where the log has them, so a newcomer waits (stays
    invalid) while its logged box would overlap one of them, or reach one sooner than it reached
    that agent in the log (:func:`entry_conflicts`); it enters at a later step's logged state once
    the way is clear, or never. ``entry_check_s`` 0 spawns every newcomer wherever the simulated agents are.
    With ``freeze_agents`` nobody enters: the agents valid now are all there will be (trajdata's
    ``SimulationScene(freeze_agents=True)``, the set-up of tbsim/CTG closed-loop metrics), so a
    logged track that appears later, or reappears after a gap, never joins.
    """
    check_entry_check_s(entry_check_s)
    t1 = state.step + 1
    if t1 >= log.num_steps:
        raise ValueError(f"step: the log has {log.num_steps} steps; cannot step past step {state.step}")
    x, y, heading, speed = unicycle_step(
        state.x, state.y, state.heading, state.speed, action.accel_yaw[:, 0], action.accel_yaw[:, 1], dt, bounds
    )
    logged = (log.x[:, t1], log.y[:, t1], log.heading[:, t1], log.speed[:, t1])
    moved = [np.where(action.replay_log, lg, sim) for sim, lg in zip((x, y, heading, speed), logged)]
    valid_next = log.valid[:, t1] & state.valid if freeze_agents else log.valid[:, t1].copy()
    if entry_check_s > 0:
        valid_next = valid_next & ~entry_conflicts(*moved, log, t1, valid_next & ~state.valid,
                                                   valid_next & state.valid, entry_check_s)
    spawned = valid_next & ~state.valid  # newcomers take their logged state
    x, y, heading, speed = (np.where(spawned, lg, m).astype(np.float32) for m, lg in zip(moved, logged))
    return dataclasses.replace(state, x=x, y=y, heading=heading, speed=speed, valid=valid_next, step=t1)
