"""Build the official WOMD ``scenario_pb2.Scenario`` from a ScenarioNet pickle (side-venv tool).

Runs in the side virtualenv of ``setup_venv.sh`` (waymo-open-dataset 1.6.7, TensorFlow); it
does not import blm_gym. Pickles are read with a restricted unpickler (the allow-list of
``blm_gym.data.safe_pickle``; ``numpy._core`` names, which files written by numpy 2 use, are
mapped to ``numpy.core`` for the numpy 1.x of this venv).

What goes into the proto, per the official metric code's needs
(``wdl_limited/sim_agents_metrics/metric_features.py``):

- ``tracks``: every ScenarioNet track in dict order; id = int(track id); object_type VEHICLE /
  PEDESTRIAN / CYCLIST -> TYPE_VEHICLE / TYPE_PEDESTRIAN / TYPE_CYCLIST, anything else TYPE_OTHER;
  one ``ObjectState`` per step (first 91 steps) with center x, y, z [m], length, width, height
  [m], heading [rad], velocity x, y [m/s] and valid, copied as stored **including the values at
  invalid steps** (ScenarioNet keeps WOMD's raw values there; the official code uses them in the
  history part of the simulated trajectories, e.g. the acceleration at step 11 reads step 9).
- ``current_time_index`` 10 (the 20 s womd-sample scenes say 0 in their metadata: cut to 91 steps
  they are scored like any WOMD scenario); ``timestamps_seconds`` = 0.1 * step.
- ``sdc_track_index``: the position of ``metadata["sdc_id"]`` among the tracks;
  ``tracks_to_predict``: the positions of the metadata's ``tracks_to_predict`` ids (empty for the
  20 s scenes: only the SDC is evaluated there).
- ``map_features``: road edges (ROAD_EDGE_BOUNDARY / ROAD_EDGE_MEDIAN, others TYPE_UNKNOWN) and
  lanes (LANE_SURFACE_STREET / LANE_FREEWAY / LANE_BIKE_LANE, others TYPE_UNDEFINED) with 3-D
  polylines (a 2-D polyline gets z = 0), id = int(map feature key). Road lines, crosswalks, stop
  signs, speed bumps and driveways are left out: no WOSAC metric reads them.
- ``dynamic_map_states``: only when the scene has traffic lights, one per step (91); step t
  lists a ``TrafficSignalLaneState(lane=int(light["lane"]), state, stop_point)`` for every light
  whose ScenarioNet ``object_state[t]`` is not None (the state named by its string).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

NUM_STEPS = 91
CURRENT_TIME_INDEX = 10
DT = 0.1

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "defaultdict"), ("collections", "OrderedDict"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "set"), ("builtins", "frozenset"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = module.replace("numpy._core", "numpy.core")
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def load_scenarionet(path: str | Path) -> dict:
    with open(path, "rb") as f:
        return _Unpickler(f).load()


_OBJECT_TYPES = {"VEHICLE": 1, "PEDESTRIAN": 2, "CYCLIST": 3}  # Track.ObjectType; else TYPE_OTHER (4)
_LANE_TYPES = {"LANE_FREEWAY": 1, "LANE_SURFACE_STREET": 2, "LANE_BIKE_LANE": 3}  # else TYPE_UNDEFINED
_EDGE_TYPES = {"ROAD_EDGE_BOUNDARY": 1, "ROAD_EDGE_MEDIAN": 2}  # else TYPE_UNKNOWN


def _rows(a, steps: int, cols: int | None = None) -> np.ndarray:
    a = np.asarray(a, np.float64)
    a = a.reshape(a.shape[0], -1)[:steps] if cols is not None else a.reshape(a.shape[0], -1)[:steps, 0]
    return a


def build_scenario(sd: dict):
    """The official ``scenario_pb2.Scenario`` of ScenarioNet dict ``sd`` (first 91 steps)."""
    from waymo_open_dataset.protos import map_pb2, scenario_pb2

    meta = sd["metadata"]
    tracks = sd["tracks"]
    track_ids = [str(k) for k in tracks]
    scenario = scenario_pb2.Scenario(scenario_id=str(sd["id"]), current_time_index=CURRENT_TIME_INDEX)
    scenario.timestamps_seconds.extend([round(DT * t, 6) for t in range(NUM_STEPS)])
    for key, tr in tracks.items():
        st = tr["state"]
        valid = np.asarray(st["valid"]).astype(bool)[:NUM_STEPS]
        if len(valid) < NUM_STEPS:
            raise ValueError(f"{sd['id']}: track {key} has {len(valid)} steps (< {NUM_STEPS})")
        pos = np.asarray(st["position"], np.float64)[:NUM_STEPS]
        z = pos[:, 2] if pos.shape[1] > 2 else np.zeros(NUM_STEPS)
        vel = np.asarray(st["velocity"], np.float64).reshape(-1, 2)[:NUM_STEPS]
        heading, length, width, height = (np.asarray(st[k], np.float64).reshape(-1)[:NUM_STEPS]
                                          for k in ("heading", "length", "width", "height"))
        track = scenario.tracks.add(id=int(key), object_type=_OBJECT_TYPES.get(str(tr["type"]), 4))
        for t in range(NUM_STEPS):
            track.states.add(center_x=pos[t, 0], center_y=pos[t, 1], center_z=z[t], length=length[t],
                             width=width[t], height=height[t], heading=heading[t], velocity_x=vel[t, 0],
                             velocity_y=vel[t, 1], valid=bool(valid[t]))
    scenario.sdc_track_index = track_ids.index(str(meta["sdc_id"]))
    for key in sorted(meta.get("tracks_to_predict") or {}, key=lambda k: track_ids.index(str(k))):
        scenario.tracks_to_predict.add(track_index=track_ids.index(str(key)))

    for key, feat in sd["map_features"].items():
        kind = str(feat.get("type", ""))
        if not (kind.startswith("ROAD_EDGE") or kind.startswith("LANE")):
            continue
        poly = np.asarray(feat.get("polyline", np.zeros((0, 3))), np.float64)
        if poly.ndim != 2 or len(poly) == 0:
            continue
        if poly.shape[1] == 2:
            poly = np.concatenate([poly, np.zeros((len(poly), 1))], axis=1)
        points = [map_pb2.MapPoint(x=p[0], y=p[1], z=p[2]) for p in poly]
        mf = scenario.map_features.add(id=int(key))
        if kind.startswith("ROAD_EDGE"):
            mf.road_edge.type = _EDGE_TYPES.get(kind, 0)
            mf.road_edge.polyline.extend(points)
        else:
            mf.lane.type = _LANE_TYPES.get(kind, 0)
            mf.lane.polyline.extend(points)

    lights = [v for v in (sd.get("dynamic_map_states") or {}).values() if str(v.get("type", "")) == "TRAFFIC_LIGHT"]
    if lights:
        names = map_pb2.TrafficSignalLaneState.State
        for t in range(NUM_STEPS):
            dms = scenario.dynamic_map_states.add()
            for light in lights:
                states = light["state"]["object_state"]
                s = states[t] if t < len(states) else None
                if s is None:
                    continue
                stop = np.asarray(light["stop_point"], np.float64).reshape(-1)
                dms.lane_states.add(lane=int(light["lane"]), state=names.Value(str(s)),
                                    stop_point=map_pb2.MapPoint(x=stop[0], y=stop[1],
                                                                z=stop[2] if len(stop) > 2 else 0.0))
    return scenario


def sim_agent_ids(scenario) -> list[int]:
    """Object ids WOSAC simulates: tracks valid at step 10, in track order."""
    return [tr.id for tr in scenario.tracks if tr.states[CURRENT_TIME_INDEX].valid]


def build_rollouts(scenario_id: str, object_ids, x, y, z, heading):
    """``ScenarioRollouts`` from arrays ``(R, A, 80)`` (agents in ``object_ids`` order)."""
    from waymo_open_dataset.protos import sim_agents_submission_pb2 as sub

    x, y, z, heading = (np.asarray(a, np.float32) for a in (x, y, z, heading))
    scenes = []
    for r in range(x.shape[0]):
        trajs = [sub.SimulatedTrajectory(center_x=x[r, a].tolist(), center_y=y[r, a].tolist(),
                                         center_z=z[r, a].tolist(), heading=heading[r, a].tolist(),
                                         object_id=int(oid))
                 for a, oid in enumerate(object_ids)]
        scenes.append(sub.JointScene(simulated_trajectories=trajs))
    return sub.ScenarioRollouts(scenario_id=scenario_id, joint_scenes=scenes)


def load_config(name: str):
    """The ``SimAgentMetricsConfig`` of ``name`` in {"2024", "2025"}, parsed from the installed
    package's textproto (``metrics.load_metrics_config`` opens it by a relative path)."""
    from google.protobuf import text_format
    from waymo_open_dataset.protos import sim_agents_metrics_pb2
    from waymo_open_dataset.wdl_limited import sim_agents_metrics

    fname = {"2024": "challenge_2024_config.textproto",
             "2025": "challenge_2025_sim_agents_config.textproto"}[name]
    path = Path(next(iter(sim_agents_metrics.__path__))) / fname
    config = sim_agents_metrics_pb2.SimAgentMetricsConfig()
    text_format.Parse(path.read_text(), config)
    return config
