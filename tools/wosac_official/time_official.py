"""Time the official WOSAC evaluator per scenario (side venv); prints JSON.

    /root/wosac-venv/bin/python tools/wosac_official/time_official.py [--scene REL] [--repeats 3]

What is timed: one call of the unmodified ``metrics.compute_scenario_metrics_for_bundle``
(waymo-open-dataset 1.6.7: the log's and the 32 rollouts' features, then the likelihoods and the
meta-metric) under the 2025 sim-agents config, wall time, on one scene with 64-128 simulated
agents (default: the first ``womd-gpudrive`` file in sorted order with 64..128 agents valid at
step 10). Building the protos is timed apart (``build_seconds``) and left out. The 32 rollouts
are the log plus seeded Gaussian noise (0.2 m on x, y; 0.03 rad on heading; every rollout
distinct), so nothing is shared between rollouts. ``fast_official`` is NOT installed: this is
the official speed. TensorFlow keeps its default thread pools unless ``--threads`` is given.

Output: ``{"median_seconds_per_scenario": ..., "runs_seconds": [...], "scene": ..., ...}`` on
the last line of stdout, for a benchmark to divide by ours.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import womd_scenario as ws  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def pick_scene(root: Path, lo: int = 64, hi: int = 128) -> str:
    for p in sorted((root / "womd-gpudrive").glob("sd_*.pkl")):
        sd = ws.load_scenarionet(p)
        n = sum(bool(np.asarray(t["state"]["valid"])[ws.CURRENT_TIME_INDEX]) for t in sd["tracks"].values())
        if lo <= n <= hi and sd["metadata"].get("tracks_to_predict"):
            return f"womd-gpudrive/{p.name}"
    raise FileNotFoundError(f"no womd-gpudrive scene with {lo}..{hi} simulated agents under {root}")


def noisy_log_rollouts(scenario, ids, seed: int = 0, rollouts: int = 32, steps: int = 80):
    """(x, y, z, heading) float32 (R, A, 80): the log (last valid pose held) plus Gaussian noise."""
    by_id = {t.id: t for t in scenario.tracks}
    c = ws.CURRENT_TIME_INDEX
    base = np.zeros((4, len(ids), steps))
    for a, oid in enumerate(ids):
        last = None
        for k, st in enumerate(by_id[oid].states[c + 1: c + 1 + steps]):
            if st.valid:
                last = (st.center_x, st.center_y, st.center_z, st.heading)
            if last is None:
                s0 = by_id[oid].states[c]
                last = (s0.center_x, s0.center_y, s0.center_z, s0.heading)
            base[:, a, k] = last
    rng = np.random.default_rng(seed)
    sig = np.array([0.2, 0.2, 0.0, 0.03])[:, None, None, None]
    out = base[:, None] + sig * rng.standard_normal((4, rollouts, len(ids), steps))
    return tuple(out.astype(np.float32))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("BLM_GYM_DATA") or str(REPO.parent / "shared" / "data"))
    ap.add_argument("--scene", default=None, help="pickle path relative to the data root")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads (default: TF's)")
    args = ap.parse_args(argv)
    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from importlib import metadata as md
    from waymo_open_dataset.utils.sim_agents import submission_specs
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import metrics

    root = Path(args.data_root)
    rel = args.scene or pick_scene(root)
    t0 = time.perf_counter()
    scenario = ws.build_scenario(ws.load_scenarionet(root / rel))
    ids = ws.sim_agent_ids(scenario)
    rollouts = ws.build_rollouts(scenario.scenario_id, ids, *noisy_log_rollouts(scenario, ids))
    submission_specs.validate_scenario_rollouts(rollouts, scenario)
    build_s = time.perf_counter() - t0
    config = ws.load_config("2025")
    runs, mm = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        m = metrics.compute_scenario_metrics_for_bundle(config, scenario, rollouts)
        runs.append(round(time.perf_counter() - t, 3))
        mm = float(m.metametric)
        print(f"run {len(runs)}: {runs[-1]:.1f} s (meta-metric {mm:.4f})", file=sys.stderr, flush=True)
    evaluated = submission_specs.get_evaluation_sim_agent_ids(scenario, submission_specs.ChallengeType.SIM_AGENTS)
    n_edges = sum(f.HasField("road_edge") for f in scenario.map_features)
    print(json.dumps({
        "median_seconds_per_scenario": float(np.median(runs)), "runs_seconds": runs,
        "what": "official compute_scenario_metrics_for_bundle (features + likelihoods), 2025 config, 32 rollouts",
        "scene": rel, "num_sim_agents": len(ids), "num_evaluated": len(evaluated), "num_road_edges": n_edges,
        "build_seconds": round(build_s, 3), "metametric": mm, "tf_threads": args.threads or "default",
        "package": f"waymo-open-dataset-tf-2-12-0=={md.version('waymo-open-dataset-tf-2-12-0')}",
        "tensorflow": tf.__version__, "cpus": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
