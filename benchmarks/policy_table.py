"""Closed-loop metrics of several policies side by side, as a markdown table (README results).

Each policy drives every vehicle of the chosen scenes for ``--horizon`` seconds from step 30
(3 s of history), K samples per scene; the log column is the same metrics on the logged ground
truth. Usage::

    python benchmarks/policy_table.py --dataset nuscenes-val --policies log,constant_velocity,idm
    python benchmarks/policy_table.py --dataset womd --policies idm,blm --samples 4 --checkpoint PATH
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from blm_gym.data.scenarionet import ScenarioNetSource
from blm_gym.data.source import shared_data_dir
from blm_gym.metrics.report import compute_report
from blm_gym.policies import make_policy
from blm_gym.rollout.runner import load_scene, run_rollouts

DATASETS = {  # name -> (folder under the shared data, scene ids or None for all)
    "nuscenes-val": ("nuscenes-mini", ["scene-0103", "scene-0916"]),
    "nuscenes-train": ("nuscenes-mini", None),
    "womd": ("womd-sample", None),
}
METRICS = ("collision_rate_step", "collision_rate_any", "offroad_rate_step", "offroad_rate_any", "failure_rate",
           "min_ttc_s", "rss_lon_violation_rate", "rss_lat_violation_rate", "jsd_speed", "jsd_accel", "jsd_jerk",
           "fdd_m", "min_ade_m", "min_fde_m")


def evaluate(dataset: str, policies: list[str], samples: int, horizon: float, checkpoints: dict[str, str | None],
             seed: int = 0, freeze_agents: bool = False) -> dict:
    folder, ids = DATASETS[dataset]
    source = ScenarioNetSource(shared_data_dir() / folder, scene_ids=ids)
    ids = list(source.scene_ids)
    drivable = {sid: load_scene(source, sid) for sid in ids}
    out = {}
    for name in policies:
        label, _, ckpt_key = name.partition("@")
        t0 = time.perf_counter()
        k = 1 if label == "log" else samples
        rollouts = run_rollouts(source, lambda: make_policy(label, checkpoint=checkpoints.get(ckpt_key or label)),
                                scene_ids=ids, samples=k, horizon_s=horizon, seed=seed, freeze_agents=freeze_agents)
        report = compute_report(rollouts, drivable)
        out[name] = {"sim": report["overall"]["sim"], "log": report["overall"]["log"],
                     "seconds": time.perf_counter() - t0, "samples": k}
    return out


def markdown(results: dict) -> str:
    names = list(results)
    log = results[names[0]]["log"]
    head = "| metric | log | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names)
    rows = []
    for m in METRICS:
        fmt = lambda b: "n/a" if b.get(m, {}).get("value") is None else f"{b[m]['value']:.4g}"  # noqa: E731
        rows.append(f"| {m} | {fmt(log)} | " + " | ".join(fmt(results[n]["sim"]) for n in names) + " |")
    return "\n".join([head, *rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="nuscenes-val")
    p.add_argument("--policies", default="log,constant_velocity,idm",
                   help="comma-separated; 'blm@NAME' uses --checkpoint NAME=PATH")
    p.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH (NAME 'blm' for plain 'blm')")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--horizon", type=float, default=10.0)
    p.add_argument("--freeze-agents", action="store_true",
                   help="only the agents valid at the start take part (trajdata's freeze_agents, the tbsim/CTG set-up)")
    p.add_argument("--json", default=None, help="also write the full results here")
    args = p.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    results = evaluate(args.dataset, args.policies.split(","), args.samples, args.horizon, checkpoints,
                       freeze_agents=args.freeze_agents)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))
    print("\nseconds per policy: " + ", ".join(f"{n}={r['seconds']:.1f}" for n, r in results.items()))


if __name__ == "__main__":
    main()
