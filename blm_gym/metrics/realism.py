"""Realism and diversity metrics: kinematic JSD (sim vs log), FDD, ADE/FDE to the log.

Kinematics of the evaluated agents (controlled vehicles, :mod:`blm_gym.metrics.common`):
speed at every valid simulated step; acceleration and jerk by finite differences of the speed
sampled every ``interval_s`` = 0.5 s from ``t = 0`` (nuScenes agents are linear interpolations of
2 Hz keyframes, so 0.1 s differences would be zero with spikes). Histograms use the fixed bins
of :data:`HIST_BINS`; values beyond the outer edges fall into the outer bins.
"""
from __future__ import annotations

import numpy as np

from blm_gym.metrics.common import Metric, evaluated_agents, evaluated_steps
from blm_gym.sim.record import Rollout

KINEMATICS_INTERVAL_S = 0.5
HIST_BINS = {
    "speed": np.linspace(0.0, 40.0, 41),  # m/s, 1 m/s bins
    "accel": np.linspace(-10.0, 10.0, 41),  # m/s^2, 0.5 m/s^2 bins
    "jerk": np.linspace(-20.0, 20.0, 41),  # m/s^3, 1 m/s^3 bins
}
JSD_DEFINITION = ("Jensen-Shannon divergence (natural log, 0 = same, ln 2 = 0.693 = disjoint) between the "
                  "histograms of the simulated and the logged {name} of controlled vehicles ({unit}, {lo:g}..{hi:g} "
                  "in {n} bins{extra})")
_UNITS = {"speed": "m/s", "accel": "m/s^2", "jerk": "m/s^3"}


def kinematic_values(r: Rollout, interval_s: float = KINEMATICS_INTERVAL_S) -> dict[str, np.ndarray]:
    """1-D arrays of the evaluated agents' speed, acceleration and jerk, pooled over samples."""
    stride = max(1, int(round(interval_s / r.dt)))
    h = stride * r.dt
    speed = r.speed[:, :, ::stride]
    ok = r.valid[:, :, ::stride] & evaluated_agents(r)[None, :, None]
    accel = np.diff(speed, axis=2) / h
    ok_a = ok[:, :, 1:] & ok[:, :, :-1]
    jerk = np.diff(accel, axis=2) / h
    ok_j = ok_a[:, :, 1:] & ok_a[:, :, :-1]
    return {"speed": r.speed[:, :, 1:][evaluated_steps(r)], "accel": accel[ok_a], "jerk": jerk[ok_j]}


def kinematic_histograms(r: Rollout, interval_s: float = KINEMATICS_INTERVAL_S) -> dict[str, np.ndarray]:
    """Counts ``(bins,)`` int64 per quantity over :data:`HIST_BINS`."""
    out = {}
    for name, values in kinematic_values(r, interval_s).items():
        edges = HIST_BINS[name]
        out[name] = np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0]
    return out


def jensen_shannon(p, q) -> float | None:
    """JSD (natural log) of two histograms of counts; None when either is empty."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def jsd_metrics(sim_hist: dict[str, np.ndarray], log_hist: dict[str, np.ndarray],
                interval_s: float = KINEMATICS_INTERVAL_S) -> dict[str, Metric]:
    """``jsd_speed``, ``jsd_accel``, ``jsd_jerk`` from histograms of :func:`kinematic_histograms`."""
    out = {}
    for name, edges in HIST_BINS.items():
        extra = "" if name == "speed" else f", differences over {interval_s:g} s"
        definition = JSD_DEFINITION.format(name=name, unit=_UNITS[name], lo=edges[0], hi=edges[-1],
                                           n=len(edges) - 1, extra=extra)
        value = jensen_shannon(sim_hist[name], log_hist[name])
        out[f"jsd_{name}"] = Metric(value, definition, reason=None if value is not None else
                                    f"no {name} samples of controlled vehicles in the simulation or the log")
    return out


def _last_valid(mask: np.ndarray) -> np.ndarray:
    """Index of the last True along the last axis (0 where none)."""
    return mask.shape[-1] - 1 - np.argmax(mask[..., ::-1], axis=-1)


def realism_metrics(r: Rollout) -> dict[str, Metric]:
    """FDD over the K samples and ADE/FDE to the log (min and mean over samples)."""
    x, y = r.x[:, :, 1:], r.y[:, :, 1:]
    # Agents valid in the simulation and the log at some simulated step, in every sample.
    both = evaluated_steps(r) & r.log.valid[None, :, 1:]
    agents = both.any(axis=2).all(axis=0)
    k, n = r.num_samples, int(agents.sum())
    m = both[:, agents]
    dist = np.hypot(x[:, agents] - r.log.x[None, agents, 1:], y[:, agents] - r.log.y[None, agents, 1:])
    ade = np.where(m, dist, 0.0).sum(axis=2) / np.maximum(m.sum(axis=2), 1)  # (K, n)
    fde = np.take_along_axis(dist, _last_valid(m)[..., None], axis=2)[..., 0]
    # FDD: positions at the last step valid in every sample, over the agents that have one.
    common = m.all(axis=0)  # (n, T - 1)
    last = _last_valid(common)
    fx, fy = x[:, agents, last], y[:, agents, last]  # (K, n)
    pair = np.hypot(fx[:, None] - fx[None], fy[:, None] - fy[None]).sum(axis=(0, 1)) / max(k * (k - 1), 1)
    n_fdd = int(common.any(axis=1).sum())
    fdd = "final displacement diversity: mean pairwise distance (m) between the final positions of the K " \
          "samples of a controlled vehicle (at its last step valid in every sample), averaged over vehicles"
    return {
        "fdd_m": (Metric.ratio(pair[common.any(axis=1)].sum(), n_fdd, fdd) if k > 1 else
                  Metric.ratio(0, 0, fdd, reason="FDD needs >= 2 samples per scene")),
        "min_ade_m": Metric.ratio(ade.min(axis=0).sum(), n, "average displacement error (m) to the log over "
                                  "simulated steps, best of the K samples, averaged over controlled vehicles"),
        "mean_ade_m": Metric.ratio(ade.mean(axis=0).sum(), n, "average displacement error (m) to the log over "
                                   "simulated steps, mean over the K samples and controlled vehicles"),
        "min_fde_m": Metric.ratio(fde.min(axis=0).sum(), n, "final displacement error (m) to the log at the last "
                                  "valid step, best of the K samples, averaged over controlled vehicles"),
        "mean_fde_m": Metric.ratio(fde.mean(axis=0).sum(), n, "final displacement error (m) to the log at the last "
                                   "valid step, mean over the K samples and controlled vehicles"),
    }
