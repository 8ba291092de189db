"""Scenes from the INTERACTION dataset in its own layout (Lanelet2 maps + track CSVs).

Layout read (``data_dir``)::

    maps/<location>.osm                                     Lanelet2 map, lat/lon around (0, 0)
    recorded_trackfiles/<location>/vehicle_tracks_NNN.csv   track_id, frame_id, timestamp_ms, agent_type,
                                                            x, y, vx, vy, psi_rad, length, width
    recorded_trackfiles/<location>/pedestrian_tracks_NNN.csv  (optional) track_id, frame_id, timestamp_ms,
                                                            agent_type, x, y, vx, vy

Recordings run for minutes at 10 Hz; they are cut into windows of :data:`WINDOW_STEPS` steps
(9.1 s) starting every :data:`WINDOW_STRIDE` frames (5 s); windows without a vehicle are skipped.
A scene id is
``"<location>/<recording NNN>/<start frame>"``, e.g. ``"DR_USA_Roundabout_FT/000/1"``.

Map: nodes are projected as the INTERACTION devkit does (``LL2XYProjector``: UTM at origin
(0, 0), zone 31, WGS84, minus the origin's easting / northing), with the transverse Mercator
series written out here (no pyproj needed; it agrees with pyproj to well under a centimetre).
Lane centerlines are the midlines of each lanelet's left and right bounds; road edges are the
curbstone / road-border / guard-rail / fence / wall ways; the drivable area is the union of the
lanelet polygons (left bound + reversed right bound) and the paved gaps the road edges close
against them (:func:`drivable_geometry`).

Agents: ``car``, ``truck``, ``bus`` -> VEHICLE; ``motorcycle`` -> CYCLIST;
``pedestrian/bicycle`` -> PEDESTRIAN (the dataset does not tell them apart; their tracks have no
heading or extents: heading follows the velocity, extents :data:`PEDESTRIAN_EXTENT`).
Ego: INTERACTION is recorded by drones and has no AV; the ego is the vehicle valid for the most
steps of the window (ties: the one whose track id sorts first).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import shapely
from shapely.geometry.base import BaseGeometry

from blm_gym.data.build import (IndexedSource, first_rows, lanelet_centerline, lanelet_polygon, longest_valid_vehicle,
                                parse_xml, road_map, scatter_grid, select_entries)
from blm_gym.data.safe_pickle import CorruptSceneFileError
from blm_gym.data.scene import DEFAULT_DT, AgentType, RoadMap, Scene, Trajectories
from blm_gym.data.source import resolve_data_dir

WINDOW_STEPS = 91  # 9.1 s at 0.1 s: 1 s history + 8 s future, as WOMD scenes
WINDOW_STRIDE = 50  # frames (5 s) between window starts
PEDESTRIAN_EXTENT = 0.6  # m, length and width of pedestrian / bicycle boxes (not in the CSVs)
CENTERLINE_POINTS = 20  # points per lanelet centerline
EDGE_CONNECT_DISTANCE = 6.0  # m; a road-edge end this close to a lanelet is joined to it
GAP_MIN_OUTLINE_SHARE = 0.3  # a paved gap runs along lanelets for >= this share of its perimeter
GAP_MAX_AREA = 2000.0  # m^2, larger faces are left out (blocks, parking lots)

AGENT_TYPES = {"car": AgentType.VEHICLE, "truck": AgentType.VEHICLE, "bus": AgentType.VEHICLE,
               "motorcycle": AgentType.CYCLIST, "pedestrian/bicycle": AgentType.PEDESTRIAN,
               "pedestrian": AgentType.PEDESTRIAN, "bicycle": AgentType.CYCLIST}
ROAD_EDGE_TYPES = {"curbstone", "road_border", "guard_rail", "fence", "wall"}
NON_DRIVABLE_LANELETS = {"crosswalk", "walkway", "stairs"}
VEHICLE_COLUMNS = ("track_id", "frame_id", "timestamp_ms", "agent_type", "x", "y", "vx", "vy", "psi_rad",
                   "length", "width")
PEDESTRIAN_COLUMNS = VEHICLE_COLUMNS[:8]


class CorruptTrackFileError(CorruptSceneFileError):
    """A track CSV or a Lanelet2 map is malformed (missing columns, non-numbers, not XML)."""


# --- projection ---------------------------------------------------------------------------------

_WGS84_A = 6378137.0
_WGS84_F = 1 / 298.257223563
_UTM_K0 = 0.9996


def utm_xy(lat: np.ndarray, lon: np.ndarray, zone: int) -> tuple[np.ndarray, np.ndarray]:
    """UTM easting / northing (m, false easting 500 km, northern hemisphere) of WGS84 degrees,
    by the transverse Mercator series of Snyder (1987, eqs. 8-9, 8-10; sub-mm within 4 deg of the
    central meridian)."""
    phi, lam = np.radians(np.asarray(lat, float)), np.radians(np.asarray(lon, float))
    lam0 = np.radians(6.0 * zone - 183.0)
    e2 = _WGS84_F * (2 - _WGS84_F)
    ep2 = e2 / (1 - e2)
    n = _WGS84_A / np.sqrt(1 - e2 * np.sin(phi) ** 2)
    t = np.tan(phi) ** 2
    c = ep2 * np.cos(phi) ** 2
    a = (lam - lam0) * np.cos(phi)
    e4, e6 = e2 * e2, e2 * e2 * e2
    m = _WGS84_A * ((1 - e2 / 4 - 3 * e4 / 64 - 5 * e6 / 256) * phi
                    - (3 * e2 / 8 + 3 * e4 / 32 + 45 * e6 / 1024) * np.sin(2 * phi)
                    + (15 * e4 / 256 + 45 * e6 / 1024) * np.sin(4 * phi)
                    - (35 * e6 / 3072) * np.sin(6 * phi))
    x = _UTM_K0 * n * (a + (1 - t + c) * a ** 3 / 6 + (5 - 18 * t + t * t + 72 * c - 58 * ep2) * a ** 5 / 120)
    y = _UTM_K0 * (m + n * np.tan(phi) * (a ** 2 / 2 + (5 - t + 9 * c + 4 * c * c) * a ** 4 / 24
                                          + (61 - 58 * t + t * t + 600 * c - 330 * ep2) * a ** 6 / 720))
    return x + 500000.0, y


def project_latlon(lat: np.ndarray, lon: np.ndarray, lat0: float = 0.0, lon0: float = 0.0) -> np.ndarray:
    """INTERACTION devkit projection: UTM (zone of ``lon0``) relative to the origin, ``(..., 2)`` m."""
    zone = int(np.floor((lon0 + 180.0) / 6.0)) + 1
    x, y = utm_xy(lat, lon, zone)
    ox, oy = utm_xy(np.array(lat0), np.array(lon0), zone)
    return np.stack([x - ox, y - oy], axis=-1)


# --- Lanelet2 map -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LaneletMap:
    """A projected Lanelet2 map: ``lanelets`` as ``(left (P, 2), right (Q, 2))`` bounds in metres,
    both running in the driving direction; ``centerlines`` ``(CENTERLINE_POINTS, 2)`` each;
    ``road_edges`` polylines ``(P, 2)``; ``lanelet_ids`` matching ``lanelets``."""

    lanelet_ids: tuple[int, ...]
    lanelets: tuple[tuple[np.ndarray, np.ndarray], ...]
    centerlines: tuple[np.ndarray, ...]
    road_edges: tuple[np.ndarray, ...]


def read_lanelet_map(path: str | os.PathLike) -> LaneletMap:
    """Parse a Lanelet2 ``.osm`` file (nodes in lat/lon) into a :class:`LaneletMap`."""
    path = Path(path)
    root = parse_xml(path, CorruptTrackFileError, "Lanelet2 OSM (XML) file")
    try:
        ids, lat, lon = [], [], []
        for n in root.iter("node"):
            ids.append(int(n.get("id")))
            lat.append(float(n.get("lat")))
            lon.append(float(n.get("lon")))
        xy = project_latlon(np.array(lat), np.array(lon)) if ids else np.zeros((0, 2))
        node_xy = dict(zip(ids, xy))
        ways, way_type = {}, {}
        for w in root.iter("way"):
            wid = int(w.get("id"))
            ways[wid] = np.array([node_xy[int(nd.get("ref"))] for nd in w.iter("nd")]).reshape(-1, 2)
            way_type[wid] = _tags(w).get("type", "")
        lanelet_ids, bounds, centers = [], [], []
        for r in root.iter("relation"):
            tags = _tags(r)
            if tags.get("type") != "lanelet" or tags.get("subtype") in NON_DRIVABLE_LANELETS:
                continue
            roles = {m.get("role"): int(m.get("ref")) for m in r.iter("member") if m.get("type") == "way"}
            left, right = ways[roles["left"]], ways[roles["right"]]
            if len(left) < 2 or len(right) < 2:
                continue
            if np.linalg.norm(left[0] - right[-1]) + np.linalg.norm(left[-1] - right[0]) < \
                    np.linalg.norm(left[0] - right[0]) + np.linalg.norm(left[-1] - right[-1]):
                right = right[::-1]  # a bound stored against the lanelet's direction
            lanelet_ids.append(int(r.get("id")))
            bounds.append((left, right))
            centers.append(lanelet_centerline(left, right, CENTERLINE_POINTS))
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptTrackFileError(f"{path}: malformed Lanelet2 map ({type(e).__name__}: {e}): a way or "
                                    "lanelet refers to a missing node / way, or a coordinate is not a number") from e
    edges = tuple(w for wid, w in ways.items() if way_type[wid] in ROAD_EDGE_TYPES and len(w) > 1)
    return LaneletMap(tuple(lanelet_ids), tuple(bounds), tuple(centers), edges)


def _tags(elem) -> dict[str, str]:
    return {t.get("k"): t.get("v") for t in elem.iter("tag")}


def lanelet_polygons(lmap: LaneletMap) -> np.ndarray:
    """Valid shapely polygons ``(L,)`` of the lanelets: left bound + reversed right bound."""
    polys = [lanelet_polygon(left, right) for left, right in lmap.lanelets]
    return np.array(polys, dtype=object)


def drivable_geometry(lmap: LaneletMap) -> BaseGeometry:
    """Drivable area of a Lanelet2 map: the union of the lanelet polygons, plus the paved gaps that
    road edges close against them (shoulders between the outer lanelet bound and the kerb, U-turn
    pockets at median tips, corner fillets).

    A gap is a face of the arrangement of the lanelet-union outline, the road edges, and short
    connectors (at most :data:`EDGE_CONNECT_DISTANCE` m) from each road-edge end to the outline;
    it is kept when it lies mostly outside the lanelets, at least :data:`GAP_MIN_OUTLINE_SHARE`
    of its perimeter runs along lanelets where no road edge runs (medians and islands are ringed by
    kerbs, and a roundabout island's kerb is also the lanelets' inner bound), and it is at most
    :data:`GAP_MAX_AREA` m^2.
    """
    if not lmap.lanelets:
        return shapely.Polygon()
    lanes = shapely.union_all(lanelet_polygons(lmap))
    if not lmap.road_edges:
        return lanes
    outline = lanes.boundary
    lines = [outline, *(shapely.linestrings(e) for e in lmap.road_edges)]
    ends = shapely.points(np.array([e[k] for e in lmap.road_edges for k in (0, -1)]))
    connectors = shapely.shortest_line(ends, outline)
    lines += list(connectors[shapely.length(connectors) <= EDGE_CONNECT_DISTANCE])
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(shapely.union_all(lines))))
    if not len(faces):
        return lanes
    area = shapely.area(faces)
    in_lanes = shapely.area(shapely.intersection(faces, lanes)) / area
    perimeter = shapely.boundary(faces)
    # perimeter along lanelets where no kerb runs (a roundabout island's kerb *is* the lanelet outline)
    lane_only = shapely.difference(outline.buffer(0.05), shapely.union_all(lines[1:]).buffer(0.05))
    along = shapely.length(shapely.intersection(perimeter, lane_only)) / shapely.length(perimeter)
    keep = (in_lanes < 0.5) & (along >= GAP_MIN_OUTLINE_SHARE) & (area <= GAP_MAX_AREA)
    return shapely.union_all([lanes, *faces[keep]])


def interaction_road_map(lmap: LaneletMap) -> RoadMap:
    """Centerlines, road edges and the drivable area (:func:`drivable_geometry`) of a map."""
    return road_map(lmap.centerlines, lmap.road_edges, drivable_geometry(lmap))


# --- tracks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recording:
    """One recording's rows, sorted by (track, frame): ``track`` int ``(R,)`` indexes ``track_ids``;
    ``frame`` int ``(R,)``; ``x, y, vx, vy, heading, length, width`` float ``(R,)`` (m, m/s, rad);
    ``kind`` ``(K,)`` AgentType per track."""

    track_ids: tuple[str, ...]
    kind: np.ndarray
    track: np.ndarray
    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    heading: np.ndarray
    length: np.ndarray
    width: np.ndarray


def read_track_csv(path: str | os.PathLike, pedestrians: bool = False) -> dict[str, np.ndarray]:
    """Columns of one INTERACTION track CSV as arrays (``track_id``, ``agent_type`` as str).

    Raises :class:`CorruptTrackFileError` naming the file for a missing column or a bad value.
    """
    path = Path(path)
    columns = PEDESTRIAN_COLUMNS if pedestrians else VEHICLE_COLUMNS
    types = {c: pa.string() if c in ("track_id", "agent_type") else pa.float64() for c in columns}
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptTrackFileError(f"{path}: malformed INTERACTION track CSV ({e}); expected the header "
                                    f"{','.join(columns)} and numeric values") from e
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise CorruptTrackFileError(f"{path}: missing columns {missing}; an INTERACTION track CSV has "
                                    f"{','.join(columns)}")
    out = {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}
    for c in columns:
        if c not in ("track_id", "agent_type") and not np.all(np.isfinite(out[c])):
            raise CorruptTrackFileError(f"{path}: column {c} has empty or non-finite values")
    return out


def read_recording(vehicle_csv: Path, pedestrian_csv: Path | None) -> Recording:
    """Vehicle (and pedestrian) tracks of one recording; pedestrian ids keep their ``P`` prefix."""
    parts = [read_track_csv(vehicle_csv)]
    if pedestrian_csv is not None:
        ped = read_track_csv(pedestrian_csv, pedestrians=True)
        speed = np.hypot(ped["vx"], ped["vy"])
        ped["psi_rad"] = np.where(speed > 0, np.arctan2(ped["vy"], ped["vx"]), 0.0)
        ped["length"] = ped["width"] = np.full(len(speed), PEDESTRIAN_EXTENT)
        parts.append(ped)
    cols = {c: np.concatenate([p[c] for p in parts]) for c in VEHICLE_COLUMNS}
    track_ids, track = np.unique(cols["track_id"].astype(str), return_inverse=True)
    kind = np.array([AGENT_TYPES.get(t, AgentType.UNKNOWN)
                     for t in cols["agent_type"][first_rows(track, len(track_ids))]], np.int8)
    frame = cols["frame_id"].astype(np.int64)
    order = np.lexsort((frame, track))
    return Recording(
        track_ids=tuple(track_ids), kind=kind, track=track[order], frame=frame[order],
        **{k: cols[c][order] for k, c in (("x", "x"), ("y", "y"), ("vx", "vx"), ("vy", "vy"),
                                          ("heading", "psi_rad"), ("length", "length"), ("width", "width"))},
    )


def window_scene(rec: Recording, start: int, road: RoadMap, scene_id: str, steps: int = WINDOW_STEPS) -> Scene:
    """The scene of frames ``start .. start + steps - 1`` of ``rec`` (agents valid at some step)."""
    rows = np.flatnonzero((rec.frame >= start) & (rec.frame < start + steps))
    agents, a_idx = np.unique(rec.track[rows], return_inverse=True)
    t_idx = rec.frame[rows] - start
    n = len(agents)

    def grid(values: np.ndarray) -> np.ndarray:
        return scatter_grid(a_idx, t_idx, values[rows], (n, steps))

    valid = np.zeros((n, steps), bool)
    valid[a_idx, t_idx] = True
    heading, vx, vy = grid(rec.heading), grid(rec.vx), grid(rec.vy)
    length, width = np.zeros(n), np.zeros(n)
    length[a_idx], width[a_idx] = rec.length[rows], rec.width[rows]  # constant per track in INTERACTION
    traj = Trajectories.from_states(
        x=grid(rec.x), y=grid(rec.y), heading=heading, speed=vx * np.cos(heading) + vy * np.sin(heading),
        length=length, width=width, valid=valid,
    )
    kind = rec.kind[agents]
    ids = tuple(rec.track_ids[a] for a in agents)
    ego = longest_valid_vehicle(kind, valid)  # ties: the first; agents are sorted by track id
    if ego is None:
        raise ValueError(f"window {scene_id} has no vehicle")
    return Scene(scene_id=scene_id, source="interaction", dt=DEFAULT_DT, agent_ids=ids, agent_type=kind,
                 ego_index=ego, traj=traj, road=road)


# --- source -------------------------------------------------------------------------------------

class InteractionSource(IndexedSource[tuple[str, str, int]]):
    """A :class:`~blm_gym.data.source.SceneSource` over an INTERACTION folder, cut into windows.

    ``data_dir``: the folder holding ``maps/`` and ``recorded_trackfiles/`` (None:
    ``$BLM_GYM_DATA``). ``locations``: keep only these locations (default: every location with
    both a map and track files). ``scene_ids``: keep only these ``"<location>/<NNN>/<start frame>"``.
    ``window_steps`` / ``stride``: window length (steps) and spacing (frames).

    Opening reads every track CSV of the kept locations once to list the windows (about 1 s for
    the 18 recordings); maps and recordings are then cached per process.
    """

    name, noun = "interaction", "windows"

    def __init__(self, data_dir: str | os.PathLike | None, *, locations: Sequence[str] | None = None,
                 scene_ids: Sequence[str] | None = None, window_steps: int = WINDOW_STEPS,
                 stride: int = WINDOW_STRIDE):
        root = resolve_data_dir(data_dir, "INTERACTION recordings")
        tracks_dir, maps_dir = root / "recorded_trackfiles", root / "maps"
        if not tracks_dir.is_dir() or not maps_dir.is_dir():
            raise FileNotFoundError(
                f"{root} is not an INTERACTION folder: expected maps/<location>.osm and "
                "recorded_trackfiles/<location>/vehicle_tracks_NNN.csv (the layout of the INTERACTION dataset "
                "download); point data_dir at the folder that holds both")
        self.root, self.window_steps, self.stride = root, int(window_steps), int(stride)
        available = sorted(p.name for p in tracks_dir.iterdir()
                           if p.is_dir() and (maps_dir / f"{p.name}.osm").is_file())
        if locations is not None:
            unknown = [loc for loc in locations if loc not in available]
            if unknown:
                raise KeyError(f"Unknown INTERACTION locations {unknown} in {root}; available: {available}")
            available = list(locations)
        if scene_ids is not None:  # only read the recordings the ids name
            wanted = {s.split("/")[0] for s in scene_ids}
            available = [loc for loc in available if loc in wanted]
        self._recordings: dict[tuple[str, str], tuple[Path, Path | None]] = {}
        windows: dict[str, tuple[str, str, int]] = {}
        for loc in available:
            for csv in sorted((tracks_dir / loc).glob("vehicle_tracks_*.csv")):
                num = csv.stem.rsplit("_", 1)[-1]
                ped = csv.with_name(f"pedestrian_tracks_{num}.csv")
                self._recordings[(loc, num)] = (csv, ped if ped.is_file() else None)
                cols = read_track_csv(csv)
                frames = cols["frame_id"]
                is_vehicle = np.isin(cols["agent_type"], [t for t, k in AGENT_TYPES.items() if k == AgentType.VEHICLE])
                vehicle_frames = np.unique(frames[is_vehicle])
                for start in range(int(frames.min()), int(frames.max()) - self.window_steps + 2, self.stride):
                    first = np.searchsorted(vehicle_frames, start)  # windows without a vehicle are skipped
                    if first < len(vehicle_frames) and vehicle_frames[first] < start + self.window_steps:
                        windows[f"{loc}/{num}/{start}"] = (loc, num, start)
        windows = select_entries(windows, scene_ids, root, hint=(
            f"ids are '<location>/<NNN>/<start frame>' with start frames every {self.stride} frames, "
            f"e.g. {list(windows)[:3]}"))
        if not windows:
            raise FileNotFoundError(f"No INTERACTION recordings of >= {self.window_steps} frames under {tracks_dir}")
        self._entries = windows

    def recordings(self) -> tuple[tuple[str, str], ...]:
        """``(location, recording number)`` of every recording read, e.g. ``("DR_USA_Roundabout_FT", "000")``."""
        return tuple(self._recordings)

    def map(self, location: str) -> LaneletMap:
        """The projected Lanelet2 map of ``location``."""
        return _lanelet_map(self.root / "maps" / f"{location}.osm")

    def load(self, index: int) -> Scene:
        """Window ``index`` as a scene (maps and recordings cached)."""
        sid, (loc, num, start) = self.entry(index)
        rec = _recording(*self._recordings[(loc, num)])
        road = _road_map(self.root / "maps" / f"{loc}.osm")
        return window_scene(rec, start, road, sid, self.window_steps)


@functools.lru_cache(maxsize=16)
def _lanelet_map(path: Path) -> LaneletMap:
    if not path.is_file():
        raise FileNotFoundError(f"Lanelet2 map {path} is missing; the INTERACTION download has maps/<location>.osm")
    return read_lanelet_map(path)


@functools.lru_cache(maxsize=16)
def _road_map(path: Path) -> RoadMap:
    return interaction_road_map(_lanelet_map(path))


@functools.lru_cache(maxsize=4)
def _recording(vehicle_csv: Path, pedestrian_csv: Path | None) -> Recording:
    return read_recording(vehicle_csv, pedestrian_csv)
