"""Ground-truth statistics of the real ScenarioNet data: drivable-area coverage, log overlaps, load time.

Prints one JSON object per dataset folder (default: ``nuscenes-mini`` and ``womd-sample`` under
``shared_data_dir()``). Definitions:

- ``moving_inside_raster`` / ``moving_inside_exact``: share of moving-vehicle log positions
  (valid steps of VEHICLE agents with |speed| > 1 m/s, ego included) inside the drivable area,
  by the 0.5 m raster and by exact shapely point-in-polygon; ``per_scene_inside_exact`` per scene.
- ``offroad_timesteps_movers`` / ``offroad_timesteps_parked``: valid vehicle-timesteps whose
  centre is outside the drivable area (raster), over valid vehicle-timesteps, for vehicles that
  exceed 1 m/s at some step / for those that never do (kerb-side and parking-lot cars).
- ``overlap_vehicle_timesteps``: vehicle-timesteps whose oriented box overlaps another vehicle's
  box (positive area), over valid vehicle-timesteps; ``overlap_vehicles``: vehicles that overlap
  at any step, over vehicles valid at some step. Computed with ``blm_gym.sim.geometry.boxes_overlap``
  and cross-checked pairwise with shapely (``shapely_disagreements``: vehicle-timesteps where the two differ).
- ``load_s``: seconds to build each scene from its pickle (cold: cache cleared), mean and max.

Usage: ``python benchmarks/data_stats.py [DATASET_FOLDER ...]``
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import shapely

from blm_gym.data import scenarionet
from blm_gym.data.scene import Scene
from blm_gym.data.source import shared_data_dir
from blm_gym.sim.geometry import box_corners, boxes_overlap

MOVING_SPEED = 1.0  # m/s


def shapely_overlaps(scene: Scene, agents: np.ndarray) -> np.ndarray:
    """Reference check: bool ``(A, T)``, box of agent ``agents[a]`` overlaps another of ``agents`` (shapely)."""
    tr = scene.traj.select(agents=agents)
    corners = box_corners(tr.x, tr.y, tr.heading, tr.length[:, None], tr.width[:, None])  # (A, T, 4, 2)
    out = np.zeros(tr.valid.shape, bool)
    for t in range(tr.num_steps):
        idx = np.flatnonzero(tr.valid[:, t])
        boxes = shapely.polygons(corners[idx, t].astype(float))
        i, j = shapely.STRtree(boxes).query(boxes, predicate="intersects")
        keep = i != j
        hit = shapely.area(shapely.intersection(boxes[i[keep]], boxes[j[keep]])) > 1e-9
        out[idx[i[keep][hit]], t] = True
    return out


def dataset_stats(root: Path) -> dict:
    src = scenarionet.ScenarioNetSource(root)
    inside_raster, inside_exact, per_scene, load_s = [], [], {}, []
    overlap_steps = valid_steps = overlap_agents = seen_agents = disagreements = 0
    offroad = {"movers": [], "parked": []}
    scenes_with_overlap = []
    for i in range(len(src)):
        scenarionet._load_scene_cached.cache_clear()
        t0 = time.perf_counter()
        scene = src.load(i)
        load_s.append(time.perf_counter() - t0)
        tr, area = scene.traj, scene.road.drivable
        moving = tr.valid & scene.is_vehicle[:, None] & (np.abs(tr.speed) > MOVING_SPEED)
        inside_raster.append(area.contains(tr.x[moving], tr.y[moving]))
        inside_exact.append(area.contains_exact(tr.x[moving], tr.y[moving]))
        per_scene[scene.scene_id] = round(float(inside_exact[-1].mean()), 4)

        veh = np.flatnonzero(scene.is_vehicle)
        v = tr.select(agents=veh)
        mover = (moving[veh].any(1))[:, None]
        for kind, rows in (("movers", v.valid & mover), ("parked", v.valid & ~mover)):
            offroad[kind].append(~area.contains(v.x[rows], v.y[rows]))
        # (T, A, A) over time: the geometry functions batch over leading dims
        hits = boxes_overlap(v.x.T, v.y.T, v.heading.T, v.length, v.width, v.valid.T).any(-1).T  # (A, T)
        disagreements += int((hits != shapely_overlaps(scene, veh)).sum())
        overlap_steps += int(hits.sum())
        valid_steps += int(v.valid.sum())
        overlap_agents += int(hits.any(1).sum())
        seen_agents += int(v.valid.any(1).sum())
        if hits.any():
            scenes_with_overlap.append(scene.scene_id)
    return {
        "dataset": root.name,
        "scenes": len(src),
        "moving_vehicle_positions": int(sum(len(a) for a in inside_exact)),
        "moving_inside_raster": round(float(np.concatenate(inside_raster).mean()), 4),
        "moving_inside_exact": round(float(np.concatenate(inside_exact).mean()), 4),
        "per_scene_inside_exact": per_scene,
        **{f"offroad_timesteps_{k}": round(float(np.concatenate(a).mean()), 4) for k, a in offroad.items()},
        "overlap_vehicle_timesteps": round(overlap_steps / max(valid_steps, 1), 5),
        "overlap_vehicles": round(overlap_agents / max(seen_agents, 1), 4),
        "vehicles": seen_agents,
        "scenes_with_overlap": scenes_with_overlap,
        "shapely_disagreements": disagreements,
        "load_s": {"mean": round(float(np.mean(load_s)), 3), "max": round(float(np.max(load_s)), 3)},
    }


def main(argv: list[str]) -> None:
    roots = [Path(a) for a in argv] or [shared_data_dir() / "nuscenes-mini", shared_data_dir() / "womd-sample"]
    for root in roots:
        print(json.dumps(dataset_stats(root)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
