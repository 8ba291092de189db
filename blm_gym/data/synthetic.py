"""Embedded default scenes: traffic recorded from highway-env, no download needed.

Scene ``i`` of a :class:`SyntheticSource` runs one highway-env road (highway, merge, roundabout or
intersection) with its IDM/MOBIL traffic for ``steps`` states 0.1 s apart, the controlled ego
included (it drives with IDM too). Runs are deterministic per ``(kind, seed)`` and are cached on
disk as ``.npz`` arrays, from which the scene (drivable area included) is rebuilt identically.

Frame: highway-env's world frame in metres, read as a plain Cartesian frame (its y axis points
down on screen). ``heading`` is the direction of motion (highway-env's body yaw plus the slip
angle of its bicycle model, a few degrees in curves), so ``(vx, vy) = speed * (cos, sin)(heading)``
matches finite differences of positions, as the unicycle model expects.

Validity: a vehicle is valid from the step it enters the road until it leaves the end of its
lane network or crashes (it is then removed from the simulation, so it never blocks others).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from blm_gym.data.scene import DEFAULT_DT, AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines

CACHE_VERSION = 2  # bump when the recording changes, so stale cache files are not read
KINDS = ("highway", "merge", "roundabout", "intersection")
LANE_SAMPLING = 1.0  # m between centerline points
MAP_MARGIN = 50.0  # m of map kept around the recorded traffic (crops the 10 km highway)
MIN_HOLE_AREA = 50.0  # m^2; smaller holes of the lane union are slivers between lanes, not islands
GAP_CLOSING = 1.5  # m; see drivable_polygon
EDGE_POINTS = 50  # points per road-edge polyline (edges are split into ~50 m pieces)
MAX_ATTEMPTS = 4  # runs drawn per scene until the ego stays valid throughout


@dataclass(frozen=True)
class KindSpec:
    """How one kind of road is simulated.

    ``env_class``: highway-env class name; ``config``: overrides of its default config (pairs);
    ``entries``: lanes ``(from, to, id)`` where new vehicles appear; ``destinations``: route
    targets (nodes) drawn for them (empty: follow the road); ``spawn_rate``: expected new
    vehicles per second; ``entry_speed``: their initial speed (m/s).
    """

    env_class: str
    config: tuple[tuple[str, object], ...] = ()
    entries: tuple[tuple[str, str, int], ...] = ()
    destinations: tuple[str, ...] = ()
    spawn_rate: float = 0.0
    entry_speed: float = 10.0


KIND_SPECS: dict[str, KindSpec] = {
    "highway": KindSpec("HighwayEnv", config=(("vehicles_count", 20), ("lanes_count", 4))),
    "merge": KindSpec(
        "MergeEnv", entries=(("a", "b", 0), ("a", "b", 1), ("j", "k", 0)), spawn_rate=1.2, entry_speed=25.0,
    ),
    "roundabout": KindSpec(
        "RoundaboutEnv",
        entries=tuple((f"{d}er", f"{d}es", 0) for d in "senw"),
        destinations=tuple(f"{d}xr" for d in "senw"),
        spawn_rate=1.5,
        entry_speed=12.0,
    ),
    "intersection": KindSpec(
        "IntersectionEnv",
        config=(("initial_vehicle_count", 10),),
        entries=tuple((f"o{i}", f"ir{i}", 0) for i in range(4)),
        destinations=tuple(f"o{i}" for i in range(4)),
        spawn_rate=1.2,
        entry_speed=8.0,
    ),
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/blm_gym/synthetic`` (``~/.cache/blm_gym/synthetic`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "blm_gym" / "synthetic"


class SyntheticSource:
    """Scenes recorded from highway-env; a :class:`~blm_gym.data.source.SceneSource`.

    Scene ``i`` is kind ``kinds[i % len(kinds)]`` with seed ``seed + i // len(kinds)`` and id
    ``f"{kind}-{seed_i:03d}"``; it has ``steps`` states at 0.1 s. Recorded runs are cached under
    ``cache_dir`` (default :func:`default_cache_dir`).
    """

    name = "synthetic"

    def __init__(
        self,
        kinds: tuple[str, ...] = KINDS,
        num_scenes: int = 8,
        seed: int = 0,
        steps: int = 200,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = [k for k in kinds if k not in KIND_SPECS]
        if not kinds or unknown:
            raise ValueError(f"SyntheticSource: unknown kinds {unknown or kinds!r}; choose from {KINDS}")
        if num_scenes < 1 or steps < 2 or seed < 0:
            raise ValueError(
                f"SyntheticSource: need num_scenes >= 1, steps >= 2 and seed >= 0 "
                f"(got num_scenes={num_scenes}, steps={steps}, seed={seed})"
            )
        self.kinds, self.num_scenes, self.seed, self.steps = kinds, int(num_scenes), int(seed), int(steps)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def _kind_seed(self, index: int) -> tuple[str, int]:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"SyntheticSource: scene index {index} out of range [0, {self.num_scenes})")
        return self.kinds[index % len(self.kinds)], self.seed + index // len(self.kinds)

    @property
    def scene_ids(self) -> list[str]:
        return [f"{k}-{s:03d}" for k, s in map(self._kind_seed, range(self.num_scenes))]

    def __len__(self) -> int:
        return self.num_scenes

    def cache_path(self, index: int) -> Path:
        kind, seed = self._kind_seed(index)
        return self.cache_dir / f"{kind}-seed{seed}-T{self.steps}-v{CACHE_VERSION}.npz"

    def load(self, index: int) -> Scene:
        """Scene ``index``: read from the cache, else recorded (a second or two) and cached."""
        kind, seed = self._kind_seed(index)
        path = self.cache_path(index)
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                arrays = dict(f)
        else:
            arrays = record_arrays(kind, seed, self.steps)
            _save_npz_atomic(path, arrays)
        return scene_from_arrays(arrays, scene_id=f"{kind}-{seed:03d}", source=f"synthetic-{kind}")


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record_arrays(kind: str, seed: int, steps: int) -> dict[str, np.ndarray]:
    """Simulate ``steps`` states 0.1 s apart of ``kind`` with ``seed``; the arrays that make a scene.

    Returns ``x, y, heading, speed`` ``(N, T)`` float32, ``valid`` ``(N, T)`` bool, ``length, width``
    ``(N,)`` float32, ``ego_index`` () int64 (always 0, the env's controlled vehicle),
    ``lanes`` ``(L, P, 2)`` float32 + ``lane_mask`` ``(L, P)`` + ``lane_width`` ``(L,)`` float32.
    N counts every vehicle ever present.

    IDM/MOBIL traffic sometimes crashes (at roundabout entries, in the intersection); when the ego
    crashes or leaves the road early, the run is redrawn (up to ``MAX_ATTEMPTS`` runs, each seeded
    from ``(seed, attempt)``) and the run whose ego stays valid longest is kept.
    """
    best = None
    for attempt in range(MAX_ATTEMPTS):
        env_seed = seed if attempt == 0 else int(np.random.SeedSequence((seed, attempt)).generate_state(1)[0])
        arrays = _simulate(kind, env_seed, steps)
        if best is None or arrays["valid"][0].sum() > best["valid"][0].sum():
            best = arrays
        if best["valid"][0].all():
            break
    return best


def _simulate(kind: str, seed: int, steps: int) -> dict[str, np.ndarray]:
    """One highway-env run of ``kind`` reset with ``seed``; see :func:`record_arrays`."""
    import highway_env.envs as he_envs
    from highway_env import utils as he_utils

    spec = KIND_SPECS[kind]
    env_class = getattr(he_envs, spec.env_class)
    vehicle_class = he_utils.class_from_path(env_class.default_config()["other_vehicles_type"])
    # IntersectionEnv tunes IDM through class attributes, already while it is built: keep the values
    # from before building it and restore them after, so a run doesn't depend on the runs before it
    saved = {k: getattr(vehicle_class, k) for k in ("DISTANCE_WANTED", "COMFORT_ACC_MAX", "COMFORT_ACC_MIN")}
    env = None
    try:
        env = env_class(config={"simulation_frequency": round(1 / DEFAULT_DT), **dict(spec.config)})
        env.reset(seed=seed)
        road, rng = env.unwrapped.road, env.unwrapped.np_random
        ego = vehicle_class.create_from(env.unwrapped.vehicle)  # the ego drives itself with IDM/MOBIL too
        road.vehicles[road.vehicles.index(env.unwrapped.vehicle)] = ego
        lanes = road.network.lanes_list()
        road_area = drivable_polygon(*_padded_lanes(lanes, np.full(2, -np.inf), np.full(2, np.inf)))
        shapely.prepare(road_area)
        slots: dict[int, tuple[int, object]] = {id(ego): (0, ego)}  # id -> (agent slot, vehicle kept alive)
        frames = []  # per step: (slots (n,), states (n, 6))
        for t in range(steps):
            if t > 0:
                _maybe_spawn(road, spec, vehicle_class, rng)
                road.act()
                road.step(DEFAULT_DT)
            # heading := direction of motion (body yaw + slip angle), so the log obeys the unicycle model
            state = np.array([
                (*v.position, v.heading + np.arctan(0.5 * np.tan(v.action["steering"])), v.speed, v.LENGTH, v.WIDTH)
                for v in road.vehicles
            ]).reshape(-1, 6)
            # crashed vehicles and those past the end of the road leave the simulation for good
            keep = ~np.array([v.crashed for v in road.vehicles], bool) & shapely.contains_xy(road_area, *state[:, :2].T)
            road.vehicles = [v for v, k in zip(road.vehicles, keep) if k]
            for v in road.vehicles:
                slots.setdefault(id(v), (len(slots), v))
            frames.append((np.array([slots[id(v)][0] for v in road.vehicles], np.int64), state[keep]))
    finally:
        for k, val in saved.items():
            setattr(vehicle_class, k, val)
        if env is not None:
            env.close()

    n = len(slots)
    states = np.zeros((6, n, steps))
    valid = np.zeros((n, steps), bool)
    for t, (idx, s) in enumerate(frames):
        states[:, idx, t] = s.T
        valid[idx, t] = True
    x, y, heading, speed, length, width = states
    heading = np.where(valid, (heading + np.pi) % (2 * np.pi) - np.pi, 0.0)
    lo = np.array([x[valid].min(), y[valid].min()]) - MAP_MARGIN
    hi = np.array([x[valid].max(), y[valid].max()]) + MAP_MARGIN
    lane_xy, lane_mask, lane_width = _padded_lanes(lanes, lo, hi)
    f32 = np.float32
    return dict(
        x=x.astype(f32), y=y.astype(f32), heading=heading.astype(f32), speed=speed.astype(f32), valid=valid,
        length=length.max(axis=1).astype(f32), width=width.max(axis=1).astype(f32),
        ego_index=np.array(0), lanes=lane_xy, lane_mask=lane_mask, lane_width=lane_width,
    )


def _maybe_spawn(road, spec: KindSpec, vehicle_class, rng: np.random.Generator) -> None:
    """With probability ``spawn_rate * dt``, a new vehicle at the start of a random entry lane (if free)."""
    if not spec.entries or rng.uniform() >= spec.spawn_rate * DEFAULT_DT:
        return
    lane_index = spec.entries[rng.integers(len(spec.entries))]
    speed = spec.entry_speed + rng.normal()
    vehicle = vehicle_class.make_on_lane(road, lane_index, longitudinal=rng.uniform(0.0, 5.0), speed=speed)
    if any(np.linalg.norm(v.position - vehicle.position) < 20.0 for v in road.vehicles):
        return  # the entry is busy
    if spec.destinations:
        vehicle.plan_route_to(spec.destinations[rng.integers(len(spec.destinations))])
    vehicle.randomize_behavior()
    road.vehicles.append(vehicle)


def _padded_lanes(lanes, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """highway-env lanes as centerlines sampled every ``LANE_SAMPLING`` m, cropped to the box ``[lo, hi]``.

    A lane crossing the box border is cut; each contiguous inside run of >= 2 points is a polyline.
    Returns padded ``(L, P, 2)`` points, ``(L, P)`` mask and ``(L,)`` widths (m).
    """
    polylines, widths = [], []
    for lane in lanes:
        s = np.linspace(0.0, lane.length, int(np.ceil(lane.length / LANE_SAMPLING)) + 1)
        pts = np.array([lane.position(si, 0.0) for si in s])
        inside = np.all((pts >= lo) & (pts <= hi), axis=1)
        breaks = np.flatnonzero(np.diff(inside.astype(np.int8))) + 1
        for run, keep in zip(np.split(pts, breaks), np.split(inside, breaks)):
            if keep[0] and len(run) >= 2:
                polylines.append(run)
                widths.append(lane.width)
    return *pad_polylines(polylines), np.array(widths, np.float32)


def drivable_polygon(lanes: np.ndarray, lane_mask: np.ndarray, lane_width: np.ndarray):
    """Union of lane centerlines ``(L, P, 2)`` buffered by half their width ``(L,)`` (flat ends).

    Gaps narrower than ``2 * GAP_CLOSING`` between lanes are closed; holes under ``MIN_HOLE_AREA``
    (slivers between adjacent curved lanes) are filled.
    """
    lines = [shapely.LineString(pl[m]) for pl, m in zip(lanes, lane_mask)]
    area = shapely.union_all(shapely.buffer(lines, lane_width / 2.0, cap_style="flat"))
    # a closing fills the wedges where lanes meet at an angle (entries of a roundabout)
    area = area.buffer(GAP_CLOSING, join_style="mitre").buffer(-GAP_CLOSING, join_style="mitre")
    parts = getattr(area, "geoms", [area])
    return shapely.union_all([
        shapely.Polygon(p.exterior, [h for h in p.interiors if shapely.Polygon(h).area >= MIN_HOLE_AREA])
        for p in parts
    ])


def road_edges(polygon) -> list[np.ndarray]:
    """Boundary rings of the drivable area, resampled at ~1 m and cut in pieces of ``EDGE_POINTS``."""
    rings = shapely.get_rings(shapely.get_parts(polygon))
    edges = []
    for ring in shapely.segmentize(rings, LANE_SAMPLING):
        pts = shapely.get_coordinates(ring)
        starts = range(0, len(pts) - 1, EDGE_POINTS - 1)
        edges += [pts[i:i + EDGE_POINTS] for i in starts]  # consecutive pieces share one point
    return edges


def scene_from_arrays(arrays: dict[str, np.ndarray], scene_id: str, source: str) -> Scene:
    """Build a :class:`Scene` from :func:`record_arrays` output (fresh or read from the cache)."""
    a = arrays
    polygon = drivable_polygon(a["lanes"], a["lane_mask"], a["lane_width"])
    edges, edge_mask = pad_polylines(road_edges(polygon))
    n = a["x"].shape[0]
    return Scene(
        scene_id=scene_id,
        source=source,
        dt=DEFAULT_DT,
        agent_ids=("ego",) + tuple(f"vehicle-{i}" for i in range(1, n)),
        agent_type=np.full(n, AgentType.VEHICLE, np.int8),
        ego_index=int(a["ego_index"]),
        traj=Trajectories.from_states(a["x"], a["y"], a["heading"], a["speed"], a["length"], a["width"], a["valid"]),
        road=RoadMap(
            lanes=a["lanes"], lane_mask=a["lane_mask"], road_edges=edges, edge_mask=edge_mask,
            drivable=DrivableArea.from_geometry(polygon),
        ),
    )
