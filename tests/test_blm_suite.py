"""The BLM paper's metric suite on hand-built rollouts whose answers are known in closed form."""
import dataclasses

import numpy as np
import pytest
import shapely
import shapely.affinity

from blm_gym.data.scene import AgentType, DrivableArea, Trajectories
from blm_gym.metrics.blm_suite import (BLMSuiteConfig, blm_raster, blm_suite_metrics, fdd_of_plan_endpoints,
                                       jsd_kde_rows)
from blm_gym.rollout import Rollout

ROAD = DrivableArea.from_geometry(shapely.box(-200, -20, 200, 20), resolution=0.5)
CFG = BLMSuiteConfig()


def make_rollout(x, y=0.0, heading=0.0, speed=0.0, valid=None, *, log_speed=None, log_valid=None, types=None,
                 controlled=None, length=4.0, width=2.0, dt=0.1) -> Rollout:
    """A rollout from simulated ``(K, N, T)`` arrays; the log is sample 0 unless overridden."""
    x = np.asarray(x, np.float32)  # float32 like the recorded rollouts
    shape = x.shape
    y, heading, speed = (np.broadcast_to(np.asarray(a, np.float32), shape).copy() for a in (y, heading, speed))
    valid = np.ones(shape, bool) if valid is None else np.broadcast_to(valid, shape).copy()
    n = shape[1]
    log = Trajectories.from_states(x[0], y[0], heading[0], speed[0] if log_speed is None else log_speed,
                                   np.full(n, length), np.full(n, width), valid[0] if log_valid is None else log_valid)
    fields = dict(scene_id="s0", source="test", policy="hand", dt=dt, start_step=0, ego_index=0,
                  agent_ids=tuple(map(str, range(n))),
                  agent_type=np.full(n, AgentType.VEHICLE, np.int8) if types is None else np.asarray(types, np.int8),
                  controlled=np.ones(n, bool) if controlled is None else np.asarray(controlled, bool),
                  x=x, y=y, heading=heading, speed=speed, valid=valid, log=log)
    names = {f.name for f in dataclasses.fields(Rollout)}
    for extra in ("collision", "offroad"):  # simulator-side checks the BLM suite does not read
        if extra in names:
            fields[extra] = np.zeros(shape, bool)
    return Rollout(**fields)


def metrics(r, config=CFG, drivable=ROAD):
    return blm_suite_metrics(r, drivable, config)


# ---------------------------------------------------------------------------------------------- collision


def parked(k, n, t, spacing=20.0):
    """x ``(k, n, t)`` of n cars parked ``spacing`` apart along the road."""
    return np.broadcast_to(np.arange(n, dtype=float)[None, :, None] * spacing, (k, n, t)).copy()


def test_collision_counts_pairs_over_agent_steps():
    k, n, t = 1, 3, 10
    x = parked(k, n, t)
    x[0, 1, 4] = 2.0  # cars 0 and 1 overlap at step 4 only
    m = metrics(make_rollout(x))["blm_collision_rate"]
    assert m.value == pytest.approx(1 / (t * n))
    # Quirk: counting the cars in contact instead of the pair doubles it.
    m = metrics(make_rollout(x), BLMSuiteConfig(count_colliding_agents=True))["blm_collision_rate"]
    assert m.value == pytest.approx(2 / (t * n))
    # Quirk: step 0 (the logged initial state) is in the denominator by default.
    m = metrics(make_rollout(x), BLMSuiteConfig(simulated_steps_only=True))["blm_collision_rate"]
    assert m.value == pytest.approx(1 / ((t - 1) * n))


def test_collision_at_initial_step_counts_only_by_default():
    x = parked(1, 2, 5)
    x[0, 1, 0] = 1.0
    assert metrics(make_rollout(x))["blm_collision_rate"].value == pytest.approx(1 / 10)
    assert metrics(make_rollout(x), BLMSuiteConfig(simulated_steps_only=True))["blm_collision_rate"].value == 0.0


def test_collision_agents_and_partners():
    # Car 0 is controlled, cars 1 and 2 replay the log: a controlled car hitting a log car counts,
    # two log cars hitting each other do not; the denominator is the controlled car's steps.
    x = parked(1, 3, 4)
    x[0, 0, 1] = 22.0  # 0 hits 1 at step 1
    x[0, 2, 2] = 21.0  # 2 hits 1 at step 2
    r = make_rollout(x, controlled=[True, False, False])
    assert metrics(r)["blm_collision_rate"].value == pytest.approx(1 / 4)
    m = metrics(r, BLMSuiteConfig(all_vehicles=True))["blm_collision_rate"]
    assert m.value == pytest.approx(2 / 12)
    # A pedestrian is no part of the BLM suite (vehicles only).
    r = make_rollout(x, types=[AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.VEHICLE])
    assert metrics(r)["blm_collision_rate"].value == 0.0


def test_rows_averaged_equally_or_pooled_by_agent_steps():
    # Sample 0: 3 valid cars x 10 steps, one colliding pair-step. Sample 1: car 2 is never valid
    # (2 cars x 10 steps), one colliding pair-step.
    k, n, t = 2, 3, 10
    x = parked(k, n, t)
    x[:, 1, 4] = 2.0
    valid = np.ones((k, n, t), bool)
    valid[1, 2] = False
    r = make_rollout(x, valid=valid)
    m = metrics(r)["blm_collision_rate"]
    assert m.value == pytest.approx((1 / 30 + 1 / 20) / 2) and m.total == 2
    m = metrics(r, BLMSuiteConfig(pool_by_agent_steps=True))["blm_collision_rate"]
    assert m.value == pytest.approx(2 / 50) and (m.count, m.total) == (2, 50)
    # Pooling two scenes = the mean over all their rows.
    a, b = metrics(r)["blm_collision_rate"], metrics(make_rollout(parked(1, n, t)))["blm_collision_rate"]
    assert a.pooled(b).value == pytest.approx((1 / 30 + 1 / 20 + 0) / 3)


# ---------------------------------------------------------------------------------------------- off-road


def test_box_corner_off_the_raster_while_centre_on():
    road = DrivableArea.from_geometry(shapely.box(0, -10, 20, 10), resolution=0.5)
    raster = blm_raster(road)
    assert raster.resolution == 1.0 and blm_raster(road) is raster  # built once per drivable area
    # Car 0: centre (18.3, 0), heading 0.5 rad, 4.5 x 1.8 m: one corner (x = 20.71) past the road's
    # edge at x = 20, and the 1 m cell centred (20.5, 0.5) lies in the box. Car 1 well inside.
    length, width, heading = 4.5, 1.8, 0.5
    x = np.array([[[18.3, 18.3], [8.0, 8.0]]])
    r = make_rollout(x, heading=heading, length=length, width=width)
    corners = shapely.affinity.rotate(shapely.box(-length / 2, -width / 2, length / 2, width / 2), heading,
                                      use_radians=True)
    xs = np.asarray(corners.exterior.coords)[:4, 0] + 18.3
    assert (xs > 20).sum() == 1 and road.contains_exact(np.array([18.3]), np.array([0.0]))[0]
    m = metrics(r, drivable=road)["blm_offroad_rate"]
    assert m.value == pytest.approx(2 / (2 * 2))  # car 0 at both steps, / T x N
    # The same box nudged back 0.3 m still pokes out (x = 20.41), but covers no off-road cell centre: on-road
    # for the 1 m raster test (as in the script).
    nudged = x - np.array([0.3, 0.0])[None, :, None]
    assert (xs - 0.3 > 20).sum() == 1
    r = make_rollout(nudged, heading=heading, length=length, width=width)
    assert metrics(r, drivable=road)["blm_offroad_rate"].value == 0.0
    # Off the raster entirely: off-road.
    r = make_rollout(np.full((1, 1, 3), 500.0))
    assert metrics(r, drivable=road)["blm_offroad_rate"].value == 1.0


# ---------------------------------------------------------------------------------------------- TTC


def head_on(gap0, t, speed=10.0, dt=0.1, lateral=0.0):
    """Car 0 from x = 0 east, car 1 from x = gap0 west, both at ``speed``; ``t`` steps."""
    time = np.arange(t) * dt
    x = np.stack([speed * time, gap0 - speed * time])[None]
    y = np.stack([0.0 * time, 0.0 * time + lateral])[None]
    heading = np.array([0.0, np.pi])[None, :, None]
    return make_rollout(x, y, heading, speed, dt=dt)


def test_min_ttc_head_on_is_gap_over_closing_speed():
    t = 6
    r = head_on(50.0, t)
    # Positions-differenced velocity is zero at t = 0; the minimum is at the last step.
    expected = (50.0 - 20.0 * (t - 1) * 0.1) / 20.0
    m = metrics(r)["blm_min_ttc_s"]
    assert m.value == pytest.approx(expected, rel=1e-5) and m.total == 1
    assert metrics(r, BLMSuiteConfig(state_velocity=True))["blm_min_ttc_s"].value == pytest.approx(expected, rel=1e-5)
    # A 2-step rollout: only step 1 has a velocity, unless the state's velocity is used.
    r = head_on(50.0, 2)
    assert metrics(r)["blm_min_ttc_s"].value == pytest.approx(48.0 / 20.0, rel=1e-5)
    r = make_rollout(head_on(50.0, 2).x[:, :, :1].repeat(2, axis=2), heading=np.array([0.0, np.pi])[None, :, None],
                     speed=10.0)  # parked, but recorded as moving
    assert metrics(r)["blm_min_ttc_s"].value is None
    assert metrics(r, BLMSuiteConfig(state_velocity=True))["blm_min_ttc_s"].value == pytest.approx(50.0 / 20.0,
                                                                                                 rel=1e-5)


def test_min_ttc_is_zero_once_they_collide():
    # 11 m apart closing at 20 m/s: centres 3 m apart (4 m boxes overlap) at step 4.
    r = head_on(11.0, 5)
    assert metrics(r)["blm_min_ttc_s"].value == 0.0
    assert metrics(r)["blm_collision_rate"].value == pytest.approx(1 / 10)
    # One step shorter: no contact yet, TTC of the last step.
    assert metrics(head_on(11.0, 4))["blm_min_ttc_s"].value == pytest.approx(5.0 / 20.0, rel=1e-5)


def test_min_ttc_point_based_unless_contact_required():
    # Lanes 50 m apart: the centres' closest approach still has a time.
    r = head_on(50.0, 3, lateral=50.0)
    assert metrics(r)["blm_min_ttc_s"].value == pytest.approx(46.0 / 20.0, rel=1e-5)
    m = metrics(r, BLMSuiteConfig(ttc_require_contact=True))["blm_min_ttc_s"]
    assert m.value is None and m.reason
    # Same lane: contact is ahead, unchanged by the option.
    r = head_on(50.0, 3)
    assert metrics(r, BLMSuiteConfig(ttc_require_contact=True))["blm_min_ttc_s"].value == pytest.approx(46.0 / 20.0,
                                                                                                       rel=1e-5)


# ---------------------------------------------------------------------------------------------- RSS


def following(gap, t=3, speed=10.0, dt=0.1):
    """Two 4 m cars in one lane at ``speed``, bumper gap ``gap``."""
    time = np.arange(t) * dt
    x = np.stack([speed * time, speed * time + 4.0 + gap])[None]
    return make_rollout(x, 0.0, 0.0, speed, dt=dt)


def test_rss_longitudinal_violation_at_short_gap_only():
    # d_lon(10, 10) = 10 * 0.5 + 2 * 0.25 / 2 + 11^2 / 8 - 10^2 / 8 = 7.875 m.
    m = metrics(following(5.0))
    assert m["blm_rss_lon_violations"].value == 2  # rear car at steps 1, 2 (step 0: zero velocity, d = 0.375)
    assert m["blm_rss_lat_violations"].value == 0
    assert metrics(following(8.5))["blm_rss_lon_violations"].value == 0
    assert metrics(following(5.0), BLMSuiteConfig(state_velocity=True))["blm_rss_lon_violations"].value == 3
    assert metrics(following(0.3))["blm_rss_lon_violations"].value == 3  # 0.3 m < 0.375 m even when stopped


def test_rss_lateral_stationary_pair_needs_point_eight_metres():
    def side_by_side(gap):
        return make_rollout(np.zeros((1, 2, 2)), y=np.array([0.0, 2.0 + gap])[None, :, None])

    # mu + s(0) + s(0) = 0.2 + 2 * (1.5 * 0.25 / 2 + 0.75^2 / 5) = 0.8 m; both orders count.
    assert metrics(side_by_side(0.7))["blm_rss_lat_violations"].value == 4
    assert metrics(side_by_side(0.9))["blm_rss_lat_violations"].value == 0


def test_rss_lateral_toward_only():
    # Car 1 drifts away to the left at 2 m/s (heading 0, position-differenced velocity): gap 0.9 m
    # at step 0 (no velocity yet, no violation), 1.1 m at step 1, where with |v_lat| = 2 the script
    # asks d_lat = 0.2 + 0.3 + (1 + 0.1875 + 2.75^2 / 5) = 3.2 m of car 0.
    y = np.array([[[0.0, 0.0], [2.9, 3.1]]])
    r = make_rollout(np.zeros((1, 2, 2)), y=y)
    assert metrics(r)["blm_rss_lat_violations"].value == 1
    assert metrics(r, BLMSuiteConfig(rss_lat_toward_only=True))["blm_rss_lat_violations"].value == 0


def test_rss_oncoming_car_gets_braking_credit_by_default():
    # Head-on, 10 m bumper gap at step 1 (12 m at step 0): d_lon = 7.875 m with the oncoming car
    # taken as a braking leader; 20.375 m once its speed toward us counts as 0.
    r = head_on(4.0 + 12.0, 2)
    assert metrics(r)["blm_rss_lon_violations"].value == 0
    assert metrics(r, BLMSuiteConfig(rss_front_speed_nonnegative=True))["blm_rss_lon_violations"].value == 2


# ---------------------------------------------------------------------------------------------- JSD


def test_jsd_kde_matches_sklearn_and_scipy():
    sk = pytest.importorskip("sklearn.neighbors")
    from scipy.stats import entropy

    rng = np.random.default_rng(0)
    p, q = rng.normal(5, 2, (3, 40)), rng.normal(6, 1, (3, 40))
    lengths = np.array([40, 25, 7])
    got = jsd_kde_rows(p, q, lengths)
    for row, n in enumerate(lengths):
        a, b = p[row, :n], q[row, :n]
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 1000).reshape(-1, 1)
        dens = [np.exp(sk.KernelDensity(kernel="gaussian").fit(v.reshape(-1, 1)).score_samples(grid)) for v in (a, b)]
        pp, qq = (d / (d.sum() + 1e-10) for d in dens)
        mm = 0.5 * (pp + qq)
        assert got[row] == pytest.approx(0.5 * (entropy(pp, mm, base=2) + entropy(qq, mm, base=2)), abs=1e-9)
    assert np.isnan(jsd_kde_rows(p[:1], q[:1], np.array([0])))[0]
    assert jsd_kde_rows(np.full((1, 5), 3.0), np.full((1, 5), 3.0), np.array([5]))[0] == 0.0
    assert jsd_kde_rows(np.full((1, 5), 3.0), np.full((1, 5), 4.0), np.array([5]))[0] == 1.0


def cruise(speeds, log_speeds=None, log_valid=None, dt=0.1):
    """One car driving east with the given speed profile ``(T,)`` (log: same unless given)."""
    speeds = np.asarray(speeds, float)
    x = np.concatenate([[0.0], np.cumsum(speeds[:-1] * dt)])[None, None]
    return make_rollout(x, 0.0, 0.0, speeds[None, None], log_speed=None if log_speeds is None else log_speeds[None],
                        log_valid=None if log_valid is None else log_valid[None], dt=dt)


def test_jsd_identical_is_zero_and_disjoint_is_one():
    speeds = 10.0 + 3.0 * np.sin(np.arange(40) / 4.0)
    m = metrics(cruise(speeds))
    assert m["blm_jsd_speed"].value == pytest.approx(0.0, abs=1e-12)
    m = metrics(cruise(np.linspace(0.0, 1.0, 40), log_speeds=np.linspace(30.0, 31.0, 40)))
    assert m["blm_jsd_speed"].value == pytest.approx(1.0, abs=1e-3)


def test_jsd_signed_sim_accel_vs_log_magnitude():
    # Braking at 2 m/s^2: the simulation's acceleration is -2, the log's |a| = +2 (quirk).
    speeds = 20.0 - 2.0 * 0.1 * np.arange(30)
    m = metrics(cruise(speeds))
    assert m["blm_jsd_speed"].value == pytest.approx(0.0, abs=1e-12)
    assert m["blm_jsd_accel"].value == 1.0  # both constant, different means
    m = metrics(cruise(speeds), BLMSuiteConfig(jsd_log_kinematics_like_sim=True))
    assert m["blm_jsd_accel"].value == 0.0
    assert m["blm_jsd_jerk"].value == pytest.approx(0.0, abs=1e-3)  # float32 noise of the log, differenced twice


def test_jsd_time_bases_misaligned_by_default():
    # Speed t m/s at step t in both; the log only from step 8: by default the log's first value (8)
    # is compared with the simulation's first (0), i.e. shifted by 8 steps.
    t = 20
    speeds = np.arange(t, dtype=float)
    log_valid = np.arange(t) >= 8
    r = cruise(speeds, log_valid=log_valid)
    assert metrics(r)["blm_jsd_speed"].value > 0.1
    assert metrics(r, BLMSuiteConfig(jsd_align_time_bases=True))["blm_jsd_speed"].value == pytest.approx(0, abs=1e-12)


def test_jsd_mean_over_agents_then_rows():
    # Two cars: one identical to its log (JSD 0), one disjoint (JSD 1): the row's value is 0.5.
    t = 30
    same = 10.0 + np.sin(np.arange(t) / 3.0)
    x = np.stack([np.cumsum(same) * 0.1, 100 + np.arange(t) * 0.05])[None]
    speeds = np.stack([same, np.linspace(0.0, 1.0, t)])[None]
    log_speeds = np.stack([same, np.linspace(30.0, 31.0, t)])
    r = make_rollout(x, 0.0, 0.0, speeds, log_speed=log_speeds)
    assert metrics(r)["blm_jsd_speed"].value == pytest.approx(0.5, abs=1e-3)


# ---------------------------------------------------------------------------------------------- FDD


def final_spread(ends):
    """K samples of one car whose final x are ``ends``."""
    ends = np.asarray(ends, float)
    x = np.stack([np.zeros_like(ends), ends], axis=-1)[:, None, :]
    return make_rollout(x)


def test_fdd_of_samples():
    assert metrics(final_spread([5.0, 5.0, 5.0]))["blm_fdd_m"].value == 0.0
    assert metrics(final_spread([0.0, 4.0]))["blm_fdd_m"].value == pytest.approx(4.0)
    assert metrics(final_spread([0.0, 4.0, 8.0]))["blm_fdd_m"].value == pytest.approx(16.0 / 3.0)
    # One sample: 0 as in the script, or undefined.
    assert metrics(final_spread([3.0]))["blm_fdd_m"].value == 0.0
    m = metrics(final_spread([3.0]), BLMSuiteConfig(fdd_undefined_single_sample=True))["blm_fdd_m"]
    assert m.value is None and m.reason


def test_fdd_of_plan_endpoints():
    # 1 agent, 2 steps, 2 plans: endpoints 4 m apart at step 0, identical at step 1.
    ends = np.array([[[[0.0, 0.0], [4.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    assert fdd_of_plan_endpoints(ends) == pytest.approx(2.0)


def test_every_metric_labelled_and_log_runs():
    r = following(5.0, t=8)
    m = metrics(r)
    assert set(m) == {"blm_collision_rate", "blm_offroad_rate", "blm_min_ttc_s", "blm_rss_lon_violations",
                      "blm_rss_lat_violations", "blm_jsd_speed", "blm_jsd_accel", "blm_jsd_jerk", "blm_fdd_m"}
    assert all(v.definition.startswith("BLM") for v in m.values())


def scalar_reference(r):
    """Colliding pairs, RSS lon/lat counts and min TTC of a 1-sample rollout by a plain per-pair loop
    over the definitions (shapely for the box overlap), default options."""
    p = CFG.rss
    px, py, ph = (a[0].astype(float) for a in (r.x, r.y, r.heading))
    length, width = r.log.length.astype(float), r.log.width.astype(float)
    n, t = px.shape

    def box(i, s):
        b = shapely.box(-length[i] / 2, -width[i] / 2, length[i] / 2, width[i] / 2)
        return shapely.affinity.translate(shapely.affinity.rotate(b, ph[i, s], origin=(0, 0), use_radians=True),
                                          px[i, s], py[i, s])

    def stop(v):
        return abs(v) * p.response_time + 0.5 * p.a_lat_max_accel * p.response_time**2 + (
            abs(v) + p.response_time * p.a_lat_max_accel) ** 2 / (2 * p.a_lat_min_brake)

    pairs, lon_count, lat_count, ttc = 0, 0, 0, np.inf
    for s in range(t):
        vel = [np.zeros(2) if s == 0 else np.array([px[i, s] - px[i, s - 1], py[i, s] - py[i, s - 1]]) / r.dt
               for i in range(n)]
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                rel = np.array([px[j, s] - px[i, s], py[j, s] - py[i, s]])
                c, sn = np.cos(ph[i, s]), np.sin(ph[i, s])
                lon, lat = rel @ [c, sn], rel @ [-sn, c]
                hl, hw = (length[i] + length[j]) / 2, (width[i] + width[j]) / 2
                if lon > 0 and abs(lat) < hw:
                    v_r, v_f = np.hypot(*vel[i]), vel[j] @ [c, sn]
                    d = max(0.0, v_r * p.response_time + 0.5 * p.a_max_accel * p.response_time**2
                            + (v_r + p.response_time * p.a_max_accel) ** 2 / (2 * p.a_min_brake)
                            - v_f**2 / (2 * p.a_max_brake))
                    lon_count += lon - hl < d
                if abs(lon) < hl and abs(lat) < hw + p.lateral_check_range:
                    lat_count += abs(lat) - hw < p.lateral_margin + stop(0.0) + stop(vel[j] @ [-sn, c])
                if i < j:
                    pairs += box(i, s).intersection(box(j, s)).area > 0
                    dp, dv = -rel, vel[i] - vel[j]
                    if dv @ dv >= 1e-6 and -(dp @ dv) / (dv @ dv) > 0:
                        ttc = min(ttc, -(dp @ dv) / (dv @ dv))
    return pairs, lon_count, lat_count, (0.0 if pairs else ttc)


def test_vectorised_pairs_match_a_scalar_reading_of_the_definitions(monkeypatch):
    """Collision pairs, min TTC and RSS counts of random 6-car scenes, vectorised in many small
    chunks, against a plain per-pair loop."""
    import blm_gym.metrics.blm_suite as suite

    monkeypatch.setattr(suite, "_CHUNK", 300)  # a few frames per chunk
    rng = np.random.default_rng(7)
    n, t, dt = 6, 12, 0.1
    heading = rng.uniform(-np.pi, np.pi, n)[:, None] + rng.normal(0, 0.02, (n, t)).cumsum(axis=1)
    speed = rng.uniform(0, 12, n)[:, None] + rng.normal(0, 0.3, (n, t)).cumsum(axis=1)
    step = np.concatenate([np.zeros((n, 1, 2)), np.stack([speed * np.cos(heading), speed * np.sin(heading)],
                                                         -1)[:, 1:]], 1).cumsum(axis=1) * dt
    start = np.stack([rng.uniform(0, 22, n), rng.uniform(0, 8, n)], -1)[:, None]
    checked = []
    for apart in (0.0, 30.0):  # dense (collisions), then cars 30 m apart across (none: each moves < 15 m)
        xy = start + step + np.array([0.0, apart])[None, None] * np.arange(n)[:, None, None]
        r = make_rollout(xy[None, ..., 0], xy[None, ..., 1], heading[None], speed[None])
        pairs, lon_count, lat_count, ttc = scalar_reference(r)
        m = metrics(r)
        assert m["blm_collision_rate"].value == pytest.approx(pairs / (t * n))
        assert m["blm_rss_lon_violations"].value == lon_count
        assert m["blm_rss_lat_violations"].value == lat_count
        assert m["blm_min_ttc_s"].value == pytest.approx(ttc, rel=1e-9)
        checked.append((pairs, lon_count, lat_count, ttc))
    # The scenes exercise every branch: collisions (TTC 0) and RSS violations in the first, a finite
    # TTC in the second.
    assert checked[0][0] > 0 and checked[0][3] == 0.0 and checked[0][1] > 0 and checked[0][2] > 0
    assert checked[1][0] == 0 and 0 < checked[1][3] < np.inf
