"""Write docs/results.md: the closed-loop results tables, each with the command that made it.

Every table is computed here (nothing is typed in): per dataset, the policies side by side with
the log, in our default metric suite (:func:`policy_table.evaluate`), and the WOSAC realism
meta-metric (2025 config) on held-out Waymo scenes under the WOSAC protocol. Run::

    python benchmarks/results_md.py                 # every table (an hour or more on 2 cores)
    python benchmarks/results_md.py --tables nuscenes-val,wosac
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from policy_table import entry_counts_line, evaluate, markdown
from shared_data import SHARED_DATA

from blm_gym.data.registry import load_scene, open_source
from blm_gym.metrics.report import wosac_report
from blm_gym.policies import make_policy
from blm_gym.rollout.runner import RolloutConfig, run_rollouts

ROOT = Path(__file__).resolve().parents[1]
# stage-3 fine-tunes of the shipped model for collision + off-road, same budget: closed loop (shipped) and open loop
CHECKPOINTS = {"safe": "blm_gym/assets/blm_safe.pt", "open": "runs/stage3/open_loop.best.pt"}


@dataclass(frozen=True)
class Table:
    dataset: str  # policy_table.DATASETS key
    title: str
    samples: int
    membership: str = "log"
    policies: tuple[str, ...] = ("constant_velocity", "idm", "blm_unguided", "blm", "blm_unguided@open",
                                 "blm_unguided@safe")

    @property
    def command(self) -> str:
        used = {p.partition("@")[2] for p in self.policies} - {""}
        ckpts = " ".join(f"--checkpoint {k}={CHECKPOINTS[k]}" for k in sorted(used))
        return (f"python benchmarks/policy_table.py --dataset {self.dataset} --policies {','.join(self.policies)} "
                f"{ckpts} --samples {self.samples} --membership {self.membership}")


TABLES = {
    "nuscenes-val": Table("nuscenes-val", "nuScenes-mini val (scene-0103, scene-0916), agents enter as logged", 8),
    "nuscenes-val-frozen": Table("nuscenes-val", "nuScenes-mini val, frozen agents", 8, "frozen"),
    "womd-heldout": Table("womd-heldout", "womd-sample held out (3 Waymo scenes), agents enter as logged", 8),
    "womd-heldout-frozen": Table("womd-heldout", "womd-sample held out, frozen agents", 8, "frozen"),
}


# WOSAC: held-out Waymo scenes (blm_gym.data.splits), a fixed subset sized for 2 CPU cores.
WOSAC_SCENES = {"womd-sample": 3, "womd-gpudrive": 5}  # the first N held-out scenes of each folder
WOSAC_POLICIES = ("constant_velocity", "idm", "blm_unguided", "blm", "blm_unguided@open", "blm_unguided@safe")
DETERMINISTIC = ("log", "constant_velocity", "idm")  # one sample, repeated: their 32 rollouts are equal
WOSAC_ROWS = ("metametric", "kinematic", "interactive", "map_based", "linear_speed_likelihood",
              "linear_acceleration_likelihood", "angular_speed_likelihood", "angular_acceleration_likelihood",
              "distance_to_nearest_object_likelihood", "collision_indication_likelihood",
              "time_to_collision_likelihood", "distance_to_road_edge_likelihood", "offroad_indication_likelihood",
              "traffic_light_violation_likelihood", "simulated_collision_rate", "simulated_offroad_rate",
              "min_average_displacement_error")


def wosac_section() -> str:
    """WOSAC (2025 config) of each policy on the held-out Waymo subset, next to the log."""
    protocol = RolloutConfig(protocol="wosac").resolved()
    reports, scenes_used = {}, []
    for folder, count in WOSAC_SCENES.items():
        source = open_source("scenarionet", SHARED_DATA / folder, split="heldout")
        ids = list(source.scene_ids)[:count]
        scenes_used += ids
        scenes = {sid: load_scene(source, sid) for sid in ids}
        for name in WOSAC_POLICIES:
            label, _, ckpt = name.partition("@")
            samples = 1 if label in DETERMINISTIC else protocol.samples
            rollouts = run_rollouts(
                source, lambda: make_policy(label, checkpoint=str(ROOT / CHECKPOINTS[ckpt]) if ckpt else None),
                scene_ids=ids,
                samples=samples, start_step=protocol.start_step, horizon_s=protocol.horizon_s,
                controlled=protocol.controlled, membership=protocol.membership, progress=False)
            if samples == 1:
                rollouts = [_repeat(r, protocol.samples) for r in rollouts]
            reports.setdefault(name, []).append((wosac_report(rollouts, scenes), len(ids)))
    overall = {name: _pool(parts) for name, parts in reports.items()}
    log = next(iter(overall.values()))["log"]
    head = "| metric | log | " + " | ".join(WOSAC_POLICIES) + " |\n|---|---|" + "---|" * len(WOSAC_POLICIES)
    rows = [f"| {m} | {log[m]:.4f} | " + " | ".join(f"{overall[n]['sim'][m]:.4f}" for n in WOSAC_POLICIES) + " |"
            for m in WOSAC_ROWS]
    return (f"## WOSAC realism (2025 config), held-out Waymo scenes, 32 rollouts\n\n"
            f"Scenes: {', '.join(scenes_used)} (the first held-out scenes of womd-sample and womd-gpudrive, "
            "blm_gym.data.splits). Each policy: `blm-gym rollout --protocol wosac --env BLM-ScenarioNet-v0 "
            "--data-dir ... --policy NAME` then `blm-gym metrics --suite wosac`; log, constant velocity and IDM are "
            "deterministic, so one sample is repeated as their 32 rollouts. `log` = the logged futures scored as "
            "their own 32 rollouts. Mean over scenes.\n\n" + "\n".join([head, *rows]) + "\n")


def _repeat(r, k: int):
    """A one-sample rollout as ``k`` identical samples."""
    import dataclasses

    rep = {f: np.repeat(getattr(r, f), k, axis=0) for f in ("x", "y", "heading", "speed", "valid", "collision",
                                                             "offroad")}
    return dataclasses.replace(r, **rep)


def _pool(parts: list[tuple[dict, int]]) -> dict:
    """Scene-weighted mean of the overall blocks of several WOSAC reports."""
    total = sum(n for _, n in parts)
    return {side: {m: sum(rep["overall"][side][m]["value"] * n for rep, n in parts) / total for m in WOSAC_ROWS}
            for side in ("sim", "log")}


def maps_section() -> str:
    """Per source: the share of moving-vehicle log positions on the drivable area (benchmarks/data_stats.py)."""
    from data_stats import DATASETS, dataset_stats

    rows = []
    for name, (folder, factory, caches, goal) in DATASETS.items():
        if (SHARED_DATA / folder).exists():
            st = dataset_stats(name, factory(SHARED_DATA / folder), caches, goal)
            rows.append(f"| {name} | {st['scenes']} | {100 * st['moving_inside_exact']:.2f} % | "
                        f"{100 * st['moving_inside_on_map']:.2f} % | {100 * goal:.0f} % | "
                        f"{100 * st['moving_outside_by_distance']['>5m']:.2f} % | "
                        f"{100 * st['offroad_vehicle_timesteps']:.1f} % |")
    return ("## Maps: how much of the logged traffic is on the drivable area\n\n`python benchmarks/data_stats.py` "
            "(definitions in its docstring): moving vehicles (> 1 m/s, recorded and over 1 s of positions) inside "
            "the drivable area (exact), the same within the map's convex hull (maps cropped smaller than the "
            "tracks), the goal, moving positions more than 5 m outside (unmapped parking lots, roads beyond the "
            "map's crop), and all logged vehicle-steps off the drivable area (parked cars beside lanes included).\n\n"
            "| source | scenes | moving inside | inside, on the map | goal | moving, > 5 m outside | "
            "vehicle-steps off-road |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def _read_sections(path: Path) -> dict[str, str]:
    """The tables of an existing results file, by key (from their ``<!-- table: key -->`` markers)."""
    parts = path.read_text().split("\n<!-- table: ")[1:]
    return {p.split(" -->\n", 1)[0]: p.split(" -->\n", 1)[1] for p in parts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default=",".join([*TABLES, "wosac", "maps"]),
                   help=f"comma-separated, of {[*TABLES, 'wosac', 'maps']}")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = p.parse_args()
    order = [*TABLES, "wosac", "maps"]
    out = Path(args.out)
    sections = _read_sections(out) if out.is_file() else {}  # tables not rerun keep their last result
    for key in args.tables.split(","):
        if key not in order:
            raise SystemExit(f"unknown table {key!r}; choose from {order}")
        t0 = time.perf_counter()
        if key in ("wosac", "maps"):
            sections[key] = wosac_section() if key == "wosac" else maps_section()
        else:
            t = TABLES[key]
            results = evaluate(t.dataset, list(t.policies), t.samples, 10.0,
                               {k: str(ROOT / v) for k, v in CHECKPOINTS.items()}, membership=t.membership)
            sections[key] = (f"## {t.title}, K = {t.samples}\n\n`{t.command}`\n\n{markdown(results)}\n\n"
                             f"{entry_counts_line(results)}\n")
        sections[key] += f"\n(computed {datetime.date.today().isoformat()} in {time.perf_counter() - t0:.0f} s)\n"
        print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
    head = ("# Closed-loop results\n\nWritten by `python benchmarks/results_md.py`; definitions in the README's "
            "Metrics section. Default-suite tables: 10 s closed loop from step 30 (3 s of log history); every "
            "vehicle driven by the policy, the other agents replay the log; `log` is the same metrics on the "
            "logged ground truth. `blm` is the shipped model with sampling-time guidance, `blm_unguided` the bare "
            "model, `@safe` the shipped stage-3 fine-tune for collision + off-road (closed loop, run unguided), `@open` "
            "the open-loop fine-tune with the same budget (`benchmarks/finetune_eval.py`). Entries: vehicles the log brings in "
            "mid-episode, and of those the ones the entry check made wait or kept out.\n")
    body = "".join(f"\n<!-- table: {k} -->\n{sections[k]}" for k in order if k in sections)
    out.write_text(head + body)
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
