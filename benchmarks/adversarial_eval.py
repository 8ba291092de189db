"""Safety-critical control: does a fine-tuned BLM adversary make the ego's scenes more critical?

The ego replays its log (a non-reactive AV under test); every other vehicle is driven by a BLM
model, 10 s closed loop on the nuScenes-mini val scenes, K samples. Reported per model (JSON):

* ``ego_min_ttc_s``: per sample, the ego's minimum constant-velocity time to collision with any
  vehicle (3 discs per box, 5 s horizon, pairs already touching excluded), mean over samples;
* ``ego_collision_rate``: samples in which the ego's box overlaps another agent's at some step;
* ``ego_adversary_min_distance_m``: per sample, the smallest ego-adversary centre distance, mean;
* ``adversary_collision_rate``: samples in which the adversary (the moving non-ego vehicle nearest
  the ego at the start, as in the ``safety_critical`` reward term) overlaps any agent;
* ``others_collision_rate``: the share of the other (non-ego) vehicles whose box overlaps another
  non-ego agent's at some step (collisions with the ego left out), per sample;
* ``others_offroad_rate``: the share of the other vehicles that start on the drivable area and
  leave it at some step.

Usage: ``python benchmarks/adversarial_eval.py --checkpoint pretrained=PATH --checkpoint adversarial=PATH
[--dataset nuscenes-val|womd-heldout|validation]``; ``validation`` is the training scenes
``benchmarks/finetune_eval.py`` sets aside (:data:`~finetune_eval.VAL_SCENES` of every source's train
split): settings such as the reward mix are compared there, never on the held-out sets.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from finetune_eval import validation_scenes
from policy_table import DATASETS

from blm_gym.data.registry import load_scene, open_source
from blm_gym.data.scenarionet import ScenarioNetSource
from blm_gym.data.scene import Trajectories
from blm_gym.data.source import SceneList
from blm_gym.sim.state import trajectory_checks
from shared_data import SHARED_DATA
from blm_gym.metrics.safety import collision_steps, min_ttc_per_sample, offroad_steps, starts_on_road
from blm_gym.policies import make_policy
from blm_gym.rewards.terms import ADVERSARY_MIN_SPEED
from blm_gym.rollout.runner import run_rollouts



def ego_criticality(rollouts, drivable: dict) -> dict:
    ttc, ego_hit, adv_hit, gap, others_hit, others_off = [], [], [], [], [], []
    for r in rollouts:
        ego = r.ego_index
        others = r.is_vehicle & (np.arange(r.num_agents) != ego)
        without_ego = Trajectories.from_states(r.x, r.y, r.heading, r.speed, r.log.length, r.log.width,
                                               r.valid & (np.arange(r.num_agents) != ego)[:, None])
        hit, _ = trajectory_checks(without_ego, drivable[r.scene_id], r.is_vehicle)
        present = r.valid[:, others].any(-1)
        others_hit.append((hit[:, others].any(-1) & present).sum(-1) / np.maximum(present.sum(-1), 1))
        on_road = starts_on_road(r, drivable[r.scene_id])[:, others]
        left = offroad_steps(r)[:, others].any(-1) & on_road
        others_off.append(left.sum(-1) / np.maximum(on_road.sum(-1), 1))
        ego_only = np.zeros(r.num_agents, bool)
        ego_only[ego] = True
        ttc.append(min_ttc_per_sample(dataclasses.replace(r, controlled=ego_only)))
        hits = collision_steps(r)  # (K, N, T-1)
        d0 = np.hypot(r.x[0, :, 0] - r.x[0, ego, 0], r.y[0, :, 0] - r.y[0, ego, 0])
        candidates = r.is_vehicle & r.valid[0, :, 0] & (np.arange(r.num_agents) != ego)
        moving = candidates & (r.speed[0, :, 0] > ADVERSARY_MIN_SPEED)
        adversary = int(np.argmin(np.where(moving if moving.any() else candidates, d0, np.inf)))
        both = r.valid[:, ego] & r.valid[:, adversary]
        gap.append(np.where(both, np.hypot(r.x[:, adversary] - r.x[:, ego], r.y[:, adversary] - r.y[:, ego]),
                            np.inf).min(-1))
        ego_hit.append(hits[:, ego].any(-1))
        adv_hit.append(hits[:, adversary].any(-1))
    ttc = np.concatenate(ttc)
    return {"ego_min_ttc_s": float(np.nanmean(ttc)),
            "ego_adversary_min_distance_m": float(np.mean(np.concatenate(gap))), "ego_collision_rate": float(np.mean(np.concatenate(ego_hit))),
            "adversary_collision_rate": float(np.mean(np.concatenate(adv_hit))),
            "others_collision_rate": float(np.mean(np.concatenate(others_hit))),
            "others_offroad_rate": float(np.mean(np.concatenate(others_off))), "samples": int(len(ttc))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH (repeat)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--horizon", type=float, default=10.0)
    p.add_argument("--dataset", choices=("nuscenes-val", "womd-heldout", "validation"), default="nuscenes-val")
    args = p.parse_args()
    if args.dataset == "validation":
        source = SceneList(validation_scenes(), "validation")
    else:
        folder, ids = DATASETS[args.dataset]
        source = (open_source("scenarionet", SHARED_DATA / folder, split=ids) if isinstance(ids, str) else
                  ScenarioNetSource(SHARED_DATA / folder, scene_ids=ids))
    scene_ids = list(source.scene_ids)
    drivable = {sid: load_scene(source, sid).road.drivable for sid in scene_ids}
    out = {"dataset": args.dataset, "samples_per_scene": args.samples}
    for name, path in (c.split("=", 1) for c in args.checkpoint):
        # the bare model: sampling-time guidance would steer against the adversarial objective
        rollouts = run_rollouts(source, lambda: make_policy("blm_unguided", checkpoint=path), scene_ids=scene_ids,
                                samples=args.samples, horizon_s=args.horizon, controlled="non_ego", progress=False)
        out[name] = ego_criticality(rollouts, drivable)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
