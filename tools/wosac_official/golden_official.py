"""Phase 2 of the golden run (side venv): score the phase-1 rollouts with the official evaluator.

    /root/wosac-venv/bin/python tools/wosac_official/golden_official.py \
        --inputs /tmp/wosac_inputs --out tests/fixtures/wosac_golden.json

For every case in ``<inputs>/manifest.json`` (written by ``make_inputs.py``) it builds the
official ``Scenario`` from the ScenarioNet pickle (``womd_scenario.build_scenario``) and the
``ScenarioRollouts`` from each rollout set's ``.npz``, checks them with
``submission_specs.validate_scenario_rollouts``, and computes the official per-scenario metrics
(waymo-open-dataset 1.6.7, ``metrics.compute_scenario_metrics_for_features_bundle``) for the
2024 and the 2025 sim-agents configs.

Reuse, without changing any number: the two configs differ only in meta-metric weights
(distance to road edge 0.1 -> 0.05, traffic-light violation 0 -> 0.05; same histograms), and
version 1.6.7 computes one set of features for both (``metric_features.compute_metric_features``
takes no config), so features are computed once per rollout set and scored under each config.
The log's features are computed once per scene. ``compute_metric_features`` is called once per
*distinct* joint scene of a rollout set (the log, constant-velocity and IDM sets repeat one
scene 32 times) and the per-rollout features are concatenated exactly as
``metric_features.compute_scenario_rollouts_features`` does. ``--check-full SCENE:SET`` reruns the
unmodified ``metrics.compute_scenario_metrics_for_bundle`` on that pair and asserts equality.

The map features go through ``fast_official`` (the official nearest-segment functions called on
chunks of points with the polylines that can matter: same numbers, ~10x faster, a few hundred MB
instead of ~14 GB); ``--verify`` scenes have their log features and first noisy rollout's
features recomputed without it and compared bit for bit.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fast_official  # noqa: E402
import womd_scenario as ws  # noqa: E402

CONFIGS = ("2024", "2025")
LIKELIHOODS = (
    "linear_speed_likelihood", "linear_acceleration_likelihood", "angular_speed_likelihood",
    "angular_acceleration_likelihood", "distance_to_nearest_object_likelihood", "collision_indication_likelihood",
    "time_to_collision_likelihood", "distance_to_road_edge_likelihood", "offroad_indication_likelihood",
    "traffic_light_violation_likelihood",
)
SIDE_FIGURES = ("average_displacement_error", "min_average_displacement_error", "simulated_collision_rate",
                "simulated_offroad_rate", "simulated_traffic_light_violation_rate")


def _tf_setup():
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("WOSAC_TF_THREADS", "1")))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def sim_features_cached(scenario, rollouts, log_features, challenge_type):
    """``compute_scenario_rollouts_features``'s sim half, one feature computation per distinct
    joint scene (identical scenes give identical features)."""
    import tensorflow as tf
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import metric_features as mf

    fields = [f.name for f in dataclasses.fields(mf.MetricFeatures) if f.name != "object_id"]
    cache = {}
    gathered = collections.defaultdict(list)
    for joint_scene in rollouts.joint_scenes:
        key = hashlib.sha256(joint_scene.SerializeToString(deterministic=True)).hexdigest()
        if key not in cache:
            cache[key] = mf.compute_metric_features(scenario, joint_scene, challenge_type)
        feats = cache[key]
        if tf.reduce_any(log_features.object_id != feats.object_id):
            raise ValueError("Misaligned object IDs for evaluation.")
        for f in fields:
            gathered[f].append(getattr(feats, f))
    merged = {f: tf.concat(gathered[f], axis=0) for f in fields}
    return mf.MetricFeatures(**merged, object_id=log_features.object_id), len(cache)


def metrics_dict(m) -> dict:
    out = {"metametric": float(m.metametric)}
    out.update({k: float(getattr(m, k)) for k in LIKELIHOODS})
    out.update({k: float(getattr(m, k)) for k in SIDE_FIGURES})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", default="/tmp/wosac_inputs")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/fixtures/wosac_golden.json"))
    ap.add_argument("--check-full", default="49c341dce1f65cdb:noisy",
                    help="SCENE:SET scored again by the unmodified official bundle function ('' for none)")
    ap.add_argument("--verify", default="2a1e44d405a6833f,49c341dce1f65cdb,10bc6ab41ff63646",
                    help="comma-separated scene ids whose features are recomputed without the speed-up")
    ap.add_argument("--limit", type=int, default=None, help="only the first N cases (for trying it out)")
    args = ap.parse_args(argv)
    tf = _tf_setup()
    import waymo_open_dataset
    from importlib import metadata as md
    from waymo_open_dataset.utils.sim_agents import converters, submission_specs
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import metric_features as mf
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import metrics

    sim_agents = submission_specs.ChallengeType.SIM_AGENTS
    inputs = Path(args.inputs)
    manifest = json.loads((inputs / "manifest.json").read_text())
    data_root = Path(manifest["data_root"])
    configs = {name: ws.load_config(name) for name in CONFIGS}
    cases_out, dropped = [], []
    check_scene, _, check_set = args.check_full.partition(":")
    verify_ids = {v for v in args.verify.split(",") if v}
    verified, checked = [], []
    fast_official.install()
    t_start = time.perf_counter()
    cases = manifest["cases"][: args.limit] if args.limit else manifest["cases"]
    for ci, case in enumerate(cases):
        t_case = time.perf_counter()
        sd = ws.load_scenarionet(data_root / case["file"])
        scenario = ws.build_scenario(sd)
        ids = ws.sim_agent_ids(scenario)
        evaluated = [int(i) for i in submission_specs.get_evaluation_sim_agent_ids(scenario, sim_agents)]
        if not set(evaluated) <= set(ids):
            dropped.append({"file": case["file"], "why": "an evaluated agent is not valid at step 10"})
            print(f"drop {case['file']}: evaluated agents not all simulated", flush=True)
            continue
        log_joint = converters.scenario_to_joint_scene(scenario, sim_agents)
        log_features = mf.compute_metric_features(scenario, log_joint, sim_agents, use_log_validity=True)
        if case["scene_id"] in verify_ids:  # in a process of its own: the unpatched code peaks at ~15 GB
            t_v = time.perf_counter()
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "fast_official.py"),
                                   "--data-root", str(data_root), "--scene", case["file"],
                                   "--npz", str(inputs / case["sets"]["noisy"]["npz"])],
                                  capture_output=True, text=True, check=True)
            bad = json.loads(proc.stdout.strip().splitlines()[-1])["differ"]
            if bad:
                raise AssertionError(f"{case['file']}: the speed-up changed the features {bad}")
            verified.append(case["scene_id"])
            print(f"  verify: features bit-identical without the speed-up ({time.perf_counter() - t_v:.0f}s)",
                  flush=True)
        results, timings = {}, {}
        for name, info in case["sets"].items():
            t_set = time.perf_counter()
            arr = np.load(inputs / info["npz"])
            if [int(i) for i in arr["object_ids"]] != ids:
                raise ValueError(f"{case['file']} {name}: npz agents differ from the proto's sim agents")
            if name == "log":  # the log set is the official log joint scene, 32 times
                by_id = {t.object_id: t for t in log_joint.simulated_trajectories}
                for key, field in (("x", "center_x"), ("y", "center_y"), ("z", "center_z"), ("heading", "heading")):
                    official = np.array([list(getattr(by_id[i], field)) for i in ids], np.float32)
                    if not np.array_equal(official[None].repeat(arr[key].shape[0], 0), arr[key]):
                        raise ValueError(f"{case['file']}: the log set's {key} is not scenario_to_joint_scene's")
            rollouts = ws.build_rollouts(scenario.scenario_id, ids, arr["x"], arr["y"], arr["z"], arr["heading"])
            submission_specs.validate_scenario_rollouts(rollouts, scenario, sim_agents)
            sim_features, distinct = sim_features_cached(scenario, rollouts, log_features, sim_agents)
            results[name] = {}
            for cname, config in configs.items():
                m = metrics.compute_scenario_metrics_for_features_bundle(config, scenario.scenario_id,
                                                                         log_features, sim_features)
                results[name][cname] = metrics_dict(m)
            timings[name] = {"seconds": round(time.perf_counter() - t_set, 2), "distinct_rollouts": distinct}
            if case["scene_id"] == check_scene and name == check_set:
                t_c = time.perf_counter()
                fast_official.uninstall()
                full = metrics_dict(metrics.compute_scenario_metrics_for_bundle(configs["2025"], scenario, rollouts))
                fast_official.install()
                if full != results[name]["2025"]:
                    raise AssertionError(f"our path differs from the official bundle function: "
                                         f"{case['file']} {name}: {full} vs {results[name]['2025']}")
                checked.append(f"{case['scene_id']}:{name}:2025")
                print(f"  check: {name} equals the unmodified compute_scenario_metrics_for_bundle "
                      f"({time.perf_counter() - t_c:.0f}s)", flush=True)
        cases_out.append({
            "file": case["file"], "scene_id": case["scene_id"], "num_tracks": case["num_tracks"],
            "num_sim_agents": len(ids), "evaluated_object_ids": evaluated,
            "fingerprints": {name: info["fingerprint"] for name, info in case["sets"].items()},
            "results": results, "seconds": timings,
        })
        elapsed = time.perf_counter() - t_start
        print(f"[{ci + 1}/{len(cases)}] {elapsed:7.1f}s {case['file']} agents={len(ids)} eval={len(evaluated)} "
              f"{time.perf_counter() - t_case:.1f}s  log/2025 mm={results['log']['2025']['metametric']:.4f} "
              + " ".join(f"{k}={v['2025']['metametric']:.4f}" for k, v in results.items() if k != "log"), flush=True)
    golden = {
        "what": "Official Waymo Open Sim Agents Challenge per-scenario metrics of deterministic rollouts "
                "(tests/wosac_cases.py) on real WOMD scenes; made by tools/wosac_official/make_golden.sh",
        "official": {"package": "waymo-open-dataset-tf-2-12-0", "version": md.version("waymo-open-dataset-tf-2-12-0"),
                     "tensorflow": tf.__version__,
                     "function": "wdl_limited.sim_agents_metrics.metrics.compute_scenario_metrics_for_features_bundle",
                     "configs": {"2024": "challenge_2024_config.textproto",
                                 "2025": "challenge_2025_sim_agents_config.textproto"},
                     "notes": "v1.6.7 code under both configs: TTC scored on vehicles only, traffic-light "
                              "violation computed (weight 0 in 2024); the configs differ only in weights"},
        "weights": {c: {f.name: float(getattr(cfg, f.name).metametric_weight)
                        for f in cfg.DESCRIPTOR.fields} for c, cfg in configs.items()},
        "settings": manifest["settings"],
        "dropped": dropped,
        "verified_bit_identical_features": verified,
        "checked_against_unmodified_bundle": checked,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "cases": cases_out,
    }
    del waymo_open_dataset
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): {len(cases_out)} scenes, dropped {len(dropped)}, "
          f"{golden['wall_seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
