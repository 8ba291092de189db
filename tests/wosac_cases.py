"""Deterministic WOSAC rollouts shared by the golden-value script and the parity test.

The golden values in ``tests/fixtures/wosac_golden.json`` come from the official Waymo Open Sim
Agents evaluator (waymo-open-dataset 1.6.7, run by ``tools/wosac_official/``) on the rollouts
these functions generate; ``tests/test_wosac_parity.py`` regenerates the same rollouts and scores
them with ``blm_gym.metrics.wosac``. Change nothing here without regenerating the golden file
(``tools/wosac_official/make_golden.sh``).

Protocol (WOSAC): 91 logged steps at 0.1 s, current step index 10, 80 simulated steps
(indices 11..90), 32 rollouts. Simulated agents: every track valid at step 10, in the scene's
track order. Rollout arrays are float32 ``(R, A, 80)`` = (rollouts, simulated agents, steps) for
x, y, z [m] and heading [rad].

Rollout sets (all pure functions of plain arrays):

- ``log``: the log as its own 32 rollouts, exactly what the official
  ``converters.scenario_to_joint_scene`` makes: the logged x, y, z, heading of steps 11..90
  copied whatever their validity (a submission has no validity; at invalid steps the values are
  the raw ones the ScenarioNet file keeps from WOMD: stale or interpolated poses, or zeros).
  Holding the last valid pose instead would park "ghosts" where tracks end, which other agents
  then drive through (measured: 4 of 9 evaluated agents collide in 8a346109094cd5aa).
- ``const_vel``: constant velocity from step 10: the logged velocity vector ``(vx, vy)`` at step 10,
  heading and z held at their step-10 values; the 32 rollouts are identical.
- ``noisy``: the ``log`` set plus i.i.d. Gaussian noise per rollout, agent and step:
  sigma ``NOISE_SIGMA_XY`` = 0.2 m on x and y, ``NOISE_SIGMA_HEADING`` = 0.03 rad on heading (z
  untouched); generator ``numpy.random.default_rng([NOISE_SEED, crc32(scene_id)])``.
- ``idm``: the project's :class:`blm_gym.policies.baselines.IDMPolicy` drives every simulated
  agent for 80 steps through :func:`blm_gym.sim.state.step` (unicycle), none replaying the log;
  every agent valid at step 10 stays valid for all 80 steps and nobody enters (the simulator's
  ``persistent`` membership). Extents: per-agent median over valid steps (as the project's
  ScenarioNet loader); the empty drivable area is not read by IDM. z = the agent's z at step 10.
  IDM is deterministic, so the 32 rollouts are identical.

Golden cases: the 9 ``womd-sample`` scenes (the 20 s ones cut to their first 91 steps; their
``current_time_index`` metadata says 0 and they have no ``tracks_to_predict``, so only the SDC is
evaluated there) and the first ``GPUDRIVE_COUNT`` ``womd-gpudrive`` files in sorted file-name
order whose metadata lists at least one track to predict.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

NUM_LOG_STEPS = 91
CURRENT_STEP = 10
NUM_SIM_STEPS = 80
NUM_ROLLOUTS = 32
DT = 0.1
NOISE_SIGMA_XY = 0.2  # m
NOISE_SIGMA_HEADING = 0.03  # rad
NOISE_SEED = 20240
GPUDRIVE_COUNT = 20
ROLLOUT_SETS = ("log", "const_vel", "noisy", "idm")


# ----------------------------------------------------------------------------- scene arrays
def scene_arrays(scenario: dict) -> dict:
    """Plain arrays of one ScenarioNet scenario dict, cut to the first ``NUM_LOG_STEPS`` steps.

    Returns ``scene_id``; ``track_ids`` (N,) str in track order; ``x, y, z, heading, vx, vy,
    length, width, height`` float32 (N, 91) as stored, also at invalid steps (NaN -> 0);
    ``valid`` bool (N, 91); ``types``
    (N,) str; ``sdc_index`` int; ``tracks_to_predict`` int indices; ``lanes``: list of (P, 2)
    float64 lane centerlines (map features whose type starts with LANE, > 1 point).
    """
    tracks = scenario["tracks"]
    track_ids = [str(k) for k in tracks]
    t = NUM_LOG_STEPS
    out: dict = {"scene_id": str(scenario["id"]), "track_ids": np.array(track_ids)}

    def per_track(fn):
        return np.stack([fn(tr["state"]) for tr in tracks.values()])

    valid = per_track(lambda s: np.asarray(s["valid"]).astype(bool)[:t])
    if valid.shape[1] < t:
        raise ValueError(f"scene {out['scene_id']} has {valid.shape[1]} steps; WOSAC needs {t}")
    pos = per_track(lambda s: np.asarray(s["position"], np.float64).reshape(-1, np.shape(s["position"])[-1])[:t])
    vel = per_track(lambda s: np.asarray(s["velocity"], np.float64).reshape(-1, 2)[:t])

    def clean(a):  # raw values, also at invalid steps: the official evaluator reads them there too
        return np.nan_to_num(a).astype(np.float32)

    out["x"], out["y"] = clean(pos[..., 0]), clean(pos[..., 1])
    out["z"] = clean(pos[..., 2]) if pos.shape[-1] > 2 else np.zeros_like(out["x"])
    out["heading"] = clean(per_track(lambda s: np.asarray(s["heading"], np.float64).reshape(-1)[:t]))
    out["vx"], out["vy"] = clean(vel[..., 0]), clean(vel[..., 1])
    for key in ("length", "width", "height"):
        out[key] = clean(per_track(lambda s: np.asarray(s[key], np.float64).reshape(-1)[:t]))
    out["valid"] = valid
    out["types"] = np.array([str(tr["type"]) for tr in tracks.values()])
    meta = scenario["metadata"]
    out["sdc_index"] = track_ids.index(str(meta["sdc_id"]))
    ttp = meta.get("tracks_to_predict") or {}
    out["tracks_to_predict"] = np.array(sorted(track_ids.index(str(k)) for k in ttp), np.int64)
    out["lanes"] = [np.asarray(f["polyline"], np.float64)[:, :2] for f in scenario["map_features"].values()
                    if str(f.get("type", "")).startswith("LANE") and len(f.get("polyline", ())) > 1]
    return out


def cut_scenario(scenario: dict, steps: int = NUM_LOG_STEPS) -> dict:
    """A copy of a ScenarioNet dict cut to its first ``steps`` steps, as WOSAC scores it: track
    states and traffic-light states cut, ``length`` = ``steps``, ``metadata["current_time_index"]``
    = 10 (the 20 s womd-sample scenes say 0). Arrays are views; the input is not modified."""
    def cut_state(state: dict) -> dict:
        return {k: (v[:steps] if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) else v)
                for k, v in state.items()}

    tracks = {k: {**tr, "state": cut_state(tr["state"])} for k, tr in scenario["tracks"].items()}
    lights = {}
    for k, light in (scenario.get("dynamic_map_states") or {}).items():
        light = dict(light)
        if isinstance(light.get("state"), dict):
            light["state"] = cut_state(light["state"])
        lights[k] = light
    meta = dict(scenario["metadata"], current_time_index=CURRENT_STEP, track_length=steps)
    if "ts" in meta:
        meta["ts"] = np.asarray(meta["ts"])[:steps]
    return {**scenario, "length": steps, "tracks": tracks, "dynamic_map_states": lights, "metadata": meta}


def sim_agent_mask(valid: np.ndarray) -> np.ndarray:
    """Bool (N,): the agents WOSAC simulates (valid at the current step)."""
    return np.asarray(valid)[:, CURRENT_STEP].copy()


def _repeat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(a[None], (NUM_ROLLOUTS,) + a.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- rollout sets
def log_rollouts(x, y, z, heading, valid):
    """The log as its 32 rollouts: (x, y, z, heading) each float32 (32, A, 80), A = agents valid
    at step 10; steps 11..90 copied whatever their validity (``converters.scenario_to_joint_scene``)."""
    m = sim_agent_mask(valid)
    fut = slice(CURRENT_STEP + 1, CURRENT_STEP + 1 + NUM_SIM_STEPS)
    return tuple(_repeat(np.asarray(a, np.float32)[m][:, fut]) for a in (x, y, z, heading))


def constant_velocity_rollouts(x, y, z, heading, vx, vy, valid):
    """Constant logged velocity from step 10 (heading, z held): 4 x float32 (32, A, 80)."""
    m = sim_agent_mask(valid)
    c = CURRENT_STEP
    k = np.arange(1, NUM_SIM_STEPS + 1, dtype=np.float64)[None, :] * DT
    x0, y0 = np.asarray(x, np.float64)[m, c, None], np.asarray(y, np.float64)[m, c, None]
    vx0, vy0 = np.asarray(vx, np.float64)[m, c, None], np.asarray(vy, np.float64)[m, c, None]
    ones = np.ones_like(k)
    return (_repeat(x0 + vx0 * k), _repeat(y0 + vy0 * k), _repeat(np.asarray(z, np.float64)[m, c, None] * ones),
            _repeat(np.asarray(heading, np.float64)[m, c, None] * ones))


def noise_rng(scene_id: str) -> np.random.Generator:
    return np.random.default_rng([NOISE_SEED, zlib.crc32(scene_id.encode())])


def noisy_log_rollouts(x, y, z, heading, valid, scene_id: str):
    """The ``log`` set + seeded Gaussian noise (0.2 m on x, y; 0.03 rad on heading)."""
    lx, ly, lz, lh = log_rollouts(x, y, z, heading, valid)
    rng = noise_rng(scene_id)
    shape = lx.shape
    nx = rng.normal(0.0, NOISE_SIGMA_XY, shape)
    ny = rng.normal(0.0, NOISE_SIGMA_XY, shape)
    nh = rng.normal(0.0, NOISE_SIGMA_HEADING, shape)
    return ((lx + nx).astype(np.float32), (ly + ny).astype(np.float32), lz,
            (lh.astype(np.float64) + nh).astype(np.float32))


def idm_rollouts(x, y, z, heading, vx, vy, length, width, valid, lanes):
    """IDM closed loop through the project's simulator step: 4 x float32 (32, A, 80).

    ``length``, ``width``: (N, T) or (N,) extents (a per-agent median over valid steps is
    used, as the project's ScenarioNet loader does); ``lanes``: list of (P, 2) centerlines.
    """
    import shapely

    from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
    from blm_gym.policies.baselines import IDMPolicy
    from blm_gym.sim import state as sim_state

    valid = np.asarray(valid, bool)
    m = sim_agent_mask(valid)
    n = valid.shape[0]

    def extent(a):
        a = np.asarray(a, np.float64)
        if a.ndim == 1:
            return a
        masked = np.where(valid, a, np.nan)
        out = np.zeros(n)
        seen = valid.any(axis=1)
        out[seen] = np.nanmedian(masked[seen], axis=1)
        return out

    h = np.asarray(heading, np.float64)
    speed = np.asarray(vx, np.float64) * np.cos(h) + np.asarray(vy, np.float64) * np.sin(h)
    log = Trajectories.from_states(x, y, heading, np.where(valid, speed, 0.0), extent(length), extent(width), valid)
    lane_xy, lane_mask = pad_polylines([np.asarray(p, np.float64)[:, :2] for p in lanes])
    empty = DrivableArea.from_geometry(shapely.Polygon())  # IDM reads lanes only
    road = RoadMap(lane_xy, lane_mask, np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool), empty)
    scene = Scene(scene_id="wosac-idm", source="wosac", dt=DT, agent_ids=tuple(str(i) for i in range(n)),
                  agent_type=np.full(n, AgentType.VEHICLE, np.int8), ego_index=int(np.flatnonzero(m)[0]),
                  traj=log, road=road)
    policy = IDMPolicy()
    policy.reset(scene, CURRENT_STEP, m, np.random.default_rng(0))
    state = sim_state.SimulatorState.from_log(scene, CURRENT_STEP, sim_state.Membership.PERSISTENT)
    xs, ys, hs = (np.empty((n, NUM_SIM_STEPS), np.float32) for _ in range(3))
    for k in range(NUM_SIM_STEPS):
        action = policy.act(state)
        action = sim_state.Action(np.where(m[:, None], action.accel_yaw, 0.0).astype(np.float32), np.zeros(n, bool))
        state = sim_state.step(state, action, entry_check_s=0.0)
        if not np.array_equal(np.asarray(state.valid, bool), m):
            raise AssertionError("idm_rollouts: the simulated agent set changed")
        xs[:, k], ys[:, k], hs[:, k] = state.x, state.y, state.heading
    zs = np.broadcast_to(np.asarray(z, np.float32)[:, CURRENT_STEP, None], (n, NUM_SIM_STEPS))
    return tuple(_repeat(a[m]) for a in (xs, ys, zs, hs))


def make_rollouts(arrays: dict, rollout_set: str):
    """(x, y, z, heading), each float32 (32, A, 80), of ``rollout_set`` for :func:`scene_arrays` output."""
    a = arrays
    if rollout_set == "log":
        return log_rollouts(a["x"], a["y"], a["z"], a["heading"], a["valid"])
    if rollout_set == "const_vel":
        return constant_velocity_rollouts(a["x"], a["y"], a["z"], a["heading"], a["vx"], a["vy"], a["valid"])
    if rollout_set == "noisy":
        return noisy_log_rollouts(a["x"], a["y"], a["z"], a["heading"], a["valid"], a["scene_id"])
    if rollout_set == "idm":
        return idm_rollouts(a["x"], a["y"], a["z"], a["heading"], a["vx"], a["vy"], a["length"], a["width"],
                            a["valid"], a["lanes"])
    raise ValueError(f"unknown rollout set {rollout_set!r}; one of {ROLLOUT_SETS}")


# ----------------------------------------------------------------------------- case selection
def load_scenario(path: str | Path) -> dict:
    """The ScenarioNet dict in ``path``, through the project's restricted unpickler."""
    from blm_gym.data.safe_pickle import load_pickle

    return load_pickle(path)


def golden_files(data_root: str | Path, gpudrive_count: int = GPUDRIVE_COUNT) -> list[str]:
    """Paths (relative to ``data_root``) of the golden scenes: every ``womd-sample/sd_*.pkl`` in
    sorted order, then the first ``gpudrive_count`` ``womd-gpudrive/sd_*.pkl`` in sorted order
    with at least one track to predict."""
    root = Path(data_root)
    files = [f"womd-sample/{p.name}" for p in sorted((root / "womd-sample").glob("sd_*.pkl"))]
    picked = 0
    for p in sorted((root / "womd-gpudrive").glob("sd_*.pkl")):
        if picked >= gpudrive_count:
            break
        if load_scenario(p)["metadata"].get("tracks_to_predict"):
            files.append(f"womd-gpudrive/{p.name}")
            picked += 1
    return files


def rollout_fingerprint(x, y, z, heading) -> list[float]:
    """A few float64 statistics of a rollout set (means and spreads of x, y, z, heading), stored
    with the golden values so the parity test can tell a changed rollout from a changed score."""
    a = [np.asarray(v, np.float64) for v in (x, y, z, heading)]
    return [float(v.mean()) for v in a] + [float(a[0].std()), float(a[1].std()), float(a[3].std())]
