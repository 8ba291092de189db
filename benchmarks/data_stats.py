"""Ground-truth statistics of every real data source: drivable-area coverage, off-road, overlaps, load time.

Prints one JSON object per dataset (default: every one whose folder exists under ``$BLM_GYM_DATA``, else
``../shared/data`` beside the repo):

| name | folder | source |
|---|---|---|
| ``nuscenes-mini`` | ``nuscenes-mini/`` | ScenarioNet pickles |
| ``womd-sample`` | ``womd-sample/`` | ScenarioNet pickles |
| ``womd-gpudrive`` | ``womd-gpudrive/`` | ScenarioNet pickles |
| ``womd-protos`` | ``womd-protos/`` | WOMD ``Scenario`` TFRecords (:mod:`blm_gym.data.womd_proto`) |
| ``interaction`` | ``interaction/`` | Lanelet2 + CSV, 9.1 s windows every 5 s (:mod:`blm_gym.data.interaction`) |
| ``av2-mf`` | ``av2-sample/motion-forecasting/`` | AV2 motion forecasting (:mod:`blm_gym.data.av2`) |
| ``av2-sensor`` | ``av2-sample/sensor-logs/`` | AV2 sensor-log annotations (:mod:`blm_gym.data.av2`) |
| ``commonroad`` | ``commonroad-ngsim/`` | CommonRoad XML (:mod:`blm_gym.data.commonroad`) |

Definitions (vehicles = agents of type VEHICLE, ego included; valid steps only):

- moving: a vehicle's step where both its recorded speed and its speed over a 1 s window of
  positions (centred, shrunk by gaps and track ends to no less than 0.5 s) exceed 1 m/s. The
  window drops parked cars whose recorded velocity (WOMD: up to 14 m/s while the box moves less
  than 1 m in 1 s) or 0.1 s position differences (AV2 sensor cuboids) are noise, and tracks seen
  for under 0.5 s; of the steps it drops, 7-20 % are off the drivable area (kerb sides, parking
  lots), against 0.4-3 % of those kept (WOMD, AV2 sensor, nuScenes).
- ``moving_inside_raster`` / ``moving_inside_exact``: share of moving-vehicle log positions
  inside the drivable area, by the 0.5 m raster and by exact shapely
  point-in-polygon. ``moving_inside_on_map``: the same (exact) over the positions inside the convex
  hull of the drivable area only -- maps cropped smaller than the tracks (AV2 motion forecasting)
  otherwise count the crop as off-road. ``goal``: 0.99 where the source has road edges or
  drivable polygons (all but nuScenes), 0.97 for nuScenes (lanes only); ``meets_goal`` compares
  ``moving_inside_exact``. ``moving_outside_by_distance``: shares of moving-vehicle positions outside
  by their distance to the drivable area (m): within 1 m (a map edge drawn tight, cars turning in or
  out of kerb-side spaces and driveways), 1-5 m and beyond 5 m (unmapped parking lots and private
  roads, roads beyond the map's crop).
- ``offroad_vehicle_timesteps``: valid vehicle-timesteps whose centre is outside the drivable area
  (raster), over valid vehicle-timesteps; ``offroad_timesteps_movers`` / ``_parked``: the same for
  vehicles moving (as above) at some step / never (kerb-side and parking-lot cars).
- ``overlap_vehicle_timesteps``: vehicle-timesteps whose oriented box overlaps another vehicle's
  box (positive area), over valid vehicle-timesteps; ``overlap_vehicles``: vehicles that overlap at
  any step, over vehicles valid at some step (``blm_gym.sim.geometry.boxes_overlap``);
  ``scenes_with_overlap``: their scene ids (a count above 20 scenes). With
  ``--crosscheck`` also recomputed pairwise with shapely (``shapely_disagreements``).
- ``per_scene_inside_exact``: per scene when there are at most 20 scenes, else the 5 lowest.
- ``load_s``: seconds per ``load()`` with the source's per-scene cache cleared (maps and
  recordings shared between scenes stay cached), mean and max.

Usage: ``python benchmarks/data_stats.py [NAME_OR_SCENARIONET_FOLDER ...] [--max-scenes N] [--crosscheck]``
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import shapely

from blm_gym.data import av2, commonroad, interaction, scenarionet, womd_proto
from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneSource
from blm_gym.sim.geometry import box_corners, boxes_overlap
from shared_data import SHARED_DATA

MOVING_SPEED = 1.0  # m/s
MOVING_WINDOW = 1.0  # s, span of positions that must confirm the recorded speed

# name -> (folder under the data root, source factory, per-scene caches to clear for a cold load, goal)
DATASETS: dict[str, tuple[str, Callable[[Path], SceneSource], tuple, float]] = {
    "nuscenes-mini": ("nuscenes-mini", scenarionet.ScenarioNetSource, (scenarionet._load_scene_cached,), 0.97),
    "womd-sample": ("womd-sample", scenarionet.ScenarioNetSource, (scenarionet._load_scene_cached,), 0.99),
    "womd-gpudrive": ("womd-gpudrive", scenarionet.ScenarioNetSource, (scenarionet._load_scene_cached,), 0.99),
    "womd-protos": ("womd-protos", womd_proto.WomdProtoSource, (womd_proto._scene_cached, womd_proto._parse_cached),
                    0.99),
    "interaction": ("interaction", interaction.InteractionSource, (), 0.99),
    "av2-mf": ("av2-sample/motion-forecasting", av2.Av2MotionForecastingSource, (av2._mf_scene, av2._map), 0.99),
    "av2-sensor": ("av2-sample/sensor-logs", av2.Av2SensorSource, (av2._sensor_scene, av2._map), 0.99),
    "commonroad": ("commonroad-ngsim", commonroad.CommonRoadSource, (commonroad._scene,), 0.99),
}


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


def moving_steps(scene: Scene) -> np.ndarray:
    """Bool ``(N, T)``: vehicle steps whose recorded |speed| and whose speed over a centred
    :data:`MOVING_WINDOW` s of positions exceed :data:`MOVING_SPEED` m/s. The window runs between
    the first and last valid steps of the vehicle inside it (gaps and track ends shrink it) and
    must span at least half of :data:`MOVING_WINDOW`."""
    tr = scene.traj
    half = max(int(round(MOVING_WINDOW / 2 / scene.dt)), 1)  # steps
    out = tr.valid & scene.is_vehicle[:, None] & (np.abs(tr.speed) > MOVING_SPEED)
    for a in np.flatnonzero(out.any(axis=1)):
        steps = np.flatnonzero(tr.valid[a])
        lo = steps[np.searchsorted(steps, steps - half)]
        hi = steps[np.searchsorted(steps, steps + half, side="right") - 1]
        span = hi - lo
        moved = np.hypot(tr.x[a, hi] - tr.x[a, lo], tr.y[a, hi] - tr.y[a, lo])
        out[a, steps] &= (span >= half) & (moved > MOVING_SPEED * span * scene.dt)
    return out


def dataset_stats(name: str, src: SceneSource, caches: tuple = (), goal: float = 0.99,
                  max_scenes: int | None = None, crosscheck: bool = False) -> dict:
    """The statistics of the module docstring over the first ``max_scenes`` scenes of ``src``."""
    count = len(src.scene_ids) if max_scenes is None else min(max_scenes, len(src.scene_ids))
    inside_raster, inside_exact, on_map, outside_m, per_scene, load_s = [], [], [], [], {}, []
    overlap_steps = valid_steps = overlap_agents = seen_agents = disagreements = 0
    offroad = {"movers": [], "parked": []}
    hulls: dict[int, object] = {}
    scenes_with_overlap = []
    for i in range(count):
        for cache in caches:
            cache.cache_clear()
        t0 = time.perf_counter()
        scene = src.load(i)
        load_s.append(time.perf_counter() - t0)
        tr, area = scene.traj, scene.road.drivable
        moving = moving_steps(scene)
        x, y = tr.x[moving], tr.y[moving]
        inside_raster.append(area.contains(x, y))
        exact = area.contains_exact(x, y)
        inside_exact.append(exact)
        outside_m.append(shapely.distance(area.polygon, shapely.points(x[~exact], y[~exact])))
        hull = hulls.setdefault(id(area.polygon), shapely.convex_hull(area.polygon))
        on_map.append(exact[shapely.contains_xy(hull, x, y)])
        per_scene[scene.scene_id] = round(float(exact.mean()), 4) if exact.size else None

        veh = np.flatnonzero(scene.is_vehicle)
        v = tr.select(agents=veh)
        mover = (moving[veh].any(1))[:, None]
        for kind, rows in (("movers", v.valid & mover), ("parked", v.valid & ~mover)):
            offroad[kind].append(~area.contains(v.x[rows], v.y[rows]))
        # (T, A, A) over time: the geometry functions batch over leading dims
        hits = boxes_overlap(v.x.T, v.y.T, v.heading.T, v.length, v.width, v.valid.T).any(-1).T  # (A, T)
        if crosscheck:
            disagreements += int((hits != shapely_overlaps(scene, veh)).sum())
        overlap_steps += int(hits.sum())
        valid_steps += int(v.valid.sum())
        overlap_agents += int(hits.any(1).sum())
        seen_agents += int(v.valid.any(1).sum())
        if hits.any():
            scenes_with_overlap.append(scene.scene_id)

    def share(parts):
        a = np.concatenate(parts) if parts else np.zeros(0)
        return round(float(a.mean()), 4) if a.size else None

    moving_inside = share(inside_exact)
    positions = int(sum(len(a) for a in inside_exact))
    # outside positions by distance to the drivable area: <= 1 m, 1-5 m, > 5 m
    by_distance = np.histogram(np.concatenate(outside_m), bins=(0.0, 1.0, 5.0, np.inf))[0] / max(positions, 1)
    if len(per_scene) > 20:
        per_scene = dict(sorted(((k, v) for k, v in per_scene.items() if v is not None), key=lambda kv: kv[1])[:5])
    out = {
        "dataset": name,
        "source": type(src).__name__,
        "scenes": count,
        "moving_vehicle_positions": positions,
        "moving_inside_raster": share(inside_raster),
        "moving_inside_exact": moving_inside,
        "moving_inside_on_map": share(on_map),
        "goal": goal,
        "meets_goal": moving_inside is not None and moving_inside >= goal,
        "moving_outside_by_distance": dict(zip(("<=1m", "1-5m", ">5m"), np.round(by_distance, 4).tolist())),
        "per_scene_inside_exact": per_scene,
        "offroad_vehicle_timesteps": share(offroad["movers"] + offroad["parked"]),
        **{f"offroad_timesteps_{k}": share(a) for k, a in offroad.items()},
        "overlap_vehicle_timesteps": round(overlap_steps / max(valid_steps, 1), 5),
        "overlap_vehicles": round(overlap_agents / max(seen_agents, 1), 4),
        "vehicles": seen_agents,
        "scenes_with_overlap": len(scenes_with_overlap) if count > 20 else scenes_with_overlap,
        "load_s": {"mean": round(float(np.mean(load_s)), 3), "max": round(float(np.max(load_s)), 3)},
    }
    if crosscheck:
        out["shapely_disagreements"] = disagreements
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="*", help=f"names ({', '.join(DATASETS)}) or ScenarioNet folders")
    parser.add_argument("--max-scenes", type=int, default=None, help="only the first N scenes of each dataset")
    parser.add_argument("--crosscheck", action="store_true", help="recompute box overlaps with shapely")
    args = parser.parse_args(argv)
    root = SHARED_DATA
    names = args.datasets or [n for n, (folder, *_) in DATASETS.items() if (root / folder).exists()]
    for name in names:
        if name in DATASETS:
            folder, factory, caches, goal = DATASETS[name]
            src = factory(root / folder)
        else:  # a ScenarioNet folder given by path (the original usage)
            src, caches, goal = scenarionet.ScenarioNetSource(Path(name)), (scenarionet._load_scene_cached,), 0.99
            name = Path(name).name
        print(json.dumps(dataset_stats(name, src, caches, goal, args.max_scenes, args.crosscheck)), flush=True)


if __name__ == "__main__":
    main()
