"""Exact speed-up of the official WOSAC map features (side venv), verified against the original.

The official v1.6.7 code measures every query point against *every* road-edge segment
(``map_metric_features._compute_signed_distance_to_polylines``) and every lane segment
(``traffic_light_features._get_nearest_lane_segment_index``) in one broadcast: on a WOMD scene
with ~100 road edges of up to ~600 points and 9 evaluated agents that is ~25-60 s and ~14 GB per
rollout on our 2-core machines. :func:`install` wraps both functions so that each calls the
*original* function on chunks of ~128 query points with only the polylines that can hold the
nearest segment of some point of the chunk:

- a polyline is dropped for a chunk only when, for every point of the chunk, a lower bound of
  its distance to that polyline (2-D distance to the polyline's bounding box; the official 3-D
  distance with z stretched x3 is never below the 2-D one) exceeds an upper bound of the point's
  distance to its nearest segment (from the 8 nearest vertices, bounding the z term by the
  segment's end points), plus a margin;
- the kept polylines keep their order and the padded point count of the full tensor, so the
  argmin (first minimum) and every per-segment number are the original's.

Every per-point number is computed by the original TensorFlow code, so results are unchanged;
:func:`verify` checks it (bit-for-bit equality of all ``MetricFeatures`` tensors, patched vs
unpatched) and ``golden_official.py`` runs it on several scenes before scoring.
"""
from __future__ import annotations

import numpy as np

CHUNK = 128
MARGIN = 1e-2  # m, on top of a relative 1e-4: float32 rounding of the official distances
_K_NEAREST_VERTICES = 8
_installed = {}


def _candidates(points_xy, points_z, polylines, z_stretch):
    """Bool (num_chunks, num_polylines) of the polylines each chunk of points must see.

    ``polylines``: numpy (P, S+1, 4) x, y, z, valid (the official padded tensor).
    """
    from scipy.spatial import cKDTree

    valid_pt = polylines[..., 3] > 0
    seg_valid = valid_pt[:, :-1] & valid_pt[:, 1:]
    p_idx, s_idx = np.nonzero(seg_valid)
    n_chunks = -(-len(points_xy) // CHUNK)
    if len(p_idx) == 0:
        return np.ones((n_chunks, len(polylines)), bool)
    # Upper bound of each point's distance to its nearest segment: for a segment (i, i+1),
    # the official 3-D distance at the 2-D projection is <= sqrt(d2(p, v_i)^2 + (s * max|dz|)^2).
    v_xy = polylines[p_idx, s_idx, :2].astype(np.float64)
    v_z0 = polylines[p_idx, s_idx, 2].astype(np.float64)
    v_z1 = polylines[p_idx, s_idx + 1, 2].astype(np.float64)
    k = min(_K_NEAREST_VERTICES, len(v_xy))
    d2, idx = cKDTree(v_xy).query(points_xy, k=k)
    d2, idx = d2.reshape(len(points_xy), k), idx.reshape(len(points_xy), k)
    dz = np.maximum(np.abs(points_z[:, None] - v_z0[idx]), np.abs(points_z[:, None] - v_z1[idx]))
    ub = np.sqrt(d2 ** 2 + (z_stretch * dz) ** 2).min(axis=1)  # (N,)
    ub = ub * (1 + 1e-4) + MARGIN
    # Lower bound: 2-D distance to each polyline's bounding box (valid points only).
    xy = np.where(valid_pt[..., None], polylines[..., :2], np.nan).astype(np.float64)
    has = valid_pt.any(axis=1)
    lo = np.where(has[:, None], np.nanmin(np.where(has[:, None, None], xy, 0.0), axis=1), np.inf)
    hi = np.where(has[:, None], np.nanmax(np.where(has[:, None, None], xy, 0.0), axis=1), -np.inf)
    out = np.zeros((n_chunks, len(polylines)), bool)
    for c in range(n_chunks):
        sl = slice(c * CHUNK, (c + 1) * CHUNK)
        p = points_xy[sl]
        gap = np.maximum(np.maximum(lo[None] - p[:, None], p[:, None] - hi[None]), 0.0)  # (n, P, 2)
        lb = np.hypot(gap[..., 0], gap[..., 1])
        out[c] = (lb <= ub[sl, None]).any(axis=0) & has
    return out


def install() -> None:
    """Wrap the two official nearest-segment functions (idempotent)."""
    import tensorflow as tf
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import map_metric_features as mmf
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import traffic_light_features as tlf

    if _installed:
        return
    orig_edge = mmf._compute_signed_distance_to_polylines
    orig_lane = tlf._get_nearest_lane_segment_index
    _installed.update(edge=orig_edge, lane=orig_lane)

    def signed_distance(xyzs, polylines, is_polyline_cyclic=None, z_stretch=1.0):
        pts = xyzs.numpy()
        lines = polylines.numpy()
        cyclic = (is_polyline_cyclic if is_polyline_cyclic is not None
                  else tf.zeros([lines.shape[0]], tf.bool))
        keep = _candidates(pts[:, :2].astype(np.float64), pts[:, 2].astype(np.float64), lines, z_stretch)
        parts = []
        for c in range(keep.shape[0]):
            sel = np.flatnonzero(keep[c])
            chunk = xyzs[c * CHUNK:(c + 1) * CHUNK]
            parts.append(orig_edge(xyzs=chunk, polylines=tf.gather(polylines, sel),
                                   is_polyline_cyclic=tf.gather(cyclic, sel), z_stretch=z_stretch))
        return tf.concat(parts, axis=0)

    def nearest_lane_segment(*, xy, lane_xyz_valid):
        if lane_xyz_valid.shape[0] != 1:  # the stop-point call: one lane per point, already small
            return orig_lane(xy=xy, lane_xyz_valid=lane_xyz_valid)
        pts = xy.numpy().astype(np.float64)
        lanes = lane_xyz_valid[0]
        keep = _candidates(pts, np.zeros(len(pts)), lanes.numpy(), 0.0)
        parts = []
        for c in range(keep.shape[0]):
            sel = np.flatnonzero(keep[c])
            res = orig_lane(xy=xy[c * CHUNK:(c + 1) * CHUNK], lane_xyz_valid=tf.gather(lanes, sel)[tf.newaxis])
            parts.append(tf.stack([tf.gather(tf.constant(sel, tf.int64), res[:, 0]), res[:, 1]], axis=1))
        return tf.concat(parts, axis=0)

    mmf._compute_signed_distance_to_polylines = signed_distance
    tlf._get_nearest_lane_segment_index = nearest_lane_segment


def uninstall() -> None:
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import map_metric_features as mmf
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import traffic_light_features as tlf

    if _installed:
        mmf._compute_signed_distance_to_polylines = _installed.pop("edge")
        tlf._get_nearest_lane_segment_index = _installed.pop("lane")


def features_equal(a, b) -> list[str]:
    """Names of the ``MetricFeatures`` fields that differ (NaN == NaN; bitwise otherwise)."""
    import dataclasses

    bad = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name).numpy(), getattr(b, f.name).numpy()
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            bad.append(f.name)
    return bad


def verify(scenario, joint_scene, challenge_type, use_log_validity=False) -> list[str]:
    """Compute features with and without the speed-up; return the fields that differ."""
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import metric_features as mf

    was = bool(_installed)
    install()
    fast = mf.compute_metric_features(scenario, joint_scene, challenge_type, use_log_validity=use_log_validity)
    uninstall()
    slow = mf.compute_metric_features(scenario, joint_scene, challenge_type, use_log_validity=use_log_validity)
    if was:
        install()
    return features_equal(fast, slow)


def main(argv=None) -> int:
    """``python fast_official.py --data-root R --scene REL --npz ROLLOUTS.npz``: verify in a process
    of its own (the unpatched official code peaks at ~15 GB on a heavy scene and TensorFlow keeps
    that memory until the process exits). Prints ``{"differ": [...]}`` as JSON."""
    import argparse
    import json
    import os
    import sys
    from pathlib import Path

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tensorflow as tf
    import womd_scenario as ws
    from waymo_open_dataset.utils.sim_agents import converters, submission_specs

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--scene", required=True)
    ap.add_argument("--npz", default=None, help="rollouts whose first joint scene is verified too")
    args = ap.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("WOSAC_TF_THREADS", "1")))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ct = submission_specs.ChallengeType.SIM_AGENTS
    scenario = ws.build_scenario(ws.load_scenarionet(Path(args.data_root) / args.scene))
    log_joint = converters.scenario_to_joint_scene(scenario, ct)
    differ = verify(scenario, log_joint, ct, use_log_validity=True)
    if args.npz:
        arr = np.load(args.npz)
        ids = ws.sim_agent_ids(scenario)
        first = ws.build_rollouts(scenario.scenario_id, ids, arr["x"][:1], arr["y"][:1], arr["z"][:1],
                                  arr["heading"][:1]).joint_scenes[0]
        differ += verify(scenario, first, ct)
    print(json.dumps({"differ": differ}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
