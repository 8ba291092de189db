"""Scenes from Argoverse 2: motion-forecasting scenarios and sensor-log annotations (pyarrow only).

Two layouts are read, each by its own source:

- :class:`Av2MotionForecastingSource`: ``data_dir`` holds scenario folders (the AV2 motion-forecasting
  download: ``train/<id>/scenario_<id>.parquet`` + ``log_map_archive_<id>.json``), found recursively;
  or ``data_dir`` is one such folder. Parquet columns used: ``track_id, object_type, timestep,
  position_x, position_y, heading, velocity_x, velocity_y, observed, object_category,
  num_timestamps``. 110 steps at 0.1 s (the first 50 observed). Scene id = scenario id. Ego =
  track ``"AV"``. Where :class:`~blm_gym.data.scene.Scene` has the optional extras:
  ``current_index`` = the last observed step (49), ``tracks_to_predict`` = the focal and scored
  tracks (``object_category`` 3 and 2).
- :class:`Av2SensorSource`: ``data_dir`` holds log folders (the AV2 sensor / LiDAR download:
  ``<log id>/annotations.feather`` -- or ``annotations_with_ego.feather`` --,
  ``<log id>/city_SE3_egovehicle.feather``, ``<log id>/map/log_map_archive_*.json``), or is one
  log folder. Cuboids (``tx_m, ty_m, tz_m, qw, qx, qy, qz, length_m, width_m, category,
  track_uuid, timestamp_ns``) are in the ego frame of their LiDAR sweep and are mapped to the city
  frame with the ego pose of the same timestamp. One step per annotated sweep (10 Hz; the
  sweeps are 96-104 ms apart and are not resampled: ``dt`` is 0.1). Velocities are central
  differences of the city positions over the true timestamps. Scene id = log id. Ego = the AV,
  built from the poses (agent id ``"AV"``; extents 4.877 x 2.0 m, the AV2 vehicle as
  ``annotations_with_ego.feather`` gives it; its ``EGO_VEHICLE`` rows are replaced by the poses).

:func:`detect_layouts` tells which of the two a folder holds (both for a folder with
``motion-forecasting/`` and ``sensor-logs/``); the registry's ``av2`` kind opens what it finds.

Map (both): ``drivable_areas`` polygons are the drivable area (their union); lane centerlines
come from ``lane_segments`` (``centerline`` when the archive has it, else the midline of the left
and right lane boundaries); the outlines of the drivable areas are the road edges.

Motion-forecasting tracks have no box sizes: extents are :data:`MF_EXTENTS` by type (the AV2
devkit draws vehicles 4.0 x 2.0 m and cyclists 2.0 x 0.7 m; buses and others are our estimates).

The ``av2`` package would install beside our pins (checked with ``pip install --dry-run``) but
pulls in polars, PyAV and nox; reading the files with pyarrow needs none of that.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import shapely

from blm_gym.data.build import (IndexedSource, first_rows, known_fields, lanelet_centerline, outline_polylines,
                                road_map, scatter_grid, select_entries, union_or_empty)
from blm_gym.data.safe_pickle import CorruptSceneFileError
from blm_gym.data.scene import DEFAULT_DT, AgentType, RoadMap, Scene, Trajectories
from blm_gym.data.source import resolve_data_dir

EGO_ID = "AV"
AV2_EGO_EXTENT = (4.877, 2.0)  # m, length x width of the AV2 vehicle (annotations_with_ego.feather)

# motion forecasting ObjectType -> AgentType
MF_TYPES = {
    "vehicle": AgentType.VEHICLE, "bus": AgentType.VEHICLE, "pedestrian": AgentType.PEDESTRIAN,
    "cyclist": AgentType.CYCLIST, "motorcyclist": AgentType.CYCLIST, "riderless_bicycle": AgentType.STATIC,
    "static": AgentType.STATIC, "background": AgentType.STATIC, "construction": AgentType.STATIC,
}
# motion forecasting boxes (m, length x width) by ObjectType; the AV uses AV2_EGO_EXTENT
MF_EXTENTS = {"vehicle": (4.0, 2.0), "bus": (12.0, 2.6), "cyclist": (2.0, 0.7), "motorcyclist": (2.0, 0.8),
              "riderless_bicycle": (1.8, 0.6), "pedestrian": (0.6, 0.6)}
MF_DEFAULT_EXTENT = (1.0, 1.0)

# sensor annotation category -> AgentType (riders and their bicycles / motorcycles are separate boxes)
SENSOR_TYPES = {
    **{c: AgentType.VEHICLE for c in (
        "REGULAR_VEHICLE", "LARGE_VEHICLE", "BUS", "BOX_TRUCK", "TRUCK", "TRUCK_CAB", "VEHICULAR_TRAILER",
        "SCHOOL_BUS", "ARTICULATED_BUS", "RAILED_VEHICLE", "MESSAGE_BOARD_TRAILER", "EGO_VEHICLE")},
    **{c: AgentType.PEDESTRIAN for c in ("PEDESTRIAN", "STROLLER", "WHEELCHAIR", "OFFICIAL_SIGNALER")},
    **{c: AgentType.CYCLIST for c in (
        "BICYCLE", "BICYCLIST", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE", "WHEELED_RIDER")},
    **{c: AgentType.STATIC for c in (
        "BOLLARD", "CONSTRUCTION_CONE", "CONSTRUCTION_BARREL", "SIGN", "STOP_SIGN",
        "MOBILE_PEDESTRIAN_CROSSING_SIGN", "MOBILE_PEDESTRIAN_SIGN", "TRAFFIC_LIGHT_TRAILER")},
}

MF_COLUMNS = ("track_id", "object_type", "timestep", "position_x", "position_y", "heading", "velocity_x",
              "velocity_y", "num_timestamps", "observed", "object_category")
MF_SCORED_CATEGORIES = (2, 3)  # object_category: 0 fragment, 1 unscored, 2 scored, 3 focal
ANNOTATION_COLUMNS = ("timestamp_ns", "track_uuid", "category", "length_m", "width_m", "tx_m", "ty_m", "tz_m",
                      "qw", "qx", "qy", "qz")
POSE_COLUMNS = ("timestamp_ns", "tx_m", "ty_m", "tz_m", "qw", "qx", "qy", "qz")


class CorruptAv2FileError(CorruptSceneFileError):
    """An Argoverse 2 parquet / feather / map file is unreadable or lacks required columns."""


# --- files --------------------------------------------------------------------------------------

def _read_table(path: Path, columns: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """``columns`` of a parquet / feather file as numpy arrays; clear errors for a bad file."""
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else feather.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptAv2FileError(f"{path}: unreadable {what} ({e}); re-download the Argoverse 2 file") from e
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise CorruptAv2FileError(f"{path}: {what} lacks columns {missing} (has {table.column_names})")
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def read_map_archive(path: Path) -> RoadMap:
    """Road map of an AV2 ``log_map_archive_*.json`` (city frame, metres)."""
    try:
        archive = json.loads(Path(path).read_text())
        areas = [_xy(a["area_boundary"]) for a in archive["drivable_areas"].values()]
        lanes = [_lane_centerline(s) for s in archive["lane_segments"].values()]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptAv2FileError(f"{path}: malformed AV2 map archive ({type(e).__name__}: {e}); expected "
                                  "'drivable_areas' with 'area_boundary' and 'lane_segments'") from e
    drivable = union_or_empty([shapely.make_valid(shapely.Polygon(a)) for a in areas if len(a) > 2])
    return road_map([c for c in lanes if len(c) > 1], outline_polylines(drivable), drivable)


def _xy(points: list[dict]) -> np.ndarray:
    return np.array([[p["x"], p["y"]] for p in points], float).reshape(-1, 2)


def _lane_centerline(segment: dict) -> np.ndarray:
    if segment.get("centerline"):
        return _xy(segment["centerline"])
    left, right = _xy(segment["left_lane_boundary"]), _xy(segment["right_lane_boundary"])
    return lanelet_centerline(left, right, 20)


def _find_map(folder: Path) -> Path:
    found = sorted(folder.glob("log_map_archive_*.json")) or sorted(folder.glob("map/log_map_archive_*.json"))
    if not found:
        raise FileNotFoundError(f"No log_map_archive_*.json in {folder} (or {folder / 'map'}); every AV2 scenario / "
                                "log folder ships its map archive: copy it along")
    return found[0]


MF_FOLDER, SENSOR_FOLDER = "motion-forecasting", "sensor-logs"  # the sub-folders of a combined AV2 folder
LAYOUTS = ("motion_forecasting", "sensor")
MF_PATTERNS = ("scenario_*.parquet", "*/scenario_*.parquet", "*/*/scenario_*.parquet")


def detect_layouts(root: Path) -> dict[str, Path]:
    """The AV2 layouts under ``root``: ``{"motion_forecasting": folder, "sensor": folder}``, each
    present one (empty when neither is).

    A folder holding ``motion-forecasting/`` and / or ``sensor-logs/`` gives those sub-folders;
    else ``root`` is a motion-forecasting folder when it holds ``scenario_*.parquet`` up to 3
    levels down (``train/<id>/``, ``<id>/`` or the scenario folder itself) and a sensor folder when
    it, or a child folder, holds ``city_SE3_egovehicle.feather``. Only file names are looked at.
    """
    root = Path(root)
    found = {layout: root / sub for layout, sub in zip(LAYOUTS, (MF_FOLDER, SENSOR_FOLDER)) if (root / sub).is_dir()}
    if found or not root.is_dir():
        return found
    if any(next(root.glob(pattern), None) for pattern in MF_PATTERNS):
        found["motion_forecasting"] = root
    if (root / "city_SE3_egovehicle.feather").is_file() or next(root.glob("*/city_SE3_egovehicle.feather"), None):
        found["sensor"] = root
    return found


# --- motion forecasting -------------------------------------------------------------------------

def scene_from_mf_scenario(parquet: Path, road: RoadMap) -> Scene:
    """The scene of one motion-forecasting ``scenario_<id>.parquet`` (ego = track ``"AV"``)."""
    cols = _read_table(parquet, MF_COLUMNS, "AV2 motion-forecasting scenario")
    num_steps = int(cols["num_timestamps"].max()) if len(cols["num_timestamps"]) else 0
    step = cols["timestep"].astype(np.int64)
    if num_steps < 1 or step.min(initial=0) < 0 or step.max(initial=0) >= num_steps:
        raise CorruptAv2FileError(f"{parquet}: timestep outside 0 .. num_timestamps - 1")
    ids, agent = np.unique(cols["track_id"].astype(str), return_inverse=True)
    if EGO_ID not in ids:
        raise CorruptAv2FileError(f"{parquet}: no track '{EGO_ID}' (the ego vehicle) in the scenario")
    n = len(ids)
    kinds = cols["object_type"].astype(str)[first_rows(agent, n)]

    def grid(values):
        return scatter_grid(agent, step, values, (n, num_steps))

    valid = np.zeros((n, num_steps), bool)
    valid[agent, step] = True
    heading, vx, vy = grid(cols["heading"]), grid(cols["velocity_x"]), grid(cols["velocity_y"])
    ego = int(np.flatnonzero(ids == EGO_ID)[0])
    extents = np.array([MF_EXTENTS.get(k, MF_DEFAULT_EXTENT) for k in kinds], float).reshape(n, 2)
    extents[ego] = AV2_EGO_EXTENT
    traj = Trajectories.from_states(
        x=grid(cols["position_x"]), y=grid(cols["position_y"]), heading=heading,
        speed=vx * np.cos(heading) + vy * np.sin(heading), length=extents[:, 0], width=extents[:, 1], valid=valid,
    )
    agent_type = np.array([MF_TYPES.get(k, AgentType.UNKNOWN) for k in kinds], np.int8)
    agent_type[ego] = AgentType.VEHICLE
    # optional extras (where scene.py has them): the last observed step; the focal + scored tracks
    observed = cols["observed"].astype(bool)
    current = int(step[observed].max()) if observed.any() else None
    scored = np.zeros(n, bool)
    scored[agent[np.isin(cols["object_category"], MF_SCORED_CATEGORIES)]] = True
    extras = {"current_index": current, "tracks_to_predict": tuple(int(i) for i in np.flatnonzero(scored))}
    return Scene(scene_id=parquet.stem.removeprefix("scenario_"), source="av2-motion-forecasting", dt=DEFAULT_DT,
                 agent_ids=tuple(ids), agent_type=agent_type, ego_index=ego, traj=traj, road=road,
                 **known_fields(Scene, extras))


class Av2MotionForecastingSource(IndexedSource[Path]):
    """A :class:`~blm_gym.data.source.SceneSource` over AV2 motion-forecasting scenario folders.

    ``data_dir``: a split folder (``train/``, ``val/``: searched recursively for
    ``scenario_*.parquet``) or one scenario folder (None: ``$BLM_GYM_DATA``). ``scene_ids``: keep
    only these scenario ids, in the given order.
    """

    name, noun = "av2-motion-forecasting", "scenarios"

    def __init__(self, data_dir: str | os.PathLike | None, *, scene_ids: Sequence[str] | None = None):
        root = resolve_data_dir(data_dir, "Argoverse 2 motion-forecasting scenarios")
        files = {p.stem.removeprefix("scenario_"): p for p in sorted(root.rglob("scenario_*.parquet"))}
        if not files:
            raise FileNotFoundError(
                f"No AV2 motion-forecasting scenarios (scenario_<id>.parquet) under {root}; point data_dir at a "
                "folder of the av2 motion-forecasting download (e.g. .../motion-forecasting/train)")
        self.root, self._entries = root, select_entries(files, scene_ids, root, "scenario ids")

    def load(self, index: int) -> Scene:
        """Scenario ``index`` (cached)."""
        path = self.entry(index)[1]
        return _mf_scene(path, _find_map(path.parent))


@functools.lru_cache(maxsize=32)
def _mf_scene(parquet: Path, map_path: Path) -> Scene:
    return scene_from_mf_scenario(parquet, _map(map_path))


@functools.lru_cache(maxsize=32)
def _map(path: Path) -> RoadMap:
    return read_map_archive(path)


# --- sensor logs --------------------------------------------------------------------------------

def quaternion_yaw(qw, qx, qy, qz) -> np.ndarray:
    """Yaw (rad, about +z) of unit quaternions ``(w, x, y, z)``."""
    return np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))


def quaternion_matrix(qw, qx, qy, qz) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``(w, x, y, z)``."""
    qw, qx, qy, qz = (np.asarray(q, float) for q in (qw, qx, qy, qz))
    return np.stack([
        np.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)], -1),
        np.stack([2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)], -1),
        np.stack([2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)], -1),
    ], -2)


def scene_from_sensor_log(log_dir: Path, road: RoadMap) -> Scene:
    """The scene of one AV2 sensor log: every annotated sweep a step, cuboids in the city frame."""
    ann_path = next((p for p in (log_dir / "annotations.feather", log_dir / "annotations_with_ego.feather")
                     if p.is_file()), None)
    if ann_path is None:
        raise FileNotFoundError(f"{log_dir}: no annotations.feather (or annotations_with_ego.feather); the AV2 "
                                "sensor download has one per log")
    ann = _read_table(ann_path, ANNOTATION_COLUMNS, "AV2 annotations")
    pose_path = log_dir / "city_SE3_egovehicle.feather"
    if not pose_path.is_file():
        raise FileNotFoundError(f"{pose_path} is missing: the ego poses are needed to map the cuboids "
                                "(ego frame) to the city frame")
    poses = _read_table(pose_path, POSE_COLUMNS, "AV2 ego poses")
    category = ann["category"].astype(str)
    ego_rows = category == "EGO_VEHICLE"
    ego_extent = (float(ann["length_m"][ego_rows][0]), float(ann["width_m"][ego_rows][0])) if ego_rows.any() \
        else AV2_EGO_EXTENT
    ann = {k: v[~ego_rows] for k, v in ann.items()}
    category = category[~ego_rows]

    frames = np.unique(ann["timestamp_ns"])
    if not len(frames):
        raise CorruptAv2FileError(f"{ann_path}: no annotations")
    # the pose at each sweep (exact timestamp in AV2; else the nearest within 50 ms)
    order = np.argsort(poses["timestamp_ns"])
    pose_t = poses["timestamp_ns"][order]
    j = np.clip(np.searchsorted(pose_t, frames), 1, len(pose_t) - 1)
    j = np.where(np.abs(pose_t[j - 1] - frames) <= np.abs(pose_t[j] - frames), j - 1, j)
    if np.abs(pose_t[j] - frames).max() > 50_000_000:
        raise CorruptAv2FileError(f"{pose_path}: no ego pose within 50 ms of some annotated sweep")
    pose = {k: poses[k][order][j] for k in POSE_COLUMNS}  # (F,)
    rot = quaternion_matrix(pose["qw"], pose["qx"], pose["qy"], pose["qz"])  # (F, 3, 3) city <- ego
    trans = np.stack([pose["tx_m"], pose["ty_m"], pose["tz_m"]], -1)  # (F, 3)

    f = np.searchsorted(frames, ann["timestamp_ns"])
    local = np.stack([ann["tx_m"], ann["ty_m"], ann["tz_m"]], -1)
    city = np.einsum("nij,nj->ni", rot[f], local) + trans[f]
    obj_rot = quaternion_matrix(ann["qw"], ann["qx"], ann["qy"], ann["qz"])
    city_rot = rot[f] @ obj_rot
    yaw = np.arctan2(city_rot[:, 1, 0], city_rot[:, 0, 0])

    ids, agent = np.unique(ann["track_uuid"].astype(str), return_inverse=True)
    n, num_steps = len(ids) + 1, len(frames)  # + the ego, last
    valid = np.zeros((n, num_steps), bool)
    x, y, heading = (np.zeros((n, num_steps)) for _ in range(3))
    valid[agent, f] = True
    x[agent, f], y[agent, f], heading[agent, f] = city[:, 0], city[:, 1], yaw
    valid[-1] = True
    x[-1], y[-1] = trans[:, 0], trans[:, 1]
    heading[-1] = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    length, width = np.zeros(n), np.zeros(n)
    np.maximum.at(length, agent, ann["length_m"])  # AV2 boxes are constant per track; max is robust
    np.maximum.at(width, agent, ann["width_m"])
    length[-1], width[-1] = ego_extent
    agent_type = np.array([SENSOR_TYPES.get(c, AgentType.UNKNOWN) for c in category[first_rows(agent, len(ids))]]
                          + [AgentType.VEHICLE], np.int8)
    t = (frames - frames[0]) * 1e-9
    vx, vy = _velocity(x, valid, t), _velocity(y, valid, t)
    traj = Trajectories.from_states(x=x, y=y, heading=heading, speed=vx * np.cos(heading) + vy * np.sin(heading),
                                    length=length, width=width, valid=valid)
    return Scene(scene_id=log_dir.name, source="av2-sensor", dt=DEFAULT_DT, agent_ids=(*ids, EGO_ID),
                 agent_type=agent_type, ego_index=n - 1, traj=traj, road=road)


def _velocity(pos: np.ndarray, valid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """d pos / d t ``(N, T)`` by central differences where both neighbours are valid, one-sided
    where only one is, 0 for isolated steps; ``t`` ``(T,)`` seconds."""
    prev_ok = np.zeros_like(valid)
    next_ok = np.zeros_like(valid)
    prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]
    next_ok[:, :-1] = valid[:, :-1] & valid[:, 1:]
    fwd = np.zeros_like(pos)
    fwd[:, :-1] = (pos[:, 1:] - pos[:, :-1]) / np.diff(t)
    bwd = np.zeros_like(pos)
    bwd[:, 1:] = fwd[:, :-1]
    central = np.zeros_like(pos)
    central[:, 1:-1] = (pos[:, 2:] - pos[:, :-2]) / (t[2:] - t[:-2])
    return np.where(prev_ok & next_ok, central, np.where(next_ok, fwd, np.where(prev_ok, bwd, 0.0)))


class Av2SensorSource(IndexedSource[Path]):
    """A :class:`~blm_gym.data.source.SceneSource` over AV2 sensor-log folders (annotations only).

    ``data_dir``: a split folder holding ``<log id>/`` folders, or one log folder (None:
    ``$BLM_GYM_DATA``). ``scene_ids``: keep only these log ids, in the given order.
    """

    name, noun = "av2-sensor", "logs"

    def __init__(self, data_dir: str | os.PathLike | None, *, scene_ids: Sequence[str] | None = None):
        root = resolve_data_dir(data_dir, "Argoverse 2 sensor logs")
        logs = [root] if (root / "city_SE3_egovehicle.feather").is_file() else \
            sorted(p.parent for p in root.glob("*/city_SE3_egovehicle.feather"))
        if not logs:
            raise FileNotFoundError(
                f"No AV2 sensor logs under {root}: expected <log id>/city_SE3_egovehicle.feather with "
                "annotations.feather and map/log_map_archive_*.json (the AV2 sensor download layout)")
        self.root, self._entries = root, select_entries({p.name: p for p in logs}, scene_ids, root, "log ids")

    def load(self, index: int) -> Scene:
        """Log ``index`` (cached)."""
        log = self.entry(index)[1]
        return _sensor_scene(log, _find_map(log))


@functools.lru_cache(maxsize=16)
def _sensor_scene(log_dir: Path, map_path: Path) -> Scene:
    return scene_from_sensor_log(log_dir, _map(map_path))
