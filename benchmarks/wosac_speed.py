"""Speed of the WOSAC evaluator: features + likelihoods of one scenario, 32 rollouts x 80 steps.

Scenes: ``womd-gpudrive`` files with 64-128 agents valid at the current step (the first
``--scenes`` in sorted order). Rollouts: the log plus seeded Gaussian noise (0.2 m, 0.03 rad), so
no two rollouts are equal. Prints JSON with the median seconds per scenario; with
``--official-python`` (the side venv of ``tools/wosac_official/setup_venv.sh``) the official
TensorFlow evaluator is timed in the same run and the ratio reported::

    python benchmarks/wosac_speed.py --official-python /root/wosac-venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
from shared_data import SHARED_DATA

from blm_gym.data.registry import open_source
from blm_gym.metrics.wosac import WOSAC_2025, WosacScenario, log_as_rollouts, score_scenario

ROOT = Path(__file__).resolve().parents[1]


def pick_scenes(count: int, lo: int = 64, hi: int = 128) -> list[WosacScenario]:
    source = open_source("scenarionet", SHARED_DATA / "womd-gpudrive")
    out = []
    for i in range(len(source.scene_ids)):
        try:
            scenario = WosacScenario.from_scene(source.load(i))
        except ValueError:  # not scorable under WOSAC (e.g. the SDC is not valid at the current step)
            continue
        if lo <= scenario.num_sim_agents <= hi:
            out.append(scenario)
        if len(out) == count:
            break
    return out


def noisy_rollouts(scenario: WosacScenario, seed: int = 0):
    x, y, z, h = log_as_rollouts(scenario)
    rng = np.random.default_rng(seed)
    return (x + rng.normal(0, 0.2, x.shape).astype(np.float32), y + rng.normal(0, 0.2, y.shape).astype(np.float32),
            z, h + rng.normal(0, 0.03, h.shape).astype(np.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=5)
    p.add_argument("--official-python", default=None, help="python of the side venv with waymo-open-dataset 1.6.7")
    p.add_argument("--official-repeats", type=int, default=3, help="official runs (about a minute each)")
    args = p.parse_args()
    scenes = pick_scenes(args.scenes)
    seconds = []
    for scenario in scenes:
        rollouts = noisy_rollouts(scenario)
        t0 = time.perf_counter()
        score_scenario(scenario, *rollouts, WOSAC_2025)
        seconds.append(time.perf_counter() - t0)
    out = {"scenarios": len(scenes), "agents": [s.num_sim_agents for s in scenes],
           "ours_seconds": [round(s, 3) for s in seconds],
           "ours_median_seconds_per_scenario": round(statistics.median(seconds), 3), "goal_seconds": 0.5}
    if args.official_python:
        run = subprocess.run([args.official_python, str(ROOT / "tools" / "wosac_official" / "time_official.py"),
                              "--repeats", str(args.official_repeats)], capture_output=True, text=True, check=True)
        official = json.loads(run.stdout.strip().splitlines()[-1])
        out["official_median_seconds_per_scenario"] = official["median_seconds_per_scenario"]
        out["official_scene"] = official.get("scene")
        out["speedup"] = round(official["median_seconds_per_scenario"] / statistics.median(seconds), 1)
        out["goal_speedup"] = 50
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
