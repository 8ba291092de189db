"""Native-format scene sources: WOMD Scenario TFRecords, INTERACTION, Argoverse 2, CommonRoad.

Unit tests build tiny files themselves (a TFRecord of a hand-encoded Scenario proto, broken CSVs,
a CommonRoad XML); ``realdata`` tests read ``../shared/data`` (or ``$BLM_GYM_DATA``) and skip
when a folder is absent.
"""
from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import shapely

from blm_gym.data import av2, build, commonroad, interaction, road_edges, womd_proto
from blm_gym.data.scene import AgentType, Scene
from blm_gym.data.source import SceneSource
from conftest import SHARED_DATA

MOVING = 1.0  # m/s


def _shared(name: str):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found; set BLM_GYM_DATA to the folder holding {name}/")
    return path


def _moving_inside(scene: Scene, exact: bool = True) -> float:
    """Share of moving-vehicle log positions inside the drivable area."""
    tr = scene.traj
    moving = tr.valid & scene.is_vehicle[:, None] & (np.abs(tr.speed) > MOVING)
    area = scene.road.drivable
    inside = (area.contains_exact if exact else area.contains)(tr.x[moving], tr.y[moving])
    return float(inside.mean())


def _check_scene(scene: Scene, dt: float = 0.1) -> None:
    """Invariants every source promises."""
    n, t = scene.traj.valid.shape
    assert scene.dt == pytest.approx(dt)
    assert len(scene.agent_ids) == n == len(scene.agent_type) and t > 1
    assert 0 <= scene.ego_index < n and scene.traj.valid[scene.ego_index].any()
    assert scene.agent_type[scene.ego_index] == AgentType.VEHICLE
    for name in ("x", "y", "heading", "speed", "vx", "vy"):
        a = getattr(scene.traj, name)
        assert a.shape == (n, t) and np.isfinite(a).all(), name
        assert np.all(a[~scene.traj.valid] == 0), name
    seen = scene.traj.valid.any(1) & (scene.agent_type != AgentType.STATIC)
    assert (scene.traj.length[seen] > 0).all() and (scene.traj.width[seen] > 0).all()
    assert not scene.road.drivable.polygon.is_empty and scene.road.lanes.shape[-1] == 2


# --- protobuf / TFRecord encoders for the fixtures ----------------------------------------------

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _f_int(num: int, v: int) -> bytes:
    return _varint(num << 3) + _varint(v)


def _f_double(num: int, v: float) -> bytes:
    return _varint(num << 3 | 1) + struct.pack("<d", v)


def _f_float(num: int, v: float) -> bytes:
    return _varint(num << 3 | 5) + struct.pack("<f", v)


def _f_msg(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _point(x: float, y: float, z: float = 0.0, canonical: bool = True) -> bytes:
    return _f_double(1, x) + _f_double(2, y) + (_f_double(3, z) if canonical else b"")


def _polyline(num: int, xy, canonical: bool = True) -> bytes:
    return b"".join(_f_msg(num, _point(x, y, 0.5, canonical)) for x, y in xy)


def _toy_scenario(steps: int = 5) -> bytes:
    """Three tracks on a 10 m wide road along x (edges at y = +-5, oriented with the road on their
    left), an SDC at index 1, a reversing car, a pedestrian; one lane with a boundary; a driveway."""
    tracks = []
    for tid, kind, x0, vx, heading, valid in ((7, 1, 0.0, -2.0, 0.0, [0, 1, 1, 1, 0]),  # reversing car
                                               (8, 1, 10.0, 5.0, 0.0, [1] * steps),  # the SDC
                                               (9, 2, 20.0, 1.0, np.pi / 2, [1] * steps)):  # pedestrian
        states = b""
        for t in range(steps):
            s = b""
            if valid[t]:
                s = (_f_double(2, x0 + vx * 0.1 * t) + _f_double(3, 1.0) + _f_double(4, 2.5) + _f_float(5, 4.5)
                     + _f_float(6, 2.0) + _f_float(7, 1.6) + _f_float(8, heading)
                     + _f_float(9, vx * np.cos(heading)) + _f_float(10, vx * np.sin(heading)) + _f_int(11, 1))
            else:
                s = _f_float(5, -1.0) + _f_int(11, 0)  # invalid steps carry junk extents (-1, as WOMD)
            states += _f_msg(3, s)
        tracks.append(_f_msg(2, _f_int(1, tid) + _f_int(2, kind) + states))
    lane = _f_msg(3, _f_int(2, 2) + _polyline(8, [(-20, 0), (0, 0), (40, 0)])
                  + _f_msg(13, _f_int(1, 0) + _f_int(2, 2) + _f_int(3, 101)))  # left boundary = edge 101
    feats = [
        _f_msg(8, _f_int(1, 100) + lane),
        _f_msg(8, _f_int(1, 101) + _f_msg(5, _f_int(1, 1) + _polyline(2, [(40, 5), (-20, 5)]))),  # upper edge, -x
        _f_msg(8, _f_int(1, 102) + _f_msg(5, _f_int(1, 1) + _polyline(2, [(-20, -5), (40, -5)], False))),  # lower, +x
        _f_msg(8, _f_int(1, 103) + _f_msg(10, _polyline(1, [(0, -5), (4, -5), (4, -12), (0, -12)]))),  # driveway
    ]
    lights = b"".join(_f_msg(7, _f_msg(1, _f_int(1, 100) + _f_int(2, 4) + _f_msg(3, _point(1, 2, 3))))
                      for _ in range(steps))
    ttp = _f_msg(11, _f_int(1, 0) + _f_int(2, 1)) + _f_msg(11, _f_int(1, 2) + _f_int(2, 2))
    return (b"".join(_f_double(1, 0.1 * t) for t in range(steps)) + b"".join(tracks) + _f_msg(5, b"toy-scenario")
            + _f_int(6, 1) + _f_int(10, 2) + b"".join(feats) + lights + ttp + _f_int(4, 9))


def _tfrecord(payloads) -> bytes:
    out = b""
    for p in payloads:
        head = struct.pack("<Q", len(p))
        crc = womd_proto.masked_crc32c
        out += head + struct.pack("<I", crc(head)) + p + struct.pack("<I", crc(p))
    return out


# --- WOMD Scenario TFRecords -------------------------------------------------------------------

def test_crc32c_matches_the_castagnoli_check_value():
    assert womd_proto.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    data = bytes(range(256)) * 3
    assert womd_proto.crc32c_python(data) == womd_proto.crc32c(data)


def test_tfrecord_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "a.tfrecord"
    path.write_bytes(_tfrecord([b"first", b"", b"third record"]))
    assert list(womd_proto.iter_tfrecord(path)) == [b"first", b"", b"third record"]
    raw = path.read_bytes()
    (tmp_path / "cut.tfrecord").write_bytes(raw[:-3])
    with pytest.raises(womd_proto.CorruptTFRecordError, match="cut.tfrecord.*truncated"):
        womd_proto.index_tfrecord(tmp_path / "cut.tfrecord")
    flipped = bytearray(raw)
    flipped[14] ^= 0xFF  # inside the first payload
    (tmp_path / "flip.tfrecord").write_bytes(bytes(flipped))
    offset, length = womd_proto.index_tfrecord(tmp_path / "flip.tfrecord")[0]
    with pytest.raises(womd_proto.CorruptTFRecordError, match="data CRC"):
        womd_proto.read_record(tmp_path / "flip.tfrecord", offset, length)
    (tmp_path / "text.tfrecord").write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(womd_proto.CorruptTFRecordError, match="length CRC"):
        womd_proto.index_tfrecord(tmp_path / "text.tfrecord")


def test_parse_scenario_fields():
    sc = womd_proto.parse_scenario(_toy_scenario())
    assert sc.scenario_id == "toy-scenario" and sc.sdc_track_index == 1 and sc.current_time_index == 2
    assert sc.track_ids.tolist() == [7, 8, 9] and sc.object_type.tolist() == [1, 1, 2]
    assert sc.valid[0].tolist() == [False, True, True, True, False]
    assert sc.x[1].tolist() == pytest.approx([10.0, 10.5, 11.0, 11.5, 12.0])
    assert (sc.z[1] == 2.5).all() and (sc.height[1] == pytest.approx(1.6))
    assert sc.tracks_to_predict.tolist() == [0, 2] and sc.difficulty.tolist() == [1, 2]
    assert sc.objects_of_interest.tolist() == [9]
    kinds = {f.id: f for f in sc.map_features}
    assert kinds[100].kind == "lane" and kinds[100].left_boundaries == (101,) and kinds[100].subtype == 2
    assert kinds[101].kind == "road_edge" and kinds[101].points[:, 2].tolist() == [0.5, 0.5]
    assert kinds[102].points[:, 2].tolist() == [0.0, 0.0]  # MapPoint without z: decoded field by field
    assert kinds[103].kind == "driveway" and kinds[103].points.shape == (4, 3)
    assert len(sc.tl_states) == 5 and sc.tl_lane_ids[0].tolist() == [100] and sc.tl_states[0].tolist() == [4]
    assert sc.tl_stop_points[0].tolist() == [[1.0, 2.0, 3.0]]


def test_scene_from_womd_and_edge_side_drivable_area():
    scene = womd_proto.scene_from_womd(womd_proto.parse_scenario(_toy_scenario()))
    _check_scene(scene)
    assert scene.ego_index == 1 and scene.agent_ids == ("7", "8", "9") and scene.source == "waymo"
    assert scene.agent_type.tolist() == [AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN]
    tr = scene.traj
    assert tr.speed[0, tr.valid[0]] == pytest.approx(-2.0)  # signed: reversing
    assert tr.speed[2, 0] == pytest.approx(1.0)  # pedestrian walking along its heading (+y)
    assert (tr.length[0], tr.width[0]) == pytest.approx((4.5, 2.0))  # junk at invalid steps ignored
    area = scene.road.drivable
    # between the edges (road on their left), the driveway; not beyond the edges
    assert area.contains_exact(np.array([-15.0, 30.0, 2.0]), np.array([4.0, -4.0, -10.0])).all()
    assert not area.contains_exact(np.array([10.0, 10.0, 30.0]), np.array([7.0, -7.0, -10.0])).any()
    if hasattr(scene, "traffic_lights"):  # the optional recorded extras of scene.py
        assert scene.current_index == 2 and scene.tracks_to_predict == (0, 2)
        assert scene.z[1].tolist() == pytest.approx([2.5] * 5) and scene.z[0, 0] == 0
        assert scene.height[1] == pytest.approx(1.6) and scene.extents.shape == (3, 5, 3)
        lights = scene.traffic_lights
        assert lights.lane_ids == ("100",) and lights.states.tolist() == [[4] * 5]
        assert lights.stop_points.tolist() == [[1.0, 2.0, 3.0]]
        assert scene.road.lane_ids == ("100",) and scene.road.lane_kinds == ("LANE_SURFACE_STREET",)
        assert len(scene.road.road_edges_3d) == 2 and scene.road.road_edges_3d[0].shape == (2, 3)


def test_road_edge_region_sign_rule():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], float)
    ccw = road_edges.road_edge_region([square], [square])  # road inside a counter-clockwise ring
    cw = road_edges.road_edge_region([square[::-1]], [square])  # an island: road outside
    assert ccw.contains(shapely.Point(5, 5)) and not ccw.contains(shapely.Point(-3, 5))
    assert cw.contains(shapely.Point(-3, 5)) and not cw.contains(shapely.Point(5, 5))
    assert ccw.area == pytest.approx(100.0, rel=0.05)
    sd = road_edges.signed_distance_to_edges(np.array([[5.0, 5.0], [-3.0, 5.0], [12.0, 12.0]]), [square])
    assert sd == pytest.approx([-5.0, 3.0, np.hypot(2, 2)])  # beyond a convex corner: off-road


def test_womd_proto_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        womd_proto.WomdProtoSource(tmp_path / "missing")
    # ScenarioNet pickles named after their WOMD shard are not TFRecords
    (tmp_path / "sd_training.tfrecord-00000-of-01000_2a1e.pkl").write_bytes(b"not a record")
    with pytest.raises(FileNotFoundError, match="No TFRecord files"):
        womd_proto.WomdProtoSource(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.tfrecord").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="hold no records"):
        womd_proto.WomdProtoSource(tmp_path / "empty")
    (tmp_path / "a.tfrecord-00000-of-00001").write_bytes(_tfrecord([_toy_scenario(), b"\x08\x01not a scenario"]))
    src = womd_proto.WomdProtoSource(tmp_path)
    name = "a.tfrecord-00000-of-00001"
    assert isinstance(src, SceneSource) and src.scene_ids == (f"{name}#0", f"{name}#1")
    assert src.load(0).scene_id == "a.tfrecord-00000-of-00001#0" and src.scenario(0).scenario_id == "toy-scenario"
    with pytest.raises(womd_proto.CorruptTFRecordError, match=f"{name}: record at byte .* not a WOMD"):
        src.load(1)
    with pytest.raises(KeyError, match="Unknown scene ids"):
        womd_proto.WomdProtoSource(tmp_path, scene_ids=["nope#3"])
    with pytest.raises(IndexError):
        src.load(5)


@pytest.mark.realdata
def test_womd_protos_real():
    src = womd_proto.WomdProtoSource(_shared("womd-protos"))
    assert len(src) == 2
    for i in range(len(src)):
        scene, sc = src.load(i), src.scenario(i)
        _check_scene(scene)
        assert scene.num_steps == 91 and sc.current_time_index == 10
        assert scene.ego_index == sc.sdc_track_index and len(sc.tracks_to_predict) > 0
        assert np.ptp(sc.z[sc.valid]) > 0 and (sc.height[sc.valid] > 0).all()
        assert sum(f.kind == "road_edge" for f in sc.map_features) > 10
        assert _moving_inside(scene) >= 0.99
    assert any(len(s) for s in src.scenario(0).tl_states)  # traffic lights in the first scenario


# --- INTERACTION -------------------------------------------------------------------------------

def test_utm_projection_matches_pyproj():
    lat, lon = np.array([0.0, 0.009, 0.012, 0.003]), np.array([0.0, 0.009, 0.001, 0.02])
    xy = interaction.project_latlon(lat, lon)
    assert xy[0] == pytest.approx([0.0, 0.0], abs=1e-9)
    pyproj = pytest.importorskip("pyproj")
    proj = pyproj.Proj(proj="utm", ellps="WGS84", zone=31, datum="WGS84")
    x, y = proj(lon, lat)
    ox, oy = proj(0.0, 0.0)
    assert np.abs(xy - np.stack([x - ox, y - oy], -1)).max() < 1e-3


@pytest.fixture(scope="module")
def interaction_src():
    return interaction.InteractionSource(_shared("interaction"),
                                         locations=["DR_USA_Intersection_EP0", "DR_USA_Roundabout_FT"])


@pytest.mark.realdata
def test_interaction_windows(interaction_src):
    src = interaction_src
    assert isinstance(src, SceneSource)
    ids = src.scene_ids
    assert ids[0] == "DR_USA_Intersection_EP0/000/1" and ids[1] == "DR_USA_Intersection_EP0/000/51"
    for sid in ("DR_USA_Intersection_EP0/000/1001", "DR_USA_Roundabout_FT/001/2001"):
        scene = src.load(ids.index(sid))
        _check_scene(scene)
        assert scene.scene_id == sid and scene.num_steps == interaction.WINDOW_STEPS
        veh = scene.is_vehicle
        steps = np.where(veh, scene.traj.valid.sum(1), -1)
        assert steps[scene.ego_index] == steps.max()  # ego: the longest-valid vehicle
        assert _moving_inside(scene) >= 0.99
        # README check: tracks sit a median 0.9-2.1 m from lane boundaries once projected
        lmap = src.map(sid.split("/")[0])
        bounds = shapely.multilinestrings([shapely.linestrings(b) for pair in lmap.lanelets for b in pair])
        tr = scene.traj
        d = shapely.distance(shapely.points(tr.x[tr.valid & veh[:, None]], tr.y[tr.valid & veh[:, None]]), bounds)
        assert 0.5 < np.median(d) < 2.5
    ep0 = src.load(ids.index("DR_USA_Intersection_EP0/000/1001"))
    assert (ep0.agent_type == AgentType.PEDESTRIAN).any()  # pedestrian_tracks_000.csv merged in


@pytest.mark.realdata
def test_interaction_errors(tmp_path):
    real = _shared("interaction")
    loc = "DR_USA_Roundabout_FT"
    (tmp_path / "maps").mkdir()
    shutil.copy(real / "maps" / f"{loc}.osm", tmp_path / "maps")
    rec = tmp_path / "recorded_trackfiles" / loc
    rec.mkdir(parents=True)
    lines = (real / "recorded_trackfiles" / loc / "vehicle_tracks_000.csv").read_text().splitlines()[:400]
    lines[200] = lines[200].replace(",car,", ",car,abc,", 1)  # a shifted row: 'abc' where x should be
    (rec / "vehicle_tracks_000.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(interaction.CorruptTrackFileError, match="vehicle_tracks_000.csv"):
        interaction.InteractionSource(tmp_path)
    (rec / "vehicle_tracks_000.csv").write_text("track_id,frame_id,x\n1,1,0.5\n")
    with pytest.raises(interaction.CorruptTrackFileError, match="vehicle_tracks_000.csv.*column"):
        interaction.InteractionSource(tmp_path)
    (rec / "vehicle_tracks_000.csv").write_text("\n".join(lines[:150]) + "\n")
    src = interaction.InteractionSource(tmp_path)
    assert src.scene_ids == (f"{loc}/000/1",)
    with pytest.raises(KeyError, match="Unknown scene ids"):
        interaction.InteractionSource(tmp_path, scene_ids=[f"{loc}/000/7"])
    with pytest.raises(FileNotFoundError, match="not an INTERACTION folder"):
        interaction.InteractionSource(tmp_path / "maps")
    (tmp_path / "maps" / f"{loc}.osm").write_text("<osm><node id='1' lat='x'")
    with pytest.raises(interaction.CorruptTrackFileError, match=f"{loc}.osm"):
        interaction.read_lanelet_map(tmp_path / "maps" / f"{loc}.osm")


# --- Argoverse 2 -------------------------------------------------------------------------------

def test_quaternion_yaw():
    yaw = np.array([0.3, -2.0, 3.0])
    qw, qz = np.cos(yaw / 2), np.sin(yaw / 2)
    zero = np.zeros(3)
    assert av2.quaternion_yaw(qw, zero, zero, qz) == pytest.approx(yaw)
    rot = av2.quaternion_matrix(qw, zero, zero, qz)
    assert np.arctan2(rot[:, 1, 0], rot[:, 0, 0]) == pytest.approx(yaw)


@pytest.mark.realdata
def test_av2_motion_forecasting_real():
    src = av2.Av2MotionForecastingSource(_shared("av2-sample/motion-forecasting"))
    assert src.scene_ids == ("0a1e6f0a-1817-4a98-b02e-db8c9327d151",)
    scene = src.load(0)
    _check_scene(scene)
    assert scene.agent_ids[scene.ego_index] == "AV" and scene.num_steps == 110
    assert {AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.STATIC} <= set(scene.agent_type.tolist())
    if hasattr(scene, "current_index"):  # optional extras: 50 observed steps, focal + scored tracks
        assert scene.current_index == 49 and len(scene.tracks_to_predict) == 2
    # the map archive is cropped: count positions inside the map's hull only
    hull = shapely.convex_hull(scene.road.drivable.polygon)
    tr = scene.traj
    moving = tr.valid & scene.is_vehicle[:, None] & (np.abs(tr.speed) > MOVING)
    on_map = shapely.contains_xy(hull, tr.x[moving], tr.y[moving])
    assert scene.road.drivable.contains_exact(tr.x[moving][on_map], tr.y[moving][on_map]).mean() >= 0.97


@pytest.mark.realdata
def test_av2_sensor_logs_real():
    src = av2.Av2SensorSource(_shared("av2-sample/sensor-logs"))
    assert len(src) == 4
    for i in (0, 2):  # one log with annotations_with_ego.feather, one without
        scene = src.load(i)
        _check_scene(scene)
        tr = scene.traj
        assert scene.agent_ids[scene.ego_index] == "AV" and 150 <= scene.num_steps <= 160
        assert (tr.length[scene.ego_index], tr.width[scene.ego_index]) == pytest.approx(av2.AV2_EGO_EXTENT)
        moving = tr.valid & scene.is_vehicle[:, None] & (np.abs(tr.speed) > 3.0)
        # boxes face where they move: heading agrees with the finite-difference velocity
        assert (tr.speed[moving] > 0).mean() > 0.95
        assert _moving_inside(scene) >= 0.94


def test_av2_errors(tmp_path):
    folder = tmp_path / "abc"
    folder.mkdir()
    (folder / "scenario_abc.parquet").write_bytes(b"PAR1 definitely not parquet")
    (folder / "log_map_archive_abc.json").write_text('{"drivable_areas": {}, "lane_segments": {}}')
    src = av2.Av2MotionForecastingSource(tmp_path)
    with pytest.raises(av2.CorruptAv2FileError, match="scenario_abc.parquet"):
        src.load(0)
    (folder / "log_map_archive_abc.json").unlink()
    with pytest.raises(FileNotFoundError, match="log_map_archive"):
        src.load(0)
    with pytest.raises(FileNotFoundError, match="No AV2 sensor logs"):
        av2.Av2SensorSource(tmp_path)
    with pytest.raises(KeyError, match="Unknown scenario ids"):
        av2.Av2MotionForecastingSource(tmp_path, scene_ids=["zzz"])


# --- CommonRoad --------------------------------------------------------------------------------

_CR_XML = """<?xml version="1.0" ?>
<commonRoad benchmarkID="TOY-1" commonRoadVersion="2020a" timeStepSize="0.1">
  <lanelet id="1">
    <leftBound><point><x>0</x><y>2</y></point><point><x>50</x><y>2</y></point></leftBound>
    <rightBound><point><x>0</x><y>-2</y></point><point><x>50</x><y>-2</y></point></rightBound>
  </lanelet>
  <lanelet id="2">
    <leftBound><point><x>0</x><y>6</y></point><point><x>50</x><y>6</y></point></leftBound>
    <rightBound><point><x>0</x><y>2</y></point><point><x>50</x><y>2</y></point></rightBound>
    <laneletType>sidewalk</laneletType>
  </lanelet>
  <dynamicObstacle id="10">
    <type>car</type><shape><rectangle><length>4.5</length><width>1.8</width></rectangle></shape>
    <initialState><position><point><x>1</x><y>0</y></point></position><orientation><exact>0</exact></orientation>
      <time><exact>0</exact></time><velocity><exact>5</exact></velocity></initialState>
    <trajectory>
      <state><position><point><x>1.5</x><y>0</y></point></position><orientation><exact>0</exact></orientation>
        <time><exact>1</exact></time><velocity><exact>5</exact></velocity></state>
      <state><position><point><x>2</x><y>0</y></point></position><orientation><exact>0</exact></orientation>
        <time><exact>2</exact></time><velocity><exact>5</exact></velocity></state>
    </trajectory>
  </dynamicObstacle>
  <dynamicObstacle id="11">
    <type>car</type><shape><rectangle><length>4</length><width>2</width></rectangle></shape>
    <initialState><position><point><x>30</x><y>0</y></point></position><orientation><exact>0</exact></orientation>
      <time><exact>2</exact></time><velocity><exact>-1</exact></velocity></initialState>
  </dynamicObstacle>
  <staticObstacle id="12">
    <type>constructionZone</type><shape><circle><radius>0.5</radius></circle></shape>
    <initialState><position><point><x>40</x><y>1</y></point></position><orientation><exact>0</exact></orientation>
      <time><exact>0</exact></time></initialState>
  </staticObstacle>
  <planningProblem id="99"/>
</commonRoad>
"""


def test_commonroad_toy(tmp_path):
    (tmp_path / "TOY-1.xml").write_text(_CR_XML)
    src = commonroad.CommonRoadSource(tmp_path)
    assert isinstance(src, SceneSource) and src.scene_ids == ("TOY-1",)
    scene = src.load(0)
    _check_scene(scene)
    tr = scene.traj
    assert scene.agent_ids == ("10", "11", "12") and scene.ego_index == 0 and scene.num_steps == 3
    assert tr.valid.tolist() == [[True] * 3, [False, False, True], [True] * 3]  # static: every step
    assert tr.speed[1, 2] == pytest.approx(-1.0) and tr.length[2] == pytest.approx(1.0)
    assert scene.agent_type[2] == AgentType.STATIC
    assert scene.road.drivable.polygon.area == pytest.approx(200.0)  # the sidewalk lanelet is left out


def test_commonroad_errors(tmp_path):
    (tmp_path / "bad.xml").write_text(_CR_XML[:300])
    with pytest.raises(commonroad.CorruptCommonRoadError, match="bad.xml"):
        commonroad.CommonRoadSource(tmp_path).load(0)
    (tmp_path / "bad.xml").write_text(_CR_XML.replace("<x>1.5</x>", "<x>one</x>"))
    with pytest.raises(commonroad.CorruptCommonRoadError, match="bad.xml: malformed"):
        commonroad.read_commonroad(tmp_path / "bad.xml")
    with pytest.raises(KeyError, match="Unknown scene ids"):
        commonroad.CommonRoadSource(tmp_path, scene_ids=["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No CommonRoad scenarios"):
        commonroad.CommonRoadSource(tmp_path / "empty")


@pytest.mark.realdata
def test_commonroad_real():
    src = commonroad.CommonRoadSource(_shared("commonroad-ngsim"))
    assert len(src) == 4
    for i in range(len(src)):
        scene = src.load(i)
        _check_scene(scene)
        assert 31 <= scene.num_steps <= 101 and _moving_inside(scene) >= 0.99


# --- shared builders (blm_gym.data.build) -------------------------------------------------------

def test_build_helpers():
    group = np.array([2, 0, 2, 1, 0])
    assert build.first_rows(group, 3).tolist() == [1, 3, 0]
    grid = build.scatter_grid(np.array([0, 1]), np.array([2, 0]), np.array([5.0, 7.0]), (2, 3))
    assert grid.tolist() == [[0, 0, 5.0], [7.0, 0, 0]]
    valid = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
    kinds = np.array([AgentType.PEDESTRIAN, AgentType.VEHICLE, AgentType.VEHICLE], np.int8)
    assert build.longest_valid_vehicle(kinds, valid) == 2  # the pedestrian does not count
    assert build.longest_valid_vehicle(kinds[:1], valid[:1]) is None
    line = build.resample_polyline(np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]]), 5)
    assert line[:, 0] == pytest.approx([0, 1, 2, 3, 4])
    left, right = np.array([[0.0, 2.0], [10.0, 2.0]]), np.array([[0.0, -2.0], [10.0, -2.0]])
    assert build.lanelet_centerline(left, right, 3) == pytest.approx(np.array([[0, 0], [5, 0], [10, 0.0]]))
    polygon = build.lanelet_polygon(left, right)
    assert polygon.area == pytest.approx(40.0)
    ring = shapely.Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(4, 4), (6, 4), (6, 6), (4, 6)]])
    assert [len(r) for r in build.outline_polylines(ring)] == [5, 5]  # exterior + the hole
    road = build.road_map([line], build.outline_polylines(polygon), polygon)
    assert road.lanes.shape == (1, 5, 2) and road.road_edges.shape[0] == 1 and road.drivable.contains(5.0, 0.0)
    assert build.union_or_empty([]).is_empty


def test_indexed_source_errors(tmp_path):
    found = {"a": 1, "b": 2, "c": 3}
    assert list(build.select_entries(found, ["c", "a"], tmp_path)) == ["c", "a"]
    with pytest.raises(KeyError, match=r"Unknown log ids \['z'\] in .*; available: \['a', 'b', 'c'\]"):
        build.select_entries(found, ["z"], tmp_path, "log ids")

    class Toy(build.IndexedSource):
        name, noun, root, _entries = "toy", "toys", tmp_path, found

    src = Toy()
    assert isinstance(src, SceneSource) and len(src) == 3 and src.entry(-1) == ("c", 3)
    with pytest.raises(NotImplementedError):
        src.load(0)
    with pytest.raises(IndexError, match="scene index 3 out of range for 3 toys"):
        src.entry(3)
    (tmp_path / "bad.xml").write_text("<a><b></a>")
    with pytest.raises(commonroad.CorruptCommonRoadError, match="bad.xml: not a readable map"):
        build.parse_xml(tmp_path / "bad.xml", commonroad.CorruptCommonRoadError, "map")
