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
    """

    lanes: np.ndarray
    lane_mask: np.ndarray
    road_edges: np.ndarray
    edge_mask: np.ndarray
    drivable: DrivableArea


@dataclass(frozen=True)
class Scene:
    """One recorded (or generated) traffic scene.

    ``agent_type`` is int8 ``(N,)`` of :class:`AgentType`; ``ego_index`` indexes the agent the
    log recorded from (the AV); ``dt`` is the step in seconds.
    """

    scene_id: str
    source: str  # "nuscenes", "waymo", "synthetic-highway", ...
    dt: float
    agent_ids: tuple[str, ...]
    agent_type: np.ndarray
    ego_index: int
    traj: Trajectories
    road: RoadMap

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
        return dataclasses.replace(
            self, agent_ids=tuple(self.agent_ids[i] for i in index), agent_type=self.agent_type[index],
            ego_index=ego, traj=self.traj.select(agents=index),
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
