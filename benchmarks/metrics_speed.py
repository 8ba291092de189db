"""Seconds to compute the full metric report (sim + log) on synthetic random-walk rollouts.

Prints JSON. Default: 100 rollouts of 32 agents x 100 steps, 1 sample each, on a 200 m x 200 m
drivable square.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import shapely

from blm_gym.data.scene import AgentType, DrivableArea, Trajectories
from blm_gym.metrics import compute_report
from blm_gym.rollout import Rollout


def random_walk_rollout(rng: np.random.Generator, scene_id: str, agents: int, steps: int, samples: int,
                        drivable: DrivableArea, dt: float = 0.1) -> Rollout:
    """Unicycle random walks (speed and heading jitter) from random starts; log = one more walk."""
    def walks(k):
        heading = rng.uniform(-np.pi, np.pi, (k, agents, 1)) + np.cumsum(rng.normal(0, 0.02, (k, agents, steps)), -1)
        speed = np.clip(rng.uniform(0, 15, (k, agents, 1)) + np.cumsum(rng.normal(0, 0.2, (k, agents, steps)), -1),
                        0, 40)
        x0, y0 = rng.uniform(-80, 80, (2, 1, agents, 1))
        x = x0 + np.cumsum(speed * np.cos(heading) * dt, -1)
        y = y0 + np.cumsum(speed * np.sin(heading) * dt, -1)
        return [a.astype(np.float32) for a in (x, y, heading, speed)]

    x, y, heading, speed = walks(samples)
    lx, ly, lh, ls = (a[0] for a in walks(1))
    valid = np.ones((samples, agents, steps), bool)
    types = np.where(rng.random(agents) < 0.8, AgentType.VEHICLE, AgentType.PEDESTRIAN).astype(np.int8)
    log = Trajectories.from_states(lx, ly, lh, ls, rng.uniform(3.5, 5, agents), rng.uniform(1.6, 2.2, agents),
                                   valid[0])
    return Rollout.from_states(drivable, scene_id=scene_id, source="synthetic-random-walk", policy="random-walk", dt=dt, start_step=0,
                               ego_index=0, agent_ids=tuple(map(str, range(agents))), agent_type=types,
                               controlled=np.ones(agents, bool), x=x, y=y, heading=heading, speed=speed, valid=valid,
                               log=log)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rollouts", type=int, default=100)
    p.add_argument("--agents", type=int, default=32)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    drivable = DrivableArea.from_geometry(shapely.box(-100, -100, 100, 100), resolution=0.5)
    start = time.perf_counter()  # the per-step checks the simulator would have recorded count in the time
    rollouts = [random_walk_rollout(rng, f"s{i}", a.agents, a.steps, a.samples, drivable) for i in range(a.rollouts)]
    report = compute_report(rollouts, {r.scene_id: drivable for r in rollouts})
    seconds = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "metrics_report", "rollouts": a.rollouts, "agents": a.agents, "steps": a.steps,
        "samples": a.samples, "seconds": round(seconds, 3), "ms_per_rollout": round(1000 * seconds / a.rollouts, 2),
        "overall_sim_collision_rate_step": report["overall"]["sim"]["collision_rate_step"]["value"],
    }))


if __name__ == "__main__":
    main()
