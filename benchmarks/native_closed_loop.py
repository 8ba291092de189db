"""Closed loop on every shared scene of the native sources (WOMD protos, AV2, INTERACTION, CommonRoad).

For each source and policy, every vehicle is driven closed loop (``blm_gym.rollout.run_rollouts``,
membership ``log``: agents enter and leave as logged) from step ``--start-step`` (default 10: 1 s
of history, WOMD's current step, so 9.1 s scenes keep 8 s) for ``--horizon`` seconds (default 10,
cut where the log ends). The metric report (``blm_gym.metrics.compute_report`` +
``write_report``) of each (source, policy) goes to ``OUT/<source>/<policy>/``; a JSON summary
(also ``OUT/summary.json``) is printed: scenes, wall-clock seconds, mean simulated seconds per
scene, and ``collision_rate_any`` / ``offroad_rate_any`` of the simulation and of the log.

Scenes: every scene of ``womd-protos/``, ``av2-sample/`` (4 sensor logs + 1 motion-forecasting
scenario), ``commonroad-ngsim/``; INTERACTION (1,251 windows) by default 2 windows per recording
(those at 1/3 and 2/3 of its window list: 36 windows), ``--all-windows`` for every one.
``--split train|heldout`` keeps one side of the named split (``blm_gym.data.splits``);
``--max-scenes N`` the first N of each source (e.g. for the slow ``blm`` policy).

Usage::

    python benchmarks/native_closed_loop.py --policies log,idm --out runs/native_closed_loop
    python benchmarks/native_closed_loop.py --policies blm --sources commonroad,interaction --max-scenes 4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

from blm_gym.data.registry import load_scene, open_source
from blm_gym.metrics.report import compute_report, write_report
from blm_gym.policies import make_policy
from blm_gym.rollout.runner import run_rollouts
from shared_data import SHARED_DATA

# name -> (source kind, folder under the shared data)
SOURCES = {"womd": ("womd", "womd-protos"), "av2": ("av2", "av2-sample"), "interaction": ("interaction", "interaction"),
           "commonroad": ("commonroad", "commonroad-ngsim")}
SUMMARY_METRICS = ("collision_rate_any", "offroad_rate_any")


def interaction_subset(scene_ids, per_recording: int = 2) -> list[str]:
    """``per_recording`` windows of each recording, evenly inside its window list (at k / (n + 1))."""
    by_recording = defaultdict(list)
    for sid in scene_ids:
        by_recording[sid.rsplit("/", 1)[0]].append(sid)
    out = []
    for windows in by_recording.values():
        picks = sorted({len(windows) * (k + 1) // (per_recording + 1) for k in range(per_recording)})
        out += [windows[i] for i in picks]
    return out


def scene_ids_for(name: str, source, args) -> list[str]:
    ids = list(source.scene_ids)
    if name == "interaction" and not args.all_windows:
        ids = interaction_subset(ids, args.windows_per_recording)
    if args.scenes:
        wanted = set(args.scenes)
        ids = [s for s in ids if s in wanted]
    return ids[: args.max_scenes] if args.max_scenes else ids


def value(block: dict, name: str):
    v = block.get(name, {}).get("value")
    return None if v is None else round(float(v), 4)


def run_one(name: str, policy: str, source, ids: list[str], scenes: dict, args) -> dict:
    t0 = time.perf_counter()
    samples = 1 if policy in ("log", "idm", "constant_velocity") else args.samples  # deterministic ones
    rollouts = run_rollouts(source, lambda: make_policy(policy, checkpoint=args.checkpoint), scene_ids=ids,
                            samples=samples, start_step=args.start_step, horizon_s=args.horizon, seed=args.seed,
                            progress=args.progress)
    seconds = time.perf_counter() - t0
    report = compute_report(rollouts, scenes)
    write_report(report, Path(args.out) / name / policy)
    sim, log = report["overall"]["sim"], report["overall"]["log"]
    simulated = [(r.x.shape[-1] - 1) * r.dt for r in rollouts]  # steps 1 .. T - 1 are simulated
    return {"scenes": len(ids), "samples": samples, "seconds": round(seconds, 1),
            "seconds_per_scene": round(seconds / max(len(ids), 1), 2),
            "simulated_s_mean": round(sum(simulated) / max(len(simulated), 1), 2),
            **{f"{m}_{side}": value(block, m) for m in SUMMARY_METRICS for side, block in (("sim", sim), ("log", log))}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {list(SOURCES)}")
    p.add_argument("--policies", default="log,idm,blm", help="comma-separated policy names (blm_gym.policies)")
    p.add_argument("--data-root", default=str(SHARED_DATA), help="folder holding the shared datasets")
    p.add_argument("--out", default="runs/native_closed_loop", help="reports go to OUT/<source>/<policy>/")
    p.add_argument("--split", choices=("train", "heldout"), default=None, help="one side of the named split")
    p.add_argument("--all-windows", action="store_true", help="INTERACTION: every window, not a subset")
    p.add_argument("--windows-per-recording", type=int, default=2)
    p.add_argument("--max-scenes", type=int, default=0, help="at most this many scenes per source (0: all)")
    p.add_argument("--scenes", default="", help="comma-separated scene ids to keep (per source)")
    p.add_argument("--start-step", type=int, default=10)
    p.add_argument("--horizon", type=float, default=10.0, help="seconds (cut where the log ends)")
    p.add_argument("--samples", type=int, default=1, help="samples per scene of stochastic policies (blm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="BLM weights (default: the shipped model)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    args.scenes = [s for s in args.scenes.split(",") if s]
    policies = [s for s in args.policies.split(",") if s]
    unknown = [s for s in args.sources.split(",") if s not in SOURCES]
    if unknown:
        p.error(f"unknown sources {unknown}; choose from {list(SOURCES)}")
    summary, failed = {}, False
    for name in args.sources.split(","):
        kind, folder = SOURCES[name]
        t0 = time.perf_counter()
        source = open_source(kind, Path(args.data_root) / folder, split=args.split)
        ids = scene_ids_for(name, source, args)
        scenes = {sid: load_scene(source, sid) for sid in ids}
        summary[name] = {"open_load_s": round(time.perf_counter() - t0, 1),
                         "agents_mean": round(sum(s.num_agents for s in scenes.values()) / max(len(ids), 1), 1)}
        for policy in policies:
            try:
                summary[name][policy] = run_one(name, policy, source, ids, scenes, args)
            except Exception as e:  # one failure must not hide the other figures
                traceback.print_exc()
                summary[name][policy] = {"error": f"{type(e).__name__}: {e}"}
                failed = True
            print(json.dumps({name: {policy: summary[name][policy]}}), file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
