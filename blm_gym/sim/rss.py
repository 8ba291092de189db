"""Responsibility-Sensitive Safety (RSS) safe distances and their violations, per step.

Shalev-Shwartz et al. 2017 (arXiv:1708.06374); pure numpy, batched over leading dims. The reward
term ``rss`` and the RSS metrics both call :func:`rss_violations`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RSSParams:
    """Responsibility-Sensitive Safety parameters (Shalev-Shwartz et al. 2017, arXiv:1708.06374).

    Longitudinal (same direction, rear car ``r`` behind front car ``f``)::

        d_lon = [v_r rho + a_accel rho^2 / 2 + (v_r + rho a_accel)^2 / (2 b_min) - v_f^2 / (2 b_max)]_+

    Lateral (car 1 and car 2 side by side, velocities along the axis from car 1 to car 2)::

        v1' = v1 + rho a_lat_accel,  v2' = v2 - rho a_lat_accel
        d_lat = mu + [(v1 + v1') rho / 2 + v1'|v1'| / (2 b_lat) - ((v2 + v2') rho / 2 + v2'|v2'| / (2 b_lat))]_+

    (the signed ``v|v|`` braking terms generalise the paper's squares to either sign of velocity).
    """

    response_time: float = 0.5  # rho, s
    a_max_accel: float = 3.5  # m/s^2, worst-case acceleration of the rear car during rho
    a_min_brake: float = 4.0  # m/s^2, braking the rear car is sure to manage
    a_max_brake: float = 8.0  # m/s^2, hardest braking the front car may do
    lateral_margin: float = 0.3  # mu, m
    a_lat_max_accel: float = 0.2  # m/s^2, worst-case lateral acceleration during rho
    a_lat_min_brake: float = 0.8  # m/s^2, lateral braking after rho
    min_speed: float = 0.5  # m/s; slower rear cars (lon) / pairs of slower cars (lat) are not checked:
    # parked cars lined up along a kerb are not in traffic


def rss_longitudinal_safe_distance(v_rear, v_front, p: RSSParams = RSSParams()):
    """Minimum safe bumper-to-bumper gap (m) for speeds (m/s, clipped at 0) along the shared direction."""
    v_r, v_f, rho = np.maximum(v_rear, 0.0), np.maximum(v_front, 0.0), p.response_time
    d = (v_r * rho + 0.5 * p.a_max_accel * rho**2 + (v_r + rho * p.a_max_accel) ** 2 / (2 * p.a_min_brake)
         - v_f**2 / (2 * p.a_max_brake))
    return np.maximum(d, 0.0)


def rss_lateral_safe_distance(v1, v2, p: RSSParams = RSSParams()):
    """Minimum safe lateral gap (m); ``v1, v2``: lateral velocities (m/s) of car 1 and car 2 along
    the axis pointing from car 1 to car 2 (so ``v1 > 0`` closes in, ``v2 > 0`` moves away)."""
    rho, b = p.response_time, p.a_lat_min_brake
    v1r, v2r = v1 + rho * p.a_lat_max_accel, v2 - rho * p.a_lat_max_accel
    reach1 = 0.5 * (v1 + v1r) * rho + v1r * np.abs(v1r) / (2 * b)
    reach2 = 0.5 * (v2 + v2r) * rho + v2r * np.abs(v2r) / (2 * b)
    return p.lateral_margin + np.maximum(reach1 - reach2, 0.0)


def rss_violations(x, y, heading, speed, length, width, valid, p: RSSParams = RSSParams()):
    """RSS safe-distance violations of each agent: bool ``(lon (..., N), lat (..., N))`` from ``(..., N)``.

    Pairs are valid agents heading the same way (headings less than 90 degrees apart); the pair's
    axes are its mean heading (a lane-direction proxy that needs no map) and its normal.
    Longitudinal: ``j`` is ahead of ``i`` (positive offset, lateral offset below the half widths
    summed), ``i`` moves at ``p.min_speed`` or more, and the gap (offset minus half lengths
    summed) is below ``d_lon`` with ``i`` as the rear car. Lateral: ``i`` and ``j`` side by side
    (longitudinal offset below the half lengths summed, no lateral overlap), one of them moves at
    ``p.min_speed`` or more, and the lateral gap is below ``d_lat``. Boxes are treated as aligned
    with the pair's axes.
    """
    c, s = np.cos(heading), np.sin(heading)
    vx, vy = speed * c, speed * s
    ux, uy = c[..., :, None] + c[..., None, :], s[..., :, None] + s[..., None, :]
    norm = np.hypot(ux, uy)
    same_dir = (c[..., :, None] * c[..., None, :] + s[..., :, None] * s[..., None, :]) > 0
    norm = np.where(same_dir, norm, 1.0)
    ux, uy = ux / norm, uy / norm
    dx, dy = x[..., None, :] - x[..., :, None], y[..., None, :] - y[..., :, None]  # j relative to i
    lon, lat = dx * ux + dy * uy, dy * ux - dx * uy
    vlon_i, vlat_i = vx[..., :, None] * ux + vy[..., :, None] * uy, vy[..., :, None] * ux - vx[..., :, None] * uy
    vlon_j, vlat_j = vx[..., None, :] * ux + vy[..., None, :] * uy, vy[..., None, :] * ux - vx[..., None, :] * uy
    half_l = 0.5 * (length[..., :, None] + length[..., None, :])
    half_w = 0.5 * (width[..., :, None] + width[..., None, :])
    n = x.shape[-1]
    pair = same_dir & valid[..., :, None] & valid[..., None, :] & ~np.eye(n, dtype=bool)
    moving = np.abs(speed) >= p.min_speed
    ahead = pair & moving[..., :, None] & (lon > 0) & (np.abs(lat) < half_w)
    lon_violation = ahead & (lon - half_l < rss_longitudinal_safe_distance(vlon_i, vlon_j, p))
    side = pair & (moving[..., :, None] | moving[..., None, :]) & (np.abs(lon) < half_l) & (np.abs(lat) >= half_w)
    toward = np.sign(lat)  # axis from i to j
    lat_violation = side & (np.abs(lat) - half_w < rss_lateral_safe_distance(toward * vlat_i, toward * vlat_j, p))
    return lon_violation.any(-1), lat_violation.any(-1)
