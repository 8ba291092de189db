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

import numpy as np

from blm_gym.data.scenarionet import ScenarioNetSource
from shared_data import SHARED_DATA
from blm_gym.metrics.report import compute_report
from blm_gym.policies import make_policy
from blm_gym.data.registry import load_scene, open_source
from blm_gym.rollout.runner import run_rollouts
from blm_gym.sim.state import ENTRY_CHECK_S

DATASETS = {  # name -> (folder under the shared data, scene ids, None for all, or a split name of blm_gym.data.splits)
    "nuscenes-val": ("nuscenes-mini", ["scene-0103", "scene-0916"]),
    "nuscenes-train": ("nuscenes-mini", None),
    "womd": ("womd-sample", None),
    "womd-heldout": ("womd-sample", "heldout"),  # 3 scenes
    "womd-gpudrive-heldout": ("womd-gpudrive", "heldout"),  # 40 scenes
}
METRICS = ("collision_rate_step", "collision_rate_any", "offroad_rate_step", "offroad_rate_any", "failure_rate",
           "min_ttc_s", "rss_lon_violation_rate", "rss_lat_violation_rate", "jsd_speed", "jsd_accel", "jsd_jerk",
           "fdd_m", "min_ade_m", "min_fde_m")


def entry_counts(rollouts) -> dict[str, int]:
    """Logged entries (a track appearing after the first step, per sample) and how many of them the
    entry check made wait or kept out for the rest of that track (:func:`blm_gym.sim.state.step`)."""
    logged = waited = kept_out = 0
    for r in rollouts:
        appears = r.log.valid[:, 1:] & ~r.log.valid[:, :-1]  # (N, T - 1)
        for i, t in zip(*np.nonzero(appears)):
            t += 1
            end = t + np.argmin(np.append(r.log.valid[i, t:], False))  # this logged stretch: [t, end)
            for k in range(r.num_samples):
                joined = r.valid[k, i, t:end]
                logged += 1
                waited += bool(not joined[0])
                kept_out += bool(not joined.any())
    return {"logged": logged, "waited": waited, "kept_out": kept_out}


def evaluate(dataset: str, policies: list[str], samples: int, horizon: float, checkpoints: dict[str, str | None],
             seed: int = 0, membership: str = "log", entry_check_s: float = ENTRY_CHECK_S) -> dict:
    folder, ids = DATASETS[dataset]
    if isinstance(ids, str):  # one side of the named split
        source = open_source("scenarionet", SHARED_DATA / folder, split=ids)
    else:
        source = ScenarioNetSource(SHARED_DATA / folder, scene_ids=ids)
    ids = list(source.scene_ids)
    drivable = {sid: load_scene(source, sid) for sid in ids}
    out = {}
    for name in policies:
        label, _, ckpt_key = name.partition("@")
        t0 = time.perf_counter()
        k = 1 if label == "log" else samples
        rollouts = run_rollouts(source, lambda: make_policy(label, checkpoint=checkpoints.get(ckpt_key or label)),
                                scene_ids=ids, samples=k, horizon_s=horizon, seed=seed, membership=membership,
                                entry_check_s=entry_check_s)
        report = compute_report(rollouts, drivable)
        out[name] = {"sim": report["overall"]["sim"], "log": report["overall"]["log"],
                     "seconds": time.perf_counter() - t0, "samples": k, "entries": entry_counts(rollouts)}
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


def entry_counts_line(results: dict) -> str:
    """One line: per policy, vehicles the log brought in / made to wait / kept out (over the samples)."""
    return "Entries (logged / waited / kept out): " + ", ".join(
        f"{n} {r['entries']['logged']} / {r['entries']['waited']} / {r['entries']['kept_out']}"
        for n, r in results.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="nuscenes-val")
    p.add_argument("--policies", default="log,constant_velocity,idm",
                   help="comma-separated; 'blm@NAME' uses --checkpoint NAME=PATH")
    p.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH (NAME 'blm' for plain 'blm')")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--horizon", type=float, default=10.0)
    p.add_argument("--membership", choices=("log", "frozen", "persistent"), default="log",
                   help="frozen: only the agents valid at the start take part (trajdata's freeze_agents, the tbsim/CTG "
                        "set-up)")
    p.add_argument("--entry-check-s", type=float, default=ENTRY_CHECK_S,
                   help="horizon of the newcomers' entry check (blm_gym.sim.state.step; 0: spawn regardless)")
    p.add_argument("--json", default=None, help="also write the full results here")
    args = p.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    results = evaluate(args.dataset, args.policies.split(","), args.samples, args.horizon, checkpoints,
                       membership=args.membership, entry_check_s=args.entry_check_s)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))
    print("\n" + entry_counts_line(results))
    print("seconds per policy: " + ", ".join(f"{n}={r['seconds']:.1f}" for n, r in results.items()))


if __name__ == "__main__":
    main()
