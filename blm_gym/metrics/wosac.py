"""TensorFlow-free WOSAC (Waymo Open Sim Agents Challenge) realism evaluator.

A NumPy re-implementation of the official evaluator of waymo-open-dataset 1.6.7
(``src/waymo_open_dataset/wdl_limited/sim_agents_metrics/``: ``metric_features.py``,
``metrics.py``, ``estimators.py`` and the feature modules re-implemented in
:mod:`blm_gym.metrics.wosac_features`), aiming at numerical parity per feature likelihood.

Protocol (``submission_specs``): 91 logged steps at 0.1 s, current step index 10, 80 simulated
steps (11..90), 32 rollouts. The simulated agents are every track valid at the current step;
the evaluated agents are the SDC plus ``tracks_to_predict`` (a subset of them). Interaction
features (distance, collision, TTC) consider every simulated agent but are scored for the
evaluated ones only.

Scoring (``metrics.compute_scenario_metrics_for_features_bundle``): per evaluated object, the
32 x 80 simulated values of a feature form a histogram (bounds and bins from the config,
additive smoothing 0.1; Bernoulli features: 2 bins, smoothing 0.001); each logged value gets the
log-probability of its bin. Time-series features: likelihood = exp(mean of the log-likelihoods
over all valid (object, step) entries of the log) -- one mean over objects and steps, then exp.
Collision, off-road, traffic-light violation: one "any step" flag per object and rollout, scored
with a Bernoulli estimate per object; likelihood = exp(mean over evaluated objects). The
meta-metric is the config-weighted sum of the ten likelihoods; buckets are weighted means.
Dataset score = mean over scenarios (:func:`aggregate`).

Usage::

    scenario = WosacScenario.from_scene(scene)          # or .from_scenarionet(pickle_dict)
    x, y, z, h = log_as_rollouts(scenario)               # or your policy's (32, A, 80) arrays
    scores = score_scenario(scenario, x, y, z, h)       # WOSAC_2025 by default
    scores.metametric, scores.likelihoods["collision_indication_likelihood"]

Quirks of the official code reproduced on purpose (see :mod:`blm_gym.metrics.wosac_features`):
NaN speeds / accelerations at the track ends count in the top histogram bin; kinematic validity
is computed on the 80 future steps only (first / last one or two steps never scored); TTC is
scored on vehicles only (1.6.7, whatever the config); the yaw difference in TTC is not wrapped;
the traffic-light lane search uses a "+" where the distance needs a "-", and padding segments.

Checked against the installed official 1.6.7 package on womd-sample scenes (log, noisy and
perturbed rollouts, gpudrive 3-D maps): kinematic features bitwise equal, TTC within 3e-6 s,
object and road-edge distances within 1e-6 m but for a few values in 1e4 (<= 5e-4 m), boolean
features equal, likelihoods within 1e-7.

Differences from the official code, all believed immaterial: the distance between two boxes'
float32 corners is computed in float64 (the official float32 Minkowski arithmetic differs by
~1e-6 m); ties between exactly equal object distances are broken in scene order, where the
official orders evaluated objects by id first; ScenarioNet stores one stop point per signal
(the official reads one per step).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from blm_gym.data.scene import AgentType, Scene, TrafficLights
from blm_gym.metrics import wosac_features as wf

F32 = np.float32

CURRENT_INDEX = 10
NUM_HISTORY_STEPS = CURRENT_INDEX + 1
NUM_SIM_STEPS = 80
NUM_LOG_STEPS = NUM_HISTORY_STEPS + NUM_SIM_STEPS  # 91
NUM_ROLLOUTS = 32
STEP_SECONDS = 0.1

# WOMD Track.ObjectType
TYPE_UNSET, TYPE_VEHICLE, TYPE_PEDESTRIAN, TYPE_CYCLIST, TYPE_OTHER = 0, 1, 2, 3, 4
# blm_gym AgentType -> WOMD Track.ObjectType (static obstacles and unknowns are TYPE_OTHER)
OBJECT_TYPE_OF_AGENT_TYPE = {
    AgentType.VEHICLE: TYPE_VEHICLE, AgentType.PEDESTRIAN: TYPE_PEDESTRIAN, AgentType.CYCLIST: TYPE_CYCLIST,
    AgentType.UNKNOWN: TYPE_OTHER, AgentType.STATIC: TYPE_OTHER,
}

# metrics.py _METRIC_FIELD_NAMES_BY_BUCKET
FEATURE_NAMES_BY_BUCKET = {
    "kinematic": ("linear_speed", "linear_acceleration", "angular_speed", "angular_acceleration"),
    "interactive": ("distance_to_nearest_object", "collision_indication", "time_to_collision"),
    "map_based": ("distance_to_road_edge", "offroad_indication", "traffic_light_violation"),
}
FEATURE_NAMES = tuple(n for names in FEATURE_NAMES_BY_BUCKET.values() for n in names)
LIKELIHOOD_NAMES = tuple(f"{n}_likelihood" for n in FEATURE_NAMES)


# ============================================================================ config
@dataclass(frozen=True)
class HistogramEstimate:
    """``SimAgentMetricsConfig.HistogramEstimate``: ``num_bins`` equal bins on [min_val, max_val]
    (values clipped into it), ``additive_smoothing_pseudocount`` added to every bin count."""

    min_val: float
    max_val: float
    num_bins: int
    additive_smoothing_pseudocount: float = 0.001  # the proto default


@dataclass(frozen=True)
class FeatureConfig:
    """``SimAgentMetricsConfig.FeatureConfig``: a histogram estimator, or Bernoulli when
    ``histogram`` is None (2 bins, ``bernoulli_pseudocount``); ``independent_timesteps``: one
    histogram over all rollouts x steps (True) or one per step over the rollouts (False)."""

    metametric_weight: float
    histogram: HistogramEstimate | None = None
    bernoulli_pseudocount: float = 0.001  # BernoulliEstimate default
    independent_timesteps: bool = False

    @property
    def estimator(self) -> str:
        return "bernoulli" if self.histogram is None else "histogram"


@dataclass(frozen=True)
class WosacConfig:
    """A WOSAC metrics config (``SimAgentMetricsConfig``) plus the protocol constants.

    ``ttc_vehicles_only``: TTC likelihood over vehicles only, as ``metrics.py`` of 1.6.7 does for
    every config (the 1.6.4-era code that ran the 2024 challenge scored every evaluated object:
    ``dataclasses.replace(WOSAC_2024, ttc_vehicles_only=False)`` reproduces it).
    ``num_rollouts``: rollouts :func:`score_scenario` requires (32 in the challenge).
    """

    name: str
    linear_speed: FeatureConfig
    linear_acceleration: FeatureConfig
    angular_speed: FeatureConfig
    angular_acceleration: FeatureConfig
    distance_to_nearest_object: FeatureConfig
    collision_indication: FeatureConfig
    time_to_collision: FeatureConfig
    distance_to_road_edge: FeatureConfig
    offroad_indication: FeatureConfig
    traffic_light_violation: FeatureConfig
    ttc_vehicles_only: bool = True
    current_index: int = CURRENT_INDEX
    num_sim_steps: int = NUM_SIM_STEPS
    num_rollouts: int = NUM_ROLLOUTS
    step_seconds: float = STEP_SECONDS

    def feature(self, name: str) -> FeatureConfig:
        """The config of feature ``name`` (``"linear_speed"``, ...; a ``_likelihood`` suffix is ok)."""
        name = name.removesuffix("_likelihood")
        if name not in FEATURE_NAMES:
            raise KeyError(f"unknown WOSAC feature {name!r}; one of {FEATURE_NAMES}")
        return getattr(self, name)

    @property
    def weights(self) -> dict[str, float]:
        """Meta-metric weight per likelihood name."""
        return {f"{n}_likelihood": getattr(self, n).metametric_weight for n in FEATURE_NAMES}


def _hist(lo: float, hi: float, bins: int, weight: float) -> FeatureConfig:
    return FeatureConfig(weight, HistogramEstimate(lo, hi, bins, 0.1), independent_timesteps=True)


# Transcribed from waymo-open-dataset 1.6.7 wdl_limited/sim_agents_metrics/challenge_2024_config.textproto
# (traffic_light_violation: Bernoulli with weight 0 there: computed, not in the meta-metric).
WOSAC_2024 = WosacConfig(
    name="2024",
    linear_speed=_hist(0.0, 25.0, 10, 0.05),
    linear_acceleration=_hist(-12.0, 12.0, 11, 0.05),
    angular_speed=_hist(-0.628, 0.628, 11, 0.05),
    angular_acceleration=_hist(-3.14, 3.14, 11, 0.05),
    distance_to_nearest_object=_hist(-5.0, 40.0, 10, 0.1),
    collision_indication=FeatureConfig(0.25),
    time_to_collision=_hist(0.0, 5.0, 10, 0.1),
    distance_to_road_edge=_hist(-20.0, 40.0, 10, 0.1),
    offroad_indication=FeatureConfig(0.25),
    traffic_light_violation=FeatureConfig(0.0),
    ttc_vehicles_only=True,
)

# Transcribed from waymo-open-dataset 1.6.7 wdl_limited/sim_agents_metrics/challenge_2025_sim_agents_config.textproto
# (the config metrics.load_metrics_config loads for the SIM_AGENTS challenge).
WOSAC_2025 = dataclasses.replace(
    WOSAC_2024, name="2025", distance_to_road_edge=_hist(-20.0, 40.0, 10, 0.05),
    traffic_light_violation=FeatureConfig(0.05),
)

_CONFIGS = {"2024": WOSAC_2024, "2025": WOSAC_2025}


def wosac_config(name: str) -> WosacConfig:
    """:data:`WOSAC_2024` or :data:`WOSAC_2025` by name (``"2024"`` / ``"2025"``)."""
    key = str(name).strip()
    if key not in _CONFIGS:
        raise ValueError(f"unknown WOSAC config {name!r}: use '2024' (challenge_2024_config.textproto) or "
                         "'2025' (challenge_2025_sim_agents_config.textproto)")
    return _CONFIGS[key]


# ============================================================================ scenario
DEFAULT_HEIGHT = 1.5  # m; box height where a source records none (heights enter no 2-D feature)


def drivable_boundary(polygon) -> tuple[np.ndarray, ...]:
    """Road edges ``(P, 3)`` (z = 0) along the boundary of a drivable area, each ring oriented with
    the road on its left (exteriors counter-clockwise, holes clockwise), as WOMD road edges are."""
    import shapely
    from shapely.geometry.polygon import orient

    rings = []
    for part in shapely.get_parts(polygon):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        part = orient(part, sign=1.0)
        for ring in (part.exterior, *part.interiors):
            xy = np.asarray(ring.coords, np.float64)
            rings.append(np.concatenate([xy, np.zeros((len(xy), 1))], axis=1))
    return tuple(rings)



@dataclass(frozen=True, eq=False)
class WosacScenario:
    """Everything the WOSAC features need about one logged scene.

    Tracks ``(N, T)`` with ``T = current_index + 81`` (91): ``x, y, z, heading`` float32 (values
    at invalid steps are whatever the source holds, 0 for blm_gym scenes), ``valid`` bool.
    ``length, width, height`` ``(N,)``: the box at ``current_index`` (the official evaluator
    uses the current-step box for every simulated step). ``object_type`` ``(N,)`` WOMD
    ``Track.ObjectType`` (1 vehicle, 2 pedestrian, 3 cyclist, 4 other; from blm_gym's
    :class:`AgentType` through :data:`OBJECT_TYPE_OF_AGENT_TYPE`). ``object_id`` ``(N,)`` int.
    ``is_sdc``, ``evaluated`` ``(N,)`` bool (evaluated = SDC + tracks_to_predict, all valid at
    the current step). ``road_edges``: ``(P_i, 3)`` polylines (x, y, z), counter-clockwise
    (road on the left). Traffic lights (None when the source has none): ``lanes`` / ``lane_ids``
    are the surface-street lane centerlines ``(P_i, 2|3)`` with their ids, ``traffic_lights``
    the signal states over the same ``T`` steps.
    """

    scenario_id: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    valid: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    object_type: np.ndarray
    object_id: np.ndarray
    is_sdc: np.ndarray
    evaluated: np.ndarray
    road_edges: tuple[np.ndarray, ...]
    lanes: tuple[np.ndarray, ...] = ()
    lane_ids: tuple[str, ...] = ()
    traffic_lights: TrafficLights | None = None
    current_index: int = CURRENT_INDEX
    dt: float = STEP_SECONDS
    derived_map: bool = False  # road edges derived from the drivable area: map-based scores not comparable
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        for name in ("x", "y", "z", "heading"):
            put(name, np.asarray(getattr(self, name), F32))
        put("valid", np.asarray(self.valid, bool))
        for name in ("length", "width", "height"):
            put(name, np.asarray(getattr(self, name), F32).reshape(-1))
        put("object_type", np.asarray(self.object_type, np.int64).reshape(-1))
        put("object_id", np.asarray(self.object_id, np.int64).reshape(-1))
        put("is_sdc", np.asarray(self.is_sdc, bool).reshape(-1))
        put("evaluated", np.asarray(self.evaluated, bool).reshape(-1))
        put("road_edges", tuple(np.asarray(p, np.float64) for p in self.road_edges))
        put("lanes", tuple(np.asarray(p, np.float64) for p in self.lanes))
        put("lane_ids", tuple(str(i) for i in self.lane_ids))
        n, t = self.valid.shape if self.valid.ndim == 2 else (-1, -1)
        need_t = self.current_index + 1 + NUM_SIM_STEPS
        if t != need_t:
            raise ValueError(f"WosacScenario {self.scenario_id}: tracks must be (N, {need_t}) = current_index "
                             f"{self.current_index} + 1 + {NUM_SIM_STEPS} steps; got valid of shape {self.valid.shape}")
        for name in ("x", "y", "z", "heading"):
            if getattr(self, name).shape != (n, t):
                raise ValueError(f"WosacScenario {self.scenario_id}: {name} has shape {getattr(self, name).shape}, "
                                 f"expected {(n, t)} like valid")
        for name in ("length", "width", "height", "object_type", "object_id", "is_sdc", "evaluated"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"WosacScenario {self.scenario_id}: {name} has shape {getattr(self, name).shape}, "
                                 f"expected ({n},)")
        if self.is_sdc.sum() != 1:
            raise ValueError(f"WosacScenario {self.scenario_id}: is_sdc must mark exactly one agent")
        if not self.evaluated[self.is_sdc].all():
            raise ValueError(f"WosacScenario {self.scenario_id}: the SDC must be evaluated")
        bad = np.flatnonzero(self.evaluated & ~self.sim_agent_mask)
        if bad.size:
            raise ValueError(f"WosacScenario {self.scenario_id}: evaluated agents {bad.tolist()} (object ids "
                             f"{self.object_id[bad].tolist()}) are not valid at the current step {self.current_index}; "
                             "WOSAC evaluates only simulated agents")
        if not any(len(p) >= 2 for p in self.road_edges):
            raise ValueError(f"WosacScenario {self.scenario_id}: no road edge with 2+ points (the official "
                             "evaluator raises 'Missing road edges.')")
        if self.traffic_lights is not None and self.traffic_lights.states.shape[1] != t:
            raise ValueError(f"WosacScenario {self.scenario_id}: traffic_lights.states must cover the {t} steps, "
                             f"got {self.traffic_lights.states.shape}")

    # -- derived ---------------------------------------------------------------------------
    @property
    def num_agents(self) -> int:
        return self.valid.shape[0]

    @property
    def sim_agent_mask(self) -> np.ndarray:
        """(N,) bool: the simulated agents, i.e. valid at ``current_index``, in scene order.
        Rollout arrays have one row per True entry, in this order."""
        return self.valid[:, self.current_index].copy()

    @property
    def sim_agent_index(self) -> np.ndarray:
        """Scene indices of the simulated agents (rollout row -> scene agent)."""
        return np.flatnonzero(self.sim_agent_mask)

    @property
    def num_sim_agents(self) -> int:
        return int(self.sim_agent_mask.sum())

    @property
    def eval_index(self) -> np.ndarray:
        """Rollout rows of the evaluated agents (indices into the simulated agents)."""
        return np.flatnonzero(self.evaluated[self.sim_agent_mask])

    @property
    def has_traffic_lights(self) -> bool:
        return self.traffic_lights is not None and len(self.traffic_lights.lane_ids) > 0

    def road_edge_index(self) -> wf.RoadEdgeIndex:
        """The road-edge search structure (built once, cached)."""
        if "edges" not in self._cache:
            self._cache["edges"] = wf.RoadEdgeIndex(self.road_edges)
        return self._cache["edges"]

    def lane_index(self) -> wf.LaneIndex:
        """The traffic-light lane search structure (built once, cached)."""
        if "lanes" not in self._cache:
            self._cache["lanes"] = wf.LaneIndex(self.lanes, self.lane_ids)
        return self._cache["lanes"]

    # -- builders ----------------------------------------------------------------------------
    @classmethod
    def from_scene(cls, scene: Scene, current_index: int | None = None, derive_map: bool = False
                   ) -> "WosacScenario":
        """The WOSAC view of a blm_gym :class:`Scene` (steps ``current - 10 .. current + 80``).

        ``current_index``: the scene step to use as WOSAC's current step (default:
        ``scene.current_index``, the dataset's; the 20 s womd-sample scenes say 0 there, so pass
        10 to score their first 91 steps). Needs the optional recorded fields ``Scene.z``,
        ``Scene.extents`` (or ``Scene.height``) and ``RoadMap.road_edges_3d``; traffic lights
        and lanes (``Scene.traffic_lights``, ``RoadMap.lanes_3d``) when present. Evaluated =
        SDC (``ego_index``) + ``Scene.tracks_to_predict``.

        ``derive_map=True`` scores scenes without those map and altitude fields (nuScenes): road
        edges become the drivable area's boundary (oriented with the road on the left, z = 0),
        missing z is 0 and missing heights :data:`DEFAULT_HEIGHT`; the scenario is then marked
        ``derived_map`` and its map-based scores are not comparable with WOSAC's.
        """
        sid = scene.scene_id
        cur = scene.current_index if current_index is None else int(current_index)
        if cur is None:
            raise ValueError(
                f"scene {sid}: no current step (Scene.current_index is None). WOSAC scores 80 steps after a current "
                f"step with {CURRENT_INDEX} history steps before it; ScenarioNet Waymo pickles carry it as "
                "metadata['current_time_index'] (10). Pass current_index=10 to score steps 0..90.")
        if cur < CURRENT_INDEX:
            raise ValueError(
                f"scene {sid}: current step {cur} leaves fewer than {CURRENT_INDEX} history steps (the 20 s "
                "womd-sample conversions write current_time_index 0); pass current_index=10 to score steps 0..90")
        start, stop = cur - CURRENT_INDEX, cur + 1 + NUM_SIM_STEPS
        if scene.num_steps < stop:
            raise ValueError(f"scene {sid}: WOSAC needs steps {start}..{stop - 1} around current step {cur}, the "
                             f"scene has {scene.num_steps}")
        if abs(scene.dt - STEP_SECONDS) > 1e-6:
            raise ValueError(f"scene {sid}: WOSAC is defined at {STEP_SECONDS} s steps, the scene has dt={scene.dt}")
        missing = []
        z, height, edges = scene.z, scene.height, scene.road.road_edges_3d
        derived = derive_map and (z is None or (scene.extents is None and height is None) or not edges)
        if derived:
            z = np.zeros(scene.traj.x.shape, F32) if z is None else z
            height = np.full(scene.num_agents, DEFAULT_HEIGHT, F32) if height is None else height
            edges = edges or drivable_boundary(scene.road.drivable.polygon)
        if z is None:
            missing.append("per-step altitude Scene.z (ScenarioNet: tracks[id]['state']['position'][:, 2])")
        if scene.extents is None and height is None:
            missing.append("box heights Scene.extents / Scene.height (ScenarioNet: state['height'])")
        if not edges:
            missing.append("3-D road edges RoadMap.road_edges_3d (ScenarioNet: map_features of type ROAD_EDGE_* "
                           "with (P, 3) polylines)")
        if missing:
            raise ValueError(f"scene {sid} ({scene.source}): WOSAC needs {'; '.join(missing)}. The Waymo ScenarioNet "
                             "pickles (../shared/data/womd-sample, womd-gpudrive) read through "
                             "blm_gym.data.scenarionet have them; for nuScenes / synthetic scenes pass derive_map=True "
                             "(map-based scores then not comparable).")
        win = slice(start, stop)
        tr = scene.traj
        if scene.extents is not None:
            length, width, height = (scene.extents[:, cur, k] for k in range(3))
        else:
            length, width = tr.length, tr.width
        evaluated = np.zeros(scene.num_agents, bool)
        evaluated[scene.ego_index] = True
        evaluated[list(scene.tracks_to_predict)] = True
        is_sdc = np.zeros(scene.num_agents, bool)
        is_sdc[scene.ego_index] = True
        ids = scene.agent_ids
        object_id = [int(i) for i in ids] if all(str(i).lstrip("-").isdigit() for i in ids) else range(len(ids))
        lanes, lane_ids = (), ()
        if scene.road.lanes_3d is not None:
            kinds = scene.road.lane_kinds or ("",) * len(scene.road.lanes_3d)
            keep = [i for i, k in enumerate(kinds) if k == "LANE_SURFACE_STREET"]
            lanes = tuple(scene.road.lanes_3d[i] for i in keep)
            lane_ids = tuple(scene.road.lane_ids[i] for i in keep)
        tl = scene.traffic_lights.select_steps(win) if scene.traffic_lights is not None else None
        return cls(
            scenario_id=sid, x=tr.x[:, win], y=tr.y[:, win], z=z[:, win], heading=tr.heading[:, win],
            valid=tr.valid[:, win], length=length, width=width, height=height,
            object_type=[OBJECT_TYPE_OF_AGENT_TYPE.get(AgentType(int(t)), TYPE_OTHER) for t in scene.agent_type],
            object_id=np.asarray(list(object_id)), is_sdc=is_sdc, evaluated=evaluated, road_edges=tuple(edges),
            lanes=lanes, lane_ids=lane_ids, traffic_lights=tl, current_index=CURRENT_INDEX, dt=STEP_SECONDS,
            derived_map=bool(derived),
        )

    @classmethod
    def from_scenarionet(cls, scenario: dict, current_index: int | None = None) -> "WosacScenario":
        """:meth:`from_scene` of a ScenarioNet scenario dict, skipping the drivable-area build."""
        from blm_gym.data.scenarionet import scene_from_scenario

        return cls.from_scene(scene_from_scenario(scenario, drivable=False), current_index)


# ============================================================================ features
@dataclass(frozen=True)
class WosacFeatures:
    """The official ``MetricFeatures`` of a batch (``B`` = 1 for the log, rollouts for
    simulation): arrays ``(B, E, 80)`` over the evaluated objects and simulated steps, except
    ``object_id``/``object_type`` ``(E,)`` and ``average_displacement_error`` ``(B, E)``.
    ``valid`` is the log validity for the log, all True for simulation."""

    object_id: np.ndarray
    object_type: np.ndarray
    valid: np.ndarray
    average_displacement_error: np.ndarray
    linear_speed: np.ndarray
    linear_acceleration: np.ndarray
    angular_speed: np.ndarray
    angular_acceleration: np.ndarray
    distance_to_nearest_object: np.ndarray
    collision_per_step: np.ndarray
    time_to_collision: np.ndarray
    distance_to_road_edge: np.ndarray
    offroad_per_step: np.ndarray
    traffic_light_violation_per_step: np.ndarray


def _check_rollouts(scenario: WosacScenario, arrays: dict, config: WosacConfig) -> dict:
    out = {}
    a = scenario.num_sim_agents
    want = (config.num_rollouts, a, config.num_sim_steps)
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.ndim != 3:
            raise ValueError(f"{name}: expected a (rollouts, agents, steps) = {want} array, got shape {arr.shape}")
        r, n, t = arr.shape
        if t != config.num_sim_steps:
            raise ValueError(f"{name}: rollouts must have {config.num_sim_steps} steps (current step "
                             f"{scenario.current_index} + 1 .. + {config.num_sim_steps}), got {t}; "
                             f"expected shape {want}")
        if n != a:
            raise ValueError(f"{name}: expected {a} agents (every agent valid at the current step "
                             f"{scenario.current_index}, in scene order: scenario.sim_agent_mask), got {n}; "
                             f"expected shape {want}")
        if r != config.num_rollouts:
            raise ValueError(f"{name}: expected {config.num_rollouts} rollouts (config {config.name!r}), got {r}; "
                             f"expected shape {want}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
        arr = arr.astype(F32)
        bad = ~np.isfinite(arr)
        if bad.any():
            ri, ai, ti = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"{name}: non-finite value {arr[ri, ai, ti]} at (rollout {ri}, agent {ai}, step {ti}) "
                             f"(agent {ai} = scene agent {int(scenario.sim_agent_index[ai])}, object id "
                             f"{int(scenario.object_id[scenario.sim_agent_index[ai]])}; step {ti} = scene step "
                             f"{scenario.current_index + 1 + ti}); {int(bad.sum())} non-finite values in all")
        out[name] = arr
    return out


def _batch_features(scenario: WosacScenario, x, y, z, heading, valid, config: WosacConfig) -> dict:
    """Features of full tracks ``(B, A, T)`` (history + future) of the simulated agents."""
    ci = scenario.current_index
    fut = slice(ci + 1, None)
    sim = scenario.sim_agent_mask
    ev = scenario.eval_index
    length, width, height = scenario.length[sim], scenario.width[sim], scenario.height[sim]
    speed, accel, dh, d2h = (f[..., fut] for f in wf.kinematic_features(x[:, ev], y[:, ev], z[:, ev], heading[:, ev],
                                                                          config.step_seconds))
    dist = wf.distance_to_nearest_object(x[..., fut], y[..., fut], length, width, heading[..., fut], valid[..., fut],
                                         ev)
    ttc = wf.time_to_collision(x, y, length, width, heading, valid, ev, config.step_seconds, steps=fut)
    edge = wf.distance_to_road_edge(x[:, ev, fut], y[:, ev, fut], z[:, ev, fut], length[ev], width[ev], height[ev],
                                    heading[:, ev, fut], valid[:, ev, fut], scenario.road_edge_index())
    tl = np.zeros(edge.shape, bool)
    if scenario.has_traffic_lights:
        lights = scenario.traffic_lights
        present = None if lights.present is None else lights.present[:, ci:]
        tl = wf.red_light_violation(x[:, ev, ci:], y[:, ev, ci:], valid[:, ev, ci:], scenario.lane_index(),
                                    lights.lane_ids, lights.states[:, ci:], lights.stop_points, present)[..., 1:]
    return dict(linear_speed=speed, linear_acceleration=accel, angular_speed=dh, angular_acceleration=d2h,
                distance_to_nearest_object=dist, collision_per_step=dist < F32(wf.COLLISION_DISTANCE_THRESHOLD),
                time_to_collision=ttc, distance_to_road_edge=edge,
                offroad_per_step=edge > F32(wf.OFFROAD_DISTANCE_THRESHOLD), traffic_light_violation_per_step=tl)


def compute_features(scenario: WosacScenario, sim_x, sim_y, sim_z, sim_heading,
                     config: WosacConfig = None) -> tuple[WosacFeatures, WosacFeatures]:
    """Log and simulation features (``metric_features.compute_scenario_rollouts_features``).

    The rollouts ``(R, A, 80)`` are appended to the logged history (steps 0..10) of the
    simulated agents; simulated boxes keep their current-step size and are valid at every step.
    The log's features use the logged future with its validity.
    """
    config = WOSAC_2025 if config is None else config
    arrays = _check_rollouts(scenario, dict(sim_x=sim_x, sim_y=sim_y, sim_z=sim_z, sim_heading=sim_heading), config)
    ci = scenario.current_index
    sim = scenario.sim_agent_mask
    ev = scenario.eval_index
    r = config.num_rollouts
    log_full = [getattr(scenario, k)[sim][None] for k in ("x", "y", "z", "heading")]
    log_valid = scenario.valid[sim][None]
    hist = slice(0, ci + 1)
    sim_full = [np.concatenate([np.broadcast_to(lf[..., hist], (r,) + lf.shape[1:2] + (ci + 1,)), arrays[k]], axis=-1)
                for lf, k in zip(log_full, ("sim_x", "sim_y", "sim_z", "sim_heading"))]
    sim_valid = np.concatenate([np.broadcast_to(log_valid[..., hist], (r, log_valid.shape[1], ci + 1)),
                                np.ones((r, log_valid.shape[1], config.num_sim_steps), bool)], axis=-1)
    log_f = _batch_features(scenario, *log_full, log_valid, config)
    sim_f = _batch_features(scenario, *sim_full, sim_valid, config)
    # ADE (3-D) against the log: sum over valid logged steps / number of valid logged steps
    # (history included, where the error is 0: the official code averages over all 91 steps)
    lx, ly, lz = (a[0, ev] for a in log_full[:3])
    lv = log_valid[0, ev]
    err = np.sqrt(sum((s[:, ev] - l[None]) ** 2 for s, l in zip(sim_full[:3], (lx, ly, lz))))
    ade = np.where(lv[None], err, 0).sum(axis=-1) / lv.sum(axis=-1)[None].astype(F32)
    obj_id = scenario.object_id[sim][ev]
    obj_type = scenario.object_type[sim][ev]
    log_feats = WosacFeatures(obj_id, obj_type, log_valid[:, ev, ci + 1:], np.zeros((1, len(ev)), F32), **log_f)
    sim_feats = WosacFeatures(obj_id, obj_type, sim_valid[:, ev, ci + 1:], ade.astype(F32), **sim_f)
    return log_feats, sim_feats


# ============================================================================ estimators
def _tf_linspace(start: float, stop: float, num: int) -> np.ndarray:
    """float32 ``tf.linspace``: start + i * ((stop - start) / (num - 1)), the end point exact."""
    start, stop = F32(start), F32(stop)
    delta = (stop - start) / F32(num - 1)
    out = start + delta * np.arange(num, dtype=F32)
    out[-1] = stop
    return out


def histogram_log_likelihood(log_values: np.ndarray, sim_values: np.ndarray, spec: HistogramEstimate) -> np.ndarray:
    """``estimators.histogram_estimate``: log-probability ``(B, n_log)`` of each logged value's
    bin under the smoothed histogram of the ``(B, n_sim)`` simulated values of its row.

    Values are clipped to [min_val, max_val]; bins are ``[e_k, e_k+1)``, the last one closed; a
    NaN lands in the last bin (as TensorFlow's ``searchsorted`` puts it).
    """
    k = int(spec.num_bins)
    edges = _tf_linspace(spec.min_val, spec.max_val, k + 1)
    lo, hi = F32(spec.min_val), F32(spec.max_val)

    def bins(v):
        v = np.clip(np.asarray(v, F32), lo, hi)
        return np.clip(np.searchsorted(edges, v.ravel(), side="right") - 1, 0, k - 1).reshape(v.shape)

    sim_bins, log_bins = bins(sim_values), bins(log_values)
    b = sim_bins.shape[0]
    counts = np.bincount((np.arange(b)[:, None] * k + sim_bins).ravel(), minlength=b * k).reshape(b, k)
    counts = counts.astype(F32) + F32(spec.additive_smoothing_pseudocount)
    logp = np.log(counts.astype(np.float64)) - np.log(counts.sum(axis=1, dtype=np.float64))[:, None]
    return np.take_along_axis(logp, log_bins, axis=1)


def bernoulli_log_likelihood(log_values: np.ndarray, sim_values: np.ndarray, pseudocount: float) -> np.ndarray:
    """``estimators.bernoulli_estimate``: a 2-bin histogram on [-0.5, 1.5] of booleans."""
    spec = HistogramEstimate(-0.5, 1.5, 2, pseudocount)
    return histogram_log_likelihood(np.asarray(log_values, bool).astype(F32), np.asarray(sim_values, bool).astype(F32),
                                    spec)


def log_likelihood_timeseries(feature: FeatureConfig, log_values: np.ndarray, sim_values: np.ndarray) -> np.ndarray:
    """``estimators.log_likelihood_estimate_timeseries`` (per object): ``log_values`` ``(E, T)``,
    ``sim_values`` ``(R, E, T)`` -> ``(E, T)``."""
    r, e, t = sim_values.shape
    if log_values.shape != (e, t):
        raise ValueError(f"log values must be of shape {(e, t)}, got {log_values.shape}")
    if feature.independent_timesteps:
        sim2, log2 = np.transpose(sim_values, (1, 0, 2)).reshape(e, r * t), log_values
    else:
        sim2, log2 = np.transpose(sim_values, (1, 2, 0)).reshape(e * t, r), log_values.reshape(e * t, 1)
    if feature.estimator == "histogram":
        ll = histogram_log_likelihood(log2, sim2, feature.histogram)
    else:
        ll = bernoulli_log_likelihood(log2, sim2, feature.bernoulli_pseudocount)
    return ll.reshape(e, t)


def log_likelihood_scenario_level(feature: FeatureConfig, log_values: np.ndarray, sim_values: np.ndarray) -> np.ndarray:
    """``estimators.log_likelihood_estimate_scenario_level``: ``(E,)`` log, ``(R, E)`` sim -> ``(E,)``."""
    return log_likelihood_timeseries(feature, np.asarray(log_values)[:, None], np.asarray(sim_values)[..., None])[:, 0]


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> float:
    """``metrics._reduce_average_with_validity`` (NaN when nothing is valid, as the official 0/0)."""
    n = valid.sum()
    return float(np.where(valid, values, 0.0).sum() / n) if n else float("nan")


# ============================================================================ scores
@dataclass(frozen=True)
class WosacScores:
    """Scenario-level WOSAC metrics (``SimAgentMetrics`` + ``SimAgentsBucketedMetrics``).

    ``likelihoods``: official likelihood name -> value in [0, 1] (``linear_speed_likelihood``,
    ..., ``traffic_light_violation_likelihood``; each is also an attribute). ``metametric``:
    config-weighted sum. ``kinematic`` / ``interactive`` / ``map_based``: weighted means of the
    bucket's likelihoods. Side figures (not in the meta-metric): simulated collision / off-road /
    traffic-light violation rates (share of (rollout, evaluated object) pairs with at least one
    event at a step where the log is valid), ADE (mean over rollouts and objects) and minADE
    (min over rollouts of the mean over objects), in metres.
    """

    scenario_id: str
    config: str
    metametric: float
    likelihoods: dict
    kinematic: float
    interactive: float
    map_based: float
    simulated_collision_rate: float
    simulated_offroad_rate: float
    simulated_traffic_light_violation_rate: float
    average_displacement_error: float
    min_average_displacement_error: float
    num_sim_agents: int
    num_evaluated: int
    has_traffic_lights: bool

    def __getattr__(self, name: str):
        if name != "likelihoods" and name in LIKELIHOOD_NAMES:
            return self.likelihoods[name]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """Flat dict: ids, metametric, the buckets, the ten likelihoods, side figures, counts."""
        out = {"scenario_id": self.scenario_id, "config": self.config, "metametric": self.metametric,
               "kinematic": self.kinematic, "interactive": self.interactive, "map_based": self.map_based}
        out.update({k: self.likelihoods[k] for k in LIKELIHOOD_NAMES})
        for name in ("simulated_collision_rate", "simulated_offroad_rate", "simulated_traffic_light_violation_rate",
                     "average_displacement_error", "min_average_displacement_error", "num_sim_agents",
                     "num_evaluated", "has_traffic_lights"):
            out[name] = getattr(self, name)
        return out


def scores_from_features(scenario_id: str, log: WosacFeatures, sim: WosacFeatures, config: WosacConfig,
                         num_sim_agents: int = 0, has_traffic_lights: bool = False) -> WosacScores:
    """``metrics.compute_scenario_metrics_for_features_bundle`` on computed features."""
    lv = log.valid[0]  # (E, 80)
    speed_valid, accel_valid = wf.kinematic_validity(lv)
    lk = {}
    for name, validity in (("linear_speed", speed_valid), ("angular_speed", speed_valid),
                           ("linear_acceleration", accel_valid), ("angular_acceleration", accel_valid)):
        ll = log_likelihood_timeseries(config.feature(name), getattr(log, name)[0], getattr(sim, name))
        lk[name] = float(np.exp(_masked_mean(ll, validity)))
    is_vehicle = log.object_type == TYPE_VEHICLE

    def any_valid(flags, mask):
        return (np.asarray(flags, bool) & mask).any(axis=-1)

    ttc_valid = lv & is_vehicle[:, None] if config.ttc_vehicles_only else lv
    for name, valid in (("distance_to_nearest_object", lv), ("time_to_collision", ttc_valid),
                        ("distance_to_road_edge", lv)):
        ll = log_likelihood_timeseries(config.feature(name), getattr(log, name)[0], getattr(sim, name))
        lk[name] = float(np.exp(_masked_mean(ll, valid)))
    flags = {}  # per (rollout, object): an event at some step where the log is valid
    for name, per_step in (("collision_indication", "collision_per_step"), ("offroad_indication", "offroad_per_step")):
        flags[name] = any_valid(getattr(sim, per_step), lv[None])  # (R, E)
        logged = any_valid(getattr(log, per_step)[0], lv)
        lk[name] = float(np.exp(np.mean(log_likelihood_scenario_level(config.feature(name), logged, flags[name]))))
    tl_valid = lv & is_vehicle[:, None]  # vehicles only (metrics.py of 1.6.7)
    log_tl = any_valid(log.traffic_light_violation_per_step[0], tl_valid)
    sim_tl = any_valid(sim.traffic_light_violation_per_step, tl_valid[None])
    lk["traffic_light_violation"] = float(np.exp(np.mean(
        log_likelihood_scenario_level(config.traffic_light_violation, log_tl, sim_tl))))

    likelihoods = {f"{n}_likelihood": lk[n] for n in FEATURE_NAMES}
    weights = config.weights
    metametric = float(sum(weights[k] * likelihoods[k] for k in LIKELIHOOD_NAMES))
    buckets = {}
    for bucket, names in FEATURE_NAMES_BY_BUCKET.items():
        w = [weights[f"{n}_likelihood"] for n in names]
        if sum(w) == 0:
            raise ValueError(f"WOSAC config {config.name!r}: the {bucket} bucket's weights sum to zero")
        buckets[bucket] = float(sum(wi * likelihoods[f"{n}_likelihood"] for wi, n in zip(w, names)) / sum(w))
    sim_tl_rate = any_valid(sim.traffic_light_violation_per_step, lv[None])
    ade = sim.average_displacement_error
    return WosacScores(
        scenario_id=scenario_id, config=config.name, metametric=metametric, likelihoods=likelihoods, **buckets,
        simulated_collision_rate=float(flags['collision_indication'].mean()),
        simulated_offroad_rate=float(flags['offroad_indication'].mean()),
        simulated_traffic_light_violation_rate=float(sim_tl_rate.mean()),
        average_displacement_error=float(ade.mean()), min_average_displacement_error=float(ade.mean(axis=1).min()),
        num_sim_agents=int(num_sim_agents), num_evaluated=int(len(log.object_id)),
        has_traffic_lights=bool(has_traffic_lights),
    )


def score_scenario(scenario: WosacScenario, sim_x, sim_y, sim_z, sim_heading,
                   config: WosacConfig = WOSAC_2025) -> WosacScores:
    """WOSAC scores of rollouts ``(R, A, 80)`` (x, y, z in metres, heading in radians).

    The ``A`` agents are exactly the scenario's agents valid at ``current_index``, in scene
    order (``scenario.sim_agent_mask`` / ``sim_agent_index``); the 80 steps are
    ``current_index + 1 .. current_index + 80``; ``R`` must be ``config.num_rollouts`` (32).
    Raises ValueError on a wrong shape (naming the expected one) or a NaN / inf (naming its
    rollout, agent and step).
    """
    log, sim = compute_features(scenario, sim_x, sim_y, sim_z, sim_heading, config)
    return scores_from_features(scenario.scenario_id, log, sim, config, scenario.num_sim_agents,
                                scenario.has_traffic_lights)


def log_as_rollouts(scenario: WosacScenario, num_rollouts: int = NUM_ROLLOUTS, hold: bool = False):
    """The logged future (steps current+1 .. current+80) of the simulated agents, repeated as
    ``num_rollouts`` identical rollouts: x, y, z, heading, each float32 ``(R, A, 80)``.

    A submission has no validity. By default the logged values at invalid steps are copied as
    they are, as the official ``converters.scenario_to_joint_scene`` does (0 for blm_gym scenes:
    such agents jump to the origin, away from everyone; tests/wosac_cases.py's "log" rollouts
    do the same). ``hold=True`` keeps an agent at its last valid pose instead, where it stands
    in the others' way (a lower meta-metric).
    """
    sim = scenario.sim_agent_mask
    valid = scenario.valid[sim]
    steps = np.arange(valid.shape[1])[None, :]
    last = np.maximum.accumulate(np.where(valid, steps, 0), axis=1) if hold else np.broadcast_to(steps, valid.shape)
    fut = slice(scenario.current_index + 1, scenario.current_index + 1 + NUM_SIM_STEPS)
    out = []
    for name in ("x", "y", "z", "heading"):
        a = np.take_along_axis(getattr(scenario, name)[sim], last, axis=1)[:, fut]
        out.append(np.ascontiguousarray(np.broadcast_to(a[None], (num_rollouts,) + a.shape)).astype(F32))
    return tuple(out)


def aggregate(scores: list[WosacScores]) -> dict:
    """Dataset-level metrics: the mean over scenarios of every metric of :meth:`WosacScores.to_dict`
    (``metrics.aggregate_scenario_metrics``; buckets are linear, so their mean is the bucket of
    the means), plus ``num_scenarios`` and ``config``."""
    scores = list(scores)
    if not scores:
        raise ValueError("aggregate: no scenario scores given")
    configs = {s.config for s in scores}
    if len(configs) > 1:
        raise ValueError(f"aggregate: scores come from different configs {sorted(configs)}")
    rows = [s.to_dict() for s in scores]
    skip = {"scenario_id", "config", "num_sim_agents", "num_evaluated", "has_traffic_lights"}
    out = {"config": scores[0].config, "num_scenarios": len(scores)}
    for key in rows[0]:
        if key not in skip:
            out[key] = float(np.mean([r[key] for r in rows]))
    return out


__all__ = [
    "FEATURE_NAMES", "FEATURE_NAMES_BY_BUCKET", "FeatureConfig", "HistogramEstimate", "LIKELIHOOD_NAMES",
    "OBJECT_TYPE_OF_AGENT_TYPE", "WOSAC_2024", "WOSAC_2025", "WosacConfig", "WosacFeatures", "WosacScenario",
    "WosacScores", "aggregate", "bernoulli_log_likelihood", "compute_features", "histogram_log_likelihood",
    "log_as_rollouts", "log_likelihood_scenario_level", "log_likelihood_timeseries", "score_scenario",
    "scores_from_features", "wosac_config",
]
