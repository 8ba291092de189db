"""Baseline agents: log replay, constant velocity and IDM lane following.

All act on every agent at once with numpy (no per-agent Python loop).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blm_gym.data.scene import Scene
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, wrap_angle
from blm_gym.sim.state import Action, SimulatorState


class LogReplayPolicy:
    """Agents follow their logged trajectories exactly (the non-reactive baseline)."""

    name = "log"

    def reset(self, scene: Scene, start_step: int, controlled: np.ndarray, rng: np.random.Generator) -> None:
        self._n = scene.num_agents

    def act(self, state: SimulatorState) -> Action:
        return Action(np.zeros((self._n, 2), np.float32), np.ones(self._n, bool))


class ConstantVelocityPolicy:
    """Agents keep their current speed and heading (zero acceleration, zero yaw rate)."""

    name = "constant_velocity"

    def reset(self, scene: Scene, start_step: int, controlled: np.ndarray, rng: np.random.Generator) -> None:
        self._n = scene.num_agents

    def act(self, state: SimulatorState) -> Action:
        return Action.zeros(self._n)


@dataclass(frozen=True)
class IDMParams:
    """Intelligent Driver Model (Treiber et al. 2000) and pure-pursuit steering parameters."""

    max_accel: float = 2.0  # a, m/s^2
    comfort_brake: float = 3.0  # b, m/s^2
    time_headway: float = 1.5  # T, s
    min_gap: float = 2.0  # s0, m
    exponent: float = 4.0  # delta
    min_desired_speed: float = 0.0  # m/s; desired speed v0 = max(speed at reset, this)
    lookahead_time: float = 1.0  # s; pure-pursuit look-ahead distance = max(min_lookahead, v * this)
    min_lookahead: float = 4.0  # m
    lane_search_radius: float = 6.0  # m; farther from every lane -> drive straight
    heading_weight: float = 4.0  # m per unit (1 - cos) misalignment when matching a lane
    lateral_margin: float = 0.5  # m; leader corridor half-width = (w_i + w_j)/2 + margin


class IDMPolicy:
    """IDM longitudinal control behind the nearest leader + pure pursuit along the nearest lane.

    Desired speed is each agent's speed at reset (agents slower than 0.5 m/s stay stopped), so the baseline keeps
    the log's speed profile without seeing its future. Lanes are matched every step by distance
    plus heading misalignment among the scene's lane centerline points.
    """

    name = "idm"

    def __init__(self, params: IDMParams = IDMParams()):
        self.params = params

    def reset(self, scene: Scene, start_step: int, controlled: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params
        self._n = scene.num_agents
        self._v0 = np.maximum(scene.traj.speed[:, start_step], p.min_desired_speed)
        lanes, mask = scene.road.lanes, scene.road.lane_mask
        seg = np.diff(lanes, axis=1)  # (L, P-1, 2)
        seg_len = np.linalg.norm(seg, axis=-1) * (mask[:, 1:] & mask[:, :-1])
        arc = np.concatenate([np.zeros((len(lanes), 1)), np.cumsum(seg_len, axis=1)], axis=1)
        tangent = np.concatenate([seg, seg[:, -1:]], axis=1) if lanes.shape[1] > 1 else np.zeros_like(lanes)
        ok = mask & (np.linalg.norm(tangent, axis=-1) > 1e-6)
        self._lane_xy = lanes
        self._arc = arc
        self._flat_lane, self._flat_pt = np.nonzero(ok)
        self._flat_xy = lanes[ok]
        self._flat_dir = np.arctan2(tangent[ok][:, 1], tangent[ok][:, 0])
        self._lane_len = arc.max(axis=1)

    def _steer(self, state: SimulatorState, agents: np.ndarray) -> np.ndarray:
        """Pure-pursuit yaw rate toward a look-ahead point on each agent's best-matching lane."""
        p = self.params
        yaw = np.zeros(self._n, np.float32)
        if len(self._flat_xy) == 0 or len(agents) == 0:
            return yaw
        x, y, h, v = state.x[agents], state.y[agents], state.heading[agents], state.speed[agents]
        d = np.hypot(self._flat_xy[None, :, 0] - x[:, None], self._flat_xy[None, :, 1] - y[:, None])
        cost = d + p.heading_weight * (1 - np.cos(self._flat_dir[None, :] - h[:, None]))
        best = np.argmin(cost, axis=1)
        on_lane = d[np.arange(len(agents)), best] < p.lane_search_radius
        lane = self._flat_lane[best]
        s_target = self._arc[lane, self._flat_pt[best]] + np.maximum(p.min_lookahead, v * p.lookahead_time)
        s_target = np.minimum(s_target, self._lane_len[lane])
        idx = np.argmax(self._arc[lane] >= s_target[:, None] - 1e-6, axis=1)
        target = self._lane_xy[lane, idx]
        alpha = wrap_angle(np.arctan2(target[:, 1] - y, target[:, 0] - x) - h)
        dist = np.maximum(np.hypot(target[:, 0] - x, target[:, 1] - y), 1e-3)
        rate = 2.0 * v * np.sin(alpha) / dist  # pure pursuit: curvature 2 sin(alpha)/L times speed
        yaw[agents] = np.where(on_lane & (dist > 0.5), rate, 0.0)
        return yaw

    def _idm_accel(self, state: SimulatorState) -> np.ndarray:
        """IDM acceleration of every agent w.r.t. the closest valid agent ahead in its corridor."""
        p = self.params
        dx = state.x[None, :] - state.x[:, None]
        dy = state.y[None, :] - state.y[:, None]
        c, s = np.cos(state.heading)[:, None], np.sin(state.heading)[:, None]
        lon, lat = c * dx + s * dy, -s * dx + c * dy  # others in each agent's frame
        ahead = (lon > 0) & (np.abs(lat) < (state.width[:, None] + state.width[None, :]) / 2 + p.lateral_margin)
        ahead &= state.valid[None, :] & ~np.eye(self._n, dtype=bool)
        gap = np.where(ahead, lon - (state.length[:, None] + state.length[None, :]) / 2, np.inf)
        leader = np.argmin(gap, axis=1)
        gap = np.maximum(gap[np.arange(self._n), leader], 0.1)
        v = state.speed
        lead_v = state.speed[leader] * np.cos(state.heading[leader] - state.heading)
        dv = v - lead_v
        desired_gap = p.min_gap + v * p.time_headway + v * dv / (2 * np.sqrt(p.max_accel * p.comfort_brake))
        free = 1 - (v / np.maximum(self._v0, 0.1)) ** p.exponent
        interaction = np.where(np.isfinite(gap), (np.maximum(desired_gap, 0) / gap) ** 2, 0.0)
        accel = p.max_accel * (free - interaction)
        accel = np.where(self._v0 < 0.5, -p.comfort_brake, accel)  # parked at reset: stay parked
        return np.clip(accel, DEFAULT_BOUNDS.min_accel, DEFAULT_BOUNDS.max_accel)

    def act(self, state: SimulatorState) -> Action:
        agents = np.flatnonzero(state.valid)
        accel_yaw = np.stack([self._idm_accel(state), self._steer(state, agents)], -1).astype(np.float32)
        return Action(accel_yaw, np.zeros(self._n, bool))


BASELINES = {cls.name: cls for cls in (LogReplayPolicy, ConstantVelocityPolicy, IDMPolicy)}
