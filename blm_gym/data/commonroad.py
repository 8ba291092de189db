"""Scenes from CommonRoad scenario XML files (e.g. the NGSIM-derived US-101, Lankershim, Peachtree).

Layout read: ``data_dir`` is a folder of CommonRoad ``*.xml`` scenarios (format versions 2018b and
2020a) or one such file. Scene id = the file stem (CommonRoad names files by their ``benchmarkID``).

What is read (``xml.etree``; ``commonroad-io`` is not needed, and its current release would move
protobuf off the 3.19.4 that trajdata pins):

- ``timeStepSize`` (s) on the root element: the scene ``dt``;
- ``lanelet``: ``leftBound`` / ``rightBound`` point lists; the lanelet polygon is the left bound
  followed by the reversed right bound, the centerline the midline of the two (resampled by arc
  length); lanelets typed ``sidewalk`` or ``crosswalk`` (2020a ``laneletType``) are left out;
- obstacles -- 2018b ``<obstacle>`` with ``<role>dynamic|static</role>``, 2020a
  ``<dynamicObstacle>`` / ``<staticObstacle>``: ``type``, ``shape/rectangle`` (``length``,
  ``width``; a circle gives its diameter), ``initialState`` and ``trajectory/state`` with
  ``position/point``, ``orientation/exact``, ``velocity/exact`` (signed speed along the
  orientation, m/s) and ``time/exact`` (integer step). Static obstacles hold their initial state
  at every step.

Drivable area = the union of the lanelet polygons; road edges = its outline (CommonRoad has no
separate kerb layer). Ego: the planning problem of a CommonRoad benchmark only has an initial
state (the planned vehicle was removed from the recording), so the ego is the recorded vehicle
valid for the most steps (ties: the first in the file); the planning problems are not agents.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from blm_gym.data.build import (IndexedSource, lanelet_centerline, lanelet_polygon, longest_valid_vehicle,
                                outline_polylines, parse_xml, road_map, select_entries, union_or_empty)
from blm_gym.data.safe_pickle import CorruptSceneFileError
from blm_gym.data.scene import AgentType, Scene, Trajectories
from blm_gym.data.source import resolve_data_dir

AGENT_TYPES = {
    **{t: AgentType.VEHICLE for t in ("car", "truck", "bus", "taxi", "priorityVehicle", "parkedVehicle")},
    **{t: AgentType.CYCLIST for t in ("motorcycle", "bicycle")},
    "pedestrian": AgentType.PEDESTRIAN,
    **{t: AgentType.STATIC for t in ("constructionZone", "roadBoundary", "building", "pillar", "median_strip")},
}
NON_DRIVABLE_LANELETS = {"sidewalk", "crosswalk"}
CENTERLINE_POINTS = 20


class CorruptCommonRoadError(CorruptSceneFileError):
    """A CommonRoad file is not XML or lacks what a scenario needs."""


def _points(elem) -> np.ndarray:
    """``<point><x/><y/></point>`` children of ``elem`` -> ``(P, 2)`` float64."""
    return np.array([[float(p.findtext("x")), float(p.findtext("y"))] for p in elem.findall("point")],
                    float).reshape(-1, 2)


def _state(elem) -> tuple[int, float, float, float, float]:
    """``(step, x, y, orientation, velocity)`` of a CommonRoad state element."""
    x, y = _points(elem.find("position"))[0]
    velocity = elem.findtext("velocity/exact")
    return (int(float(elem.findtext("time/exact"))), float(x), float(y), float(elem.findtext("orientation/exact")),
            float(velocity) if velocity is not None else 0.0)


def _extent(obstacle) -> tuple[float, float]:
    rect = obstacle.find("shape/rectangle")
    if rect is not None:
        return float(rect.findtext("length")), float(rect.findtext("width"))
    circle = obstacle.find("shape/circle")
    if circle is not None:
        d = 2 * float(circle.findtext("radius"))
        return d, d
    return 0.0, 0.0


def read_commonroad(path: str | os.PathLike) -> Scene:
    """The :class:`Scene` of one CommonRoad XML file."""
    path = Path(path)
    root = parse_xml(path, CorruptCommonRoadError, "CommonRoad XML file")
    if root.tag != "commonRoad":
        raise CorruptCommonRoadError(f"{path}: root element is <{root.tag}>, not <commonRoad>")
    try:
        dt = float(root.get("timeStepSize"))
        lanes, polygons = [], []
        for ll in root.findall("lanelet"):
            if {t.text for t in ll.findall("laneletType")} & NON_DRIVABLE_LANELETS:
                continue
            left, right = _points(ll.find("leftBound")), _points(ll.find("rightBound"))
            if len(left) < 2 or len(right) < 2:
                continue
            lanes.append(lanelet_centerline(left, right, CENTERLINE_POINTS))
            polygons.append(lanelet_polygon(left, right))
        tracks = []  # (id, type, (length, width), states, static)
        for ob in root:
            if ob.tag == "obstacle":  # 2018b
                static = ob.findtext("role") == "static"
            elif ob.tag in ("dynamicObstacle", "staticObstacle"):  # 2020a
                static = ob.tag == "staticObstacle"
            else:
                continue
            states = [_state(ob.find("initialState"))] + [_state(s) for s in ob.findall("trajectory/state")]
            tracks.append((ob.get("id"), ob.findtext("type", "unknown"), _extent(ob), states, static))
    except (AttributeError, TypeError, ValueError, IndexError) as e:
        raise CorruptCommonRoadError(f"{path}: malformed CommonRoad scenario ({type(e).__name__}: {e}); expected "
                                     "timeStepSize, lanelets with leftBound/rightBound points, obstacles with "
                                     "initialState position/orientation/time") from e
    if not tracks:
        raise CorruptCommonRoadError(f"{path}: no obstacles: nothing to replay")
    num_steps = max(s[0] for t in tracks for s in t[3]) + 1
    n = len(tracks)
    valid = np.zeros((n, num_steps), bool)
    x, y, heading, speed = (np.zeros((n, num_steps)) for _ in range(4))
    for i, (_, _, _, states, static) in enumerate(tracks):
        st = np.array(states, float)
        steps = st[:, 0].astype(int)
        if static:
            steps = np.arange(num_steps)
            st = np.repeat(st[:1], num_steps, axis=0)
        valid[i, steps] = True
        x[i, steps], y[i, steps], heading[i, steps], speed[i, steps] = st[:, 1], st[:, 2], st[:, 3], st[:, 4]
    extents = np.array([t[2] for t in tracks], float)
    agent_type = np.array([AGENT_TYPES.get(t[1], AgentType.UNKNOWN) for t in tracks], np.int8)
    ego = longest_valid_vehicle(agent_type, valid) or 0  # no vehicle: envs skip such a scene
    traj = Trajectories.from_states(x, y, heading, speed, extents[:, 0], extents[:, 1], valid)
    drivable = union_or_empty(polygons)
    road = road_map(lanes, outline_polylines(drivable), drivable)
    return Scene(scene_id=path.stem, source="commonroad", dt=round(dt, 6),
                 agent_ids=tuple(str(t[0]) for t in tracks), agent_type=agent_type, ego_index=ego, traj=traj, road=road)


class CommonRoadSource(IndexedSource[Path]):
    """A :class:`~blm_gym.data.source.SceneSource` over CommonRoad XML scenarios.

    ``data_dir``: a folder of ``*.xml`` files or one file (None: ``$BLM_GYM_DATA``).
    ``scene_ids``: keep only these file stems (e.g. ``"USA_US101-3_3_T-1"``), in the given order.
    """

    name, noun = "commonroad", "scenarios"

    def __init__(self, data_dir: str | os.PathLike | None, *, scene_ids: Sequence[str] | None = None):
        root = resolve_data_dir(data_dir, "CommonRoad scenarios")
        files = {p.stem: p for p in ([root] if root.is_file() else sorted(root.glob("*.xml")))}
        if not files:
            raise FileNotFoundError(f"No CommonRoad scenarios (*.xml) in {root}; point data_dir at a folder of "
                                    "CommonRoad XML files (commonroad.in.tum.de scenarios)")
        self.root, self._entries = root, select_entries(files, scene_ids, root)

    def load(self, index: int) -> Scene:
        """Scenario ``index`` (cached)."""
        return _scene(self.entry(index)[1])


@functools.lru_cache(maxsize=32)
def _scene(path: Path) -> Scene:
    return read_commonroad(path)
