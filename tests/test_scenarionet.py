"""ScenarioNet scene source: safe loading, both folder layouts, scene building, real data."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from blm_gym.data.safe_pickle import CorruptSceneFileError, UnsafePickleError, load_pickle
from blm_gym.data.scenarionet import ScenarioNetSource, detect_scenarionet, has_vehicles, scene_from_scenario
from blm_gym.data.scene import AgentType, Scene
from blm_gym.data.source import DATA_ENV_VAR, SceneSource
from conftest import SHARED_DATA

T = 5


def _track(kind: str, x0: float, vx: float, heading: float, length: float, width: float, valid=None) -> dict:
    """A track moving along x at ``vx`` m/s (0.1 s steps) with the given heading."""
    valid = np.ones(T, bool) if valid is None else np.asarray(valid, bool)
    x = x0 + vx * 0.1 * np.arange(T)
    return {
        "type": kind,
        "state": {
            "position": np.stack([x, np.zeros(T), np.zeros(T)], axis=1),
            "heading": np.full(T, heading),
            "velocity": np.stack([np.full(T, vx), np.zeros(T)], axis=1),
            "valid": valid.astype(float),  # nuScenes stores valid as float
            "length": np.where(valid, length, 0.0)[:, None],  # 0 at invalid steps, like nuScenes
            "width": np.where(valid, width, 0.0)[:, None],
        },
    }


def _scenario(scenario_id: str = "toy-1", vehicles: bool = True) -> dict:
    tracks = {"ped": _track("PEDESTRIAN", 3.0, 1.0, 0.0, 0.5, 0.6)}
    if vehicles:
        tracks = {
            "ego": _track("VEHICLE", 0.0, 5.0, 0.0, 1.73, 4.08),  # nuScenes ego: extents swapped
            "rev": _track("VEHICLE", 20.0, -2.0, 0.0, 4.5, 1.9, valid=[0, 1, 1, 1, 0]),  # reversing
            "cone": _track("TRAFFIC_CONE", 10.0, 0.0, 0.0, 0.3, 0.3),
            "bus": _track("OTHER", 40.0, 0.0, 0.0, 12.0, 2.5),
            **tracks,
        }
    lane = np.stack([np.linspace(-10, 60, 15), np.zeros(15)], axis=1)
    return {
        "id": scenario_id,
        "version": "test",
        "length": T,
        "metadata": {"sdc_id": "ego" if vehicles else "ped", "dataset": "toyset", "ts": 0.1 * np.arange(T)},
        "tracks": tracks,
        "map_features": {
            "l1": {"type": "LANE_SURFACE_STREET", "polyline": lane},
            "e1": {"type": "ROAD_EDGE_BOUNDARY", "polyline": lane + [0.0, 6.0]},
            "w1": {"type": "ROAD_LINE_SOLID_SINGLE_WHITE", "polyline": lane + [0.0, 2.0]},
        },
        "dynamic_map_states": {},
    }


def _dump(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))


# --- scene building (no real data) ------------------------------------------------------------


def test_scene_from_scenario_fields():
    scene = scene_from_scenario(_scenario())
    ids = list(scene.agent_ids)
    ego, rev, cone, bus = (ids.index(k) for k in ("ego", "rev", "cone", "bus"))
    assert scene.ego_index == ego and scene.source == "toyset" and scene.dt == pytest.approx(0.1)
    assert scene.agent_type[cone] == AgentType.STATIC and scene.agent_type[bus] == AgentType.UNKNOWN
    assert scene.agent_type[ids.index("ped")] == AgentType.PEDESTRIAN
    traj = scene.traj
    assert (traj.length[ego], traj.width[ego]) == pytest.approx((4.08, 1.73))  # swapped back
    assert (traj.length[rev], traj.width[rev]) == pytest.approx((4.5, 1.9))  # zeros at invalid steps ignored
    assert np.all(traj.speed[rev, traj.valid[rev]] == pytest.approx(-2.0))  # signed: reversing
    assert np.all(traj.speed[ego] == pytest.approx(5.0))
    assert not traj.valid[rev, 0] and traj.x[rev, 0] == 0.0
    assert scene.road.lanes.shape == (1, 15, 2) and scene.road.road_edges.shape == (1, 15, 2)
    drivable = scene.road.drivable
    assert drivable.contains(np.array([0.0, 30.0]), np.array([1.5, 0.0])).all()
    assert not drivable.contains(np.array([30.0]), np.array([2.5])).any()  # beyond the 2 m default


def test_scene_without_vehicles_loads():
    scene = scene_from_scenario(_scenario(vehicles=False))
    assert scene.num_agents == 1 and not has_vehicles(scene)
    assert has_vehicles(scene_from_scenario(_scenario()))


# --- folder layouts ----------------------------------------------------------------------------


def test_loose_folder(tmp_path):
    for sid in ("aaa", "bbb"):
        _dump(tmp_path / f"sd_toy_v1_{sid}.pkl", _scenario(sid))
    assert detect_scenarionet(tmp_path) and not detect_scenarionet(tmp_path / "sd_toy_v1_aaa.pkl")
    src = ScenarioNetSource(tmp_path)
    assert isinstance(src, SceneSource) and src.scene_ids == ("aaa", "bbb")
    scene = src.load(1)
    assert isinstance(scene, Scene) and scene.scene_id == "bbb"
    assert src.load(1) is scene  # cached
    with pytest.raises(IndexError, match="out of range"):
        src.load(2)


def test_database_layout_and_filter(tmp_path):
    files = {"sd_toy_v1_s1.pkl": "toy_0", "sd_toy_v1_s2.pkl": "toy_1"}
    for i, (fname, shard) in enumerate(files.items()):
        _dump(tmp_path / shard / fname, _scenario(f"scene-{i}"))
    _dump(tmp_path / "dataset_summary.pkl", {f: {"id": f"scene-{i}"} for i, f in enumerate(files)})
    _dump(tmp_path / "dataset_mapping.pkl", files)
    assert detect_scenarionet(tmp_path)
    src = ScenarioNetSource(tmp_path, scene_ids=["scene-1"])
    assert src.scene_ids == ("scene-1",) and src.load(0).scene_id == "scene-1"
    with pytest.raises(KeyError, match="scene-0"):  # the message lists the available ids
        ScenarioNetSource(tmp_path, scene_ids=["scene-9"])


def test_missing_folder_names_argument_and_env_var(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope") as err:
        ScenarioNetSource(missing)
    assert "data_dir" in str(err.value) and DATA_ENV_VAR in str(err.value)
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR) as err:
        ScenarioNetSource(None)
    assert "data_dir" in str(err.value)
    assert not detect_scenarionet(missing)


def test_folder_without_pickles(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert not detect_scenarionet(tmp_path)
    with pytest.raises(FileNotFoundError, match="No ScenarioNet scenes"):
        ScenarioNetSource(tmp_path)


# --- safe unpickling ---------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_disallowed_global_refused_nothing_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "sd_evil_v1_x.pkl"
    path.write_bytes(pickle.dumps({"id": "x", "payload": _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match="system") as err:
        load_pickle(path)
    assert str(path) in str(err.value)
    with pytest.raises(pickle.UnpicklingError):  # also through the source
        ScenarioNetSource(tmp_path).load(0)
    assert not marker.exists()


def test_allowed_globals_roundtrip(tmp_path):
    from collections import defaultdict

    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": defaultdict(int, {"k": 2}), "c": np.bool_(True)}
    path = tmp_path / "ok.pkl"
    for protocol in (4, 5):
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        out = load_pickle(path)
        assert np.array_equal(out["a"], obj["a"]) and out["b"]["k"] == 2 and out["c"]


def test_truncated_pickle_names_file(tmp_path):
    path = tmp_path / "sd_toy_v1_cut.pkl"
    data = pickle.dumps(_scenario("cut"))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSceneFileError, match="sd_toy_v1_cut.pkl"):
        load_pickle(path)
    with pytest.raises(CorruptSceneFileError, match="sd_toy_v1_cut.pkl"):
        ScenarioNetSource(tmp_path).load(0)


def test_not_a_scenario_names_file(tmp_path):
    _dump(tmp_path / "sd_toy_v1_bad.pkl", {"id": "bad"})
    with pytest.raises(CorruptSceneFileError, match="sd_toy_v1_bad.pkl.*missing keys"):
        ScenarioNetSource(tmp_path).load(0)


# --- real data ---------------------------------------------------------------------------------


def _real_root(name: str):
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"real data {root} missing (set {DATA_ENV_VAR} to the shared data folder)")
    return root


def _check_scene(scene: Scene) -> float:
    """Structural checks; returns the share of moving-vehicle positions on the drivable area."""
    n, t = scene.traj.valid.shape
    assert n == scene.num_agents == len(scene.agent_ids) == len(scene.agent_type) and t > 50
    for name in ("x", "y", "heading", "speed", "vx", "vy"):
        a = getattr(scene.traj, name)
        assert a.shape == (n, t) and np.isfinite(a).all(), name
    seen = scene.traj.valid.any(axis=1)
    assert (scene.traj.length[seen & scene.is_vehicle] > 0).all()
    assert scene.traj.valid[scene.ego_index].all() and scene.dt == pytest.approx(0.1)
    assert scene.road.lanes.shape[0] > 0 and has_vehicles(scene)
    tr = scene.traj
    moving = tr.valid & scene.is_vehicle[:, None] & (np.abs(tr.speed) > 1.0)
    return float(scene.road.drivable.contains(tr.x[moving], tr.y[moving]).mean())


@pytest.mark.realdata
def test_nuscenes_mini_val_scene():
    src = ScenarioNetSource(_real_root("nuscenes-mini"), scene_ids=["scene-0103"])
    scene = src.load(0)
    assert scene.scene_id == "scene-0103" and scene.source == "nuscenes"
    ego = scene.ego_index
    assert scene.agent_ids[ego] == "ego"
    assert scene.traj.length[ego] > scene.traj.width[ego] > 1.0  # README quirk fixed
    assert scene.road.road_edges.shape[0] == 0  # nuScenes-in-ScenarioNet has none
    assert _check_scene(scene) > 0.9


@pytest.mark.realdata
def test_womd_scene():
    src = ScenarioNetSource(_real_root("womd-sample"))
    assert len(src) == 9
    scene = src.load(src.scene_ids.index("eb4b91b10ca94ff2"))
    assert scene.source == "waymo" and scene.scene_id == "eb4b91b10ca94ff2"
    assert scene.road.road_edges.shape[0] > 0
    assert _check_scene(scene) > 0.9


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name, count", [("nuscenes-mini", 10), ("womd-sample", 9)])
def test_every_real_scene_loads(name, count):
    src = ScenarioNetSource(_real_root(name))
    assert len(src) == count
    inside = [_check_scene(src.load(i)) for i in range(count)]
    assert np.mean(inside) >= 0.95  # the drivable-area construction's target (brief), per dataset
