"""Offscreen top-down drawing of a scene frame with pygame, returned as an RGB array.

The static map (drivable area, lane centerlines, road edges) is drawn once per scene into a
world-aligned surface; each frame blits the window around the view centre and draws the agents
on top. World y points up, so the map is flipped vertically on screen.

Offscreen drawing needs no display: only the font module is initialised. ``Renderer.show``
opens a real pygame window (``render_mode="human"``); set ``SDL_VIDEODRIVER=dummy`` to run it
headless.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely

from blm_gym.data.scene import AgentType, RoadMap, Scene
from blm_gym.sim.geometry import box_corners
from blm_gym.sim.state import SimulatorState

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the prompt is silenced)

RGB = tuple[int, int, int]

BACKGROUND: RGB = (236, 236, 230)
DRIVABLE: RGB = (196, 196, 196)
LANE: RGB = (252, 252, 252)
ROAD_EDGE: RGB = (70, 70, 70)
OUTLINE: RGB = (25, 25, 25)
EGO: RGB = (0, 175, 70)
COLLISION: RGB = (225, 25, 25)
OFFROAD: RGB = (255, 140, 0)
TEXT: RGB = (10, 10, 10)
TYPE_COLOURS: dict[int, RGB] = {
    AgentType.UNKNOWN: (150, 150, 150),
    AgentType.VEHICLE: (45, 95, 200),
    AgentType.PEDESTRIAN: (150, 60, 175),
    AgentType.CYCLIST: (0, 150, 160),
    AgentType.STATIC: (95, 95, 95),
}


@dataclass(frozen=True)
class RenderConfig:
    """How a frame looks.

    width, height: frame size in pixels.
    px_per_m: scale, pixels per metre.
    center: ``"ego"`` follows the ego agent; ``"scene"`` fixes the view on the centre of the
        logged agent positions (:func:`scene_center`).
    draw_trajectories: overlay every agent's logged path (past up to the current step solid,
        future faint). Explicit ``trajectories=`` passed to ``render`` are drawn regardless.
    draw_lanes, draw_road_edges: map layers to draw.
    show_text: title overlay (scene id, time) and a 10 m scale bar.
    font_size: overlay text height in pixels.
    """

    width: int = 800
    height: int = 800
    px_per_m: float = 5.0
    center: Literal["ego", "scene"] = "ego"
    draw_trajectories: bool = False
    draw_lanes: bool = True
    draw_road_edges: bool = True
    show_text: bool = True
    font_size: int = 20

    def __post_init__(self):
        if self.width < 16 or self.height < 16:
            raise ValueError(f"RenderConfig: width and height must be >= 16 px, got {self.width}x{self.height}")
        if not self.px_per_m > 0:
            raise ValueError(f"RenderConfig: px_per_m must be > 0, got {self.px_per_m}")
        if self.center not in ("ego", "scene"):
            raise ValueError(f"RenderConfig: center must be 'ego' or 'scene', got {self.center!r}")


def _shade(colour: RGB, k: float) -> RGB:
    """Blend towards black (k < 1) or white (k > 1)."""
    c = np.asarray(colour, float)
    c = c * k if k <= 1 else c + (255 - c) * (k - 1)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _agent_colour(scene: Scene, i: int) -> RGB:
    return EGO if i == scene.ego_index else TYPE_COLOURS.get(int(scene.agent_type[i]), TYPE_COLOURS[AgentType.UNKNOWN])


def scene_center(scene: Scene) -> tuple[float, float]:
    """Centre of the bounding box of all valid logged positions (of the drivable area if none), metres."""
    traj = scene.traj
    if traj.valid.any():
        x, y = traj.x[traj.valid], traj.y[traj.valid]
        return float(x.min() + x.max()) / 2, float(y.min() + y.max()) / 2
    x0, y0, x1, y1 = scene.road.drivable.polygon.bounds if not scene.road.drivable.polygon.is_empty else (0, 0, 0, 0)
    return (x0 + x1) / 2, (y0 + y1) / 2


def _polygons(geom) -> list[shapely.Polygon]:
    """The non-empty polygons of any shapely geometry (nested collections flattened)."""
    out = []
    for part in shapely.get_parts(geom):
        if isinstance(part, shapely.Polygon):
            out += [part] if not part.is_empty else []
        elif part.geom_type in ("MultiPolygon", "GeometryCollection"):
            out += _polygons(part)
    return out


class _MapLayer:
    """The static map of a scene drawn around a world point, at ``px_per_m``.

    Pixel ``(u, v)`` of ``surface`` shows world ``(x0 + u / s, y1 - v / s)``. It spans the view
    plus ``MARGIN_M`` on each side, so a moving view reuses it for a while and huge maps cost
    no more memory than a small one.
    """

    MARGIN_M = 100.0

    def __init__(self, road: RoadMap, center: tuple[float, float], config: RenderConfig):
        self.px_per_m = s = config.px_per_m
        hx = config.width / (2 * s) + self.MARGIN_M
        hy = config.height / (2 * s) + self.MARGIN_M
        self.x0, self.y0, self.x1, self.y1 = center[0] - hx, center[1] - hy, center[0] + hx, center[1] + hy
        self.surface = pygame.Surface((int(np.ceil(2 * hx * s)), int(np.ceil(2 * hy * s))))
        self.surface.fill(BACKGROUND)
        clipped = shapely.clip_by_rect(road.drivable.polygon, self.x0, self.y0, self.x1, self.y1)
        # Largest first, so a polygon lying in another's hole is drawn after that hole is cleared.
        for poly in sorted(_polygons(clipped), key=lambda p: -p.area):
            pygame.draw.polygon(self.surface, DRIVABLE, self.to_px(np.asarray(poly.exterior.coords)))
            for hole in poly.interiors:
                pygame.draw.polygon(self.surface, BACKGROUND, self.to_px(np.asarray(hole.coords)))
        if config.draw_lanes:
            self._polylines(road.lanes, road.lane_mask, LANE, 1)
        if config.draw_road_edges:
            self._polylines(road.road_edges, road.edge_mask, ROAD_EDGE, 2)

    def covers(self, left: float, bottom: float, right: float, top: float) -> bool:
        return self.x0 <= left and self.y0 <= bottom and right <= self.x1 and top <= self.y1

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        """World ``(..., 2)`` metres -> layer pixels ``(..., 2)`` float."""
        s = self.px_per_m
        return np.stack([(xy[..., 0] - self.x0) * s, (self.y1 - xy[..., 1]) * s], axis=-1)

    def _polylines(self, lines: np.ndarray, mask: np.ndarray, colour: RGB, width: int):
        px = self.to_px(lines.astype(np.float64))
        for pts, m in zip(px, mask):
            pts = pts[m]
            if len(pts) >= 2:
                pygame.draw.lines(self.surface, colour, False, pts, width)


class Renderer:
    """Draws frames of scenes, caching each scene's static map layer (the env calls it every step).

    ``render(scene, state)`` returns ``(H, W, 3)`` uint8; the map layer is redrawn only when a
    different scene object is passed or the view leaves the area drawn (100 m around the view).
    ``show(frame)`` displays a frame in a pygame window.
    """

    def __init__(self, config: RenderConfig = RenderConfig()):
        self.config = config
        self._scene: Scene | None = None
        self._layer: _MapLayer | None = None
        self._font = None
        self._window = None

    def _map_layer(self, scene: Scene, view: tuple[float, float, float, float]) -> _MapLayer:
        """The map layer of ``scene`` covering ``view`` (left, bottom, right, top), redrawn when needed."""
        if scene is not self._scene or not self._layer.covers(*view):
            self._scene = scene
            self._layer = _MapLayer(scene.road, ((view[0] + view[2]) / 2, (view[1] + view[3]) / 2), self.config)
        return self._layer

    def render(self, state: SimulatorState, *, trajectories=None, trajectory_mask=None,
               title: str | None = None) -> np.ndarray:
        """One frame ``(height, width, 3)`` uint8 RGB of the state's current step.

        Agents the step's checks flag as colliding are filled red, off-road ones get an orange outline.
        trajectories: optional ``(N, T, 2)`` world positions (plans, predictions) drawn as
            polylines in the agent's colour; ``trajectory_mask`` ``(N, T)`` bool marks valid points.
        title: overlay text; default ``"<scene id>  t=<time> s"``.
        """
        cfg, scene, step = self.config, state.scene, state.current_step
        x, y, heading, length, width = (np.asarray(getattr(state, k), np.float64)
                                        for k in ("x", "y", "heading", "length", "width"))
        valid = np.asarray(state.valid, bool)
        collided, offroad = state.collision[:, step], state.offroad[:, step]
        s = cfg.px_per_m

        ego = scene.ego_index
        if cfg.center == "ego" and valid[ego] and np.isfinite([x[ego], y[ego]]).all():
            cx, cy = x[ego], y[ego]
        else:
            cx, cy = scene_center(scene)
        # Frame pixel (u, v) shows world (left + u / s, top - v / s).
        left, top = cx - cfg.width / (2 * s), cy + cfg.height / (2 * s)
        to_px = lambda xy: np.stack([(xy[..., 0] - left) * s, (top - xy[..., 1]) * s], axis=-1)  # noqa: E731
        layer = self._map_layer(scene, (left, top - cfg.height / s, left + cfg.width / s, top))

        frame = pygame.Surface((cfg.width, cfg.height))
        frame.fill(BACKGROUND)
        frame.blit(layer.surface, (round((layer.x0 - left) * s), round((top - layer.y1) * s)))

        if cfg.draw_trajectories:
            self._draw_log(frame, scene, step, to_px)
        if trajectories is not None:
            self._draw_trajectories(frame, scene, trajectories, trajectory_mask, to_px)

        corners = to_px(box_corners(x, y, heading, length, width))  # (N, 4, 2)
        nose = to_px(np.stack([x + np.cos(heading) * length * 0.2, y + np.sin(heading) * length * 0.2], -1))
        big = length * s >= 8  # below ~8 px a chevron would hide the type colour
        order = [i for i in np.flatnonzero(valid) if i != ego] + ([ego] if valid[ego] else [])  # ego on top
        for i in order:
            fill = COLLISION if collided[i] else _agent_colour(scene, i)
            pygame.draw.polygon(frame, fill, corners[i])
            if big[i]:  # heading: a chevron from the front corners to a point ahead of the centre
                pygame.draw.polygon(frame, _shade(fill, 0.55), [corners[i, 0], corners[i, 3], nose[i]])
            pygame.draw.polygon(frame, OFFROAD if offroad[i] else OUTLINE, corners[i], 3 if offroad[i] else 1)

        if cfg.show_text:
            self._overlay(frame, title if title is not None else f"{scene.scene_id}  t={step * scene.dt:.1f} s")
        return np.frombuffer(pygame.image.tobytes(frame, "RGB"), np.uint8).reshape(cfg.height, cfg.width, 3)

    @staticmethod
    def _runs(frame, pts: np.ndarray, mask: np.ndarray, colour: RGB, width: int):
        """Draw the runs of consecutive valid points of one polyline."""
        edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if b - a >= 2:
                pygame.draw.lines(frame, colour, False, pts[a:b], width)

    def _draw_log(self, frame, scene: Scene, step: int, to_px):
        traj = scene.traj
        px = to_px(traj.xy.astype(np.float64))
        past = np.arange(traj.num_steps) <= step
        for i in np.flatnonzero(traj.valid.any(axis=1)):
            c = _agent_colour(scene, i)
            self._runs(frame, px[i], traj.valid[i] & ~past, _shade(c, 1.55), 1)
            self._runs(frame, px[i], traj.valid[i] & past, _shade(c, 1.2), 2)

    def _draw_trajectories(self, frame, scene: Scene, trajectories, mask, to_px):
        trajectories = np.asarray(trajectories, np.float64)
        n = scene.num_agents
        if trajectories.ndim != 3 or trajectories.shape[0] != n or trajectories.shape[2] != 2:
            raise ValueError(f"render: trajectories must be (N={n}, T, 2) world positions, got {trajectories.shape}")
        mask = np.isfinite(trajectories).all(-1) if mask is None else np.asarray(mask, bool)
        if mask.shape != trajectories.shape[:2]:
            raise ValueError(f"render: trajectory_mask has shape {mask.shape}, expected {trajectories.shape[:2]}")
        px = to_px(np.nan_to_num(trajectories))
        for i in np.flatnonzero(mask.any(axis=1)):
            self._runs(frame, px[i], mask[i], _shade(_agent_colour(scene, i), 1.3), 2)

    def _overlay(self, frame, text: str):
        if self._font is None:
            pygame.font.init()
            self._font = pygame.font.Font(None, self.config.font_size)
        label = self._font.render(text, True, TEXT, (255, 255, 255))
        frame.blit(label, (6, 6))
        # 10 m scale bar, bottom-left.
        s = self.config.px_per_m
        y = self.config.height - 10
        pygame.draw.line(frame, TEXT, (10, y), (10 + 10 * s, y), 2)
        frame.blit(self._font.render("10 m", True, TEXT), (14 + 10 * s, y - self.config.font_size // 2))

    def show(self, frame: np.ndarray) -> None:
        """Display ``frame`` ``(H, W, 3)`` uint8 in a pygame window (opened on first call)."""
        if self._window is None:
            try:
                pygame.display.init()
                self._window = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
            except pygame.error as e:
                raise RuntimeError(f"Renderer.show: cannot open a window ({e}); use render_mode='rgb_array' "
                                   "on machines without a display, or set SDL_VIDEODRIVER=dummy") from e
            pygame.display.set_caption("blm_gym")
        pygame.event.pump()  # keeps the window responsive
        self._window.blit(pygame.image.frombuffer(np.ascontiguousarray(frame).tobytes(),
                                                  (frame.shape[1], frame.shape[0]), "RGB"), (0, 0))
        pygame.display.flip()

    def close(self) -> None:
        """Close the window, if one was opened."""
        if self._window is not None:
            pygame.display.quit()
            self._window = None


def render_frame(state: SimulatorState, config: RenderConfig = RenderConfig(), **kwargs) -> np.ndarray:
    """One frame ``(config.height, config.width, 3)`` uint8; see :meth:`Renderer.render` for ``kwargs``.

    Builds the map layer afresh; use a :class:`Renderer` to draw many frames of a scene.
    """
    return Renderer(config).render(state, **kwargs)
