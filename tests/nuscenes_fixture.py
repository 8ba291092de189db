"""A tiny raw nuScenes (v1.0-mini layout) dataset that tests write into a tmp folder.

It holds exactly what nuscenes-devkit 1.2.0 and trajdata 1.4.0 read: the 13 tables of
``v1.0-mini/`` and one map-expansion JSON per nuScenes location under ``maps/expansion/``
(trajdata caches all four maps of the nuScenes env, so each gets the same small road).

The world: a straight two-lane road along +x (eastbound lane at ``y = 98.25``, westbound at
``y = 101.75``, each 3.5 m wide) between ``x = 20`` and ``x = 280``, a walkway north of it, and a
crosswalk; a 12 m lane connector continues the eastbound lane. Scenes are sampled at 2 Hz like nuScenes; agents move on closed-form paths, so the
tests know every annotated position. Deterministic: tokens are hashes of names.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = "v1.0-mini"
LOCATION = "boston-seaport"
LOCATIONS = ("singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown", "boston-seaport")
SAMPLE_DT = 0.5  # s; nuScenes keyframes are 2 Hz
ROAD_X = (20.0, 280.0)  # m; road extent along x
CONNECTOR_LENGTH = 12.0  # m; lane connector past the road's east end
LANE_Y = (98.25, 101.75)  # m; eastbound, westbound lane centres
LANE_WIDTH = 3.5  # m
ROAD_Y = (LANE_Y[0] - LANE_WIDTH / 2, LANE_Y[1] + LANE_WIDTH / 2)  # drivable area's y extent
WALKWAY_Y = (104.0, 107.0)  # m
CANVAS = (300.0, 200.0)  # m; map canvas (width, height)


@dataclass(frozen=True)
class AgentSpec:
    """One annotated agent: ``x(t) = x0 + v t + a t^2 / 2`` along ``heading``, from sample ``first``
    to sample ``last`` (inclusive). ``size`` is nuScenes' (width, length, height) in metres."""

    name: str
    category: str
    x0: float
    y0: float
    heading: float  # rad
    speed: float  # m/s
    accel: float  # m/s^2
    first: int
    last: int
    size: tuple[float, float, float]

    def pose(self, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions at sample indices ``sample`` (K,): ``x, y`` each (K,)."""
        t = (np.asarray(sample, float) - self.first) * SAMPLE_DT
        s = self.speed * t + 0.5 * self.accel * t**2
        return self.x0 + s * np.cos(self.heading), self.y0 + s * np.sin(self.heading)


@dataclass(frozen=True)
class SceneSpec:
    name: str  # must be in nuScenes' mini_train / mini_val split lists (trajdata checks)
    num_samples: int
    ego: AgentSpec
    agents: tuple[AgentSpec, ...]


def _vehicle(name, x0, lane, speed, accel=0.0, first=0, last=None, n=20):
    heading = 0.0 if lane == 0 else np.pi
    return AgentSpec(name, "vehicle.car", x0, LANE_Y[lane], heading, speed, accel, first,
                     n - 1 if last is None else last, (1.9, 4.6, 1.7))


def default_scenes() -> tuple[SceneSpec, ...]:
    """scene-0061 (mini_train, 20 samples, 5 agents) and scene-0103 (mini_val, 8 samples, 2 agents)."""
    n = 20
    main = SceneSpec(
        name="scene-0061", num_samples=n,
        ego=_vehicle("ego", 40.0, 0, 8.0, n=n),
        agents=(
            _vehicle("car-lead", 60.0, 0, 6.0, accel=0.8, n=n),  # accelerates: 2 Hz interpolation shows
            _vehicle("car-oncoming", 260.0, 1, 9.0, n=n),
            _vehicle("car-late", 30.0, 0, 10.0, first=6, last=15, n=n),  # enters and leaves mid-scene
            AgentSpec("pedestrian", "human.pedestrian.adult", 100.0, 105.5, 0.0, 1.3, 0.0, 0, n - 1,
                      (0.7, 0.7, 1.8)),
            AgentSpec("bicycle", "vehicle.bicycle", 120.0, 96.9, 0.0, 4.0, 0.0, 2, n - 1, (0.6, 1.8, 1.5)),
        ),
    )
    short = SceneSpec(
        name="scene-0103", num_samples=8,
        ego=_vehicle("ego-2", 150.0, 1, 7.0, n=8),
        agents=(_vehicle("car-2", 200.0, 1, 7.0, n=8), _vehicle("car-3", 100.0, 0, 5.0, n=8)),
    )
    return main, short


def token(*parts: object) -> str:
    """A deterministic 32-hex-digit token (nuScenes tokens look the same)."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _quaternion(yaw: float) -> list[float]:
    """nuScenes rotation (w, x, y, z) of a pure yaw."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def write_nuscenes_fixture(root: str | os.PathLike, scenes: tuple[SceneSpec, ...] | None = None) -> Path:
    """Write the fixture under ``root`` (created) and return it as a ``Path``."""
    root = Path(root)
    scenes = default_scenes() if scenes is None else scenes
    for name, rows in _tables(scenes).items():
        _write_json(root / VERSION / f"{name}.json", rows)
    for location in LOCATIONS:
        _write_json(root / "maps" / "expansion" / f"{location}.json", map_expansion())
    # The devkit only checks that the map table's raster mask exists; a 1x1 PNG will do.
    Image.new("L", (1, 1)).save(root / "maps" / "mask.png")
    return root


def _tables(scenes: tuple[SceneSpec, ...]) -> dict[str, list[dict]]:
    log = token("log")
    sensor, calib = token("sensor", "CAM_FRONT"), token("calib", "CAM_FRONT")
    categories = sorted({a.category for s in scenes for a in s.agents})
    t = {name: [] for name in ("scene", "sample", "sample_data", "sample_annotation", "instance", "ego_pose")}
    for scene in scenes:
        samples = [token(scene.name, "sample", k) for k in range(scene.num_samples)]
        stamps = [1_500_000_000_000_000 + int(k * SAMPLE_DT * 1e6) for k in range(scene.num_samples)]
        t["scene"].append(dict(
            token=token(scene.name), name=scene.name, description="fixture: straight two-lane road",
            log_token=log, nbr_samples=scene.num_samples, first_sample_token=samples[0], last_sample_token=samples[-1]))
        ex, ey = scene.ego.pose(np.arange(scene.num_samples))
        for k, sample in enumerate(samples):
            prev, nxt = (samples[k - 1] if k else ""), (samples[k + 1] if k + 1 < len(samples) else "")
            t["sample"].append(dict(token=sample, timestamp=stamps[k], prev=prev, next=nxt,
                                    scene_token=token(scene.name)))
            pose = token(scene.name, "ego_pose", k)
            t["ego_pose"].append(dict(token=pose, timestamp=stamps[k], translation=[float(ex[k]), float(ey[k]), 0.0],
                                      rotation=_quaternion(scene.ego.heading)))
            data = lambda j: token(scene.name, "sample_data", j) if 0 <= j < len(samples) else ""  # noqa: E731
            t["sample_data"].append(dict(
                token=data(k), sample_token=sample, ego_pose_token=pose, calibrated_sensor_token=calib,
                timestamp=stamps[k], fileformat="jpg", is_key_frame=True, height=900, width=1600,
                filename=f"samples/CAM_FRONT/{scene.name}-{k:03d}.jpg", prev=data(k - 1), next=data(k + 1)))
        for agent in scene.agents:
            inst = token(scene.name, "instance", agent.name)
            steps = np.arange(agent.first, agent.last + 1)
            ann = [token(scene.name, "annotation", agent.name, k) for k in steps]
            xs, ys = agent.pose(steps)
            t["instance"].append(dict(token=inst, category_token=token("category", agent.category),
                                      nbr_annotations=len(ann), first_annotation_token=ann[0],
                                      last_annotation_token=ann[-1]))
            for j, k in enumerate(steps):
                t["sample_annotation"].append(dict(
                    token=ann[j], sample_token=samples[k], instance_token=inst,
                    visibility_token="4", attribute_tokens=[],
                    translation=[float(xs[j]), float(ys[j]), 0.8], size=list(agent.size),
                    rotation=_quaternion(agent.heading), prev=ann[j - 1] if j else "",
                    next=ann[j + 1] if j + 1 < len(ann) else "", num_lidar_pts=10, num_radar_pts=0))
    return dict(
        **t,
        category=[dict(token=token("category", c), name=c, description=c) for c in categories],
        attribute=[dict(token=token("attribute", "moving"), name="vehicle.moving", description="moving")],
        visibility=[dict(token="4", level="v80-100", description="visibility of whole object is 80-100%")],
        sensor=[dict(token=sensor, channel="CAM_FRONT", modality="camera")],
        calibrated_sensor=[dict(token=calib, sensor_token=sensor, translation=[1.7, 0.0, 1.5],
                                rotation=_quaternion(0.0),
                                camera_intrinsic=[[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])],
        log=[dict(token=log, logfile="n015-fixture", vehicle="n015", date_captured="2018-07-24", location=LOCATION)],
        map=[dict(token=token("map"), log_tokens=[log], category="semantic_prior", filename="maps/mask.png")],
    )


def lane_centerlines() -> dict[str, np.ndarray]:
    """Centrelines (2, 2) in driving direction: two lanes and a short lane connector that
    continues the eastbound lane past the road's end (it gives lanes of different lengths)."""
    (x0, x1), (y_east, y_west) = ROAD_X, LANE_Y
    return {
        "lane-east": np.array([[x0, y_east], [x1, y_east]]),
        "lane-west": np.array([[x1, y_west], [x0, y_west]]),
        "connector-east": np.array([[x1, y_east], [x1 + CONNECTOR_LENGTH, y_east]]),
    }


def map_expansion() -> dict:
    """The map-expansion JSON (version 1.3 schema, only the layers the devkit loads)."""
    nodes: list[dict] = []
    polygons: list[dict] = []

    def polygon(name: str, corners) -> str:
        ids = [token("node", name, i) for i in range(len(corners))]
        nodes.extend(dict(token=i, x=float(x), y=float(y)) for i, (x, y) in zip(ids, corners))
        polygons.append(dict(token=token("polygon", name), exterior_node_tokens=ids, holes=[]))
        return token("polygon", name)

    def box(x0, y0, x1, y1):
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    lanes, connectors, arclines = [], [], {}
    for name, ((xa, y), (xb, _)) in lane_centerlines().items():
        poly = polygon(name, box(min(xa, xb), y - LANE_WIDTH / 2, max(xa, xb), y + LANE_WIDTH / 2))
        if name.startswith("connector"):
            connectors.append(dict(token=token(name), polygon_token=poly))
        else:
            lanes.append(dict(token=token(name), polygon_token=poly, lane_type="CAR",
                              from_edge_line_token=None, to_edge_line_token=None,
                              left_lane_divider_segments=[], right_lane_divider_segments=[]))
        # A straight arcline: only the middle (S) segment has length.
        heading = 0.0 if xb > xa else np.pi
        arclines[token(name)] = [dict(
            start_pose=[float(xa), float(y), heading], end_pose=[float(xb), float(y), heading],
            shape="LSL", radius=999.0, segment_length=[0.0, float(abs(xb - xa)), 0.0])]
    road = polygon("road", box(ROAD_X[0], ROAD_Y[0], ROAD_X[1], ROAD_Y[1]))
    walkway = polygon("walkway", box(ROAD_X[0], WALKWAY_Y[0], ROAD_X[1], WALKWAY_Y[1]))
    crossing = polygon("crossing", box(180.0, ROAD_Y[0], 184.0, ROAD_Y[1]))
    east, west, connector = (token(n) for n in lane_centerlines())
    return dict(
        version="1.3", canvas_edge=list(CANVAS),
        node=nodes, line=[], polygon=polygons,
        drivable_area=[dict(token=token("drivable"), polygon_tokens=[road])],
        road_segment=[dict(token=token("road_segment"), polygon_token=road, is_intersection=False,
                           drivable_area_token=token("drivable"))],
        road_block=[], lane=lanes, lane_connector=connectors,
        ped_crossing=[dict(token=token("crossing"), polygon_token=crossing, road_segment_token=token("road_segment"))],
        walkway=[dict(token=token("walkway"), polygon_token=walkway)],
        stop_line=[], carpark_area=[], road_divider=[], lane_divider=[], traffic_light=[],
        arcline_path_3=arclines,
        connectivity={east: dict(incoming=[], outgoing=[connector]), west: dict(incoming=[], outgoing=[]),
                      connector: dict(incoming=[east], outgoing=[])},
    )
