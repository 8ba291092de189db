"""Parity of blm_gym's WOSAC evaluator with the official Waymo Sim Agents metrics.

Golden values: ``tests/fixtures/wosac_golden.json``, made by the official evaluator
(waymo-open-dataset 1.6.7; ``tools/wosac_official/make_golden.sh``) on the deterministic rollouts
of ``tests/wosac_cases.py`` (log as its own rollouts, constant velocity, noisy log, IDM) over the
9 womd-sample scenes and 20 womd-gpudrive scenes. This test regenerates the same rollouts, scores
them with :mod:`blm_gym.metrics.wosac` and asks every per-feature likelihood and the meta-metric,
under the 2024 and 2025 configs, to match within ``TOL``.

By default a subset runs (one scene of each kind, all four rollout sets); ``-m slow`` runs all.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

import wosac_cases as wc

pytestmark = pytest.mark.realdata

TOL = 1e-3
GOLDEN_PATH = Path(__file__).parent / "fixtures" / "wosac_golden.json"
LIKELIHOODS = (
    "linear_speed_likelihood", "linear_acceleration_likelihood", "angular_speed_likelihood",
    "angular_acceleration_likelihood", "distance_to_nearest_object_likelihood", "collision_indication_likelihood",
    "time_to_collision_likelihood", "distance_to_road_edge_likelihood", "offroad_indication_likelihood",
    "traffic_light_violation_likelihood",
)
# Reported beside the likelihoods by the official code; checked when our scores report them too.
SIDE_FIGURES = {"average_displacement_error": 1e-3, "min_average_displacement_error": 1e-3,
                "simulated_collision_rate": 1e-6, "simulated_offroad_rate": 1e-6,
                "simulated_traffic_light_violation_rate": 1e-6}
# Default subset: a womd-sample scene with traffic lights, a 20 s womd-sample scene (only the SDC
# evaluated), a womd-gpudrive scene (no traffic lights).
FAST_SCENES = ("8a346109094cd5aa", "49c341dce1f65cdb", "10bc6ab41ff63646")


def _golden() -> dict:
    return json.loads(GOLDEN_PATH.read_text())


def _params():
    golden = _golden()
    out = []
    for case in golden["cases"]:
        for name in case["results"]:
            marks = () if case["scene_id"] in FAST_SCENES else (pytest.mark.slow,)
            out.append(pytest.param(case["scene_id"], name, id=f"{case['scene_id']}-{name}", marks=marks))
    return out


@functools.lru_cache(maxsize=None)
def _case(scene_id: str) -> dict:
    return next(c for c in _golden()["cases"] if c["scene_id"] == scene_id)


@functools.lru_cache(maxsize=4)
def _scene(data_root: Path, rel: str):
    """(91-step scenario dict, plain arrays, our WosacScenario) of one golden scene."""
    wosac = pytest.importorskip("blm_gym.metrics.wosac", reason="blm_gym.metrics.wosac is not written yet")
    scenario = wc.cut_scenario(wc.load_scenario(data_root / rel))
    arrays = wc.scene_arrays(scenario)
    if hasattr(wosac.WosacScenario, "from_scenarionet"):
        ours = wosac.WosacScenario.from_scenarionet(scenario)
    else:
        from blm_gym.data.scenarionet import scene_from_scenario
        ours = wosac.WosacScenario.from_scene(scene_from_scenario(scenario))
    return scenario, arrays, ours


def test_golden_file_is_complete():
    golden = _golden()
    assert golden["official"]["version"] == "1.6.7"
    sample = [c for c in golden["cases"] if c["file"].startswith("womd-sample/")]
    assert len(sample) + len(golden["dropped"]) >= 9 and len(golden["cases"]) >= 20
    for case in golden["cases"]:
        assert set(case["results"]) == set(wc.ROLLOUT_SETS)
        for per_config in case["results"].values():
            for cfg in ("2024", "2025"):
                vals = per_config[cfg]
                assert set(LIKELIHOODS) <= set(vals) and 0.0 <= vals["metametric"] <= 1.0
                weights = golden["weights"][cfg]
                mm = sum(weights[k[: -len("_likelihood")]] * vals[k] for k in LIKELIHOODS)
                assert mm == pytest.approx(vals["metametric"], abs=1e-5)


@pytest.mark.parametrize("scene_id,rollout_set", _params())
def test_wosac_matches_official(data_root, scene_id, rollout_set):
    wosac = pytest.importorskip("blm_gym.metrics.wosac", reason="blm_gym.metrics.wosac is not written yet")
    case = _case(scene_id)
    _, arrays, ours = _scene(data_root, case["file"])
    mask = wc.sim_agent_mask(arrays["valid"])
    np.testing.assert_array_equal(np.asarray(ours.sim_agent_mask, bool), mask)
    assert int(mask.sum()) == case["num_sim_agents"]

    x, y, z, heading = wc.make_rollouts(arrays, rollout_set)
    fingerprint = wc.rollout_fingerprint(x, y, z, heading)
    expected_fp = case["fingerprints"][rollout_set]
    if not np.allclose(fingerprint, expected_fp, rtol=1e-6, atol=1e-4):
        msg = (f"{scene_id} {rollout_set}: the regenerated rollouts differ from the ones the golden values "
               f"were computed on (fingerprint {fingerprint} vs {expected_fp}); regenerate the golden file with "
               "tools/wosac_official/make_golden.sh")
        if rollout_set == "idm":  # the project's IDM / simulator changed: not the evaluator's fault
            pytest.skip(msg)
        pytest.fail(msg)

    for cfg_name, config in (("2024", wosac.WOSAC_2024), ("2025", wosac.WOSAC_2025)):
        golden = case["results"][rollout_set][cfg_name]
        scores = wosac.score_scenario(ours, x, y, z, heading, config)
        got = {k: float(v) for k, v in scores.likelihoods.items()}
        missing = [k for k in LIKELIHOODS if k not in got]
        assert not missing, f"likelihoods missing from our scores: {missing}"
        diffs = {k: (got[k], golden[k]) for k in LIKELIHOODS if abs(got[k] - golden[k]) > TOL}
        if abs(float(scores.metametric) - golden["metametric"]) > TOL:
            diffs["metametric"] = (float(scores.metametric), golden["metametric"])
        extra = scores.to_dict()
        for k, tol in SIDE_FIGURES.items():
            if k in extra and abs(float(extra[k]) - golden[k]) > max(tol, TOL * abs(golden[k])):
                diffs[k] = (float(extra[k]), golden[k])
        assert not diffs, f"{scene_id} {rollout_set} config {cfg_name}: (ours, official) {diffs}"
