"""The core data representation: a scene as a struct of arrays.

Following waymax's ``SimulatorState`` and trajdata's typed batches, a scene holds every agent's
track as arrays of shape ``(N, T)`` (agents x time steps) with an explicit validity mask, and
its map as padded polylines plus a drivable area (shapely geometry and a raster for O(1)
look-ups). No per-agent Python objects live on the hot path.

Units: metres, radians, seconds, metres per second; world frame of the source map.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

DEFAULT_DT = 0.1  # s; every source is resampled to this step


class AgentType(enum.IntEnum):
    """Agent categories shared by all sources (stored as int8 arrays)."""

    UNKNOWN = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    STATIC = 4  # cones, barriers: obstacles that never move


@dataclass(frozen=True)
class Trajectories:
    """Agent states over time; all arrays ``(N, T)`` float32 unless noted.

    ``speed`` is the signed speed along ``heading`` (m/s); ``vx, vy`` the world-frame velocity.
    ``length, width`` are per-agent box extents ``(N,)`` in metres. ``valid`` is bool ``(N, T)``;
    values at invalid steps are meaningless (kept finite, usually 0).
    """

    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    speed: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    valid: np.ndarray

    @property
    def num_agents(self) -> int:
        return self.x.shape[0]

    @property
    def num_steps(self) -> int:
        return self.x.shape[1]

    @property
    def xy(self) -> np.ndarray:
        """Positions ``(N, T, 2)``."""
        return np.stack([self.x, self.y], axis=-1)

    def select(self, agents=slice(None), steps=slice(None)) -> "Trajectories":
        """Index agents and/or steps, keeping the struct-of-arrays layout."""
        out = {}
        for f in dataclasses.fields(self):
            a = getattr(self, f.name)
            out[f.name] = a[agents] if a.ndim == 1 else a[agents][:, steps]
        return Trajectories(**out)

    def mask_steps(self, keep: np.ndarray) -> "Trajectories":
        """A copy valid only at the steps where ``keep`` ``(T,)`` is True (zeros elsewhere)."""
        valid = self.valid & keep
        out = {f.name: np.where(valid, getattr(self, f.name), 0).astype(getattr(self, f.name).dtype)
               for f in dataclasses.fields(self) if getattr(self, f.name).ndim == 2}
        return dataclasses.replace(self, **out)

    def with_step(self, t: int, x, y, heading, speed, valid) -> "Trajectories":
        """A copy with step ``t`` set to the states ``(N,)`` (velocity from heading and speed;
        zeros where not ``valid``)."""
        valid = np.asarray(valid, bool)
        now = {"x": x, "y": y, "heading": heading, "speed": speed,
               "vx": speed * np.cos(heading), "vy": speed * np.sin(heading)}
        out = {"valid": self.valid.copy()}
        out["valid"][:, t] = valid
        for name, value in now.items():
            a = getattr(self, name).copy()
            a[:, t] = np.where(valid, value, 0)
            out[name] = a
        return dataclasses.replace(self, **out)

    @staticmethod
    def from_states(x, y, heading, speed, length, width, valid) -> "Trajectories":
        """Build from positions, heading and speed; velocity follows from heading and speed."""
        f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        heading, speed = f32(heading), f32(speed)
        return Trajectories(
            x=f32(x), y=f32(y), heading=heading, speed=speed,
            vx=speed * np.cos(heading), vy=speed * np.sin(heading),
            length=f32(length), width=f32(width), valid=np.asarray(valid, dtype=bool),
        )


@dataclass(frozen=True)
class DrivableArea:
    """Where vehicles may drive: exact shapely geometry plus a boolean raster.

    ``raster[i, j]`` is True when the cell centred at
    ``(origin[0] + (j + 0.5) * resolution, origin[1] + (i + 0.5) * resolution)`` lies inside
    ``polygon``. ``contains`` uses the raster (O(1) per point, exact up to ``resolution``);
    ``contains_exact`` uses shapely.
    """

    polygon: BaseGeometry
    raster: np.ndarray  # (H, W) bool
    origin: tuple[float, float]  # world (x, y) of the raster's lower-left corner, metres
    resolution: float  # metres per cell

    @staticmethod
    def from_geometry(polygon: BaseGeometry, resolution: float = 0.5, margin: float = 5.0) -> "DrivableArea":
        """Rasterise ``polygon`` on a grid of ``resolution`` metres covering its bounds + margin."""
        if polygon.is_empty:
            return DrivableArea(polygon, np.zeros((1, 1), bool), (0.0, 0.0), resolution)
        x0, y0, x1, y1 = polygon.bounds
        x0, y0 = x0 - margin, y0 - margin
        w = int(np.ceil((x1 + margin - x0) / resolution))
        h = int(np.ceil((y1 + margin - y0) / resolution))
        cx = x0 + (np.arange(w) + 0.5) * resolution
        cy = y0 + (np.arange(h) + 0.5) * resolution
        gx, gy = np.meshgrid(cx, cy)
        shapely.prepare(polygon)
        raster = shapely.contains_xy(polygon, gx.ravel(), gy.ravel()).reshape(h, w)
        return DrivableArea(polygon, raster, (float(x0), float(y0)), float(resolution))

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Raster look-up: bool array shaped like ``x``; points off the raster are outside."""
        j = np.floor((np.asarray(x) - self.origin[0]) / self.resolution).astype(np.int64)
        i = np.floor((np.asarray(y) - self.origin[1]) / self.resolution).astype(np.int64)
        h, w = self.raster.shape
        inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        out = np.zeros(np.shape(x), dtype=bool)
        out[inside] = self.raster[i[inside], j[inside]]
        return out

    def contains_exact(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Shapely point-in-polygon (slow, exact); bool array shaped like ``x``."""
        return shapely.contains_xy(self.polygon, np.asarray(x, float), np.asarray(y, float))


@dataclass(frozen=True)
class RoadMap:
    """Vector map of a scene.

    ``lanes``: lane centerlines ``(L, P, 2)`` float32, padded; ``lane_mask`` ``(L, P)`` bool.
    ``road_edges``: road-edge polylines ``(E, P, 2)`` + ``edge_mask`` (E may be 0).
    ``drivable``: the drivable area built once per scene.

    Optional 3-D map (Waymo sources fill it; None elsewhere), for metrics that need altitude or
    map ids, e.g. the WOSAC evaluator (:mod:`blm_gym.metrics.wosac`):
    ``road_edges_3d``: one ``(P_i, 3)`` float array (x, y, z) per road-edge feature, map order.
    ``lanes_3d``: one ``(P_i, 3)`` float array per lane centerline with >= 2 points, map order;
    ``lane_ids``: their map feature ids (str); ``lane_kinds``: their types as the source names
    them (ScenarioNet: ``"LANE_SURFACE_STREET"``, ``"LANE_FREEWAY"``, ``"LANE_BIKE_LANE"``, ...).
    """

    lanes: np.ndarray
    lane_mask: np.ndarray
    road_edges: np.ndarray
    edge_mask: np.ndarray
    drivable: DrivableArea
    road_edges_3d: tuple[np.ndarray, ...] | None = None
    lanes_3d: tuple[np.ndarray, ...] | None = None
    lane_ids: tuple[str, ...] | None = None
    lane_kinds: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrafficLights:
    """Recorded traffic-signal states (WOMD ``dynamic_map_states``), one row per signalled lane.

    ``lane_ids`` ``(S,)`` str: the map feature id of the lane each signal controls (matches
    :attr:`RoadMap.lane_ids`). ``states`` ``(S, T)`` int8: the WOMD
    ``TrafficSignalLaneState.State`` per step (:data:`LANE_STATES` names them; 0 = unknown, also
    where the signal is absent at that step). ``stop_points`` ``(S, 3)`` float: the stop point
    (x, y, z) of each signal. ``present`` ``(S, T)`` bool or None: whether the step's
    ``dynamic_map_states`` lists the signal at all (an unknown state can be listed); None when
    the source does not say (read as present at every step).
    """

    lane_ids: tuple[str, ...]
    states: np.ndarray
    stop_points: np.ndarray
    present: np.ndarray | None = None

    def select_steps(self, steps) -> "TrafficLights":
        """The states of ``steps`` (a slice or index array) only."""
        present = None if self.present is None else self.present[:, steps]
        return dataclasses.replace(self, states=self.states[:, steps], present=present)


# WOMD map.proto TrafficSignalLaneState.State values, by name.
LANE_STATES = {
    "LANE_STATE_UNKNOWN": 0, "LANE_STATE_ARROW_STOP": 1, "LANE_STATE_ARROW_CAUTION": 2, "LANE_STATE_ARROW_GO": 3,
    "LANE_STATE_STOP": 4, "LANE_STATE_CAUTION": 5, "LANE_STATE_GO": 6, "LANE_STATE_FLASHING_STOP": 7,
    "LANE_STATE_FLASHING_CAUTION": 8,
}


@dataclass(frozen=True)
class Scene:
    """One recorded (or generated) traffic scene.

    ``agent_type`` is int8 ``(N,)`` of :class:`AgentType`; ``ego_index`` indexes the agent the
    log recorded from (the AV); ``dt`` is the step in seconds.

    Optional recorded extras (None / empty when the source lacks them; the 2-D simulator ignores
    them; the WOSAC evaluator :mod:`blm_gym.metrics.wosac` needs them):
    ``z`` ``(N, T)`` float32 altitude of the box centre (0 at invalid steps); ``height`` ``(N,)``
    float32 median box height over valid steps; ``extents`` ``(N, T, 3)`` float32 per-step box
    length, width, height as recorded (0 at invalid steps; no ego swap); ``current_index``: the
    dataset's "current" step (WOMD: 10) or None; ``tracks_to_predict``: agent indices the
    dataset marks for prediction; ``traffic_lights``: :class:`TrafficLights` or None.
    """

    scene_id: str
    source: str  # "nuscenes", "waymo", "synthetic-highway", ...
    dt: float
    agent_ids: tuple[str, ...]
    agent_type: np.ndarray
    ego_index: int
    traj: Trajectories
    road: RoadMap
    z: np.ndarray | None = None
    height: np.ndarray | None = None
    extents: np.ndarray | None = None
    current_index: int | None = None
    tracks_to_predict: tuple[int, ...] = ()
    traffic_lights: TrafficLights | None = None

    @property
    def num_agents(self) -> int:
        return self.traj.num_agents

    @property
    def num_steps(self) -> int:
        return self.traj.num_steps

    @property
    def is_vehicle(self) -> np.ndarray:
        return self.agent_type == AgentType.VEHICLE

    def select_agents(self, index: np.ndarray) -> "Scene":
        """A scene with a subset of agents (``index``: int indices, must contain the ego)."""
        index = np.asarray(index)
        if self.ego_index not in index:
            raise ValueError("select_agents: the ego agent must be kept")
        ego = int(np.flatnonzero(index == self.ego_index)[0])
        extras = {name: getattr(self, name)[index] for name in ("z", "height", "extents")
                  if getattr(self, name) is not None}
        kept = [int(i) for i in index]
        ttp = tuple(kept.index(i) for i in self.tracks_to_predict if i in kept)
        return dataclasses.replace(
            self, agent_ids=tuple(self.agent_ids[i] for i in index), agent_type=self.agent_type[index],
            ego_index=ego, traj=self.traj.select(agents=index), tracks_to_predict=ttp, **extras,
        )


def pad_polylines(polylines: list[np.ndarray], max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack 2-D polylines of different lengths into ``(L, P, 2)`` float32 + ``(L, P)`` mask."""
    if not polylines:
        return np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool)
    p = max_points or max(len(pl) for pl in polylines)
    out = np.zeros((len(polylines), p, 2), np.float32)
    mask = np.zeros((len(polylines), p), bool)
    for i, pl in enumerate(polylines):
        n = min(len(pl), p)
        out[i, :n] = np.asarray(pl)[:n, :2]
        mask[i, :n] = True
    return out, mask
