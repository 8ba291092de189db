"""The BLM paper's own metric definitions, as a selectable suite.

Reproduces RoboSafe-Lab/BLM ``CTG/scripts/calculate_metrics.py`` (commit 437daee, "the script"
below; ``l. N`` = its line numbers) and ``CTG/scripts/compute_csv.py`` (the averaging of the
script's CSV), re-implemented in vectorised numpy over a :class:`~blm_gym.rollout.Rollout`.
Entry point: :func:`blm_suite_metrics`; every number comes back as a labelled
:class:`~blm_gym.metrics.common.Metric`.

Definitions (defaults = the script)
-----------------------------------
Rows and pooling
    The script writes one CSV row per (scene, episode) (l. 349-351, 477-491); ``compute_csv.py``
    reports the plain mean of each column over the rows, NaN rows dropped. Here each of the K samples of
    a rollout is one row; a Metric carries ``count`` = sum of the row values and ``total`` =
    number of defined rows, so :meth:`Metric.pooled` over scenes gives exactly the mean over all
    rows (every row weighs the same, whatever its number of agents or steps). FDD is one row per
    scene (it needs all K samples).
Agents
    The script's buffer holds every vehicle of the scene (``only_types=[VEHICLE]``, l. 338), all
    of them driven by its policy, and has no validity mask. Here: the evaluated agents are the
    controlled vehicles of :func:`~blm_gym.metrics.common.evaluated_agents` (option
    ``all_vehicles`` adds the log-replayed vehicles); pairs (collision, TTC, RSS) are pairs of
    valid vehicles with at least one evaluated agent, so a log-replayed vehicle is an obstacle.
    Non-vehicles take no part. Agent-steps where an agent is invalid are skipped; with every
    agent valid the denominators are exactly the script's ``T x N``.
Steps
    Every recorded step ``t = 0 .. T - 1`` (l. 409), including ``t = 0``, which in our record is
    the logged initial state (see quirk ``simulated_steps_only``).
Velocity (TTC and RSS)
    Backward differences of the positions over ``dt``, zero at ``t = 0`` (l. 413-419; zero also
    where the previous step is invalid).
Collision rate (``blm_collision_rate``)
    Colliding unordered *pairs* (oriented boxes intersect; l. 442-455) summed over steps, divided
    by the agent-steps ``T x N`` (l. 482). Boxes that only touch are not counted here (our SAT
    test needs positive area; the script's polygon test counts touching; measure zero).
Off-road rate (``blm_offroad_rate``)
    Agent-steps where any cell of a 1 m drivable raster whose centre lies inside the agent's box
    is not drivable (l. 289-313, l. 421-432; the script's raster is the agent-centric 224 x 224
    crop at ``pixel_size = 1.0`` of ``CLDEnvConfig`` in ``tbsim/configs/cld_config.py``), divided
    by ``T x N`` (l. 481). The raster is rebuilt from ``drivable.polygon`` at 1 m once per
    drivable area (:func:`blm_raster`, cached). Cells off our raster count as not drivable (the
    raster covers the polygon plus 5 m, so they are off the road anyway; the script only tests
    pixels inside its crop, 224 m around the agent, which a box never leaves). The script tests
    integer pixel coordinates inside the box (l. 303-308), we test cell centres; a box that
    contains none is never off-road, as in the script. No "starts on the road" filter: a vehicle
    parked off the drivable area counts at every step.
Min TTC (``blm_min_ttc_s``)
    Per row, the minimum over steps and pairs of the time of closest approach of the two
    *centre points* under constant velocity, ``t* = -(dp . dv) / |dv|^2``, counted when ``t* > 0``
    (diverging pairs give 0 and are skipped, ``|dv|^2 < 1e-6`` gives inf; l. 182-203, 457-461);
    no horizon. If any pair collided in the row at any step the row's value is 0 (l. 457, 474-475).
    A row with no approaching pair is NaN (l. 480) and left out of the mean.
RSS (``blm_rss_lon_violations``, ``blm_rss_lat_violations``)
    Violation *counts* per row (not rates; l. 483-484), averaged over rows. Each ordered pair
    (ego ``i``, other ``j``) at each step is checked in the ego's frame (l. 232-276, both orders
    l. 463-471): longitudinal when ``j`` is ahead (``x > 0``) and laterally overlapping
    (``|y| < (w_i + w_j) / 2``); gap = ``x - (l_i + l_j) / 2``; violation when the gap is negative
    or below ``d_lon = [v_r rho + a_acc rho^2 / 2 + (v_r + rho a_acc)^2 / (2 b_min) - v_f^2 / (2 b_max)]_+``
    with ``v_r = |v_i|`` and ``v_f`` = ``v_j`` projected on the ego heading (l. 206-214, 252-253).
    Lateral when longitudinally overlapping (``|x| < (l_i + l_j) / 2``) and within ``|y| < (w_i +
    w_j) / 2 + 5 m``; gap = ``|y| - (w_i + w_j) / 2``; violation when negative or below ``d_lat = mu
    + s(0) + s(v_lat_j)``, ``s(v) = |v| rho + a_lat rho^2 / 2 + (|v| + rho a_lat)^2 / (2 b_lat)``
    (l. 217-229, 261-274). Parameters :class:`BLMRSSParams` (l. 25-29).
JSD (``blm_jsd_speed``, ``blm_jsd_accel``, ``blm_jsd_jerk``)
    Per agent, between the agent's own simulated and logged series (l. 392-406): simulated speed
    as recorded (signed), acceleration ``diff(speed) / dt``, jerk ``diff(accel) / dt`` (l. 55-56);
    logged speed ``|(vx, vy)|``, acceleration the magnitude of the logged acceleration vector,
    jerk ``diff(|a|) / dt`` (l. 58-60). The log's acceleration vector is the backward difference of
    its velocity with the first value duplicated (trajdata's nuScenes loader, ``nusc_utils.py``;
    trajdata differences at the native 2 Hz and then interpolates, we difference at ``dt``).
    Each pair of series is truncated to the shorter from its own start (l. 62-69). Densities:
    Gaussian KDEs with sklearn ``KernelDensity``'s default bandwidth 1.0 in data units (l. 41;
    not scipy's ``gaussian_kde`` / Scott's rule), evaluated on 1000 points spanning the combined
    range +-10 % (l. 37-40), normalised to sum 1; JSD in base 2 (0 = same, 1 = disjoint), clipped
    to [0, 1] (l. 46-51); both series constant (std < 1e-4): 0 if their means agree within 1e-4,
    else 1 (l. 33-36). A row's value is the mean over its agents (l. 485-487).
FDD (``blm_fdd_m``)
    Mean pairwise distance between endpoints (l. 316-326). The script's endpoints are the last
    waypoints of the policy's sampled *plans* (10 in the paper) for each agent at each step,
    averaged over agents, then over steps (l. 433-440, 488); :func:`fdd_of_plan_endpoints`
    reproduces that given such plans. A :class:`Rollout` holds K closed-loop samples instead, so
    :func:`blm_suite_metrics` uses the K samples' positions at the agent's last step valid in all
    samples, averaged over evaluated agents: one row per scene.

Quirks (followed by default; each ``BLMSuiteConfig`` flag corrects one)
----------------------------------------------------------------------
``count_colliding_agents``
    The collision numerator counts pairs (once per pair, l. 442-455) while the denominator counts
    agent-steps (l. 482): two cars in contact count 1, not 2, so the rate is half the per-agent
    one (and can exceed 1 in a pile-up). True: count evaluated agent-steps in contact instead.
``simulated_steps_only``
    Step ``t = 0`` (l. 409) is the logged initial state, not simulated, and it is also the step
    where every velocity is zero (l. 418-419). True: collision, off-road, TTC and RSS use
    ``t = 1 .. T - 1`` only (denominators ``(T - 1) x N``).
``state_velocity``
    TTC and RSS velocities are finite differences of the positions, zero at ``t = 0`` (l. 413-419),
    while the simulator records speed and heading. True: ``v = speed (cos heading, sin heading)``.
``ttc_require_contact``
    TTC is the time of closest approach of two centre points whatever the miss distance (l. 182-203
    ignores ``d_col``): cars passing 50 m apart get a TTC. True: count a pair only when its
    closest-approach distance is below the sum of the two boxes' half diagonals.
``rss_front_speed_nonnegative``
    The rear speed is the full speed ``|v_i|`` (l. 252) but the front speed is projected on the
    ego heading (l. 253) and squared in the braking term (l. 213): an oncoming car ahead earns
    braking credit as if it were a leader. True: ``v_f = max(v_f, 0)``.
``rss_lat_toward_only``
    The other car's lateral velocity enters as ``|v_lat|`` (l. 222-223): a car moving away counts
    like one closing in (and the ego's own is fixed to 0, l. 271). True: only the component of the
    other's lateral velocity toward the ego, clipped at 0. (Unchanged either way: two stationary
    cars side by side need ``mu + 2 s(0) = 0.8 m`` with the defaults, each pair is checked in both
    orders, and overlapping boxes count as lon and lat violations, l. 249-250, 266-267.)
``jsd_log_kinematics_like_sim``
    Simulated acceleration is signed ``d(speed)/dt`` (l. 55) but the log's is the magnitude of the
    acceleration vector (l. 58-59: never negative, and it includes centripetal acceleration); the
    same for speed (signed vs ``|v|``) and jerk. True: the log's speed is its signed speed and its
    acceleration and jerk are differenced exactly as the simulation's.
``jsd_align_time_bases``
    Each series is truncated from its own start (l. 62-69): the simulation from the rollout's
    first step, the log from the agent's first logged frame of the *whole scene* (l. 397), and the
    simulated acceleration is a forward difference while the log's is a backward one. Our record
    holds the log only over the rollout window, so the script's lead of the log by ``start_step``
    frames cannot be reproduced; what is reproduced is each series starting at its own first valid
    step (an agent whose log starts later than its simulation is compared shifted). True: compare
    sim and log values at the same steps, where both are valid (differences between consecutive
    valid steps only, backward differences for both).
``fdd_undefined_single_sample``
    Fewer than two samples give FDD 0 (l. 318-319), e.g. on the log as a 1-sample rollout. True:
    undefined (None with a reason) instead.
``pool_by_agent_steps``
    Rows are averaged with equal weight (``compute_csv.py``): a 3-vehicle scene weighs as much as a
    40-vehicle one. True: collision and off-road pool counts and agent-steps (sum, then divide).

Also documented, not flagged: sklearn's fixed bandwidth 1.0 is the same for speed, acceleration and
jerk (narrow for jerk, wide for slow speeds); the JSD compares short per-agent series (about T
values each), not pooled distributions; the script's scene lookup warns "Skipping" (l. 384-385) but
does not skip (l. 388 then raises KeyError).
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from blm_gym.data.scene import DrivableArea
from blm_gym.metrics.common import Metric, evaluated_agents
from blm_gym.sim.geometry import boxes_overlap

if TYPE_CHECKING:  # annotations only: the record's module is blm_gym.sim.record (re-exported by blm_gym.rollout)
    from blm_gym.sim.record import Rollout

_CHUNK = 2_000_000  # elements per vectorised temporary (pairs x frames, cells x boxes, grid x samples)
_SCRIPT = "RoboSafe-Lab/BLM CTG/scripts/calculate_metrics.py"


@dataclass(frozen=True)
class BLMRSSParams:
    """RSS parameters of the script (``RSS_PARAMS``, l. 25-29)."""

    response_time: float = 0.5  # rho, s
    a_max_accel: float = 2.0  # m/s^2, rear car's worst-case acceleration during rho
    a_min_brake: float = 4.0  # m/s^2, rear car's sure braking
    a_max_brake: float = 4.0  # m/s^2, front car's hardest braking
    lateral_margin: float = 0.2  # mu, m
    a_lat_max_accel: float = 1.5  # m/s^2
    a_lat_min_brake: float = 2.5  # m/s^2
    lateral_check_range: float = 5.0  # m beyond the half widths summed within which lateral pairs are checked


@dataclass(frozen=True)
class BLMSuiteConfig:
    """Parameters of the BLM suite; the defaults reproduce the script, quirks included.

    Each boolean below ``all_vehicles`` corrects one documented quirk of the script (see the
    module docstring for what each changes and where the script does it).
    """

    rss: BLMRSSParams = BLMRSSParams()
    raster_resolution: float = 1.0  # m per cell of the off-road raster (CLDEnvConfig pixel_size)
    kde_bandwidth: float = 1.0  # sklearn KernelDensity default, in data units
    kde_grid_points: int = 1000  # evaluation grid of the KDEs
    kde_grid_margin: float = 0.1  # grid spans the combined range +- this fraction of it
    kde_constant_tol: float = 1e-4  # std below which a series is constant
    all_vehicles: bool = False  # evaluate log-replayed vehicles too (the script's policy drove every vehicle)
    count_colliding_agents: bool = False  # collision numerator: agents in contact, not pairs
    simulated_steps_only: bool = False  # leave out t = 0 (the logged initial state) of the step metrics
    state_velocity: bool = False  # TTC/RSS velocity from speed and heading, not position differences
    ttc_require_contact: bool = False  # TTC only for pairs whose closest approach brings the boxes' circles to touch
    rss_front_speed_nonnegative: bool = False  # no braking credit for an oncoming car ahead
    rss_lat_toward_only: bool = False  # lateral: only the other's velocity toward the ego counts
    jsd_log_kinematics_like_sim: bool = False  # log speed/accel/jerk signed and differenced like the simulation's
    jsd_align_time_bases: bool = False  # compare sim and log at the same steps
    fdd_undefined_single_sample: bool = False  # FDD of < 2 samples undefined instead of 0
    pool_by_agent_steps: bool = False  # collision/off-road pooled as counts / agent-steps instead of row means


# ----------------------------------------------------------------------------------------------
# 1 m raster, built once per drivable area

_RASTERS: dict[tuple[int, float], tuple[weakref.ref, DrivableArea]] = {}


def blm_raster(drivable: DrivableArea, resolution: float = 1.0) -> DrivableArea:
    """``drivable`` rasterised at ``resolution`` metres (itself if it already is), cached per object."""
    if abs(drivable.resolution - resolution) < 1e-9:
        return drivable
    key = (id(drivable), float(resolution))
    hit = _RASTERS.get(key)
    if hit is not None and hit[0]() is drivable:
        return hit[1]
    out = DrivableArea.from_geometry(drivable.polygon, resolution=resolution)

    def forget(ref, key=key):
        if _RASTERS.get(key, (None,))[0] is ref:
            del _RASTERS[key]

    _RASTERS[key] = (weakref.ref(drivable, forget), out)
    return out


# ----------------------------------------------------------------------------------------------
# Per-frame work: arrays (F, n) of frames (sample, step) x agents, chunked over frames


def _frames(a: np.ndarray, agents: np.ndarray, t0: int) -> np.ndarray:
    """``(K, N, T)`` -> ``(K * (T - t0), n)`` for the chosen agents."""
    a = a[:, agents, t0:]
    return a.transpose(0, 2, 1).reshape(-1, a.shape[1])


def _chunks(num: int, per_item: int):
    size = max(1, _CHUNK // max(1, per_item))
    return [slice(i, i + size) for i in range(0, num, size)]


def _velocity(r: Rollout, state_velocity: bool) -> tuple[np.ndarray, np.ndarray]:
    """World-frame velocity ``(K, N, T)`` used by TTC and RSS."""
    if state_velocity:
        return r.speed * np.cos(r.heading), r.speed * np.sin(r.heading)
    both = r.valid[:, :, 1:] & r.valid[:, :, :-1]
    vx, vy = np.zeros(r.x.shape), np.zeros(r.x.shape)
    vx[:, :, 1:] = np.where(both, np.diff(r.x.astype(float), axis=2) / r.dt, 0.0)
    vy[:, :, 1:] = np.where(both, np.diff(r.y.astype(float), axis=2) / r.dt, 0.0)
    return vx, vy


def _pair_stats(r: Rollout, cfg: BLMSuiteConfig, veh: np.ndarray, ev: np.ndarray, t0: int) -> dict[str, np.ndarray]:
    """Per frame ``(K * (T - t0),)``: colliding pairs, colliding evaluated agents, min TTC, RSS counts."""
    p = cfg.rss
    vx_all, vy_all = _velocity(r, cfg.state_velocity)
    x, y, h, vx, vy = (_frames(a, veh, t0).astype(float) for a in (r.x, r.y, r.heading, vx_all, vy_all))
    valid = _frames(r.valid, veh, t0)
    length, width = r.log.length[veh].astype(float), r.log.width[veh].astype(float)
    rows = ev[veh]
    n, num = len(length), len(x)
    out = {k: np.zeros(num) for k in ("pairs", "agents", "rss_lon", "rss_lat")}
    out["ttc"] = np.full(num, np.inf)
    if n < 2:
        return out
    off_diag = ~np.eye(n, dtype=bool)
    hl, hw = 0.5 * length, 0.5 * width
    sum_hl, sum_hw = hl[:, None] + hl[None, :], hw[:, None] + hw[None, :]
    reach = np.hypot(hl, hw)
    for c in _chunks(num, n * n * 8):
        v = valid[c]
        pair = v[:, :, None] & v[:, None, :] & (rows[:, None] | rows[None, :]) & off_diag
        # Collision: SAT on oriented boxes; each unordered pair once.
        hit = boxes_overlap(x[c], y[c], h[c], length, width, v) & pair
        out["pairs"][c] = hit.sum(axis=(1, 2)) / 2
        out["agents"][c] = (hit.any(axis=2) & rows).sum(axis=1)
        # TTC: time of closest approach of the centres (i relative to j).
        dpx, dpy = x[c][:, :, None] - x[c][:, None, :], y[c][:, :, None] - y[c][:, None, :]
        dvx, dvy = vx[c][:, :, None] - vx[c][:, None, :], vy[c][:, :, None] - vy[c][:, None, :]
        dv2 = dvx**2 + dvy**2
        moving = dv2 >= 1e-6
        t_star = np.where(moving, -(dpx * dvx + dpy * dvy) / np.where(moving, dv2, 1.0), np.inf)
        counted = pair & moving & (t_star > 0)
        if cfg.ttc_require_contact:
            miss = np.abs(dvx * dpy - dvy * dpx) / np.sqrt(np.where(moving, dv2, 1.0))
            counted &= miss < reach[:, None] + reach[None, :]
        out["ttc"][c] = np.where(counted, t_star, np.inf).min(axis=(1, 2), initial=np.inf)
        # RSS: ego i (rows), other j (columns), in the ego's frame.
        ci, si = np.cos(h[c])[:, :, None], np.sin(h[c])[:, :, None]
        rx, ry = -dpx, -dpy  # j relative to i
        lon, lat = rx * ci + ry * si, -rx * si + ry * ci
        v_rear = np.hypot(vx[c], vy[c])[:, :, None]
        v_front = vx[c][:, None, :] * ci + vy[c][:, None, :] * si
        if cfg.rss_front_speed_nonnegative:
            v_front = np.maximum(v_front, 0.0)
        rho = p.response_time
        d_lon = np.maximum(v_rear * rho + 0.5 * p.a_max_accel * rho**2
                           + (v_rear + rho * p.a_max_accel) ** 2 / (2 * p.a_min_brake)
                           - v_front**2 / (2 * p.a_max_brake), 0.0)
        gap = lon - sum_hl
        lon_viol = pair & (lon > 0) & (np.abs(lat) < sum_hw) & (gap < d_lon)  # d_lon >= 0: overlaps count
        v_lat = -vx[c][:, None, :] * si + vy[c][:, None, :] * ci
        if cfg.rss_lat_toward_only:
            v_lat = np.maximum(-np.sign(lat) * v_lat, 0.0)

        def stop(speed):
            speed = np.abs(speed)
            return speed * rho + 0.5 * p.a_lat_max_accel * rho**2 + (speed + rho * p.a_lat_max_accel) ** 2 / (
                2 * p.a_lat_min_brake)

        d_lat = p.lateral_margin + stop(0.0) + stop(v_lat)
        lat_gap = np.abs(lat) - sum_hw
        lat_viol = (pair & (np.abs(lon) < sum_hl) & (np.abs(lat) < sum_hw + p.lateral_check_range)
                    & (lat_gap < d_lat))  # d_lat > 0: overlaps count
        out["rss_lon"][c] = lon_viol.sum(axis=(1, 2))
        out["rss_lat"][c] = lat_viol.sum(axis=(1, 2))
    return out


def _offroad(r: Rollout, raster: DrivableArea, ev: np.ndarray, t0: int) -> np.ndarray:
    """Bool ``(K * (T - t0), n_ev)``: a raster cell whose centre is inside the box is not drivable."""
    x, y, h = (_frames(a, ev, t0).astype(float) for a in (r.x, r.y, r.heading))
    valid = _frames(r.valid, ev, t0)
    hl, hw = 0.5 * r.log.length[ev].astype(float), 0.5 * r.log.width[ev].astype(float)
    out = np.zeros(x.shape, bool)
    if x.size == 0:
        return out
    res, (ox, oy), (rows, cols) = raster.resolution, raster.origin, raster.raster.shape
    w = int(np.ceil(np.hypot(hl, hw).max() / res)) + 1
    offsets = np.arange(-w, w + 1)
    di, dj = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))  # (C,)
    bx, by, bh = x.ravel(), y.ravel(), h.ravel()
    bl, bw = np.broadcast_to(hl, x.shape).ravel(), np.broadcast_to(hw, x.shape).ravel()
    flat_valid = valid.ravel()
    flat_out = out.reshape(-1)
    for c in _chunks(len(bx), len(di)):
        i0 = np.floor((by[c] - oy) / res).astype(np.int64)[:, None] + di
        j0 = np.floor((bx[c] - ox) / res).astype(np.int64)[:, None] + dj
        dx, dy = ox + (j0 + 0.5) * res - bx[c][:, None], oy + (i0 + 0.5) * res - by[c][:, None]
        cos_h, sin_h = np.cos(bh[c])[:, None], np.sin(bh[c])[:, None]
        inside = ((np.abs(dx * cos_h + dy * sin_h) <= bl[c][:, None])
                  & (np.abs(-dx * sin_h + dy * cos_h) <= bw[c][:, None]))
        on_raster = (i0 >= 0) & (i0 < rows) & (j0 >= 0) & (j0 < cols)
        drivable = np.zeros(inside.shape, bool)
        drivable[on_raster] = raster.raster[i0[on_raster], j0[on_raster]]
        flat_out[c] = (inside & ~drivable).any(axis=1) & flat_valid[c]
    return out


# ----------------------------------------------------------------------------------------------
# JSD between per-agent KDEs


def _compress(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each row's masked values to its front (order kept); returns values and counts ``(M,)``."""
    order = np.argsort(~mask, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), mask.sum(axis=1)


def jsd_kde_rows(p_values: np.ndarray, q_values: np.ndarray, lengths: np.ndarray,
                 config: BLMSuiteConfig = BLMSuiteConfig()) -> np.ndarray:
    """The script's ``calculate_jsd_kde`` (l. 31-51) row by row, vectorised.

    ``p_values``, ``q_values`` ``(M, W)``: row ``m`` holds ``lengths[m]`` values at its front (log
    in ``p``, simulation in ``q``). Returns JSD in base 2 ``(M,)``, NaN where ``lengths`` is 0.
    """
    p_values, q_values = np.asarray(p_values, float), np.asarray(q_values, float)
    lengths = np.asarray(lengths)
    m_rows, width = p_values.shape
    out = np.full(m_rows, np.nan)
    if m_rows == 0 or width == 0:
        return out
    mask = np.arange(width) < lengths[:, None]
    cnt = np.maximum(lengths, 1)[:, None]
    p_values, q_values = np.where(mask, p_values, 0.0), np.where(mask, q_values, 0.0)
    mean_p, mean_q = p_values.sum(1, keepdims=True) / cnt, q_values.sum(1, keepdims=True) / cnt
    std_p = np.sqrt((np.where(mask, p_values - mean_p, 0.0) ** 2).sum(1) / cnt[:, 0])
    std_q = np.sqrt((np.where(mask, q_values - mean_q, 0.0) ** 2).sum(1) / cnt[:, 0])
    tol = config.kde_constant_tol
    constant = (std_p < tol) & (std_q < tol)
    close = np.abs(mean_p[:, 0] - mean_q[:, 0]) <= tol + 1e-5 * np.abs(mean_q[:, 0])  # np.isclose(atol=tol)
    lo = np.minimum(np.where(mask, p_values, np.inf).min(1), np.where(mask, q_values, np.inf).min(1))
    hi = np.maximum(np.where(mask, p_values, -np.inf).max(1), np.where(mask, q_values, -np.inf).max(1))
    todo = np.flatnonzero((lengths > 0) & ~constant)
    g, bw = config.kde_grid_points, config.kde_bandwidth
    for c in _chunks(len(todo), g * width):
        rows = todo[c]
        margin = (hi[rows] - lo[rows]) * config.kde_grid_margin
        grid = np.linspace(lo[rows] - margin, hi[rows] + margin, g, axis=1)  # (m, G)
        dens = []
        for values in (p_values[rows], q_values[rows]):
            z = (grid[:, :, None] - values[:, None, :]) / bw
            np.square(z, out=z)
            z *= -0.5
            np.exp(z, out=z)
            z *= mask[rows][:, None, :]
            d = z.sum(axis=2) / (cnt[rows] * bw * np.sqrt(2 * np.pi))
            d = d / (d.sum(axis=1, keepdims=True) + 1e-10)
            dens.append(d / d.sum(axis=1, keepdims=True))  # scipy.stats.entropy renormalises
        mid = 0.5 * (dens[0] + dens[1])

        def kl2(a):
            # A subnormal ``a`` whose half rounds to 0 makes ``mid`` 0: +inf, as scipy's rel_entr gives
            # (the clip then returns 1; such rows are disjoint anyway).
            pos = a > 0
            with np.errstate(divide="ignore"):
                return np.where(pos, a * np.log2(np.where(pos, a, 1.0) / np.where(pos, mid, 1.0)), 0.0).sum(axis=1)

        out[rows] = np.clip(0.5 * (kl2(dens[0]) + kl2(dens[1])), 0.0, 1.0)
    both_const = (lengths > 0) & constant
    out[both_const] = np.where(close[both_const], 0.0, 1.0)
    return out


def _diff(a: np.ndarray, dt: float) -> np.ndarray:
    return np.diff(a, axis=-1) / dt


def _truncated(sim: np.ndarray, n_sim: np.ndarray, log: np.ndarray, n_log: np.ndarray):
    """The script's alignment: both series cut to the shorter, each from its own start."""
    width = min(sim.shape[-1], log.shape[-1])
    return log[:, :width], sim[:, :width], np.maximum(np.minimum(n_sim, n_log), 0)


def _kinematic_series(r: Rollout, agents: np.ndarray, cfg: BLMSuiteConfig) -> dict[str, tuple]:
    """Per (sample, agent) row: ``name -> (log values, sim values, lengths)`` for speed/accel/jerk."""
    k, dt = r.num_samples, r.dt
    sim_v = r.speed[:, agents].astype(float).reshape(-1, r.num_steps)
    sim_ok = r.valid[:, agents].reshape(-1, r.num_steps)
    log = r.log

    def log_rows(a):
        return np.broadcast_to(np.asarray(a, float)[agents][None], (k, int(agents.sum()), r.num_steps)).reshape(
            -1, r.num_steps)

    log_ok = log_rows(log.valid) > 0
    lvx, lvy = log_rows(log.vx), log_rows(log.vy)
    log_v = log_rows(log.speed) if cfg.jsd_log_kinematics_like_sim else np.hypot(lvx, lvy)
    if cfg.jsd_align_time_bases:
        # Same steps for both; differences only between consecutive valid steps (backward).
        def kin(v, ok, vector=None):
            acc = np.zeros_like(v)
            ok_a = np.zeros_like(ok)
            ok_a[:, 1:] = ok[:, 1:] & ok[:, :-1]
            if vector is None:
                acc[:, 1:] = _diff(v, dt)
            else:
                acc[:, 1:] = np.hypot(_diff(vector[0], dt), _diff(vector[1], dt))
            jerk = np.zeros_like(v)
            ok_j = np.zeros_like(ok)
            ok_j[:, 1:] = ok_a[:, 1:] & ok_a[:, :-1]
            jerk[:, 1:] = _diff(acc, dt)
            return (v, ok), (acc, ok_a), (jerk, ok_j)

        sim_k = kin(sim_v, sim_ok)
        log_k = kin(log_v, log_ok, None if cfg.jsd_log_kinematics_like_sim else (lvx, lvy))
        out = {}
        for name, (s, s_ok), (lg, l_ok) in zip(("speed", "accel", "jerk"), sim_k, log_k):
            both = s_ok & l_ok
            s_c, n = _compress(s, both)
            l_c, _ = _compress(lg, both)
            out[name] = (l_c, s_c, n)
        return out
    # Default: each series from its own first valid step, truncated to the shorter (l. 62-69).
    s_v, n_s = _compress(sim_v, sim_ok)
    s_a, s_j = _diff(s_v, dt), _diff(_diff(s_v, dt), dt)
    l_v, n_l = _compress(log_v, log_ok)
    if cfg.jsd_log_kinematics_like_sim:
        l_a, l_j = _diff(l_v, dt), _diff(_diff(l_v, dt), dt)
        n_la, n_lj = n_l - 1, n_l - 2
    else:
        # trajdata: backward differences of the velocity vector, the first value duplicated.
        cvx, _ = _compress(lvx, log_ok)
        cvy, _ = _compress(lvy, log_ok)
        l_a = np.zeros_like(l_v)
        if r.num_steps > 1:
            l_a[:, 1:] = np.hypot(_diff(cvx, dt), _diff(cvy, dt))
            l_a[:, 0] = l_a[:, 1]
        l_j = _diff(l_a, dt)
        n_la = np.where(n_l >= 2, n_l, 0)
        n_lj = n_la - 1
    return {"speed": _truncated(s_v, n_s, l_v, n_l),
            "accel": _truncated(s_a, n_s - 1, l_a, n_la),
            "jerk": _truncated(s_j, n_s - 2, l_j, n_lj)}


# ----------------------------------------------------------------------------------------------
# FDD


def _mean_pairwise(points: np.ndarray) -> np.ndarray:
    """Mean distance over unordered pairs of the sample axis -2: ``(..., S, 2) -> (...)``."""
    s = points.shape[-2]
    d = np.linalg.norm(points[..., :, None, :] - points[..., None, :, :], axis=-1)
    return d.sum(axis=(-1, -2)) / max(s * (s - 1), 1)


def fdd_of_plan_endpoints(endpoints: np.ndarray) -> float:
    """The script's FDD of one row from plan endpoints ``(N, T, S, 2)`` (agents, steps, sampled
    plans, xy): mean pairwise endpoint distance per agent and step (0 when ``S < 2``), averaged
    over agents, then over steps (l. 316-326, 433-440, 488)."""
    endpoints = np.asarray(endpoints, float)
    per = _mean_pairwise(endpoints) if endpoints.shape[2] >= 2 else np.zeros(endpoints.shape[:2])
    return float(per.mean(axis=0).mean())


# ----------------------------------------------------------------------------------------------
# The suite


def _rows(values: np.ndarray, definition: str, reason: str) -> Metric:
    """Mean over the defined (non-NaN) rows, as count = sum, total = number of rows."""
    values = np.asarray(values, float)
    ok = ~np.isnan(values)
    return Metric.ratio(values[ok].sum(), ok.sum(), definition, reason)


def blm_suite_metrics(rollout: Rollout, drivable: DrivableArea,
                      config: BLMSuiteConfig = BLMSuiteConfig()) -> dict[str, Metric]:
    """The BLM paper's metrics of one rollout (one scene, K samples = K rows), see the module docstring.

    ``drivable`` is the scene's drivable area; the off-road test rasterises its polygon at
    ``config.raster_resolution`` (1 m) once per object. Returns ``blm_collision_rate``,
    ``blm_offroad_rate``, ``blm_min_ttc_s``, ``blm_rss_lon_violations``,
    ``blm_rss_lat_violations``, ``blm_jsd_speed``, ``blm_jsd_accel``, ``blm_jsd_jerk`` and
    ``blm_fdd_m``; pool scenes with :meth:`Metric.pooled` (mean over rows, or over agent-steps
    with ``pool_by_agent_steps``).
    """
    cfg, r = config, rollout
    k, t0 = r.num_samples, 1 if cfg.simulated_steps_only else 0
    steps = r.num_steps - t0
    veh = r.is_vehicle
    ev = veh.copy() if cfg.all_vehicles else evaluated_agents(r)
    who = "vehicles" if cfg.all_vehicles else "controlled vehicles"
    none = f"no valid {who}"
    step_txt = "steps t = 1..T-1" if t0 else "every recorded step t = 0..T-1 (t = 0: logged initial state)"
    pool_txt = ("pooled over samples and scenes as counts / agent-steps" if cfg.pool_by_agent_steps else
                "one row per sample, rows averaged with equal weight (compute_csv.py)")
    agent_steps = _frames(r.valid, ev, t0).reshape(k, steps, -1).sum(axis=(1, 2)).astype(float)  # (K,)
    has_agents = agent_steps > 0

    stats = _pair_stats(r, cfg, veh, ev, t0)
    per = {name: v.reshape(k, steps) for name, v in stats.items()}
    collide_count = per["agents" if cfg.count_colliding_agents else "pairs"].sum(axis=1)
    collided = per["pairs"].sum(axis=1) > 0
    off_count = _offroad(r, blm_raster(drivable, cfg.raster_resolution), ev, t0).reshape(k, -1).sum(axis=1)

    def rate(count, definition):
        if cfg.pool_by_agent_steps:
            return Metric.ratio(count.sum(), agent_steps.sum(), definition, none)
        return _rows(np.where(has_agents, count / np.maximum(agent_steps, 1), np.nan), definition, none)

    unit = "evaluated agent-steps in contact" if cfg.count_colliding_agents else "colliding vehicle pairs (each once)"
    out = {
        "blm_collision_rate": rate(collide_count, (
            f"BLM ({_SCRIPT}): {unit} summed over {step_txt}, / valid agent-steps of the {who} (T x N); "
            f"pairs are valid vehicles with at least one of the {who}, oriented-box overlap; {pool_txt}")),
        "blm_offroad_rate": rate(off_count, (
            f"BLM ({_SCRIPT}): agent-steps where a {cfg.raster_resolution:g} m raster cell whose centre lies in the "
            f"box of one of the {who} is not drivable, over {step_txt}, / valid agent-steps (T x N); {pool_txt}")),
    }
    ttc_min = per["ttc"].min(axis=1, initial=np.inf)
    ttc_rows = np.where(collided, 0.0, np.where(np.isfinite(ttc_min), ttc_min, np.nan))
    ttc_rows = np.where(has_agents, ttc_rows, np.nan)
    velocity = ("simulated speed and heading" if cfg.state_velocity else
                "backward differences of positions (zero at t = 0)")
    contact = ", only pairs whose closest approach is within their half diagonals summed" if \
        cfg.ttc_require_contact else ""
    out["blm_min_ttc_s"] = _rows(ttc_rows, (
        f"BLM ({_SCRIPT}): per sample, minimum over {step_txt} and vehicle pairs of the time of closest approach "
        f"of the centre points (constant velocity from {velocity}, t* > 0, no horizon{contact}); 0 if the sample has "
        "any collision; mean over samples with an approaching pair"),
        "no approaching pair of valid vehicles and no collision")
    p = cfg.rss
    params = (f"rho {p.response_time:g} s, accel {p.a_max_accel:g}, min brake {p.a_min_brake:g}, max brake "
              f"{p.a_max_brake:g} m/s^2, mu {p.lateral_margin:g} m, lateral accel {p.a_lat_max_accel:g}, lateral brake "
              f"{p.a_lat_min_brake:g} m/s^2, lateral range {p.lateral_check_range:g} m")
    for side, name in (("lon", "longitudinal"), ("lat", "lateral")):
        counts = np.where(has_agents, per[f"rss_{side}"].sum(axis=1), np.nan)
        out[f"blm_rss_{side}_violations"] = _rows(counts, (
            f"BLM ({_SCRIPT}): number of RSS {name} violations per sample (each ordered vehicle pair at each of "
            f"{step_txt}; velocity from {velocity}; {params}), mean over samples"), none)

    # JSD, per agent, averaged over agents per sample.
    series = _kinematic_series(r, ev, cfg)
    kin_txt = ("log speed/accel/jerk differenced like the simulation's" if cfg.jsd_log_kinematics_like_sim else
               "log speed |v|, accel |a vector|, jerk d|a|/dt vs simulated signed speed, d(speed)/dt, d2(speed)/dt2")
    align_txt = ("at the same steps, where both are valid" if cfg.jsd_align_time_bases else
                 "each series from its own first valid step, cut to the shorter")
    units = {"speed": "m/s", "accel": "m/s^2", "jerk": "m/s^3"}
    for name, (log_vals, sim_vals, lengths) in series.items():
        jsd = jsd_kde_rows(log_vals, sim_vals, lengths, cfg).reshape(k, -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a sample whose agents all lack values: NaN
            per_sample = np.nanmean(jsd, axis=1) if jsd.shape[1] else np.full(k, np.nan)
        out[f"blm_jsd_{name}"] = _rows(per_sample, (
            f"BLM ({_SCRIPT}): Jensen-Shannon divergence (base 2, 0 = same, 1 = disjoint) between Gaussian KDEs "
            f"(bandwidth {cfg.kde_bandwidth:g} {units[name]}, {cfg.kde_grid_points} grid points over the combined "
            f"range +-{100 * cfg.kde_grid_margin:g} %) of one agent's simulated and logged {name} ({kin_txt}; "
            f"{align_txt}), mean over the {who} of a sample, then over samples"),
            f"no {name} values of {who} in both the simulation and the log")

    # FDD over the K closed-loop samples' final positions.
    all_valid = r.valid[:, ev].all(axis=0)  # (n_ev, T)
    keep = all_valid.any(axis=1)
    last = all_valid.shape[1] - 1 - np.argmax(all_valid[:, ::-1], axis=1)
    idx = np.flatnonzero(ev)[keep]
    pts = np.stack([r.x[:, idx, last[keep]], r.y[:, idx, last[keep]]], axis=-1).astype(float)  # (K, n, 2)
    fdd_def = (f"BLM ({_SCRIPT}): final displacement diversity, mean pairwise distance (m) between the final "
               f"positions of the K samples of each of the {who} (last step valid in all samples), mean over them; "
               "the script uses the endpoints of the policy's sampled plans at every step instead (see "
               "fdd_of_plan_endpoints); one row per scene")
    if not keep.any():
        out["blm_fdd_m"] = Metric.ratio(0, 0, fdd_def, f"no {who} valid at one step in every sample")
    elif k < 2 and cfg.fdd_undefined_single_sample:
        out["blm_fdd_m"] = Metric.ratio(0, 0, fdd_def, "FDD needs >= 2 samples per scene")
    else:
        value = float(_mean_pairwise(pts.transpose(1, 0, 2)).mean()) if k >= 2 else 0.0
        out["blm_fdd_m"] = Metric.ratio(value, 1, fdd_def)
    return out


__all__ = ["BLMRSSParams", "BLMSuiteConfig", "blm_raster", "blm_suite_metrics", "fdd_of_plan_endpoints",
           "jsd_kde_rows"]
