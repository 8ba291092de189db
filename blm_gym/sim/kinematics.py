"""Unicycle kinematics on ``(acceleration, yaw_rate)`` actions.

Written once for numpy arrays and torch tensors (the VAE decoder integrates its actions with the
same function, differentiably), without importing torch here: the array module is taken from
the inputs.

Model (semi-implicit Euler, step ``dt`` seconds)::

    speed'   = clip(speed + accel * dt, 0, MAX_SPEED)
    heading' = heading + yaw_rate * dt
    x'       = x + speed' * cos(heading') * dt
    y'       = y + speed' * sin(heading') * dt

Bounds follow BLM/tbsim: acceleration in [-10, +8] m/s^2, speed in [0, 40] m/s; yaw rate is
bounded at +-2 rad/s (a car at 10 m/s turning at 2 rad/s pulls 20 m/s^2 laterally already).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ActionBounds:
    min_accel: float = -10.0  # m/s^2
    max_accel: float = 8.0  # m/s^2
    max_yaw_rate: float = 2.0  # rad/s
    max_speed: float = 40.0  # m/s


DEFAULT_BOUNDS = ActionBounds()


def array_module(a):
    """The array module of ``a``: torch for tensors, numpy otherwise."""
    return sys.modules["torch"] if type(a).__module__.startswith("torch") else np


def unicycle_step(x, y, heading, speed, accel, yaw_rate, dt: float, bounds: ActionBounds = DEFAULT_BOUNDS):
    """One step for any batch shape; returns ``(x, y, heading, speed)`` of the same shape."""
    xp = array_module(x)
    accel = xp.clip(accel, bounds.min_accel, bounds.max_accel)
    yaw_rate = xp.clip(yaw_rate, -bounds.max_yaw_rate, bounds.max_yaw_rate)
    speed = xp.clip(speed + accel * dt, 0.0, bounds.max_speed)
    heading = heading + yaw_rate * dt
    return x + speed * xp.cos(heading) * dt, y + speed * xp.sin(heading) * dt, heading, speed


def unicycle_rollout(x0, y0, heading0, speed0, actions, dt: float, bounds: ActionBounds = DEFAULT_BOUNDS):
    """Integrate action sequences ``(..., T, 2)`` from initial states ``(...)`` (broadcast).

    Returns states ``(..., T, 4)`` = (x, y, heading, speed) *after* each action: the same
    arithmetic as ``T`` calls of :func:`unicycle_step` up to rounding, without a loop over ``T``
    (guidance backpropagates through this, and a short graph is what makes it fast): heading and
    position are running sums (``cumsum`` adds in the same order as the loop), and the speed is
    the closed form of the clip at 0 (the Lindley recursion ``s_t = max(0, s_{t-1} + u_t)`` is
    ``S_t - min(0, min_{k <= t} S_k)`` with ``S`` the unclipped running sum). Only when a plan
    reaches ``max_speed`` is the speed stepped one at a time.
    """
    xp = array_module(actions)
    accel = xp.clip(actions[..., 0], bounds.min_accel, bounds.max_accel)
    yaw_rate = xp.clip(actions[..., 1], -bounds.max_yaw_rate, bounds.max_yaw_rate)

    def running_sum(start, increments):
        shape = np.broadcast_shapes(tuple(start.shape), tuple(increments.shape[:-1]))
        start = xp.broadcast_to(start, shape)[..., None]
        increments = xp.broadcast_to(increments, shape + tuple(increments.shape[-1:]))
        return xp.cumsum(xp.concatenate([start, increments], -1), -1)[..., 1:]

    unclipped = running_sum(speed0, accel * dt)
    running_min = xp.cummin(unclipped, -1).values if xp is not np else np.minimum.accumulate(unclipped, -1)
    speed = unclipped - xp.clip(running_min, None, 0.0)
    if (speed > bounds.max_speed).any():  # two-sided clip: no closed form, step it
        speeds, s = [], speed0
        for t in range(actions.shape[-2]):
            s = xp.clip(s + accel[..., t] * dt, 0.0, bounds.max_speed)
            speeds.append(s)
        speed = xp.stack(speeds, -1)
    heading = running_sum(heading0, yaw_rate * dt)
    x = running_sum(x0, speed * xp.cos(heading) * dt)
    y = running_sum(y0, speed * xp.sin(heading) * dt)
    return xp.stack([x, y, heading, speed], -1)


def wrap_angle(a):
    """Wrap angles to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def actions_from_states(heading: np.ndarray, speed: np.ndarray, valid: np.ndarray, dt: float,
                        bounds: ActionBounds = DEFAULT_BOUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Inverse kinematics of logged tracks: actions ``(N, T, 2)`` and their validity ``(N, T)``.

    Action ``t`` takes state ``t`` to state ``t + 1``; it is valid where both states are. The
    last step has no successor and is invalid. Values are clipped to ``bounds``.
    """
    accel = np.zeros(speed.shape, np.float32)
    yaw_rate = np.zeros(speed.shape, np.float32)
    accel[:, :-1] = (speed[:, 1:] - speed[:, :-1]) / dt
    yaw_rate[:, :-1] = wrap_angle(heading[:, 1:] - heading[:, :-1]) / dt
    ok = np.zeros(valid.shape, bool)
    ok[:, :-1] = valid[:, 1:] & valid[:, :-1]
    accel = np.clip(np.where(ok, accel, 0.0), bounds.min_accel, bounds.max_accel)
    yaw_rate = np.clip(np.where(ok, yaw_rate, 0.0), -bounds.max_yaw_rate, bounds.max_yaw_rate)
    return np.stack([accel, yaw_rate], -1).astype(np.float32), ok
