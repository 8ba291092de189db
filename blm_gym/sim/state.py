"""Simulator state and the one pure, batched simulation step."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from blm_gym.data.scene import Trajectories
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, ActionBounds, unicycle_step


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


def step(state: SimState, action: Action, log: Trajectories, dt: float,
         bounds: ActionBounds = DEFAULT_BOUNDS, freeze_agents: bool = False) -> SimState:
    """Advance every agent by one ``dt``; pure.

    Agents follow the unicycle model unless ``action.replay_log`` is set. Validity follows the
    log: agents leave when their logged track ends, and an agent that appears at the next step is
    spawned at its logged state, wherever the simulated agents around it now are. With
    ``freeze_agents`` nobody enters: the agents valid now are all there will be (trajdata's
    ``SimulationScene(freeze_agents=True)``, the set-up of tbsim/CTG closed-loop metrics), so a
    logged track that appears later, or reappears after a gap, never joins.
    """
    t1 = state.step + 1
    if t1 >= log.num_steps:
        raise ValueError(f"step: the log has {log.num_steps} steps; cannot step past step {state.step}")
    x, y, heading, speed = unicycle_step(
        state.x, state.y, state.heading, state.speed, action.accel_yaw[:, 0], action.accel_yaw[:, 1], dt, bounds
    )
    valid_next = log.valid[:, t1] & state.valid if freeze_agents else log.valid[:, t1]
    from_log = action.replay_log | (valid_next & ~state.valid)  # replayed or just spawned
    pick = lambda sim, logged: np.where(from_log, logged, sim).astype(np.float32)  # noqa: E731
    return dataclasses.replace(
        state, x=pick(x, log.x[:, t1]), y=pick(y, log.y[:, t1]), heading=pick(heading, log.heading[:, t1]),
        speed=pick(speed, log.speed[:, t1]), valid=valid_next.copy(), step=t1,
    )
