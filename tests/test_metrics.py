"""Metrics on hand-built rollouts whose answers are known in closed form."""
import json
import math

import numpy as np
import pytest
import shapely

from blm_gym.data.scene import AgentType, DrivableArea, Trajectories
from blm_gym.metrics import (RSSParams, compute_report, format_table, jensen_shannon, kinematic_values,
                             min_ttc_per_sample, offroad_steps, realism_metrics, rss_lateral_safe_distance,
                             rss_longitudinal_safe_distance, rss_violation_steps, safety_metrics, write_report)
from blm_gym.rollout import Rollout

ROAD = DrivableArea.from_geometry(shapely.box(-100, -20, 100, 20), resolution=0.5)


def make_rollout(x, y=None, heading=None, speed=None, valid=None, *, types=None, log_x=None,
                 length=4.0, width=2.0, dt=0.1) -> Rollout:
    """A rollout from simulated ``(K, N, T)`` arrays; the log defaults to sample 0."""
    x = np.asarray(x, np.float32)
    zeros = np.zeros_like(x)
    y = zeros if y is None else np.broadcast_to(np.asarray(y, np.float32), x.shape)
    heading = zeros if heading is None else np.broadcast_to(np.asarray(heading, np.float32), x.shape)
    speed = zeros if speed is None else np.broadcast_to(np.asarray(speed, np.float32), x.shape)
    valid = np.ones(x.shape, bool) if valid is None else np.broadcast_to(valid, x.shape)
    n = x.shape[1]
    types = np.full(n, AgentType.VEHICLE, np.int8) if types is None else np.asarray(types, np.int8)
    log = Trajectories.from_states(x[0] if log_x is None else log_x, y[0], heading[0], speed[0],
                                   np.full(n, length), np.full(n, width), valid[0])
    return Rollout.from_states(ROAD, scene_id="s0", source="test", policy="hand", dt=dt, start_step=0, ego_index=0,
                               agent_ids=tuple(map(str, range(n))), agent_type=types, controlled=np.ones(n, bool),
                               x=x, y=y.copy(), heading=heading.copy(), speed=speed.copy(), valid=valid.copy(), log=log)


def test_collision_counts_both_forms():
    # 3 agents, 10 simulated steps; agents 0 and 1 overlap at exactly 3 steps in sample 0, never in sample 1.
    k, n, t = 2, 3, 11
    x = np.zeros((k, n, t))
    x[:, 1] = 10.0
    x[:, 2] = 50.0
    x[0, 1, 4:7] = 2.0  # centres 2 m apart, boxes 4 m long: overlap
    m = safety_metrics(make_rollout(x), ROAD)
    assert m["collision_rate_step"].count == 2 * 3
    assert m["collision_rate_step"].value == pytest.approx(6 / (k * n * 10))
    assert m["collision_rate_any"].value == pytest.approx(2 / (k * n))
    assert m["failure_rate"].value == pytest.approx(2 / (k * n))


def test_offroad_at_known_step():
    # Road ends at x = 100; car 0 drives 2 m per step from x = 91: outside from t = 5 (x = 101).
    # Car 1 is parked off the road from the start: left out of the off-road rates.
    t = np.arange(11)
    x = np.stack([91.0 + 2.0 * t, 0.0 * t])[None]
    y = np.stack([0.0 * t, 0.0 * t + 30.0])[None]
    r = make_rollout(x, y)
    off = offroad_steps(r)[0]  # simulated steps t = 1..10
    assert np.flatnonzero(off[0])[0] + 1 == 5 and off[0, 4:].all() and off[1].all()
    m = safety_metrics(r, ROAD)
    assert m["offroad_rate_step"].value == pytest.approx(6 / 10)
    assert m["offroad_rate_any"].value == 1.0
    assert m["collision_rate_step"].value == 0.0 and m["collision_rate_step"].total == 20
    assert m["failure_rate"].value == pytest.approx(1 / 2)


def test_min_ttc_head_on():
    # Head-on at 10 m/s each, 50 m apart: the front discs of the 3-disc cover touch after
    # (50 - 2 * 4/3 - 2 * sqrt(1 + (2/3)^2)) / 20 s.
    x = np.array([[[0.0, 0.0], [50.0, 50.0], [0.0, 0.0]]])
    y = np.array([[[0.0, 0.0], [0.0, 0.0], [500.0, 500.0]]])
    heading = np.array([[[0.0, 0.0], [np.pi, np.pi], [0.0, 0.0]]])
    speed = np.full((1, 3, 2), 10.0)
    expected = (50 - 2 * 4 / 3 - 2 * math.sqrt(1 + (2 / 3) ** 2)) / 20
    assert min_ttc_per_sample(make_rollout(x, y, heading, speed)) == pytest.approx([expected], rel=1e-5)
    # Same pair 150 m apart: no contact within 5 s, capped at the horizon.
    x[0, 1] = 150.0
    assert min_ttc_per_sample(make_rollout(x, y, heading, speed)) == pytest.approx([5.0])


def test_rss_safe_distances_by_hand():
    p = RSSParams()
    # 10 * 0.5 + 3.5 * 0.25 / 2 + (10 + 1.75)^2 / 8 - 10^2 / 16
    assert rss_longitudinal_safe_distance(10.0, 10.0, p) == pytest.approx(5 + 0.4375 + 138.0625 / 8 - 6.25)
    assert rss_longitudinal_safe_distance(0.0, 30.0, p) == 0.0  # front car much faster: clipped at 0
    # Both lateral velocities 0: mu + 2 * (0.1 / 2 * 0.5 + 0.1^2 / 1.6)
    assert rss_lateral_safe_distance(0.0, 0.0, p) == pytest.approx(0.3 + 2 * (0.025 + 0.01 / 1.6))
    # Car 1 closing at 1 m/s: v1' = 1.1, reach1 = 2.1 / 2 * 0.5 + 1.21 / 1.6; car 2 still.
    assert rss_lateral_safe_distance(1.0, 0.0, p) == pytest.approx(0.3 + 0.525 + 1.21 / 1.6 + 0.025 + 0.01 / 1.6)


@pytest.mark.parametrize("gap, speed, violated", [(10.0, 10.0, True), (20.0, 10.0, False), (0.5, 0.0, False)])
def test_rss_longitudinal_violation(gap, speed, violated):
    # Follower at 10 m/s behind a leader at 10 m/s; safe gap 16.45 m (boxes 4 m long). Parked cars: not checked.
    x = np.array([[[0.0, 0.0], [4.0 + gap, 4.0 + gap]]])
    lon, lat = rss_violation_steps(make_rollout(x, speed=speed))
    assert lon[0, 0, 0] == violated and not lon[0, 1, 0]  # only the rear car is responsible
    assert not lat.any()


@pytest.mark.parametrize("offset, violated", [(2.3, True), (3.0, False)])
def test_rss_lateral_violation(offset, violated):
    # Side by side, parallel, no lateral motion: safe lateral gap 0.3625 m (boxes 2 m wide).
    x = np.zeros((1, 2, 2))
    y = np.array([[[0.0, 0.0], [offset, offset]]])
    lon, lat = rss_violation_steps(make_rollout(x, y, speed=5.0))
    assert (lat[0, :, 0] == violated).all()
    assert not lon.any()


def test_jsd_bounds():
    p = np.array([3, 1, 0, 0])
    assert jensen_shannon(p, p) == pytest.approx(0.0)
    assert jensen_shannon(p, np.array([0, 0, 2, 5])) == pytest.approx(math.log(2))
    assert jensen_shannon(p, np.zeros(4)) is None


def test_kinematics_at_half_second():
    # Speed rising 1.25 m/s^2: acceleration 1.25 and jerk 0 on the 0.5 s grid.
    t = np.arange(21) * 0.1
    r = make_rollout((t**2)[None, None], speed=(1.25 * t)[None, None])
    v = kinematic_values(r)
    assert len(v["speed"]) == 20 and len(v["accel"]) == 4 and len(v["jerk"]) == 3
    assert np.allclose(v["accel"], 1.25, atol=1e-5) and np.allclose(v["jerk"], 0.0, atol=1e-4)


def test_fdd_and_ade():
    base = np.tile(np.arange(11.0), (3, 2, 1))
    assert realism_metrics(make_rollout(base))["fdd_m"].value == 0.0
    spread = base.copy()
    spread[:, :, -1] += np.array([0.0, 3.0, 6.0])[:, None]  # final positions 3 m apart: pairs 3, 6, 3
    m = realism_metrics(make_rollout(spread, log_x=base[0]))
    assert m["fdd_m"].value == pytest.approx(4.0)
    assert m["min_fde_m"].value == pytest.approx(0.0) and m["mean_fde_m"].value == pytest.approx(3.0)
    assert m["mean_ade_m"].value == pytest.approx(3.0 / 10)
    single = realism_metrics(make_rollout(base[:1]))
    assert single["fdd_m"].value is None and "2 samples" in single["fdd_m"].reason
    # an agent never valid at one step in every sample has no common final step: left out of FDD
    valid = np.ones((3, 2, 11), bool)
    valid[0, 1, 6:], valid[1, 1, :6] = False, False
    far = spread.copy()
    far[:, 1] = np.where(valid[:, 1], far[:, 1], 1e3)  # what an invalid step holds must not matter
    m = realism_metrics(make_rollout(far, valid=valid, log_x=base[0]))
    assert m["fdd_m"].value == pytest.approx(4.0) and m["fdd_m"].total == 1


def test_report_log_vs_itself_and_files(tmp_path):
    x = np.tile(np.arange(11.0), (2, 2, 1))
    x[:, 1] += 20.0
    x[1] += 1.0  # sample 1 is 1 m ahead of the log everywhere
    report = compute_report([make_rollout(x, speed=10.0, log_x=x[0] - 0.0)], {"s0": ROAD})
    sim, log = report["overall"]["sim"], report["overall"]["log"]
    assert log["min_ade_m"]["value"] == 0.0 and log["mean_ade_m"]["value"] == 0.0
    assert sim["mean_ade_m"]["value"] == pytest.approx(0.5)
    assert log["jsd_speed"]["value"] is None and sim["jsd_speed"]["value"] == pytest.approx(0.0)
    assert all(d["definition"] for d in sim.values())
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["metrics.json"].read_text())["overall"]["sim"]["mean_ade_m"]["value"] == 0.5
    assert paths["per_scene.csv"].read_text().splitlines()[1].startswith("s0,test,hand,2,2,2,11")
    assert paths["kinematics.png"].stat().st_size > 1000 and paths["per_scene_rates.png"].stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(paths)  # no temp files left
    assert "collision_rate_step" in format_table(report)


def test_no_valid_vehicle_is_undefined():
    x = np.zeros((1, 2, 5))
    x[:, 1] = 10.0
    r = make_rollout(x, types=[AgentType.PEDESTRIAN, AgentType.CYCLIST])
    report = compute_report([r], {"s0": ROAD})
    for side in ("sim", "log"):
        for name, d in report["overall"][side].items():
            assert d["value"] is None and d["reason"], (side, name)
    json.dumps(report, allow_nan=False)
    with pytest.raises(KeyError, match="No drivable area for scene 's0'"):
        compute_report([r], {})
