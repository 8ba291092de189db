"""Geometry and time-to-collision checked against shapely and closed-form cases."""
from __future__ import annotations

import numpy as np
import pytest
import shapely

from blm_gym.data.scene import DrivableArea
from blm_gym.sim.geometry import agent_collisions, box_corners, boxes_overlap, offroad
from blm_gym.sim.ttc import min_time_to_collision, time_to_collision


def shapely_overlap(x, y, heading, length, width) -> np.ndarray:
    """Truth for pairs ``(B, 2)``: intersection area of the two boxes > 1e-9 m^2."""
    polys = shapely.polygons(box_corners(x, y, heading, length, width))
    return shapely.area(shapely.intersection(polys[:, 0], polys[:, 1])) > 1e-9


def random_boxes(rng, shape, spread):
    return (rng.uniform(-spread, spread, shape), rng.uniform(-spread, spread, shape),
            rng.uniform(-np.pi, np.pi, shape), rng.uniform(0.3, 6.0, shape), rng.uniform(0.3, 3.0, shape))


def near_touching_pairs(rng, num):
    """Box pairs ``(num, 2)`` moved apart along a random direction to just before or after contact.

    Box j slides from box i's centre along direction ``n``; it separates at
    ``t* = min_a r(a) / |n . a|`` over the four edge normals ``a`` (``r``: sum of the half
    projections). It is then placed so the gap (or penetration) along the separating normal is
    ``g``, with ``|g|`` log-uniform in [1e-3, 1e-1] m and a random sign.
    """
    _, _, heading, length, width = random_boxes(rng, (num, 2), 0.0)
    x = rng.uniform(-1000, 1000, num)  # far from the origin, as in real map frames
    y = rng.uniform(-1000, 1000, num)
    phi = rng.uniform(-np.pi, np.pi, num)
    n = np.stack([np.cos(phi), np.sin(phi)], -1)
    axes, radii = [], []
    for k in (0, 1):
        u = np.stack([np.cos(heading[:, k]), np.sin(heading[:, k])], -1)
        for a in (u, np.stack([-u[:, 1], u[:, 0]], -1)):
            r = 0.0
            for m in (0, 1):
                um = np.stack([np.cos(heading[:, m]), np.sin(heading[:, m])], -1)
                vm = np.stack([-um[:, 1], um[:, 0]], -1)
                r = r + 0.5 * length[:, m] * np.abs((um * a).sum(-1)) + 0.5 * width[:, m] * np.abs((vm * a).sum(-1))
            axes.append(np.abs((n * a).sum(-1)))
            radii.append(r)
    axes, radii = np.stack(axes, -1), np.stack(radii, -1)
    t_axis = radii / np.maximum(axes, 1e-12)
    best = t_axis.argmin(-1)
    t_star = t_axis[np.arange(num), best]
    g = rng.choice([-1.0, 1.0], num) * 10 ** rng.uniform(-3, -1, num)
    t = t_star + g / axes[np.arange(num), best]
    xs = np.stack([x, x + t * n[:, 0]], -1)
    ys = np.stack([y, y + t * n[:, 1]], -1)
    return xs, ys, heading, length, width


def test_box_corners_by_hand():
    corners = box_corners(1.0, 2.0, np.pi / 2, 4.0, 2.0)
    np.testing.assert_allclose(corners, [[0, 4], [0, 0], [2, 0], [2, 4]], atol=1e-6)
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, (3, 5), 10.0)
    polys = shapely.polygons(box_corners(*boxes))
    np.testing.assert_allclose(shapely.area(polys), boxes[3] * boxes[4], rtol=1e-5)
    assert shapely.is_ccw(shapely.get_exterior_ring(polys)).all()


def test_boxes_overlap_matches_shapely_on_random_and_near_touching_pairs():
    rng = np.random.default_rng(1234)
    random = random_boxes(rng, (8000, 2), 4.0)
    near = near_touching_pairs(rng, 8000)
    for boxes in (random, near):
        ours = boxes_overlap(*boxes, valid=np.ones((len(boxes[0]), 2), bool))
        truth = shapely_overlap(*boxes)
        assert 0.2 < truth.mean() < 0.8  # both classes are well represented
        mismatches = np.flatnonzero(ours[:, 0, 1] != truth)
        assert mismatches.size == 0, f"{mismatches.size} pairs disagree with shapely, e.g. pair {mismatches[:5]}"
        np.testing.assert_array_equal(ours[:, 0, 1], ours[:, 1, 0])


def test_boxes_overlap_scene_matches_shapely_and_masks():
    rng = np.random.default_rng(7)
    n = 40
    boxes = random_boxes(rng, (n,), 15.0)
    valid = rng.random(n) > 0.2
    ours = boxes_overlap(*boxes, valid)
    polys = shapely.polygons(box_corners(*boxes))
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    truth = shapely.area(shapely.intersection(polys[i], polys[j])) > 1e-9
    truth &= valid[:, None] & valid[None, :] & (i != j)
    assert truth.any()
    np.testing.assert_array_equal(ours, truth)
    np.testing.assert_array_equal(agent_collisions(*boxes, valid), truth.any(-1))
    # Leading batch dims: each scene of a batch is checked on its own.
    batched = boxes_overlap(*(np.stack([b, b[::-1]]) for b in boxes), np.stack([valid, valid[::-1]]))
    np.testing.assert_array_equal(batched[0], ours)
    np.testing.assert_array_equal(batched[1], ours[::-1, ::-1])


def test_touching_boxes_do_not_overlap():
    # Shared edge, shared corner (axis-aligned: exact in floating point), then 1 mm of overlap.
    x = np.array([[0.0, 4.0], [0.0, 4.0], [0.0, 3.999]])
    y = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    zeros, ones = np.zeros_like(x), np.ones_like(x, dtype=bool)
    out = boxes_overlap(x, y, zeros, zeros + 4.0, zeros + 2.0, ones)[:, 0, 1]
    np.testing.assert_array_equal(out, [False, False, True])


def test_boxes_overlap_has_no_python_loop_over_agents():
    # 128 agents in one call: shapes, symmetry, an empty diagonal.
    rng = np.random.default_rng(3)
    out = boxes_overlap(*random_boxes(rng, (2, 128), 20.0), np.ones((2, 128), bool))
    assert out.shape == (2, 128, 128) and out.dtype == bool
    np.testing.assert_array_equal(out, out.swapaxes(-1, -2))
    assert not out[:, np.arange(128), np.arange(128)].any()


def test_offroad_matches_shapely_away_from_the_boundary():
    rng = np.random.default_rng(5)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
    r = rng.uniform(10, 40, 24)
    polygon = shapely.Polygon(np.stack([r * np.cos(angles), r * np.sin(angles)], -1)).union(
        shapely.LineString([(-60, -5), (60, 5)]).buffer(2.0))
    drivable = DrivableArea.from_geometry(polygon, resolution=0.5)
    px, py = rng.uniform(-65, 65, 20000), rng.uniform(-50, 50, 20000)
    valid = rng.random(20000) > 0.1
    ours = offroad(drivable, px, py, valid)
    truth = ~shapely.contains_xy(polygon, px, py) & valid
    far = shapely.distance(polygon.boundary, shapely.points(px, py)) > drivable.resolution
    assert truth[far].any() and (~truth[far]).any() and far.mean() > 0.9
    np.testing.assert_array_equal(ours[far], truth[far])
    assert not ours[~valid].any()
    assert offroad(drivable, px.reshape(4, -1), py.reshape(4, -1), valid.reshape(4, -1)).shape == (4, 5000)


# --- time to collision ------------------------------------------------------------------------


def two_agents(x1, vx0, vx1, length=4.0, width=2.0, y1=0.0, vy1=0.0):
    return dict(x=np.array([0.0, x1]), y=np.array([0.0, y1]), vx=np.array([vx0, vx1]), vy=np.array([0.0, vy1]),
                length=np.full(2, length), width=np.full(2, width), valid=np.ones(2, bool))


def test_ttc_head_on_known_time():
    a = two_agents(50.0, 10.0, -10.0)
    ttc = time_to_collision(**a)
    expected = (50.0 - 2 * np.sqrt(2.0**2 + 1.0**2)) / 20.0  # bounding discs: radius = half diagonal
    np.testing.assert_allclose(ttc[0, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(ttc[1, 0], expected, rtol=1e-6)
    assert np.isinf(ttc[0, 0]) and np.isinf(ttc[1, 1])
    # Three discs per box: front discs sit length/3 ahead of the centres, radius sqrt(1 + (2/3)^2).
    ttc3 = time_to_collision(**a, heading=np.array([0.0, np.pi]), num_discs=3)
    expected3 = (50.0 - 2 * 4.0 / 3 - 2 * np.sqrt(1.0 + (2.0 / 3) ** 2)) / 20.0
    np.testing.assert_allclose(ttc3[0, 1], expected3, rtol=1e-6)


def test_ttc_rear_end_parallel_diverging_horizon_overlap():
    # Follower at 15 m/s, leader 20 m ahead at 10 m/s: gap minus radii closes at 5 m/s.
    np.testing.assert_allclose(time_to_collision(**two_agents(20.0, 15.0, 10.0))[0, 1],
                               (20.0 - 2 * np.sqrt(5.0)) / 5.0, rtol=1e-6)
    assert np.isinf(time_to_collision(**two_agents(30.0, 10.0, 10.0))[0, 1])  # parallel, same speed
    assert np.isinf(time_to_collision(**two_agents(30.0, 10.0, 12.0))[0, 1])  # diverging
    assert np.isinf(time_to_collision(**two_agents(30.0, 10.0, 12.0, y1=3.5, vy1=0.0))[0, 1])
    assert np.isinf(time_to_collision(**two_agents(200.0, 10.0, -10.0))[0, 1])  # 9.8 s > 5 s horizon
    assert np.isfinite(time_to_collision(**two_agents(200.0, 10.0, -10.0), horizon=10.0)[0, 1])
    assert time_to_collision(**two_agents(3.0, 0.0, 0.0))[0, 1] == 0.0  # already overlapping
    # Side by side in adjacent lanes: the bounding discs touch, three discs per box do not.
    side = two_agents(0.0, 10.0, 10.0, y1=3.5)
    assert time_to_collision(**side)[0, 1] == 0.0
    assert np.isinf(time_to_collision(**side, heading=np.zeros(2), num_discs=3)[0, 1])


def test_ttc_invalid_agents_and_errors():
    a = two_agents(50.0, 10.0, -10.0)
    a["valid"] = np.array([True, False])
    assert np.isinf(time_to_collision(**a)).all()
    with pytest.raises(ValueError, match="heading"):
        time_to_collision(**a, num_discs=3)


@pytest.mark.parametrize("num_discs", [1, 3])
def test_ttc_matches_dense_time_sampling(num_discs):
    rng = np.random.default_rng(11)
    b, n = 50, 6
    x, y = rng.uniform(-30, 30, (b, n)), rng.uniform(-30, 30, (b, n))
    heading = rng.uniform(-np.pi, np.pi, (b, n))
    speed = rng.uniform(0, 15, (b, n))
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    length, width = rng.uniform(3, 6, (b, n)), rng.uniform(1.5, 2.5, (b, n))
    valid = np.ones((b, n), bool)
    ttc = time_to_collision(x, y, vx, vy, length, width, valid, heading=heading, num_discs=num_discs)
    # Brute force: step time by 1 ms and record when any disc pair first gets within the radius sum.
    times = np.arange(0, 5.0 + 1e-9, 1e-3)
    offset = ((np.arange(num_discs) + 0.5) / num_discs - 0.5)[:, None, None] * length
    radius = np.sqrt((width / 2) ** 2 + (length / (2 * num_discs)) ** 2)
    first = np.full((b, n, n), np.inf)
    for t in times[::-1]:  # backwards, so the earliest touching time is written last
        cx = x + vx * t + offset * np.cos(heading)  # (K, B, N)
        cy = y + vy * t + offset * np.sin(heading)
        d = np.hypot(cx[:, None, :, :, None] - cx[None, :, :, None, :], cy[:, None, :, :, None] - cy[None, :, :, None, :])
        touch = (d <= radius[..., :, None] + radius[..., None, :]).any((0, 1))
        first[touch] = t
    first[:, np.arange(n), np.arange(n)] = np.inf
    assert np.isfinite(first).sum() > 20
    np.testing.assert_array_equal(np.isfinite(ttc), np.isfinite(first))
    fin = np.isfinite(first)
    np.testing.assert_allclose(ttc[fin], first[fin], atol=1.5e-3)
    np.testing.assert_array_equal(min_time_to_collision(x, y, vx, vy, length, width, valid,
                                                        heading=heading, num_discs=num_discs), ttc.min(-1))
