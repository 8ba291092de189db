"""Scenes from ScenarioNet / MetaDrive "scenario description" pickles (nuScenes, Waymo, ...).

Two folder layouts are read:

- a ScenarioNet *database*: ``dataset_summary.pkl`` (file name -> scenario metadata) and
  ``dataset_mapping.pkl`` (file name -> shard folder, relative to the root), shards holding the
  ``sd_*.pkl`` files;
- a *loose* folder of ``sd_*.pkl`` files (no summary); the scene id is the file name's last
  ``_``-separated part, as ScenarioNet names them (``sd_<dataset>_<version>_<scenario id>.pkl``),
  and a loaded scene carries that id even where the pickle's own ``id`` differs.

Every pickle goes through :func:`blm_gym.data.safe_pickle.load_pickle` (no code runs on load).
Built scenes are cached in memory per file: the drivable area is the costly part.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from blm_gym.data.road_edges import road_edge_region
from blm_gym.data.safe_pickle import CorruptSceneFileError, load_pickle
from blm_gym.data.scene import (DEFAULT_DT, LANE_STATES, AgentType, DrivableArea, RoadMap, Scene, TrafficLights,
                                 Trajectories, pad_polylines)
from blm_gym.data.source import resolve_data_dir

SUMMARY_FILE = "dataset_summary.pkl"
MAPPING_FILE = "dataset_mapping.pkl"
SCENE_GLOB = "sd_*.pkl"

AGENT_TYPES = {
    "VEHICLE": AgentType.VEHICLE,
    "PEDESTRIAN": AgentType.PEDESTRIAN,
    "CYCLIST": AgentType.CYCLIST,
    "TRAFFIC_CONE": AgentType.STATIC,
    "TRAFFIC_BARRIER": AgentType.STATIC,
}

DEFAULT_LANE_HALF_WIDTH = 2.0  # m; nuScenes-in-ScenarioNet has no widths (README: 2 m holds 98 %)
RASTER_RESOLUTION = 0.5  # m per drivable-area raster cell


def detect_scenarionet(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder in a ScenarioNet layout (database summary or ``sd_*.pkl``)."""
    path = Path(path).expanduser()
    return path.is_dir() and ((path / SUMMARY_FILE).is_file() or any(path.glob(SCENE_GLOB)))


def has_vehicles(scene: Scene) -> bool:
    """True when some vehicle of ``scene`` is valid at some step (the env skips scenes without)."""
    return bool((scene.traj.valid & scene.is_vehicle[:, None]).any())


def scan_scenarios(root: Path) -> dict[str, Path]:
    """Scenario id -> pickle path for a database or loose folder, in file order."""
    if (root / SUMMARY_FILE).is_file():
        summary = load_pickle(root / SUMMARY_FILE)
        mapping = load_pickle(root / MAPPING_FILE) if (root / MAPPING_FILE).is_file() else {}
        named = [(str(meta.get("id", meta.get("scenario_id", fname))), root / mapping.get(fname, "") / fname)
                 for fname, meta in summary.items()]
        where = f"{SUMMARY_FILE} (its scenario ids)"
    else:
        named = [(p.stem.rsplit("_", 1)[-1], p) for p in sorted(root.glob(SCENE_GLOB))]
        where = "the file names' last '_' part"
    files: dict[str, Path] = {}
    for scene_id, path in named:
        if scene_id in files:
            raise ValueError(f"{root}: {files[scene_id].name} and {path.name} both have scene id {scene_id!r} (from "
                             f"{where}); rename one, or keep them in separate folders")
        files[scene_id] = path
    return files


class ScenarioNetSource:
    """A :class:`~blm_gym.data.source.SceneSource` over a ScenarioNet folder.

    ``root``: the folder (None: ``$BLM_GYM_DATA``). ``scene_ids``: keep only these scenario ids
    (e.g. ``["scene-0103"]``), in the given order; unknown ids raise KeyError listing the known ones.
    """

    def __init__(self, root: str | os.PathLike | None, *, scene_ids: Sequence[str] | None = None):
        self.root = resolve_data_dir(root, "ScenarioNet scenes")
        if not self.root.is_dir():
            raise NotADirectoryError(f"ScenarioNet root must be a folder, got the file {self.root}")
        files = scan_scenarios(self.root)
        if not files:
            raise FileNotFoundError(
                f"No ScenarioNet scenes in {self.root}: expected {SUMMARY_FILE} + {MAPPING_FILE} (a ScenarioNet "
                f"database) or {SCENE_GLOB} files. Convert raw logs with ScenarioNet's converters, or point "
                "data_dir at the folder that holds them."
            )
        if scene_ids is not None:
            unknown = [s for s in scene_ids if s not in files]
            if unknown:
                raise KeyError(f"Unknown scene ids {unknown} in {self.root}; available: {sorted(files)}")
            files = {s: files[s] for s in scene_ids}
        self._files = files
        self.name = f"scenarionet:{self.root.name}"

    @property
    def scene_ids(self) -> tuple[str, ...]:
        return tuple(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        """The pickle file of scene ``index``."""
        return self._files[self.scene_ids[index]]

    def load(self, index: int) -> Scene:
        """Scene ``index`` (cached in memory after the first load)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} scenes in {self.root}")
        path = self.path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: scene file vanished since {self.root} was scanned; re-copy the folder")
        stat = path.stat()
        scene = _load_scene_cached(path, stat.st_mtime_ns, stat.st_size)
        # the id this source lists it under, whatever the pickle says: ids round-trip through files
        scene_id = self.scene_ids[index]
        return scene if scene.scene_id == scene_id else dataclasses.replace(scene, scene_id=scene_id)


@functools.lru_cache(maxsize=32)  # a nuScenes scene with its raster is ~10 MB
def _load_scene_cached(path: Path, mtime_ns: int, size: int) -> Scene:
    """Build the scene in ``path``; keyed by mtime and size too, so a rewritten file is read again."""
    scenario = load_pickle(path)
    required = ("id", "length", "metadata", "tracks", "map_features")
    missing = [k for k in required if not isinstance(scenario, dict) or k not in scenario]
    if missing:
        raise CorruptSceneFileError(f"{path}: not a ScenarioNet scenario (missing keys {missing})")
    try:
        return scene_from_scenario(scenario)
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise CorruptSceneFileError(f"{path}: malformed scenario ({type(e).__name__}: {e})") from e


def scene_from_scenario(scenario: dict, *, drivable: bool = True) -> Scene:
    """Build a :class:`Scene` from one ScenarioNet scenario dict (pure; no file access).

    ``drivable=False`` skips the drivable-area construction (the costly part; the scene's
    ``road.drivable`` is then empty), for users that only need tracks and the vector map.
    """
    meta = scenario["metadata"]
    num_steps = int(scenario["length"])
    agent_ids = tuple(str(k) for k in scenario["tracks"])
    tracks = list(scenario["tracks"].values())
    states = [t["state"] for t in tracks]

    def stack(key: str, columns: int | None = None) -> np.ndarray:
        # (N, T) when columns is None, else (N, T, columns); nuScenes stores extents (T, 1), Waymo (T,)
        a = np.stack([np.asarray(s[key], np.float64).reshape(num_steps, -1) for s in states])
        return a[..., 0] if columns is None else a[..., :columns]

    valid = np.stack([np.asarray(s["valid"]).astype(bool) for s in states])
    pos, vel = stack("position", 2), stack("velocity", 2)
    heading = stack("heading")
    length, width = _extents(stack("length"), valid), _extents(stack("width"), valid)

    if str(meta["sdc_id"]) not in agent_ids:
        raise KeyError(f"metadata sdc_id {meta['sdc_id']!r} is not one of the tracks")
    ego_index = agent_ids.index(str(meta["sdc_id"]))
    if width[ego_index] > length[ego_index]:  # nuScenes ego box comes swapped (1.73 long, 4.08 wide)
        length[ego_index], width[ego_index] = width[ego_index], length[ego_index]

    def clean(a: np.ndarray) -> np.ndarray:  # finite, 0 at invalid steps
        return np.where(valid, np.nan_to_num(a), 0.0)

    heading, vx, vy = clean(heading), clean(vel[..., 0]), clean(vel[..., 1])
    traj = Trajectories.from_states(
        x=clean(pos[..., 0]), y=clean(pos[..., 1]), heading=heading,
        speed=vx * np.cos(heading) + vy * np.sin(heading),  # signed: negative when reversing
        length=length, width=width, valid=valid,
    )
    agent_type = np.array([AGENT_TYPES.get(str(t["type"]), AgentType.UNKNOWN) for t in tracks], np.int8)
    return Scene(
        scene_id=str(scenario["id"]),
        source=str(meta.get("dataset", "scenarionet")),
        dt=_time_step(meta),
        agent_ids=agent_ids,
        agent_type=agent_type,
        ego_index=ego_index,
        traj=traj,
        road=road_map(scenario["map_features"], drivable=drivable),
        **recorded_extras(scenario),
    )


def recorded_extras(scenario: dict) -> dict:
    """The optional :class:`Scene` fields of a ScenarioNet scenario dict (pure).

    ``z`` (``state["position"][:, 2]``) and ``extents`` / ``height`` (``state["length"]``,
    ``["width"]``, ``["height"]``), cleaned to 0 at invalid steps, None when the tracks lack
    them; ``current_index`` (``metadata["current_time_index"]``); ``tracks_to_predict`` (agent
    indices of ``metadata["tracks_to_predict"]``'s track ids, ascending); ``traffic_lights``
    (:func:`traffic_lights_from_states` of ``dynamic_map_states``).
    """
    meta = scenario["metadata"]
    num_steps = int(scenario["length"])
    agent_ids = [str(k) for k in scenario["tracks"]]
    states = [t["state"] for t in scenario["tracks"].values()]
    valid = np.stack([np.asarray(s["valid"]).astype(bool) for s in states])
    out: dict = {}
    pos = [np.asarray(s["position"], np.float64).reshape(num_steps, -1) for s in states]
    if all(p.shape[1] >= 3 for p in pos):
        out["z"] = np.where(valid, np.nan_to_num(np.stack([p[:, 2] for p in pos])), 0.0).astype(np.float32)
    if all(all(k in s for k in ("length", "width", "height")) for s in states):
        ext = np.stack([np.stack([np.asarray(s[k], np.float64).reshape(num_steps, -1)[:, 0]
                                  for k in ("length", "width", "height")], axis=-1) for s in states])
        ext = np.where(valid[..., None], np.nan_to_num(ext), 0.0)
        out["extents"] = ext.astype(np.float32)
        out["height"] = _extents(ext[..., 2], valid).astype(np.float32)
    cur = meta.get("current_time_index")
    out["current_index"] = None if cur is None else int(cur)
    ttp = meta.get("tracks_to_predict") or {}
    out["tracks_to_predict"] = tuple(sorted(agent_ids.index(str(k)) for k in ttp if str(k) in agent_ids))
    out["traffic_lights"] = traffic_lights_from_states(scenario.get("dynamic_map_states") or {}, num_steps)
    return out


def traffic_lights_from_states(dynamic_map_states: dict, num_steps: int) -> TrafficLights | None:
    """:class:`TrafficLights` from ScenarioNet ``dynamic_map_states`` (None when there are none).

    ScenarioNet keeps one entry per signalled lane: ``lane`` (id), ``stop_point`` (x, y, z) and
    ``state["object_state"]``, a per-step list of WOMD state names, None where the signal is
    absent at that step (state 0 = unknown there, ``present`` False).
    """
    lane_ids, states, stops, present = [], [], [], []
    for key, entry in dynamic_map_states.items():
        per_step = (entry.get("state") or {}).get("object_state", ())
        codes = np.zeros(num_steps, np.int8)
        listed = np.zeros(num_steps, bool)
        for t, name in enumerate(list(per_step)[:num_steps]):
            listed[t] = name is not None
            codes[t] = LANE_STATES.get(str(name), 0) if name is not None else 0
        stop = np.zeros(3)
        sp = np.asarray(entry.get("stop_point", ()), np.float64).reshape(-1)[:3]
        stop[: len(sp)] = sp
        lane_ids.append(str(entry.get("lane", key)))
        states.append(codes)
        stops.append(stop)
        present.append(listed)
    if not lane_ids:
        return None
    return TrafficLights(lane_ids=tuple(lane_ids), states=np.stack(states), stop_points=np.stack(stops),
                         present=np.stack(present))


def _extents(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-agent median of ``values`` ``(N, T)`` over valid steps (0 for never-valid agents)."""
    masked = np.where(valid, values, np.nan)
    out = np.zeros(len(values))
    seen = valid.any(axis=1)
    out[seen] = np.nanmedian(masked[seen], axis=1)
    return out


def _time_step(meta: dict) -> float:
    """``sample_rate`` when written, else the median step of ``ts`` (rounded to 1 ms), else 0.1 s."""
    if meta.get("sample_rate"):
        return float(meta["sample_rate"])
    ts = np.asarray(meta.get("ts", ()), float)
    if ts.size > 1:
        return round(float(np.median(np.diff(ts))), 3)
    return DEFAULT_DT


def road_map(map_features: dict, *, drivable: bool = True) -> RoadMap:
    """Lane centerlines, road edges and drivable area from ScenarioNet ``map_features``
    (``drivable=False``: an empty drivable area, skipping its construction)."""
    feats = list(map_features.values())
    kind = [str(f.get("type", "")) for f in feats]
    lanes = [f for f, k in zip(feats, kind) if k.startswith("LANE") and len(f.get("polyline", ())) > 1]
    lane_xy = [np.asarray(f["polyline"], float)[:, :2] for f in lanes]
    edge_xy = [np.asarray(f["polyline"], float)[:, :2] for f, k in zip(feats, kind)
               if k.startswith("ROAD_EDGE") and len(f.get("polyline", ())) > 1]
    # nuScenes lanes carry a "polygon"; Waymo driveways are polygons only
    polygons = [np.asarray(f["polygon"], float)[:, :2] for f, k in zip(feats, kind)
                if (k.startswith("LANE") or k == "DRIVEWAY") and len(f.get("polygon", ())) > 2]
    if drivable:
        area = drivable_geometry(lane_xy, [_half_width(f) for f in lanes], polygons, edge_xy)
    else:
        area = shapely.Polygon()
    return RoadMap(*pad_polylines(lane_xy), *pad_polylines(edge_xy),
                   DrivableArea.from_geometry(area, RASTER_RESOLUTION), **road_map_3d(map_features))


def road_map_3d(map_features: dict) -> dict:
    """The optional 3-D :class:`RoadMap` fields of ScenarioNet ``map_features`` (pure).

    ``road_edges_3d``: every ``ROAD_EDGE_*`` polyline with > 1 point as ``(P, 3)``; ``lanes_3d``,
    ``lane_ids``, ``lane_kinds``: every ``LANE*`` centerline with > 1 point, its feature id and
    type. A group is None when one of its polylines has no z column (2-D maps).
    """
    edges, lanes, ids, kinds = [], [], [], []
    for key, f in map_features.items():
        kind = str(f.get("type", ""))
        line = np.asarray(f.get("polyline", np.zeros((0, 2))), np.float64)
        if line.ndim != 2 or len(line) < 2:
            continue
        if kind.startswith("ROAD_EDGE"):
            edges.append(line)
        elif kind.startswith("LANE"):
            lanes.append(line)
            ids.append(str(key))
            kinds.append(kind)
    three_d = lambda lines: all(p.shape[1] >= 3 for p in lines)  # noqa: E731
    out: dict = {"road_edges_3d": tuple(p[:, :3] for p in edges) if three_d(edges) else None}
    if three_d(lanes):
        out.update(lanes_3d=tuple(p[:, :3] for p in lanes), lane_ids=tuple(ids), lane_kinds=tuple(kinds))
    return out


def drivable_geometry(lanes: list[np.ndarray], half_widths: Sequence[float], polygons: list[np.ndarray],
                      road_edges: list[np.ndarray]) -> BaseGeometry:
    """Drivable area: the union of lane centerlines ``(P, 2)`` buffered by ``half_widths`` (m),
    the ``polygons`` ``(K, 2)`` (lane / driveway surfaces), and the on-road side of the
    ``road_edges`` ``(P, 2)``, oriented as WOMD's with the road on their left
    (:func:`blm_gym.data.road_edges.road_edge_region`; Waymo maps have them, nuScenes none).
    """
    lane_area = shapely.union_all(shapely.buffer(_ragged(shapely.linestrings, lanes), np.asarray(half_widths, float)))
    surfaces = shapely.make_valid(shapely.polygons(_ragged(shapely.linearrings, polygons)))
    on_road = [road_edge_region(road_edges, list(lanes) + list(road_edges))] if road_edges else []
    return shapely.union_all([lane_area, *surfaces, *on_road])


def _ragged(make, coords: list[np.ndarray]) -> np.ndarray:
    """Geometries ``(L,)`` built by ``make`` (linestrings, linearrings) from ``(P_i, 2)`` arrays."""
    if not coords:
        return np.empty(0, dtype=object)
    sizes = [len(c) for c in coords]
    return make(np.concatenate(coords), indices=np.repeat(np.arange(len(sizes)), sizes))


def _half_width(lane: dict) -> float:
    """Median of the (left + right) / 2 lane half widths where both are known, else the default."""
    width = np.asarray(lane.get("width", np.zeros((0, 2))), float).reshape(-1, 2)
    known = (width > 0).all(axis=1)
    return float(np.median(width[known].mean(axis=1))) if known.any() else DEFAULT_LANE_HALF_WIDTH
