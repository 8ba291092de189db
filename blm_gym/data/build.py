"""What the native scene sources (WOMD protos, Argoverse 2, INTERACTION, CommonRoad) build alike.

- :class:`IndexedSource`: the :class:`~blm_gym.data.source.SceneSource` plumbing over a dict
  ``scene id -> entry`` (a file, a log folder, a record offset, a window), with the ``scene_ids``
  filter (:func:`select_entries`) and index checks;
- per-track arrays from long tables (one row per track and step): :func:`first_rows`,
  :func:`scatter_grid`; the ego of drone / infrastructure recordings:
  :func:`longest_valid_vehicle`;
- map geometry: :func:`resample_polyline`, :func:`lanelet_centerline` and :func:`lanelet_polygon`
  (from a lanelet's two bounds), :func:`outline_polylines` (road edges as the outline of a
  drivable area), :func:`union_or_empty` and :func:`road_map` (the
  :class:`~blm_gym.data.scene.RoadMap` with its rasterised drivable area);
- :func:`parse_xml` (errors name the file); :func:`known_fields` (the optional
  :class:`~blm_gym.data.scene.Scene` extras a dataclass defines).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Generic, Mapping, Sequence, TypeVar

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from blm_gym.data.scenarionet import RASTER_RESOLUTION
from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, pad_polylines

Entry = TypeVar("Entry")


# --- sources ------------------------------------------------------------------------------------

def select_entries(found: Mapping[str, Entry], scene_ids: Sequence[str] | None, where: str | os.PathLike,
                   what: str = "scene ids", hint: str = "") -> dict[str, Entry]:
    """``found`` restricted to ``scene_ids`` in that order (all of it when None).

    Unknown ids raise KeyError: ``"Unknown {what} [...] in {where}; {hint or the first 20 ids}"``.
    """
    if scene_ids is None:
        return dict(found)
    unknown = [s for s in scene_ids if s not in found]
    if unknown:
        listed = list(found)
        hint = hint or f"available: {listed[:20]}{' ...' if len(listed) > 20 else ''}"
        raise KeyError(f"Unknown {what} {unknown} in {where}; {hint}")
    return {s: found[s] for s in scene_ids}


class IndexedSource(Generic[Entry]):
    """Base of the sources that map each scene id to one entry (file, folder, record, window).

    Subclasses set ``name``, ``root`` and ``_entries`` (an insertion-ordered dict, the scene order)
    and implement ``load(index)`` through :meth:`entry`. ``noun`` names the scenes in errors.
    """

    name: str = "indexed"
    noun: str = "scenes"
    root: Path
    _entries: dict[str, Entry]

    @property
    def scene_ids(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, index: int) -> tuple[str, Entry]:
        """``(scene id, entry)`` of scene ``index`` (negative indices count from the end)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} {self.noun} in {self.root}")
        sid = self.scene_ids[index]
        return sid, self._entries[sid]

    def load(self, index: int):
        """Scene ``index`` (a :class:`~blm_gym.data.scene.Scene`); subclasses build it from :meth:`entry`."""
        raise NotImplementedError(f"{type(self).__name__}.load")


# --- per-track arrays ---------------------------------------------------------------------------

def first_rows(group: np.ndarray, num_groups: int) -> np.ndarray:
    """Index ``(num_groups,)`` of the first row of each group in ``group`` ``(R,)`` (ints in
    ``0 .. num_groups - 1``; a group without rows gets 0)."""
    out = np.zeros(num_groups, int)
    out[group[::-1]] = np.arange(len(group))[::-1]
    return out


def scatter_grid(agent: np.ndarray, step: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(N, T)`` float64 array holding ``values[r]`` at ``(agent[r], step[r])``, 0 elsewhere."""
    out = np.zeros(shape)
    out[agent, step] = values
    return out


def longest_valid_vehicle(agent_type: np.ndarray, valid: np.ndarray) -> int | None:
    """The vehicle valid for the most steps (ties: the lowest index), None when there is none:
    the ego of recordings without an AV (drones, infrastructure cameras, NGSIM)."""
    steps = np.where(agent_type == AgentType.VEHICLE, valid.sum(1), -1)
    if steps.max(initial=-1) < 0:
        return None
    return int(np.argmax(steps))


# --- map geometry -------------------------------------------------------------------------------

def resample_polyline(polyline: np.ndarray, num: int) -> np.ndarray:
    """``num`` points evenly spaced by arc length along ``polyline`` ``(P, 2)``."""
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))]
    u = np.linspace(0.0, s[-1], num)
    return np.stack([np.interp(u, s, polyline[:, 0]), np.interp(u, s, polyline[:, 1])], axis=-1)


def lanelet_centerline(left: np.ndarray, right: np.ndarray, num: int) -> np.ndarray:
    """Centerline ``(num, 2)`` of a lanelet: the midline of its bounds ``(P, 2)`` (both running in
    the driving direction), each resampled to ``num`` points by arc length."""
    return (resample_polyline(left, num) + resample_polyline(right, num)) / 2


def lanelet_polygon(left: np.ndarray, right: np.ndarray) -> BaseGeometry:
    """The valid polygon of a lanelet: left bound + reversed right bound (both in the driving direction)."""
    return shapely.make_valid(shapely.Polygon(np.concatenate([left, right[::-1]])))


def outline_polylines(geom: BaseGeometry) -> list[np.ndarray]:
    """Exterior and interior rings ``(P, 2)`` of every polygon of ``geom``: road edges where a
    source only has the drivable area."""
    return [np.asarray(ring.coords)[:, :2] for poly in shapely.get_parts(geom) if poly.geom_type == "Polygon"
            for ring in (poly.exterior, *poly.interiors)]


def road_map(lanes: Sequence[np.ndarray], edges: Sequence[np.ndarray], drivable: BaseGeometry,
             resolution: float = RASTER_RESOLUTION) -> RoadMap:
    """A :class:`RoadMap` of lane centerlines and road-edge polylines ``(P, 2)`` and the drivable
    area ``drivable``, rasterised at ``resolution`` m."""
    return RoadMap(*pad_polylines(list(lanes)), *pad_polylines(list(edges)),
                   DrivableArea.from_geometry(drivable, resolution))


def union_or_empty(polygons: Sequence[BaseGeometry]) -> BaseGeometry:
    """Union of ``polygons``; an empty polygon when there are none."""
    return shapely.union_all(list(polygons)) if len(polygons) else shapely.Polygon()


def parse_xml(path: str | os.PathLike, error: type[Exception], what: str):
    """The root element of the XML file ``path``; a parse failure raises ``error`` naming the file
    and ``what`` it should have been."""
    import xml.etree.ElementTree as ET

    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise error(f"{path}: not a readable {what} ({e})") from e


def known_fields(cls, fields: dict) -> dict:
    """The entries of ``fields`` that dataclass ``cls`` defines (an older scene.py lacks the extras)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in fields.items() if k in names}
