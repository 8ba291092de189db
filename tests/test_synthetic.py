"""The embedded synthetic scenes recorded from highway-env."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely

from blm_gym.data import synthetic
from blm_gym.data.scene import DEFAULT_DT, AgentType, Scene
from blm_gym.data.source import SceneSource
from blm_gym.data.synthetic import KINDS, SyntheticSource, record_arrays

STEPS = 40  # 4 s: enough traffic to test, fast to record


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SyntheticSource:
    return SyntheticSource(num_scenes=len(KINDS), steps=STEPS, cache_dir=tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def scenes(source) -> dict[str, Scene]:
    return {kind: source.load(i) for i, kind in enumerate(KINDS)}


def _box_polygons(scene: Scene, t: int) -> list:
    tr = scene.traj
    idx = np.flatnonzero(tr.valid[:, t])
    c, s = np.cos(tr.heading[idx, t]), np.sin(tr.heading[idx, t])
    half_l, half_w = tr.length[idx] / 2, tr.width[idx] / 2
    corners = np.array([(1, 1), (1, -1), (-1, -1), (-1, 1)], float)
    lon = corners[None, :, 0] * half_l[:, None]
    lat = corners[None, :, 1] * half_w[:, None]
    xs = tr.x[idx, t][:, None] + lon * c[:, None] - lat * s[:, None]
    ys = tr.y[idx, t][:, None] + lon * s[:, None] + lat * c[:, None]
    return [shapely.Polygon(np.stack([x, y], -1)) for x, y in zip(xs, ys)]


def test_scene_ids_follow_kinds_and_seeds(tmp_path):
    src = SyntheticSource(kinds=("merge", "highway"), num_scenes=5, seed=3, cache_dir=tmp_path)
    assert isinstance(src, SceneSource)
    assert src.scene_ids == ["merge-003", "highway-003", "merge-004", "highway-004", "merge-005"]
    with pytest.raises(IndexError):
        src.load(5)


@pytest.mark.parametrize("kwargs", [dict(kinds=("parking",)), dict(kinds=()), dict(steps=1), dict(num_scenes=0)])
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ValueError, match="SyntheticSource"):
        SyntheticSource(**kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_valid_scene(scenes, kind):
    scene = scenes[kind]
    n, tr = scene.num_agents, scene.traj
    assert scene.source == f"synthetic-{kind}" and scene.scene_id == f"{kind}-000"
    assert scene.dt == DEFAULT_DT and scene.num_steps == STEPS
    for f in ("x", "y", "heading", "speed", "vx", "vy", "valid"):
        assert getattr(tr, f).shape == (n, STEPS), f
    assert tr.length.shape == tr.width.shape == (n,) and np.all(tr.length > tr.width) and np.all(tr.width > 0)
    assert len(scene.agent_ids) == len(set(scene.agent_ids)) == n
    assert np.all(scene.agent_type == AgentType.VEHICLE)
    assert 0 <= scene.ego_index < n and tr.valid[scene.ego_index].all()
    assert tr.valid.sum(axis=0).min() >= 3, "expected moderate traffic at every step"
    assert np.all(tr.valid.any(axis=1)), "every recorded vehicle appears at least once"
    assert np.all(np.abs(tr.heading[tr.valid]) <= np.pi + 1e-6)
    road = scene.road
    assert road.lanes.ndim == 3 and road.lanes.shape[0] > 0 and road.lane_mask.sum(axis=1).min() >= 2
    assert road.road_edges.shape[0] > 0 and road.edge_mask.any(axis=1).all()
    # lanes are sampled about every metre
    step = np.linalg.norm(np.diff(road.lanes, axis=1), axis=-1)[road.lane_mask[:, 1:]]
    assert step.max() <= 1.5 * synthetic.LANE_SAMPLING  # sine lanes are sampled in their own parameter


@pytest.mark.parametrize("kind", KINDS)
def test_vehicles_are_inside_the_drivable_area(scenes, kind):
    tr, area = scenes[kind].traj, scenes[kind].road.drivable
    assert area.contains_exact(tr.x[tr.valid], tr.y[tr.valid]).mean() >= 0.99
    assert area.contains(tr.x[tr.valid], tr.y[tr.valid]).mean() >= 0.95  # the raster, as metrics use it
    # and the area is not trivially everything: points 30 m sideways of the ego are mostly off-road
    e = scenes[kind].ego_index
    off = area.contains_exact(tr.x[e] - 30 * np.sin(tr.heading[e]), tr.y[e] + 30 * np.cos(tr.heading[e]))
    assert off.mean() < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_heading_and_speed_agree_with_positions(scenes, kind):
    tr = scenes[kind].traj
    both = tr.valid[:, 1:] & tr.valid[:, :-1]
    fd = np.stack([np.diff(tr.x, axis=1), np.diff(tr.y, axis=1)], -1) / DEFAULT_DT  # (N, T-1, 2)
    mid = np.stack([tr.vx[:, 1:] + tr.vx[:, :-1], tr.vy[:, 1:] + tr.vy[:, :-1]], -1) / 2
    err = np.linalg.norm(fd - mid, axis=-1)[both]
    assert np.median(tr.speed[tr.valid]) > 3.0  # traffic moves, so the check below has teeth
    assert np.quantile(err, 0.95) < 1.0 and np.median(err) < 0.2


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_boxes_do_not_overlap(scenes, kind):
    scene = scenes[kind]
    overlaps = 0
    for t in range(0, STEPS, 4):
        boxes = _box_polygons(scene, t)
        tree = shapely.STRtree(boxes)
        pairs = tree.query(boxes, predicate="intersects")
        overlaps += int((pairs[0] < pairs[1]).sum())
    assert overlaps == 0


def test_recording_is_deterministic_per_seed_and_order_free():
    from highway_env.vehicle.behavior import IDMVehicle

    idm = (IDMVehicle.DISTANCE_WANTED, IDMVehicle.COMFORT_ACC_MAX, IDMVehicle.COMFORT_ACC_MIN)
    a = record_arrays("roundabout", 1, 100)
    record_arrays("intersection", 0, 5)  # highway-env's intersection changes IDM class attributes when built
    assert (IDMVehicle.DISTANCE_WANTED, IDMVehicle.COMFORT_ACC_MAX, IDMVehicle.COMFORT_ACC_MIN) == idm
    b = record_arrays("roundabout", 1, 100)
    c = record_arrays("roundabout", 2, 100)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["x"].shape != c["x"].shape or not np.array_equal(a["x"], c["x"])


def test_cache_round_trip_is_identical(source, scenes, monkeypatch):
    path = source.cache_path(1)
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    def no_recording(*args):
        raise AssertionError("load() should read the cache, not record")

    monkeypatch.setattr(synthetic, "record_arrays", no_recording)
    again = SyntheticSource(num_scenes=len(KINDS), steps=STEPS, cache_dir=source.cache_dir).load(1)
    first = scenes[KINDS[1]]
    for f in dataclasses.fields(first.traj):
        np.testing.assert_array_equal(getattr(first.traj, f.name), getattr(again.traj, f.name), err_msg=f.name)
    for f in ("lanes", "lane_mask", "road_edges", "edge_mask"):
        np.testing.assert_array_equal(getattr(first.road, f), getattr(again.road, f), err_msg=f)
    np.testing.assert_array_equal(first.road.drivable.raster, again.road.drivable.raster)
    assert first.road.drivable.polygon.equals(again.road.drivable.polygon)
    assert (first.scene_id, first.agent_ids, first.ego_index) == (again.scene_id, again.agent_ids, again.ego_index)
