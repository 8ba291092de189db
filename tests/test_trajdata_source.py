"""Raw nuScenes through trajdata: a tiny nuScenes-layout fixture loaded by TrajdataSource."""
from __future__ import annotations

import numpy as np
import pytest
from nuscenes_fixture import (
    LANE_Y, ROAD_X, ROAD_Y, SAMPLE_DT, WALKWAY_Y, default_scenes, lane_centerlines, token, write_nuscenes_fixture,
)

from blm_gym.data.scene import AgentType
from blm_gym.data.source import SceneSource
from blm_gym.data.trajdata_source import TrajdataSource, detect_raw_nuscenes

MAIN, SHORT = default_scenes()
AGENTS = {a.name: a for a in MAIN.agents}


@pytest.fixture(scope="module")
def nusc_root(tmp_path_factory):
    return write_nuscenes_fixture(tmp_path_factory.mktemp("nuscenes"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trajdata-cache")


@pytest.fixture(scope="module")
def source(nusc_root, cache_dir):
    return TrajdataSource(nusc_root, "nusc_mini", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def scene(source):
    return source.load(source.scene_ids.index(MAIN.name))


def _row(scene, agent_name: str) -> int:
    return scene.agent_ids.index(token(MAIN.name, "instance", agent_name))


def _fine(spec, dt=0.1):
    """The fixture's 2 Hz positions linearly interpolated to ``dt`` over the scene: steps (K,), x, y."""
    per = round(SAMPLE_DT / dt)
    steps = np.arange(spec.first * per, spec.last * per + 1)
    samples = np.arange(spec.first, spec.last + 1)
    xs, ys = spec.pose(samples)
    t = steps / per
    return steps, np.interp(t, samples, xs), np.interp(t, samples, ys)


def test_source_protocol_and_scene_ids(source):
    assert isinstance(source, SceneSource)
    assert source.name == "trajdata:nusc_mini"
    assert source.scene_ids == (MAIN.name, SHORT.name)
    with pytest.raises(IndexError):
        source.load(2)


def test_agents_types_and_resampling(scene):
    assert scene.scene_id == MAIN.name and scene.source == "nuscenes"
    assert scene.dt == pytest.approx(0.1)
    assert scene.num_agents == len(MAIN.agents) + 1  # + the ego
    assert scene.num_steps == (MAIN.num_samples - 1) * 5 + 1  # 2 Hz -> 10 Hz
    assert scene.agent_ids[scene.ego_index] == "ego"
    expected = {"car-lead": AgentType.VEHICLE, "pedestrian": AgentType.PEDESTRIAN, "bicycle": AgentType.CYCLIST}
    for name, kind in expected.items():
        assert scene.agent_type[_row(scene, name)] == kind
    i = _row(scene, "car-lead")  # nuScenes size is (width, length, height)
    assert (scene.traj.length[i], scene.traj.width[i]) == pytest.approx(AGENTS["car-lead"].size[1::-1])


def test_known_agent_positions_match_fixture(scene):
    for name in ("car-lead", "car-oncoming", "car-late"):
        spec, i = AGENTS[name], _row(scene, name)
        steps, x, y = _fine(spec)
        valid = np.zeros(scene.num_steps, bool)
        valid[steps] = True
        np.testing.assert_array_equal(scene.traj.valid[i], valid)
        np.testing.assert_allclose(scene.traj.x[i, steps], x, atol=1e-3)
        np.testing.assert_allclose(scene.traj.y[i, steps], y, atol=1e-3)
        np.testing.assert_allclose(np.cos(scene.traj.heading[i, steps]), np.cos(spec.heading), atol=1e-5)
        # Speed is along the heading: positive for the oncoming car driving west too.
        assert np.all(scene.traj.speed[i, steps] > 0.9 * spec.speed)
    # The accelerating car's speed grows (finite differences of its 2 Hz positions).
    speed = scene.traj.speed[_row(scene, "car-lead")]
    assert speed[-1] > speed[0] + 0.5 * AGENTS["car-lead"].accel * (MAIN.num_samples - 2) * SAMPLE_DT


def test_ego_track(scene):
    steps, x, y = _fine(MAIN.ego)
    e = scene.ego_index
    assert scene.traj.valid[e].all()
    np.testing.assert_allclose(scene.traj.x[e], x, atol=1e-3)
    np.testing.assert_allclose(scene.traj.y[e], y, atol=1e-3)
    np.testing.assert_allclose(scene.traj.speed[e], MAIN.ego.speed, atol=1e-3)


def test_map_lanes_edges_and_drivable_area(scene):
    road = scene.road
    # Lanes and the lane connector (a different length: padded), sampled every 0.5 m by trajdata.
    assert road.lanes.shape[0] == len(lane_centerlines())
    lengths = sorted(np.linalg.norm(np.diff(c, axis=0), axis=1).sum() for c in lane_centerlines().values())
    spans = sorted(np.ptp(road.lanes[i][road.lane_mask[i]][:, 0]) for i in range(len(road.lanes)))
    assert spans == pytest.approx(lengths, abs=1e-3)
    lane_y = sorted(np.unique(np.round(road.lanes[road.lane_mask][:, 1], 3)))
    assert lane_y == pytest.approx(sorted(LANE_Y))
    assert road.road_edges.shape[0] >= 1 and road.edge_mask.any()
    edge_y = road.road_edges[road.edge_mask][:, 1]
    assert set(np.round(edge_y, 3)) <= {round(v, 3) for v in ROAD_Y}
    # Points on the road are drivable (raster and exact); the walkway beside it is not.
    along = np.linspace(ROAD_X[0] + 1, ROAD_X[1] - 1, 40)
    gx, gy = np.meshgrid(along, np.linspace(ROAD_Y[0] + 0.5, ROAD_Y[1] - 0.5, 6))
    assert road.drivable.contains(gx, gy).all() and road.drivable.contains_exact(gx, gy).all()
    wx, wy = np.meshgrid(along, np.linspace(*WALKWAY_Y, 5))
    assert not road.drivable.contains(wx, wy).any()
    vehicles = scene.is_vehicle[:, None] & scene.traj.valid
    assert road.drivable.contains(scene.traj.x[vehicles], scene.traj.y[vehicles]).all()


def test_native_dt_keeps_keyframes(nusc_root, cache_dir):
    scene = TrajdataSource(nusc_root, cache_dir=cache_dir, dt=0.5, scene_ids=[MAIN.name]).load(0)
    assert scene.num_steps == MAIN.num_samples
    spec = AGENTS["car-lead"]
    x, y = spec.pose(np.arange(spec.first, spec.last + 1))
    np.testing.assert_allclose(scene.traj.x[_row(scene, "car-lead")], x, atol=1e-4)


def test_split_and_scene_selection(nusc_root, cache_dir):
    assert TrajdataSource(nusc_root, cache_dir=cache_dir, split="mini_val").scene_ids == (SHORT.name,)
    picked = TrajdataSource(nusc_root, cache_dir=cache_dir, scene_ids=[SHORT.name, MAIN.name])
    assert picked.scene_ids == (SHORT.name, MAIN.name)
    short = picked.load(0)
    assert short.scene_id == SHORT.name and short.num_agents == len(SHORT.agents) + 1
    with pytest.raises(ValueError, match="scene-9999"):
        TrajdataSource(nusc_root, cache_dir=cache_dir, scene_ids=["scene-9999"])


def test_detect_raw_nuscenes(tmp_path, nusc_root):
    assert detect_raw_nuscenes(nusc_root) == "nusc_mini"
    assert detect_raw_nuscenes(tmp_path) is None
    (tmp_path / "v1.0-trainval").mkdir()
    (tmp_path / "v1.0-trainval" / "scene.json").write_text("[]")
    assert detect_raw_nuscenes(tmp_path) == "nusc_trainval"


def test_bad_folders_give_clear_errors(tmp_path, nusc_root):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        TrajdataSource(missing, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="not a raw nuScenes root"):
        TrajdataSource(tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="parent folder"):
        TrajdataSource(nusc_root / "v1.0-mini", cache_dir=tmp_path / "cache")
    no_maps = tmp_path / "no-maps"
    (no_maps / "v1.0-mini").mkdir(parents=True)
    (no_maps / "v1.0-mini" / "scene.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="expansion"):
        TrajdataSource(no_maps, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="v1.0-trainval"):
        TrajdataSource(nusc_root, "nusc_trainval", cache_dir=tmp_path / "cache")
