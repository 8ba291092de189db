"""Sampling latency of the BLM latent model vs a trajectory-space diffusion baseline; prints JSON.

- ``latent_ms``: one joint 5.2 s plan for a 32-agent scene (encode context + DDIM steps + decode
  with unicycle integration), median of repeats, with the shipped model (or an untrained one of
  the default architecture when the asset is missing: the timing is the same).
- ``trajectory_unet_ms``: a CTG-style temporal UNet (Janner et al. / CTG: 1-D conv residual
  blocks over (x, y, heading, speed, accel, yaw rate) x 52 steps, per agent, ~3.5 M parameters)
  running 100 DDPM steps for the same 32 agents, timed once in the same run.
- ``closed_loop_s``: 20 s of closed loop (200 steps of :func:`blm_gym.sim.state.step`) for 32
  vehicles driven by :class:`LatentDiffusionPolicy` as shipped (sampling-time guidance,
  ``candidates`` joint plans per replan), replanning every 1 s; ``closed_loop_unguided_s``: the
  same with the bare model (no guidance). Median of ``--repeats`` runs each (all runs
  listed under ``closed_loop_runs_s``), after a 1 s warm-up run (numba loads the guidance's
  compiled loops from its cache, or compiles them, on first use: about 1 s once per process).

``--finetuned PATH`` also times that stage-3 model without guidance (``closed_loop_finetuned_s`` and
its ratio to the guided time). Usage: ``python benchmarks/sampling.py [--threads 1] [--repeats 3]``. Timings on shared machines
vary by up to 1.8x between runs: compare the ratios within one run.

``--agents N`` (big scenes): instead, an 8 s guided closed-loop episode of N
vehicles on a long 4-lane highway (:func:`highway_scene`), every vehicle driven by the policy,
replanning every 1 s, with every valid road user planned (``max_agents`` None) three ways:
``one_plan`` (one joint plan of everyone: the baseline),
``neighbourhoods`` (bounded plans of ``--neighbourhood`` agents around the vehicles, all in one
batched call) and ``default`` (the policy as shipped: one plan up to ``MAX_PLAN_AGENTS`` road
users, neighbourhoods of 32 beyond). Per setting: wall and CPU seconds per episode (median of
``--repeats``; CPU time is this process's, less inflated by other load than wall time), ``x_real_time`` (8 s / wall
s), the collision rate of the controlled vehicles, and the ratio to ``one_plan`` in the same run.

``--rollout-throughput DIR`` (with ``--agents``' settings unused): ``blm-gym rollout``'s runner on
every scene of the nuScenes-mini folder DIR (policy ``blm``, ``--samples`` episodes of
``--horizon`` s from step 30 per scene), one episode at a time vs ``--scenes-per-batch`` episodes
in lockstep; simulated seconds per wall / CPU second.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import shapely
import torch
from torch import nn

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from blm_gym.models import BLMModel, make_agent_batch
from blm_gym.models.checkpoint import load_model
from blm_gym.models.guidance import GuidanceConfig
from blm_gym.models.schedule import cosine_alpha_bar
from blm_gym.envs import scene_source
from blm_gym.policies import make_policy
from blm_gym.policies.latent_diffusion import DEFAULT_CHECKPOINT, MAX_PLAN_AGENTS, LatentDiffusionPolicy
from blm_gym.rollout.runner import run_rollouts
from blm_gym.sim.state import SimulatorState, step

NUM_AGENTS, FUTURE, TRAJ_CHANNELS = 32, 52, 6


def highway_scene(num_agents: int = NUM_AGENTS, steps: int = 215) -> Scene:
    """``num_agents`` cars at constant speed on a 4-lane straight road (the log the sim starts from),
    4 abreast every 20 m. The road is 650 m long (one lane polyline each) or, for more cars, as long
    as the log needs, its lanes cut into 100 m segments (as maps store lanes)."""
    rng = np.random.default_rng(0)
    lane = np.arange(num_agents) % 4
    x0 = np.arange(num_agents) // 4 * 20.0 + rng.uniform(0, 5, num_agents)
    v = rng.uniform(8, 14, num_agents)
    t = np.arange(steps) * 0.1
    x = x0[:, None] + v[:, None] * t
    y = np.broadcast_to(lane[:, None] * 3.5, x.shape)
    traj = Trajectories.from_states(x, y, np.zeros_like(x), np.broadcast_to(v[:, None], x.shape),
                                    np.full(num_agents, 4.5), np.full(num_agents, 1.8), np.ones(x.shape, bool))
    end = max(600.0, float(np.ceil(x.max() + 50)))
    cuts = [(-50.0, 600.0)] if end == 600.0 else [(a, min(a + 100.0, end)) for a in np.arange(-50.0, end, 100.0)]
    lanes, mask = pad_polylines([np.stack([np.linspace(a, b, int(round((b - a) / 5)) + 1), np.full(
        int(round((b - a) / 5)) + 1, i * 3.5)], -1) for i in range(4) for a, b in cuts])
    road = RoadMap(lanes, mask, np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool),
                   DrivableArea.from_geometry(shapely.box(-50, -2, end, 12.5), resolution=1.0))
    return Scene("bench-highway", "bench", 0.1, tuple(map(str, range(num_agents))),
                 np.full(num_agents, AgentType.VEHICLE, np.int8), 0, traj, road)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(c_in, c_out, 5, padding=2), nn.GroupNorm(8, c_out), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(c_out, c_out, 5, padding=2), nn.GroupNorm(8, c_out), nn.Mish())
        self.emb = nn.Linear(emb, c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        return self.conv2(self.conv1(x) + self.emb(e)[..., None]) + self.skip(x)


class TemporalUNet(nn.Module):
    """CTG-style per-agent temporal UNet on trajectories ``(B, C, 52)`` (52 -> 26 -> 13 and back)."""

    def __init__(self, dims=(96, 192, 384), emb: int = 128):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(1, emb), nn.Mish(), nn.Linear(emb, emb))
        self.cond = nn.Sequential(nn.Linear(10 * 6, emb), nn.Mish(), nn.Linear(emb, emb))  # history encoder
        chans = (TRAJ_CHANNELS,) + dims
        self.down = nn.ModuleList(ResBlock(a, b, emb) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.Conv1d(dims[-1], dims[-1], 3, padding=1)
        self.up = nn.ModuleList(ResBlock(a + b, a, emb) for a, b in zip(dims[:-1][::-1], dims[1:][::-1]))
        self.out = nn.Conv1d(dims[0], TRAJ_CHANNELS, 1)

    def forward(self, x, t, hist):
        e = self.time(t[:, None]) + self.cond(hist)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x, e)
            skips.append(x)
            if i < len(self.down) - 1:
                x = nn.functional.avg_pool1d(x, 2)
        x = self.pool(x)
        for block in self.up:
            x = nn.functional.interpolate(x, scale_factor=2)
            skips.pop()
            x = block(torch.cat([x, skips[-1]], 1), e)
        return self.out(x)


@torch.no_grad()
def time_trajectory_unet(steps: int = 100) -> tuple[float, int]:
    """Milliseconds of a full ``steps``-step DDPM sample for 32 agents, and the parameter count."""
    model = TemporalUNet().eval()
    ab = cosine_alpha_bar(steps)
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    hist = torch.randn(NUM_AGENTS, 60)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_AGENTS, TRAJ_CHANNELS, FUTURE, generator=g)
    model(x, torch.zeros(NUM_AGENTS), hist)  # warm-up
    t0 = time.perf_counter()
    for t in reversed(range(steps)):
        eps = model(x, torch.full((NUM_AGENTS,), t / steps), hist)
        x = (x - (1 - alphas[t]) / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:
            x = x + (1 - alphas[t]).sqrt() * torch.randn(x.shape, generator=g)
    return (time.perf_counter() - t0) * 1e3, sum(p.numel() for p in model.parameters())


@torch.no_grad()
def time_latent(model: BLMModel, scene: Scene, repeats: int = 20) -> float:
    batch = make_agent_batch(scene, 20, max_agents=NUM_AGENTS)
    g = torch.Generator().manual_seed(0)
    model.decode(model.sample(batch, 1, generator=g)[:, 0], batch)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.decode(model.sample(batch, 1, generator=g)[:, 0], batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_closed_loop(model: BLMModel, scene: Scene, seconds: float = 20.0, **policy_kwargs) -> float:
    policy = LatentDiffusionPolicy(model, replan_every_s=1.0, max_agents=NUM_AGENTS, **policy_kwargs)
    start = model.config.history_steps - 1
    t0 = time.perf_counter()
    policy.reset(scene, start, scene.is_vehicle.copy(), np.random.default_rng(0))
    state = SimulatorState.from_log(scene, start)
    for _ in range(int(round(seconds / scene.dt))):
        state = step(state, policy.act(state))
    return time.perf_counter() - t0


def time_big_episode(model: BLMModel, scene: Scene, seconds: float = 8.0, **policy_kwargs) -> dict:
    """One guided closed-loop episode of ``seconds`` with every vehicle driven and every valid road
    user planned: wall and CPU seconds, and the share of vehicles that collided."""
    policy = LatentDiffusionPolicy(model, replan_every_s=1.0, max_agents=None, **policy_kwargs)
    start = model.config.history_steps - 1
    wall, cpu = time.perf_counter(), time.process_time()
    policy.reset(scene, start, scene.is_vehicle.copy(), np.random.default_rng(0))
    state = SimulatorState.from_log(scene, start)
    for _ in range(int(round(seconds / scene.dt))):
        state = step(state, policy.act(state))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    collided = state.collision[:, start + 1:state.current_step + 1].any(-1)[scene.is_vehicle]
    return {"wall_s": wall, "cpu_s": cpu, "collided": float(collided.mean())}


def big_scene_report(model: BLMModel, num_agents: int, neighbourhood: int, repeats: int) -> dict:
    """``--agents``: the 8 s guided episode of ``num_agents`` vehicles, one plan vs neighbourhoods."""
    scene = highway_scene(num_agents)
    settings = {"one_plan": {"max_plan_agents": None},
                "neighbourhoods": {"max_plan_agents": neighbourhood, "neighbourhood": neighbourhood}, "default": {}}
    time_big_episode(model, highway_scene(NUM_AGENTS), seconds=1.0)  # warm-up: loads the compiled guidance loops
    runs = {name: [] for name in settings}
    for _ in range(repeats):  # interleaved, so load changes on a shared machine hit every setting alike
        for name, kwargs in settings.items():
            runs[name].append(time_big_episode(model, scene, **kwargs))
    out = {}
    for name, rs in runs.items():
        wall, cpu = (statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s"))
        out[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "x_real_time": round(8.0 / wall, 2),
                     "x_real_time_cpu": round(8.0 / cpu, 2),
                     "collided_vehicles": round(statistics.mean(r["collided"] for r in rs), 4),
                     "runs_wall_s": [round(r["wall_s"], 3) for r in rs]}
    base = out["one_plan"]
    for name in ("neighbourhoods", "default"):
        out[name]["speedup_vs_one_plan_wall"] = round(base["wall_s"] / out[name]["wall_s"], 3)
        out[name]["speedup_vs_one_plan_cpu"] = round(base["cpu_s"] / out[name]["cpu_s"], 3)
    return {"agents": num_agents, "episode_s": 8.0, "replan_every_s": 1.0, "guided": True,
            "goal": "8 s episode in <= 2 s wall (4x real time)", "neighbourhood": neighbourhood,
            "default_max_plan_agents": MAX_PLAN_AGENTS, **out}


def rollout_throughput(data_dir: str, scenes_per_batch: int, repeats: int, horizon_s: float = 10.0,
                       samples: int = 1) -> dict:
    """``--rollout-throughput``: the rollout runner on every nuScenes-mini scene (policy ``blm``),
    one episode at a time vs ``scenes_per_batch`` in lockstep, interleaved ``repeats`` times."""
    source = scene_source("BLM-nuScenes-v0", data_dir, None)
    ids = list(source.scene_ids)

    def run(n: int, ids=ids, horizon=horizon_s, samples=samples) -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        rollouts = run_rollouts(source, lambda: make_policy("blm"), scene_ids=ids, horizon_s=horizon,
                                samples=samples, scenes_per_batch=n, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sim_s = sum(r.dt * (r.x.shape[-1] - 1) * r.x.shape[0] for r in rollouts)
        return {"wall_s": wall, "cpu_s": cpu, "sim_s": sim_s, "episodes": sum(r.x.shape[0] for r in rollouts)}

    run(1, ids, 0.2, 1)  # warm-up: compiled guidance loops, and every scene loaded (the source caches them)
    runs = {1: [], scenes_per_batch: []}
    for _ in range(repeats):
        for n in runs:
            runs[n].append(run(n))
    out = {}
    for n, rs in runs.items():
        wall, cpu = (statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s"))
        sim_s, episodes = rs[0]["sim_s"], rs[0]["episodes"]
        out[f"scenes_per_batch_{n}"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "episodes": episodes,
                                        "simulated_s": round(sim_s, 1), "episodes_per_s": round(episodes / wall, 3),
                                        "sim_s_per_wall_s": round(sim_s / wall, 2),
                                        "sim_s_per_cpu_s": round(sim_s / cpu, 2),
                                        "runs_wall_s": [round(r["wall_s"], 2) for r in rs]}
    one, many = out["scenes_per_batch_1"], out[f"scenes_per_batch_{scenes_per_batch}"]
    return {"data": "nuScenes-mini", "scenes": len(ids), "samples": samples, "policy": "blm", "horizon_s": horizon_s,
            **out,
            "throughput_ratio_wall": round(one["wall_s"] / many["wall_s"], 3),
            "throughput_ratio_cpu": round(one["cpu_s"] / many["cpu_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="closed-loop runs per setting (median reported)")
    parser.add_argument("--finetuned", default=None,
                        help="also time this stage-3 checkpoint unguided (closed_loop_finetuned_s)")
    parser.add_argument("--agents", type=int, default=None,
                        help="big-scene mode: an 8 s guided episode of this many vehicles, one plan vs neighbourhoods")
    parser.add_argument("--neighbourhood", type=int, default=32, help="with --agents: agents per neighbourhood plan")
    parser.add_argument("--rollout-throughput", default=None, metavar="DIR",
                        help="nuScenes-mini folder: rollout throughput, one episode at a time vs --scenes-per-batch")
    parser.add_argument("--scenes-per-batch", type=int, default=4, help="with --rollout-throughput (default 4)")
    parser.add_argument("--samples", type=int, default=1, help="with --rollout-throughput: episodes per scene")
    parser.add_argument("--horizon", type=float, default=10.0, help="with --rollout-throughput: seconds per episode")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1 (closed-loop runs per setting), got {args.repeats}")
    torch.set_num_threads(args.threads)
    if args.rollout_throughput:
        print(json.dumps({"threads": args.threads, **rollout_throughput(args.rollout_throughput, args.scenes_per_batch,
                                                                       args.repeats, args.horizon, args.samples)},
                         indent=2))
        return
    shipped = DEFAULT_CHECKPOINT.is_file()
    model = LatentDiffusionPolicy.from_checkpoint().model if shipped else BLMModel().eval()
    if args.agents is not None:
        if args.agents < 1:
            parser.error(f"--agents must be >= 1, got {args.agents}")
        print(json.dumps({"threads": args.threads, "latent_model": "shipped" if shipped else "untrained",
                          **big_scene_report(model, args.agents, args.neighbourhood, args.repeats)}, indent=2))
        return
    scene = highway_scene()
    latent_ms = time_latent(model, scene)
    unet_ms, unet_params = time_trajectory_unet()
    bare_policy = dict(guidance=GuidanceConfig(steps=0))
    time_closed_loop(model, scene, seconds=1.0)  # warm-up: the first call loads the compiled guidance loops
    guided = [round(time_closed_loop(model, scene), 3) for _ in range(args.repeats)]
    bare = [round(time_closed_loop(model, scene, **bare_policy), 3) for _ in range(args.repeats)]
    tuned = {}
    if args.finetuned:
        runs = [round(time_closed_loop(load_model(args.finetuned), scene, **bare_policy), 3)
                for _ in range(args.repeats)]
        tuned = {"closed_loop_finetuned_s": round(statistics.median(runs), 3), "finetuned_runs_s": runs,
                 "finetuned_over_guided": round(statistics.median(runs) / statistics.median(guided), 3)}
    print(json.dumps({
        "agents": NUM_AGENTS, "horizon_s": FUTURE * 0.1, "threads": args.threads,
        "latent_model": "shipped" if shipped else "untrained (default architecture)",
        "latent_params": sum(p.numel() for p in model.parameters()),
        "latent_ddim_steps": model.config.sample_steps,
        "latent_ms": round(latent_ms, 2),
        "trajectory_unet_params": unet_params, "trajectory_unet_steps": 100,
        "trajectory_unet_ms": round(unet_ms, 1),
        "speedup": round(unet_ms / latent_ms, 1),
        "closed_loop_s": round(statistics.median(guided), 3),
        "closed_loop_unguided_s": round(statistics.median(bare), 3),
        "closed_loop_runs_s": {"guided": guided, "unguided": bare},
        **tuned,
        "closed_loop_setup": "20 s, 32 vehicles, replan every 1 s, blm_gym.sim.state.step",
        "guidance": {"candidates": LatentDiffusionPolicy(model).candidates, **dataclasses.asdict(GuidanceConfig())},
    }, indent=2))


if __name__ == "__main__":
    main()
