"""Simulator speed on a 32-agent scene; prints one JSON object.

Measured in one run (timings on shared machines vary, so compare the ratios):

* ``collision``: vectorised oriented-box SAT (:func:`boxes_overlap`) vs a tbsim-style loop that
  builds each agent's shapely polygon and tests it against every other agent's.
* ``sim_step_ms``: one full vectorised step: ``sim.state.step`` (unicycle) + ``boxes_overlap`` +
  ``offroad`` + ``min_time_to_collision``.
* ``env``: ``gym.make("BLM-nuScenes-v0")`` steps per second under log replay (32 agents).

The scene is the nuScenes-mini val scene ``scene-0103`` (ScenarioNet, from the shared data
folder), cut to the 32 vehicles nearest the ego at its busiest step; without the data, a
synthetic 32-agent scene. Usage: ``python benchmarks/sim_step.py [--repeats 200]``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import shapely

from blm_gym.data.scene import DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from shared_data import SHARED_DATA
from blm_gym.sim.geometry import box_corners, boxes_overlap, offroad
from blm_gym.sim.kinematics import actions_from_states
from blm_gym.sim.state import Action, SimulatorState, step
from blm_gym.sim.ttc import min_time_to_collision

NUM_AGENTS = 32
SCENE_ID = "scene-0103"


def per_call_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def real_scene() -> tuple[Scene, int] | None:
    """The 32 vehicles nearest the ego of ``scene-0103`` at its busiest step, or None without data."""
    root = SHARED_DATA / "nuscenes-mini"
    if not root.is_dir():
        return None
    from blm_gym.data.scenarionet import ScenarioNetSource

    scene = ScenarioNetSource(root, scene_ids=[SCENE_ID]).load(0)
    vehicles = scene.traj.valid & scene.is_vehicle[:, None]
    t = int(np.argmax(vehicles.sum(0)))
    cand = np.flatnonzero(vehicles[:, t] | (np.arange(scene.num_agents) == scene.ego_index))
    d = np.hypot(scene.traj.x[cand, t] - scene.traj.x[scene.ego_index, t],
                 scene.traj.y[cand, t] - scene.traj.y[scene.ego_index, t])
    chosen = np.sort(cand[np.argsort(d, kind="stable")[:NUM_AGENTS]])
    return scene.select_agents(chosen), t


def synthetic_scene(seed: int = 0) -> tuple[Scene, int]:
    """32 cars on a 4-lane straight road, 10 s at 0.1 s, driving at constant speed."""
    rng = np.random.default_rng(seed)
    steps, dt = 100, 0.1
    lane = rng.integers(0, 4, NUM_AGENTS)
    speed = rng.uniform(8, 15, NUM_AGENTS)
    x0 = rng.uniform(0, 300, NUM_AGENTS)
    t = np.arange(steps) * dt
    x = x0[:, None] + speed[:, None] * t
    y = np.repeat((3.5 * lane)[:, None], steps, 1)
    traj = Trajectories.from_states(x, y, np.zeros_like(x), np.repeat(speed[:, None], steps, 1),
                                    np.full(NUM_AGENTS, 4.5), np.full(NUM_AGENTS, 1.9), np.ones_like(x, bool))
    centre = [np.array([[-50.0, 3.5 * k], [600.0, 3.5 * k]]) for k in range(4)]
    lanes, mask = pad_polylines(centre)
    drivable = DrivableArea.from_geometry(shapely.box(-50, -2, 600, 12.5))
    road = RoadMap(lanes, mask, np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool), drivable)
    scene = Scene("synthetic-straight", "synthetic", dt, tuple(map(str, range(NUM_AGENTS))),
                  np.ones(NUM_AGENTS, np.int8), 0, traj, road)
    return scene, 0


def shapely_loop_collisions(s: SimulatorState) -> np.ndarray:
    """tbsim-style reference: per agent, its polygon against every other agent's, in Python."""
    corners = box_corners(s.x, s.y, s.heading, s.length, s.width)
    polys = [shapely.Polygon(c) if v else None for c, v in zip(corners, s.valid)]
    hit = np.zeros(len(polys), bool)
    for i, pi in enumerate(polys):
        if pi is None:
            continue
        for j, pj in enumerate(polys):
            if j != i and pj is not None and pi.intersects(pj):
                hit[i] = True
                break
    return hit


def full_step(state: SimulatorState, action: Action):
    """One closed-loop step (with its collision and off-road checks) and every agent's min TTC."""
    s = step(state, action)
    ttc = min_time_to_collision(s.x, s.y, s.vx, s.vy, s.length, s.width, s.valid)
    return s, ttc


class OneScene:
    """A one-scene :class:`~blm_gym.data.source.SceneSource` (the 32-agent cut)."""

    name = "benchmark"

    def __init__(self, scene: Scene):
        self.scene = scene
        self.scene_ids = (scene.scene_id,)

    def load(self, index: int) -> Scene:
        return self.scene


def run_env(env, num_steps: int) -> dict:
    """Steps/s of ``env`` with the ego driven by its logged actions (inverse kinematics).

    Resets (at the end of the log) count in the time.
    """
    env.reset(seed=0)
    core = env.unwrapped
    scene = core.scene
    logged, _ = actions_from_states(scene.traj.heading, scene.traj.speed, scene.traj.valid, scene.dt)
    resets = 0
    t0 = time.perf_counter()
    for _ in range(num_steps):
        _, _, terminated, truncated, _ = env.step(logged[scene.ego_index, core.state.current_step])
        if terminated or truncated:
            env.reset()
            resets += 1
    elapsed = time.perf_counter() - t0
    return {"agents": scene.num_agents, "env_steps_per_s": round(num_steps / elapsed, 1), "resets": resets}


def env_steps_per_second(scene: Scene, num_steps: int) -> dict:
    """Env steps/s under log replay (background ``"log"``, no termination on collision).

    ``gym_make``: ``gym.make("BLM-nuScenes-v0")`` on the whole real scene (all its agents, with
    gymnasium's wrappers); ``scene_env_32``: the same env class on the 32-agent cut. Extend here
    with other env ids or background policies.
    """
    import gymnasium as gym

    import blm_gym  # noqa: F401  (registers the env ids)
    from blm_gym.envs import EnvConfig, SceneEnv

    config = EnvConfig(horizon_s=1e3, terminate_on_collision=False)
    out = {"scene_env_32": run_env(SceneEnv(OneScene(scene), config=config, background="log"), num_steps)}
    root = SHARED_DATA / "nuscenes-mini"
    if scene.source == "nuscenes" and root.is_dir():
        env = gym.make("BLM-nuScenes-v0", data_dir=root, scene_ids=[SCENE_ID], background="log", config=config)
        out["gym_make"] = {"env_id": "BLM-nuScenes-v0", **run_env(env, num_steps)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--env-steps", type=int, default=2000)
    args = parser.parse_args()

    found = real_scene()
    scene, t = found if found is not None else synthetic_scene()
    state = SimulatorState.from_log(scene, t)
    n = scene.num_agents

    vec_ms = per_call_ms(lambda: boxes_overlap(state.x, state.y, state.heading, state.length, state.width,
                                               state.valid), args.repeats)
    loop_ms = per_call_ms(lambda: shapely_loop_collisions(state), max(10, args.repeats // 10))
    vec_hits = boxes_overlap(state.x, state.y, state.heading, state.length, state.width, state.valid).any(-1)
    action = Action(np.zeros((n, 2), np.float32), np.zeros(n, bool))
    step_ms = per_call_ms(lambda: full_step(state, action), args.repeats)

    print(json.dumps({
        "scene": scene.scene_id, "step": t, "num_agents": n, "valid_agents": int(state.valid.sum()),
        "collision": {
            "vectorised_sat_ms": round(vec_ms, 4), "shapely_loop_ms": round(loop_ms, 4),
            "speed_ratio": round(loop_ms / vec_ms, 1), "goal_ratio": 20,
            "agents_colliding_vectorised": int(vec_hits.sum()),
            "agents_colliding_shapely_loop": int(shapely_loop_collisions(state).sum()),
        },
        "sim_step_ms": round(step_ms, 4),
        "env": env_steps_per_second(scene, args.env_steps),
    }, indent=2))


if __name__ == "__main__":
    main()
