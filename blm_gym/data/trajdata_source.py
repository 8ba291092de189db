"""Raw driving logs (nuScenes, and the other datasets trajdata 1.4 reads) as blm_gym scenes.

trajdata (``UnifiedDataset``, scene-centric) parses the raw dataset once into its on-disk cache
and resamples agent tracks to ``dt`` (nuScenes keyframes are 2 Hz; 0.1 s steps are linear
interpolations). Each trajdata scene becomes a :class:`~blm_gym.data.scene.Scene`:

- agents: every track trajdata keeps (nuScenes: ``vehicle.*`` and ``human.*`` annotations seen
  at least twice) plus the AV, which trajdata names ``"ego"``;
- map: lane centrelines of trajdata's vector map within ``MAP_MARGIN`` of the agents; road edges
  are the boundaries of the map's road areas (nuScenes' ``drivable_area`` layer); the drivable
  area is the union of those road areas and the centrelines buffered ``LANE_HALF_WIDTH``, cut to
  the scene's window.

trajdata keys its cache by dataset name only, so each data root gets its own cache sub-folder:
pointing the same dataset name at another root never reads a stale cache.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import shapely

from blm_gym.data.scene import (
    DEFAULT_DT, AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines,
)
from blm_gym.data.source import resolve_data_dir

# nuScenes version folder -> trajdata dataset name, full release first (v1.0-test has no annotations).
NUSCENES_VERSIONS = {"v1.0-trainval": "nusc_trainval", "v1.0-mini": "nusc_mini"}
NUSCENES_DOWNLOAD = (
    "download nuScenes (e.g. v1.0-mini) and the map expansion pack v1.3 from https://www.nuscenes.org/download "
    "and unpack both into one folder (it then holds v1.0-mini/ and maps/expansion/)"
)
DEFAULT_CACHE_DIR = Path("~/.cache/blm_gym/trajdata")
MAP_MARGIN = 50.0  # m kept around the agents' positions
LANE_HALF_WIDTH = 2.0  # m; as for nuScenes-in-ScenarioNet, which has no lane widths
RASTER_RESOLUTION = 0.5  # m per drivable-area raster cell
SCENE_CACHE_SIZE = 32  # built scenes kept in memory per source
# Indexed by trajdata's AgentType (UNKNOWN, VEHICLE, PEDESTRIAN, BICYCLE, MOTORCYCLE).
_AGENT_TYPES = np.array(
    [AgentType.UNKNOWN, AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.CYCLIST, AgentType.CYCLIST], np.int8
)
_MAP_PARAMS = dict(incl_road_lanes=True, incl_road_areas=True, incl_ped_crosswalks=False, incl_ped_walkways=False)


def detect_raw_nuscenes(path: str | os.PathLike) -> str | None:
    """trajdata's dataset name for a raw nuScenes root (``"nusc_trainval"``, ``"nusc_mini"``), else None.

    A root holds ``v1.0-<version>/scene.json``; when it holds several versions the full release wins.
    """
    root = Path(path).expanduser()
    return next((name for folder, name in NUSCENES_VERSIONS.items() if (root / folder / "scene.json").is_file()), None)


class TrajdataSource:
    """A :class:`~blm_gym.data.source.SceneSource` over a raw dataset read by trajdata.

    Args:
        data_dir: the dataset root (nuScenes: the folder holding ``v1.0-*/`` and ``maps/``);
            None reads ``$BLM_GYM_DATA``.
        dataset: trajdata's dataset name (``"nusc_mini"``, ``"nusc_trainval"``, ``"nuplan_mini"``, ...);
            None detects the nuScenes version from ``data_dir``.
        cache_dir: trajdata's cache (default ``~/.cache/blm_gym/trajdata``); the first use parses the
            raw data into it (seconds for v1.0-mini, minutes for v1.0-trainval).
        split: a trajdata split tag, e.g. ``"mini_val"`` or ``"train"``; None takes every scene.
        dt: time step in seconds; must divide the dataset's own step (nuScenes: 0.5 s).
        scene_ids: keep only these scenes (e.g. ``["scene-0103"]``), in this order.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None,
        dataset: str | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        split: str | None = None,
        dt: float = DEFAULT_DT,
        scene_ids: Sequence[str] | None = None,
    ):
        from trajdata import MapAPI, UnifiedDataset  # heavy import, only when used

        root = resolve_data_dir(data_dir, f"raw driving data read by trajdata ({NUSCENES_DOWNLOAD})")
        dataset = dataset or detect_raw_nuscenes(root)
        version = None if dataset is None else "v1.0-" + dataset.removeprefix("nusc_")
        if dataset is None or (dataset.startswith("nusc") and not (root / version / "scene.json").is_file()):
            hint = f"; pass its parent folder {root.parent}" if root.name.startswith("v1.0-") else ""
            raise ValueError(
                f"{root} is not a raw nuScenes root for {dataset or 'any nuScenes version'}: it has no "
                f"{version or ' or '.join(NUSCENES_VERSIONS)}/scene.json{hint}. To get one, {NUSCENES_DOWNLOAD}. "
                "For another trajdata dataset pass dataset=... (e.g. 'nuplan_mini')."
            )
        if dataset.startswith("nusc") and not (root / "maps" / "expansion").is_dir():
            raise FileNotFoundError(f"{root / 'maps' / 'expansion'} is missing; {NUSCENES_DOWNLOAD}.")
        root_key = hashlib.md5(str(root.resolve()).encode()).hexdigest()[:10]
        cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / f"{dataset}-{root_key}"

        self.name = f"trajdata:{dataset}"
        self.dt = float(dt)
        self._dataset = UnifiedDataset(
            desired_data=[dataset if split is None else f"{dataset}-{split}"],
            data_dirs={dataset: str(root)},
            cache_location=str(cache),
            centric="scene",
            desired_dt=self.dt,
            require_map_cache=True,  # maps are cached with the data; we read them through MapAPI
            num_workers=0,
            verbose=False,
        )
        self._maps = MapAPI(self._dataset.cache_path, keep_in_memory=True)
        names = [self._dataset.get_scene(i).name for i in range(self._dataset.num_scenes())]
        if not names:
            raise ValueError(f"trajdata found no scenes for dataset {dataset!r}, split {split!r} in {root}")
        if scene_ids is None:
            self._indices = list(range(len(names)))
        else:
            missing = sorted(set(scene_ids) - set(names))
            if missing:
                raise ValueError(f"scenes {missing} are not in {self.name} (split {split!r}); it has {names}")
            self._indices = [names.index(s) for s in scene_ids]
        self._scene_ids = tuple(names[i] for i in self._indices)
        self._build_cached = functools.lru_cache(maxsize=SCENE_CACHE_SIZE)(self._build)

    @property
    def scene_ids(self) -> tuple[str, ...]:
        return self._scene_ids

    def __len__(self) -> int:
        return len(self._scene_ids)

    def load(self, index: int) -> Scene:
        """Scene ``index`` at ``dt`` (built once, then kept in a small in-memory cache)."""
        if not 0 <= index < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} scenes of {self.name}")
        return self._build_cached(index)

    def _build(self, index: int) -> Scene:
        tscene = self._dataset.get_scene(self._indices[index])
        frame = self._dataset.cache_class(self._dataset.cache_path, tscene).scene_data_df
        names = [a.name for a in tscene.agents]
        if "ego" not in names:
            raise ValueError(f"{tscene.name} of {self.name} has no 'ego' agent; blm_gym scenes need the AV's track")
        row = pd.Index(names).get_indexer(frame.index.get_level_values("agent_id"))
        col = frame.index.get_level_values("scene_ts").to_numpy()
        shape = (len(names), tscene.length_timesteps)

        def grid(column: str) -> np.ndarray:
            out = np.full(shape, np.nan)
            out[row, col] = frame[column].to_numpy(float)
            return out

        x, y, heading, vx, vy = (grid(c) for c in ("x", "y", "heading", "vx", "vy"))
        valid = np.isfinite(x) & np.isfinite(y) & np.isfinite(heading)
        speed = np.nan_to_num(vx * np.cos(heading) + vy * np.sin(heading))
        length, width = _extents(tscene.agents, frame, grid)
        traj = Trajectories.from_states(
            np.where(valid, x, 0.0), np.where(valid, y, 0.0), np.where(valid, heading, 0.0),
            np.where(valid, speed, 0.0), length, width, valid,
        )
        vec_map = None if tscene.location is None else self._maps.get_map(
            f"{tscene.env_name}:{tscene.location}", **_MAP_PARAMS)
        return Scene(
            scene_id=tscene.name,
            source="nuscenes" if tscene.env_name.startswith("nusc") else tscene.env_name.split("_")[0],
            dt=self.dt,
            agent_ids=tuple(names),
            agent_type=_AGENT_TYPES[[int(a.type) for a in tscene.agents]],
            ego_index=names.index("ego"),
            traj=traj,
            road=road_map_near(vec_map, traj.xy[valid]),
        )


def _extents(agents, frame, grid) -> tuple[np.ndarray, np.ndarray]:
    """Per-agent ``(length, width)`` (N,): trajdata's fixed extents, else the median of per-step columns."""
    if {"length", "width"} <= set(frame.columns):  # every agent has rows, so no all-NaN median
        return np.nanmedian(grid("length"), axis=1), np.nanmedian(grid("width"), axis=1)
    return (np.array([a.extent.length for a in agents], float), np.array([a.extent.width for a in agents], float))


def road_map_near(vec_map, points: np.ndarray, margin: float = MAP_MARGIN) -> RoadMap:
    """The part of a trajdata ``VectorMap`` (or None: no map) within ``margin`` metres of ``points`` (K, 2).

    Lanes are whole lane centrelines that come near the window; road edges and the drivable
    area are cut to the window (the bounding box of ``points`` grown by ``margin``).
    """
    from trajdata.maps.vec_map_elements import MapElementType

    if vec_map is None or len(points) == 0:
        no_lines = pad_polylines([])
        return RoadMap(*no_lines, *no_lines, DrivableArea.from_geometry(shapely.Polygon(), RASTER_RESOLUTION))
    lo, hi = points.min(axis=0) - margin, points.max(axis=0) + margin
    center, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)
    window = shapely.box(*lo, *hi)

    lanes = vec_map.get_lanes_within(np.append(center, 0.0), radius)
    centerlines = [c for c in (lane.center.points[:, :2] for lane in lanes) if len(c) >= 2]
    lane_area = ()
    if centerlines:
        lines = shapely.linestrings(np.concatenate(centerlines), indices=np.repeat(
            np.arange(len(centerlines)), [len(c) for c in centerlines]))
        lane_area = shapely.buffer(lines, LANE_HALF_WIDTH, cap_style="flat")  # a lane ends where the next starts

    has_areas = bool(vec_map.elements.get(MapElementType.ROAD_AREA))
    areas = vec_map.get_areas_within(center, MapElementType.ROAD_AREA, radius) if has_areas else []
    polygons = [shapely.Polygon(a.exterior_polygon.points[:, :2], [h.points[:, :2] for h in a.interior_holes])
                for a in areas]
    road_area = shapely.union_all(shapely.make_valid(polygons)) if polygons else shapely.Polygon()
    drivable = shapely.intersection(shapely.union_all([road_area, *lane_area]), window)

    # Edges are the road area's own boundary; cutting the boundary (not the area) adds no window sides.
    edge_parts = shapely.get_parts(shapely.intersection(road_area.boundary, window)) if polygons else []
    edges = [shapely.get_coordinates(p) for p in edge_parts if p.geom_type == "LineString" and len(p.coords) >= 2]
    drivable_area = DrivableArea.from_geometry(drivable, RASTER_RESOLUTION)
    return RoadMap(*pad_polylines(centerlines), *pad_polylines(edges), drivable_area)
