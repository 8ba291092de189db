"""Scenes from raw Waymo Open Motion Dataset ``Scenario`` protos in TFRecord files (no TensorFlow).

Layout read: ``data_dir`` is a folder of TFRecord files (names ending ``.tfrecord`` or, as WOMD
ships them, ``.tfrecord-00000-of-01000``; each file holds many records) or one such file. Every
record is one serialized ``waymo.open_dataset.Scenario`` (``scenario.proto`` / ``map.proto`` of
waymo-open-dataset; field numbers below are copied from them).

TFRecord framing, per record::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

Both CRCs are verified (CRC-32C / Castagnoli, with ``google_crc32c`` when installed, else a
table-driven fallback in pure Python); a truncated or corrupt record raises
:class:`CorruptTFRecordError` naming the file and the byte offset.

The protobuf wire format is decoded by hand for just the fields we need (the installed
``protobuf`` 3.19.4 runtime would need ``protoc`` to build the message classes). Unknown fields
(lidar, camera tokens, ...) are skipped.

:class:`WomdProtoSource` indexes byte offsets only (headers are read, payloads skipped), so
opening a folder of a full WOMD download is cheap; a scene id is ``"<file name>#<record index>"``.
:meth:`WomdProtoSource.scenario` returns everything parsed (z, heights, traffic lights,
``tracks_to_predict``, ``current_time_index``) as a :class:`WomdScenario`;
:meth:`WomdProtoSource.load` builds the 2-D :class:`~blm_gym.data.scene.Scene`.

Drivable area (Waymo maps have oriented road edges): the union of

- the on-road side of the road edges (:func:`road_edge_region`): WOMD road edges keep the road on
  their left, and a point is on-road when its nearest road-edge segment has it on the left -- the
  rule of the WOSAC off-road feature. Unlike polygonizing the edges, it needs no closed rings
  (parking lots, junction corners, map borders);
- lane centerlines buffered by their half width (the distance to the lane's boundary road lines /
  edges, default 2 m), for lanes beyond the mapped edges;
- driveway polygons.

On the 172 ``womd-gpudrive`` scenes this holds 99.35 % of moving-vehicle log positions, against
94.6 % for lanes + edge faces polygonized (the ScenarioNet builder); the rest drive through
parking lots that the map does not have.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely

from blm_gym.data.build import IndexedSource, known_fields, road_map, select_entries
from blm_gym.data.safe_pickle import CorruptSceneFileError
from blm_gym.data.scenarionet import drivable_geometry
from blm_gym.data.scene import DEFAULT_DT, AgentType, RoadMap, Scene, Trajectories
from blm_gym.data.source import resolve_data_dir

try:  # optional recorded extras of Scene / RoadMap (z, traffic lights, ...); filled where scene.py has them
    from blm_gym.data.scene import TrafficLights
except ImportError:  # pragma: no cover - older scene.py
    TrafficLights = None

TFRECORD_GLOB = "*.tfrecord*"
# what a TFRecord file name ends with: "x.tfrecord", WOMD's shards "training.tfrecord-00000-of-01000"
TFRECORD_NAME = re.compile(r".*\.tfrecord(-\d+-of-\d+)?")
DEFAULT_LANE_HALF_WIDTH = 2.0  # m, for lanes without boundaries (junction connectors)
LANE_HALF_WIDTH_RANGE = (1.5, 3.0)  # m; clip measured half widths (a boundary can be a far kerb)

# Track.ObjectType -> AgentType (TYPE_UNSET = 0 and TYPE_OTHER = 4 -> UNKNOWN)
AGENT_TYPES = {1: AgentType.VEHICLE, 2: AgentType.PEDESTRIAN, 3: AgentType.CYCLIST}

# MapFeature oneof field number -> kind name
FEATURE_KINDS = {3: "lane", 4: "road_line", 5: "road_edge", 7: "stop_sign", 8: "crosswalk", 9: "speed_bump",
                 10: "driveway"}


class CorruptTFRecordError(CorruptSceneFileError):
    """A TFRecord is truncated, fails its CRC, or holds something that is not a ``Scenario`` proto."""


# --- CRC-32C (Castagnoli) ---------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c_python(data: bytes) -> int:
    """CRC-32C of ``data`` (reflected polynomial 0x82F63B78), table-driven, pure Python (~5 MB/s)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # C implementation when installed (zarr, hence trajdata, pulls it in)
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        """CRC-32C of ``data`` (google_crc32c)."""
        return _gcrc.value(bytes(data))
except ImportError:  # pragma: no cover - depends on the environment
    crc32c = crc32c_python


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- TFRecord framing --------------------------------------------------------------------------

def index_tfrecord(path: str | os.PathLike) -> list[tuple[int, int]]:
    """``(payload offset, payload length)`` in bytes of every record of ``path``.

    Reads the 12-byte headers only (length CRC verified) and seeks over payloads; the payload CRC
    is checked when the record is read (:func:`read_record`).
    """
    path = Path(path)
    size = path.stat().st_size
    out = []
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise CorruptTFRecordError(
                    f"{path}: truncated TFRecord header at byte {pos} (file size {size}); the file is cut short, "
                    "download it again")
            (length,), crc = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])[0]
            if masked_crc32c(header[:8]) != crc:
                raise CorruptTFRecordError(
                    f"{path}: record at byte {pos} fails its length CRC: not a TFRecord file, or corrupt; "
                    "download it again")
            end = pos + 12 + length + 4
            if end > size:
                raise CorruptTFRecordError(
                    f"{path}: record at byte {pos} needs {length} payload bytes but the file ends at {size}: "
                    "truncated, download it again")
            out.append((pos + 12, length))
            pos = end
            f.seek(pos)
    return out


def read_record(path: str | os.PathLike, offset: int, length: int) -> bytes:
    """The payload of the record at ``offset`` (from :func:`index_tfrecord`), CRC-checked."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length + 4)
    if len(data) < length + 4:
        raise CorruptTFRecordError(f"{path}: record at byte {offset - 12} is truncated; download the file again")
    payload, (crc,) = data[:length], struct.unpack("<I", data[length:])
    if masked_crc32c(payload) != crc:
        raise CorruptTFRecordError(
            f"{path}: record at byte {offset - 12} fails its data CRC (corrupt download); download the file again")
    return payload


def iter_tfrecord(path: str | os.PathLike):
    """Yield every record payload of ``path`` in order (CRC-checked), one at a time."""
    for offset, length in index_tfrecord(path):
        yield read_record(path, offset, length)


# --- protobuf wire format ----------------------------------------------------------------------

class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("varint runs past the end of the buffer")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint longer than 10 bytes")


def _scan(buf: bytes, pos: int, end: int) -> list[tuple[int, int, object]]:
    """Top-level fields of the message in ``buf[pos:end]``: ``(field number, wire type, value)``.

    ``value``: an int for varints, the byte offset for fixed64 / fixed32, ``(start, end)`` for
    length-delimited fields (sub-messages, strings, packed arrays).
    """
    out = []
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _varint(buf, pos)
        elif wt == 1:
            value, pos = pos, pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        elif wt == 5:
            value, pos = pos, pos + 4
        else:
            raise _ProtoError(f"unsupported wire type {wt} (field {num})")
        if num == 0 or pos > end:
            raise _ProtoError(f"field {num} runs past the end of its message")
        out.append((num, wt, value))
    return out


def _signed(v: int, bits: int = 64) -> int:
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def _repeated_ints(buf: bytes, fields, num: int) -> list[int]:
    """Repeated (u)int32/64 field ``num``, packed or not."""
    out = []
    for n, wt, v in fields:
        if n != num:
            continue
        if wt == 0:
            out.append(_signed(v))
        else:
            pos, end = v
            while pos < end:
                x, pos = _varint(buf, pos)
                out.append(_signed(x))
    return out


def _repeated_doubles(buf: bytes, fields, num: int) -> np.ndarray:
    """Repeated double field ``num``, packed or not."""
    out = []
    for n, wt, v in fields:
        if n != num:
            continue
        if wt == 1:
            out.append(struct.unpack_from("<d", buf, v)[0])
        else:
            out.extend(np.frombuffer(buf[v[0]:v[1]], "<f8").tolist())
    return np.asarray(out, np.float64)


_POINT_TAGS = np.array([0x09, 0x11, 0x19], np.uint8)  # MapPoint x = 1, y = 2, z = 3 as doubles


def _points(buf: bytes, spans: list[tuple[int, int]]) -> np.ndarray:
    """``MapPoint`` messages at ``spans`` -> ``(P, 3)`` float64 (x, y, z; a missing field reads 0)."""
    if not spans:
        return np.zeros((0, 3))
    starts = np.fromiter((s for s, _ in spans), np.int64, len(spans))
    ends = np.fromiter((e for _, e in spans), np.int64, len(spans))
    raw = np.frombuffer(buf, np.uint8)
    # fast path: every point is the canonical 27 bytes "09 x 11 y 19 z"
    if np.all(ends - starts == 27) and np.array_equal(raw[starts[:, None] + [0, 9, 18]],
                                                      np.broadcast_to(_POINT_TAGS, (len(spans), 3))):
        idx = starts[:, None, None] + np.array([1, 10, 19])[:, None] + np.arange(8)  # (P, 3, 8)
        return np.ascontiguousarray(raw[idx]).view("<f8")[..., 0].astype(np.float64)
    out = np.zeros((len(spans), 3))
    for i, (s, e) in enumerate(spans):
        for n, wt, v in _scan(buf, s, e):
            if 1 <= n <= 3 and wt == 1:
                out[i, n - 1] = struct.unpack_from("<d", buf, v)[0]
    return out


def _sub_spans(fields, num: int) -> list[tuple[int, int]]:
    return [v for n, wt, v in fields if n == num and wt == 2]


def _int_field(fields, num: int, default: int = 0) -> int:
    for n, wt, v in reversed(fields):  # proto2: the last occurrence wins
        if n == num and wt == 0:
            return _signed(v)
    return default


# --- Scenario --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapFeature:
    """One ``MapFeature``: ``kind`` in lane, road_line, road_edge, stop_sign, crosswalk, speed_bump,
    driveway; ``subtype`` the proto's type enum (LaneType, RoadLineType, RoadEdgeType; 0 when none);
    ``points`` ``(P, 3)`` float64 metres (polyline, polygon, or the stop sign's position).
    Lanes also carry ``left_boundaries`` / ``right_boundaries`` (boundary feature ids),
    ``entry_lanes`` / ``exit_lanes``, ``interpolating`` and ``speed_limit_mph``; stop signs ``lanes``.
    """

    id: int
    kind: str
    subtype: int
    points: np.ndarray
    left_boundaries: tuple[int, ...] = ()
    right_boundaries: tuple[int, ...] = ()
    entry_lanes: tuple[int, ...] = ()
    exit_lanes: tuple[int, ...] = ()
    interpolating: bool = False
    speed_limit_mph: float = 0.0
    lanes: tuple[int, ...] = ()


@dataclass(frozen=True)
class WomdScenario:
    """Everything of one ``Scenario`` proto that scenes and metrics use, as arrays.

    Tracks, ``(N, T)``: ``x, y, z`` float64 metres; ``length, width, height`` float32 metres;
    ``heading`` float32 radians; ``vx, vy`` float32 m/s (world frame); ``valid`` bool.
    ``track_ids`` int64 ``(N,)``, ``object_type`` int8 ``(N,)`` (proto enum: 1 vehicle,
    2 pedestrian, 3 cyclist, 4 other). ``timestamps`` ``(T,)`` seconds. ``tracks_to_predict``
    ``(K,)`` track indices with ``difficulty`` ``(K,)``; ``objects_of_interest`` track ids.
    Traffic lights per step ``t``: ``tl_lane_ids[t]`` int64 ``(S_t,)``, ``tl_states[t]`` int8
    ``(S_t,)`` (TrafficSignalLaneState.State), ``tl_stop_points[t]`` ``(S_t, 3)``.
    """

    scenario_id: str
    timestamps: np.ndarray
    current_time_index: int
    sdc_track_index: int
    track_ids: np.ndarray
    object_type: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    heading: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    valid: np.ndarray
    tracks_to_predict: np.ndarray
    difficulty: np.ndarray
    objects_of_interest: np.ndarray
    map_features: tuple[MapFeature, ...]
    tl_lane_ids: tuple[np.ndarray, ...] = field(default=())
    tl_states: tuple[np.ndarray, ...] = field(default=())
    tl_stop_points: tuple[np.ndarray, ...] = field(default=())


# ObjectState: field number -> (column, struct format); 2-4 doubles, 5-10 floats, 11 bool
_STATE_COLUMNS = {2: 0, 3: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6, 9: 7, 10: 8}


def parse_scenario(data: bytes) -> WomdScenario:
    """Decode one serialized ``Scenario`` proto. Raises ValueError when it is not one."""
    top = _scan(data, 0, len(data))
    timestamps = _repeated_doubles(data, top, 1)
    track_spans = _sub_spans(top, 2)
    if not track_spans:
        raise _ProtoError("no tracks (field 2): not a WOMD Scenario")
    num_steps = len(timestamps)
    n = len(track_spans)
    cols = np.zeros((9, n, num_steps), np.float64)
    valid = np.zeros((n, num_steps), bool)
    track_ids = np.zeros(n, np.int64)
    object_type = np.zeros(n, np.int8)
    unpack_d, unpack_f = struct.Struct("<d").unpack_from, struct.Struct("<f").unpack_from
    for i, (s, e) in enumerate(track_spans):
        fields = _scan(data, s, e)
        track_ids[i] = _int_field(fields, 1)
        object_type[i] = _int_field(fields, 2)
        states = _sub_spans(fields, 3)
        if len(states) != num_steps:
            raise _ProtoError(f"track {track_ids[i]} has {len(states)} states for {num_steps} timestamps")
        for t, (ss, se) in enumerate(states):
            for num, wt, v in _scan(data, ss, se):
                if num == 11 and wt == 0:
                    valid[i, t] = bool(v)
                elif wt == 1 and 2 <= num <= 4:
                    cols[_STATE_COLUMNS[num], i, t] = unpack_d(data, v)[0]
                elif wt == 5 and 5 <= num <= 10:
                    cols[_STATE_COLUMNS[num], i, t] = unpack_f(data, v)[0]
    x, y, z, length, width, height, heading, vx, vy = cols

    tl_ids, tl_states, tl_points = [], [], []
    for s, e in _sub_spans(top, 7):  # DynamicMapState per step
        ids, states, points = [], [], []
        for ls, le in _sub_spans(_scan(data, s, e), 1):  # TrafficSignalLaneState
            f = _scan(data, ls, le)
            ids.append(_int_field(f, 1))
            states.append(_int_field(f, 2))
            stop = _sub_spans(f, 3)
            points.append(_points(data, stop[-1:])[0] if stop else np.zeros(3))
        tl_ids.append(np.asarray(ids, np.int64))
        tl_states.append(np.asarray(states, np.int8))
        tl_points.append(np.asarray(points, np.float64).reshape(-1, 3))

    ttp, difficulty = [], []
    for s, e in _sub_spans(top, 11):
        f = _scan(data, s, e)
        ttp.append(_int_field(f, 1))
        difficulty.append(_int_field(f, 2))
    scenario_id = ""
    for s, e in _sub_spans(top, 5):
        scenario_id = data[s:e].decode("utf-8", errors="replace")
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return WomdScenario(
        scenario_id=scenario_id, timestamps=timestamps,
        current_time_index=_int_field(top, 10, 10), sdc_track_index=_int_field(top, 6, -1),
        track_ids=track_ids, object_type=object_type, x=x, y=y, z=z,
        length=f32(length), width=f32(width), height=f32(height), heading=f32(heading), vx=f32(vx), vy=f32(vy),
        valid=valid, tracks_to_predict=np.asarray(ttp, np.int64), difficulty=np.asarray(difficulty, np.int8),
        objects_of_interest=np.asarray(_repeated_ints(data, top, 4), np.int64),
        map_features=tuple(_map_feature(data, s, e) for s, e in _sub_spans(top, 8)),
        tl_lane_ids=tuple(tl_ids), tl_states=tuple(tl_states), tl_stop_points=tuple(tl_points),
    )


def _map_feature(data: bytes, s: int, e: int) -> MapFeature:
    fields = _scan(data, s, e)
    fid = _int_field(fields, 1)
    for num, wt, v in fields:
        if num not in FEATURE_KINDS or wt != 2:
            continue
        kind = FEATURE_KINDS[num]
        sub = _scan(data, *v)
        if kind == "lane":
            boundary = lambda k: tuple(_int_field(_scan(data, *b), 3) for b in _sub_spans(sub, k))  # noqa: E731
            speed = [struct.unpack_from("<d", data, bv)[0] for bn, bwt, bv in sub if bn == 1 and bwt == 1]
            return MapFeature(fid, kind, _int_field(sub, 2), _points(data, _sub_spans(sub, 8)),
                              left_boundaries=boundary(13), right_boundaries=boundary(14),
                              entry_lanes=tuple(_repeated_ints(data, sub, 9)),
                              exit_lanes=tuple(_repeated_ints(data, sub, 10)),
                              interpolating=bool(_int_field(sub, 3)), speed_limit_mph=speed[-1] if speed else 0.0)
        if kind in ("road_line", "road_edge"):
            return MapFeature(fid, kind, _int_field(sub, 1), _points(data, _sub_spans(sub, 2)))
        if kind == "stop_sign":
            return MapFeature(fid, kind, 0, _points(data, _sub_spans(sub, 2)[-1:]),
                              lanes=tuple(_repeated_ints(data, sub, 1)))
        return MapFeature(fid, kind, 0, _points(data, _sub_spans(sub, 1)))  # polygons
    return MapFeature(fid, "unknown", 0, np.zeros((0, 3)))


# --- Scene -------------------------------------------------------------------------------------

def scene_from_womd(scenario: WomdScenario, scene_id: str | None = None) -> Scene:
    """Build the 2-D :class:`Scene` of ``scenario`` (pure; no file access).

    Ego = ``sdc_track_index``. Extents are medians over valid steps; speed is the world velocity
    projected on the heading (signed). ``dt`` is the median timestamp step rounded to 1 ms (0.1 s).
    """
    valid = scenario.valid
    n = len(scenario.track_ids)
    if not 0 <= scenario.sdc_track_index < n:
        raise ValueError(f"sdc_track_index {scenario.sdc_track_index} is not one of the {n} tracks")

    def clean(a):
        return np.where(valid, np.nan_to_num(a), 0.0)

    heading, vx, vy = clean(scenario.heading), clean(scenario.vx), clean(scenario.vy)
    traj = Trajectories.from_states(
        x=clean(scenario.x), y=clean(scenario.y), heading=heading,
        speed=vx * np.cos(heading) + vy * np.sin(heading),
        length=valid_median(scenario.length, valid), width=valid_median(scenario.width, valid),
        valid=valid,
    )
    ts = scenario.timestamps
    dt = round(float(np.median(np.diff(ts))), 3) if ts.size > 1 else DEFAULT_DT
    agent_type = np.array([AGENT_TYPES.get(int(t), AgentType.UNKNOWN) for t in scenario.object_type], np.int8)
    road = womd_road_map(scenario.map_features)
    road = dataclasses.replace(road, **known_fields(RoadMap, womd_road_extras(scenario.map_features)))
    return Scene(
        scene_id=scene_id or scenario.scenario_id, source="waymo", dt=dt,
        agent_ids=tuple(str(i) for i in scenario.track_ids), agent_type=agent_type,
        ego_index=int(scenario.sdc_track_index), traj=traj, road=road,
        **known_fields(Scene, womd_scene_extras(scenario)),
    )


# LaneCenter.LaneType -> ScenarioNet's lane type names
LANE_KINDS = {0: "LANE_UNKNOWN", 1: "LANE_FREEWAY", 2: "LANE_SURFACE_STREET", 3: "LANE_BIKE_LANE"}


def womd_scene_extras(scenario: WomdScenario) -> dict:
    """The optional recorded :class:`Scene` fields of a scenario: ``z`` ``(N, T)``, ``extents``
    ``(N, T, 3)`` (length, width, height per step), ``height`` ``(N,)`` (median over valid steps),
    all 0 at invalid steps; ``current_index``; ``tracks_to_predict`` (ascending track indices);
    ``traffic_lights`` (one row per signalled lane, states ``(S, T)``, 0 where absent)."""
    valid = scenario.valid
    ext = np.stack([scenario.length, scenario.width, scenario.height], axis=-1).astype(np.float64)
    out = {
        "z": np.where(valid, np.nan_to_num(scenario.z), 0.0).astype(np.float32),
        "extents": np.where(valid[..., None], np.nan_to_num(ext), 0.0).astype(np.float32),
        "height": valid_median(scenario.height, valid).astype(np.float32),
        "current_index": int(scenario.current_time_index),
        "tracks_to_predict": tuple(sorted(int(i) for i in scenario.tracks_to_predict)),
        "traffic_lights": None,
    }
    lanes = sorted({int(i) for ids in scenario.tl_lane_ids for i in ids})
    if lanes and TrafficLights is not None:
        row = {lane: k for k, lane in enumerate(lanes)}
        states = np.zeros((len(lanes), len(scenario.timestamps)), np.int8)
        stops = np.zeros((len(lanes), 3))
        for t, (ids, st, pts) in enumerate(zip(scenario.tl_lane_ids, scenario.tl_states, scenario.tl_stop_points)):
            for lane, state, point in zip(ids, st, pts):
                if t < states.shape[1]:
                    states[row[int(lane)], t] = state
                stops[row[int(lane)]] = point
        out["traffic_lights"] = TrafficLights(lane_ids=tuple(str(i) for i in lanes), states=states, stop_points=stops)
    return out


def womd_road_extras(features: Sequence[MapFeature]) -> dict:
    """The optional 3-D :class:`RoadMap` fields: ``road_edges_3d`` and ``lanes_3d`` ``(P_i, 3)``
    (features with >= 2 points, map order, as in ``road_edges`` / ``lanes``), ``lane_ids``
    (feature ids, str) and ``lane_kinds`` (ScenarioNet's type names, :data:`LANE_KINDS`)."""
    lanes = [f for f in features if f.kind == "lane" and len(f.points) > 1]
    return {
        "road_edges_3d": tuple(f.points for f in features if f.kind == "road_edge" and len(f.points) > 1),
        "lanes_3d": tuple(f.points for f in lanes),
        "lane_ids": tuple(str(f.id) for f in lanes),
        "lane_kinds": tuple(LANE_KINDS.get(f.subtype, "LANE_UNKNOWN") for f in lanes),
    }


def valid_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-agent median of ``values`` ``(N, T)`` over the valid steps ``(N, T)`` (0 when never valid)."""
    masked = np.where(valid, np.asarray(values, float), np.nan)
    out = np.zeros(len(masked))
    seen = valid.any(axis=1)
    out[seen] = np.nanmedian(masked[seen], axis=1)
    return out


def lane_half_width(lane: MapFeature, by_id: dict[int, MapFeature]) -> float:
    """Half width (m) of ``lane``: the mean over both sides of the median distance from its centerline
    points to the boundary features it names, clipped to :data:`LANE_HALF_WIDTH_RANGE`; lanes with
    no boundary on either side (junction connectors) get :data:`DEFAULT_LANE_HALF_WIDTH`.
    """
    if len(lane.points) < 2:
        return DEFAULT_LANE_HALF_WIDTH
    pts = shapely.points(lane.points[:, :2])
    sides = []
    for ids in (lane.left_boundaries, lane.right_boundaries):
        lines = [by_id[i].points[:, :2] for i in ids if i in by_id and len(by_id[i].points) > 1]
        if lines:
            d = shapely.distance(pts, shapely.multilinestrings([shapely.linestrings(pl) for pl in lines]))
            sides.append(float(np.median(d)))
    if not sides:
        return DEFAULT_LANE_HALF_WIDTH
    return float(np.clip(np.mean(sides), *LANE_HALF_WIDTH_RANGE))


def womd_road_map(features: Sequence[MapFeature]) -> RoadMap:
    """Lane centerlines, road edges and the drivable area of a WOMD map (metres, 2-D).

    Drivable = union of the lanes buffered by their half width, the driveway polygons, and the
    on-road side of the road edges (:func:`road_edge_region`).
    """
    by_id = {f.id: f for f in features}
    lanes = [f for f in features if f.kind == "lane" and len(f.points) > 1]
    edges = [f.points[:, :2] for f in features if f.kind == "road_edge" and len(f.points) > 1]
    driveways = [f.points[:, :2] for f in features if f.kind == "driveway" and len(f.points) > 2]
    lane_xy = [f.points[:, :2] for f in lanes]
    return road_map(lane_xy, edges, drivable_geometry(lane_xy, [lane_half_width(f, by_id) for f in lanes],
                                                     driveways, edges))


class WomdProtoSource(IndexedSource[tuple[Path, int, int]]):
    """A :class:`~blm_gym.data.source.SceneSource` over WOMD ``Scenario`` TFRecords.

    ``data_dir``: a folder of ``*.tfrecord*`` files or one file (None: ``$BLM_GYM_DATA``).
    ``scene_ids``: keep only these ids (``"<file name>#<record index>"``), in the given order.
    Opening indexes record offsets of every file (headers only); payloads are read on ``load``.
    """

    name = "womd-proto"

    def __init__(self, data_dir: str | os.PathLike | None, *, scene_ids: Sequence[str] | None = None):
        root = resolve_data_dir(data_dir, "WOMD Scenario TFRecords")
        files = [root] if root.is_file() else sorted(
            p for p in root.glob(TFRECORD_GLOB) if p.is_file() and TFRECORD_NAME.fullmatch(p.name))
        if not files:
            raise FileNotFoundError(
                f"No TFRecord files ({TFRECORD_GLOB}) in {root}: point data_dir at the folder of a WOMD download "
                "(e.g. .../uncompressed/scenario/training) or at one .tfrecord file")
        self.root = root
        index: dict[str, tuple[Path, int, int]] = {}
        for path in files:
            for k, (offset, length) in enumerate(index_tfrecord(path)):
                index[f"{path.name}#{k}"] = (path, offset, length)
        if not index:
            raise FileNotFoundError(f"The TFRecord files in {root} hold no records (empty files); download them again")
        self._entries = select_entries(index, scene_ids, root, hint=(
            f"ids look like '<file name>#<record index>', available: {list(index)[:20]}"
            f"{' ...' if len(index) > 20 else ''}"))

    def scenario(self, index: int) -> WomdScenario:
        """The parsed proto of scene ``index`` (z, heights, traffic lights, tracks_to_predict, ...)."""
        _, (path, offset, length) = self.entry(index)
        return _parse_cached(path, offset, length)

    def load(self, index: int) -> Scene:
        """Scene ``index`` (cached in memory after the first load)."""
        sid, (path, offset, length) = self.entry(index)
        return _scene_cached(sid, path, offset, length)


@functools.lru_cache(maxsize=8)
def _parse_cached(path: Path, offset: int, length: int) -> WomdScenario:
    data = read_record(path, offset, length)
    try:
        return parse_scenario(data)
    except (ValueError, IndexError, struct.error) as e:
        raise CorruptTFRecordError(
            f"{path}: record at byte {offset - 12} is not a WOMD Scenario proto ({e}); expected the "
            "'scenario' TFRecords of the Waymo Open Motion Dataset (not tf.Example / lidar files)") from e


@functools.lru_cache(maxsize=32)
def _scene_cached(scene_id: str, path: Path, offset: int, length: int) -> Scene:
    scenario = _parse_cached(path, offset, length)
    try:
        return scene_from_womd(scenario, scene_id)
    except (ValueError, IndexError) as e:
        raise CorruptTFRecordError(f"{path}: record at byte {offset - 12}: malformed scenario ({e})") from e
