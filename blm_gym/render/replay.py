"""Render recorded rollouts (from an HDF5 file plus the scene's map) to frames and videos."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from blm_gym.data.source import SceneSource
from blm_gym.render.draw import RenderConfig, Renderer
from blm_gym.render.video import write_video
from blm_gym.rollout.record import Rollout, rollout_to_scene
from blm_gym.rollout.runner import load_scene
from blm_gym.sim.geometry import agent_collisions, offroad
from blm_gym.sim.state import SimState

DRAW_MODES = ("action", "entire_traj", "map")


def rollout_frames(rollout: Rollout, sample: int, scene, config: RenderConfig = RenderConfig(),
                   draw_mode: str = "action") -> list[np.ndarray]:
    """Frames ``(H, W, 3)`` uint8 of one simulated sample, one per step.

    ``draw_mode``: ``"action"`` draws each agent's simulated path so far; ``"entire_traj"`` the
    whole simulated path on every frame; ``"map"`` only the map and the boxes. Collided agents are
    red, vehicles off the drivable area outlined orange.
    """
    if draw_mode not in DRAW_MODES:
        raise ValueError(f"draw_mode must be one of {DRAW_MODES}, got {draw_mode!r}")
    sim = rollout_to_scene(rollout, sample, scene)
    tr = sim.traj
    collided = agent_collisions(tr.x.T, tr.y.T, tr.heading.T, tr.length, tr.width, tr.valid.T)  # (T, N)
    off = offroad(scene.road.drivable, tr.x.T, tr.y.T, tr.valid.T & sim.is_vehicle)
    renderer = Renderer(config)
    frames = []
    for t in range(tr.num_steps):
        state = SimState(tr.x[:, t], tr.y[:, t], tr.heading[:, t], tr.speed[:, t], tr.length, tr.width,
                         tr.valid[:, t], rollout.start_step + t)
        if draw_mode == "map":
            paths = mask = None
        else:
            upto = tr.num_steps if draw_mode == "entire_traj" else t + 1
            paths = tr.xy.copy()
            mask = tr.valid.copy()
            mask[:, upto:] = False
        frames.append(renderer.render(sim, state, collided=collided[t], offroad=off[t], trajectories=paths,
                                      trajectory_mask=mask, title=f"{rollout.scene_id} [{rollout.policy}] "
                                      f"sample {sample}  t={t * rollout.dt:.1f} s"))
    renderer.close()
    return frames


def render_rollout_videos(rollouts: Sequence[Rollout], source: SceneSource, out_dir: str | Path,
                          config: RenderConfig = RenderConfig(), draw_mode: str = "action") -> list[Path]:
    """One mp4 per scene and sample under ``out_dir`` (``<scene>_s<k>.mp4``); returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    for r in rollouts:
        scene = load_scene(source, r.scene_id)
        for k in range(r.num_samples):
            frames = rollout_frames(r, k, scene, config, draw_mode)
            paths.append(write_video(frames, out_dir / f"{r.scene_id}_s{k}.mp4", fps=1.0 / r.dt))
    return paths
