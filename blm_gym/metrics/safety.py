"""Safety metrics over rollouts: collisions, off-road, time to collision, RSS safe distances.

All per evaluated agent (controlled vehicles) at simulated steps, see :mod:`blm_gym.metrics.common`.
Pairwise work is vectorised over ``(frames, N, N)`` and chunked over frames to bound memory.
"""
from __future__ import annotations

import numpy as np

from blm_gym.data.scene import DrivableArea
from blm_gym.metrics.common import Metric, evaluated_agents, evaluated_steps
from blm_gym.sim.record import Rollout
from blm_gym.sim.rss import RSSParams, rss_violations
from blm_gym.sim.ttc import DEFAULT_HORIZON, time_to_collision

_PAIR_CHUNK = 500_000  # (frame, i, j[, disc pair]) elements per chunk: each temporary stays ~2-4 MB


def _frames(r: Rollout, agents: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
    """Simulated steps as frames: arrays ``(K * (T - 1), n)`` for the chosen agents."""
    def flat(a):
        a = a[:, agents, 1:]
        return a.transpose(0, 2, 1).reshape(a.shape[0] * a.shape[2], a.shape[1])

    out = {k: flat(getattr(r, k)) for k in ("x", "y", "heading", "speed", "valid")}
    out["length"], out["width"] = r.log.length[agents], r.log.width[agents]
    return out


def _unflat(a: np.ndarray, r: Rollout) -> np.ndarray:
    """Inverse of the frame layout: ``(K * (T - 1), n)`` back to ``(K, n, T - 1)``."""
    return a.reshape(r.num_samples, r.num_steps - 1, a.shape[1]).transpose(0, 2, 1)


def _chunks(num_frames: int, n: int, per_pair: int):
    size = max(1, _PAIR_CHUNK // max(1, n * n * per_pair))
    return [slice(i, i + size) for i in range(0, num_frames, size)] or [slice(0, 0)]


def collision_steps(r: Rollout) -> np.ndarray:
    """Bool ``(K, N, T - 1)``: the agent's box overlaps any other valid agent's box (any type), as
    the simulator checked it at each simulated step."""
    return r.collision[:, :, 1:]


def offroad_steps(r: Rollout) -> np.ndarray:
    """Bool ``(K, N, T - 1)``: the vehicle's centre is outside the drivable area, as the simulator
    checked it at each simulated step (raster look-up)."""
    return r.offroad[:, :, 1:]


def starts_on_road(r: Rollout, drivable: DrivableArea) -> np.ndarray:
    """Bool ``(K, N)``: the agent's centre is on the drivable area at its first valid step.

    Off-road metrics count only these agents: they measure *leaving* the road, and keep vehicles
    parked beside it (outside a lane-based drivable area, as on nuScenes) out of the rates.
    """
    first = np.argmax(r.valid, axis=2)[..., None]
    x0, y0 = np.take_along_axis(r.x, first, 2)[..., 0], np.take_along_axis(r.y, first, 2)[..., 0]
    return drivable.contains(x0, y0) & r.valid.any(axis=2)


def rss_violation_steps(r: Rollout, p: RSSParams = RSSParams()) -> tuple[np.ndarray, np.ndarray]:
    """Bool ``(K, N, T - 1)`` twice (longitudinal, lateral): RSS violations among vehicles."""
    vehicles = np.flatnonzero(r.is_vehicle)
    f = _frames(r, vehicles)
    parts = [rss_violations(f["x"][c], f["y"][c], f["heading"][c], f["speed"][c], f["length"], f["width"],
                            f["valid"][c], p) for c in _chunks(len(f["x"]), len(vehicles), 1)]
    out = []
    for part in zip(*parts):
        full = np.zeros((len(f["x"]), r.num_agents), bool)
        full[:, vehicles] = np.concatenate(part)
        out.append(_unflat(full, r))
    return out[0], out[1]


def min_ttc_per_sample(r: Rollout, horizon: float = DEFAULT_HORIZON, num_discs: int = 3) -> np.ndarray:
    """Float ``(K,)``: per sample, the minimum time to collision (s) over vehicle pairs with at
    least one evaluated agent and all simulated steps, ignoring pairs already in contact (TTC 0),
    capped at ``horizon``; NaN where the sample has no such pair."""
    vehicles = np.flatnonzero(r.is_vehicle)
    rows = evaluated_agents(r)[vehicles]
    f = _frames(r, vehicles)
    mins, has_pair = [], []
    n = len(vehicles)
    for c in _chunks(len(f["x"]), n, num_discs**2):
        v = f["valid"][c]
        vx, vy = f["speed"][c] * np.cos(f["heading"][c]), f["speed"][c] * np.sin(f["heading"][c])
        ttc = time_to_collision(f["x"][c], f["y"][c], vx, vy, f["length"], f["width"], v, horizon,
                                heading=f["heading"][c], num_discs=num_discs)
        pair = v[:, :, None] & v[:, None, :] & rows[None, :, None] & ~np.eye(n, dtype=bool)
        # Pairs already in contact (TTC 0) are the collision metric's business: the disc cover
        # touches for cars parked side by side, which would pin every scene's minimum at 0.
        mins.append(np.where(pair & (ttc > 0), ttc, np.inf).min(axis=(1, 2), initial=np.inf))
        has_pair.append(pair.any(axis=(1, 2)))
    per_frame = np.concatenate(mins).reshape(r.num_samples, -1)
    has = np.concatenate(has_pair).reshape(r.num_samples, -1).any(axis=1)
    return np.where(has, np.minimum(per_frame.min(axis=1, initial=np.inf), horizon), np.nan)


def safety_metrics(r: Rollout, drivable: DrivableArea, rss: RSSParams = RSSParams(),
                   ttc_horizon: float = DEFAULT_HORIZON, ttc_num_discs: int = 3) -> dict[str, Metric]:
    """Collision, off-road, failure, min TTC and RSS metrics of one rollout, pooled over its K samples."""
    ev = evaluated_steps(r)  # (K, N, T-1)
    agents = ev.any(axis=2)  # (K, N): evaluated agents valid at some simulated step
    hit = collision_steps(r) & ev
    ev_road = ev & starts_on_road(r, drivable)[:, :, None]
    off = offroad_steps(r) & ev_road
    no_road = "no valid controlled vehicle that starts on the drivable area"
    lon, lat = (v & ev for v in rss_violation_steps(r, rss))
    steps, n_agents = ev.sum(), agents.sum()
    ttc = min_ttc_per_sample(r, ttc_horizon, ttc_num_discs)
    defined = ~np.isnan(ttc)
    return {
        "collision_rate_step": Metric.ratio(
            hit.sum(), steps, "agent-timesteps where a controlled vehicle's oriented box overlaps any other valid "
            "agent's box (SAT, positive area), / valid controlled-vehicle timesteps"),
        "collision_rate_any": Metric.ratio(
            hit.any(axis=2).sum(), n_agents, "controlled vehicles (per sample) whose box overlaps another valid "
            "agent's box at any simulated step, / controlled vehicles (tbsim/CTG style)"),
        "offroad_rate_step": Metric.ratio(
            off.sum(), ev_road.sum(), "agent-timesteps where a controlled vehicle's centre is outside the drivable "
            f"area (raster, {drivable.resolution:g} m cells), / valid timesteps of controlled vehicles that start on "
            "the drivable area", reason=no_road),
        "offroad_rate_any": Metric.ratio(
            off.any(axis=2).sum(), ev_road.any(axis=2).sum(), "controlled vehicles (per sample) whose centre leaves "
            "the drivable area at any simulated step, / controlled vehicles that start on it", reason=no_road),
        "failure_rate": Metric.ratio(
            (hit | off).any(axis=2).sum(), n_agents, "controlled vehicles (per sample) that collide or go "
            "off-road (as above) at any simulated step, / controlled vehicles (tbsim failure rate)"),
        "min_ttc_s": Metric.ratio(
            np.nansum(ttc), defined.sum(), f"per sample, the minimum constant-velocity time to collision over "
            f"vehicle pairs with a controlled vehicle ({ttc_num_discs}-disc cover, {ttc_horizon:g} s horizon; "
            "no contact within the horizon counts as the horizon; pairs already in contact are left to the "
            "collision rate), averaged over samples",
            reason="no pair of valid vehicles with a controlled vehicle"),
        "rss_lon_violation_rate": Metric.ratio(
            lon.sum(), steps, f"agent-timesteps where a controlled vehicle moving at >= {rss.min_speed:g} m/s follows "
            "a same-direction vehicle closer than the RSS longitudinal safe distance (count = violations), / valid "
            "controlled-vehicle timesteps"),
        "rss_lat_violation_rate": Metric.ratio(
            lat.sum(), steps, "agent-timesteps where a controlled vehicle is side by side with a same-direction "
            f"vehicle (one of them moving at >= {rss.min_speed:g} m/s) closer than the RSS lateral safe distance "
            "(count = violations), / valid controlled-vehicle timesteps"),
    }
