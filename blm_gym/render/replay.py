"""Render recorded rollouts (from an HDF5 file plus the scene's map) to frames and videos."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from blm_gym.data.source import SceneSource
from blm_gym.render.draw import RenderConfig, Renderer
from blm_gym.render.video import write_video
from blm_gym.data.registry import load_scene
from blm_gym.sim.record import Rollout, sample_state

DRAW_MODES = ("action", "entire_traj", "map")


def rollout_frames(rollout: Rollout, sample: int, scene, config: RenderConfig = RenderConfig(),
                   draw_mode: str = "action", steps: int | None = None) -> list[np.ndarray]:
    """Frames ``(H, W, 3)`` uint8 of one simulated sample, one per step (the first ``steps`` only,
    if given).

    ``draw_mode``: ``"action"`` draws each agent's simulated path so far; ``"entire_traj"`` the
    whole simulated path on every frame; ``"map"`` only the map and the boxes. Collided agents are
    red, vehicles off the drivable area outlined orange.
    """
    if draw_mode not in DRAW_MODES:
        raise ValueError(f"draw_mode must be one of {DRAW_MODES}, got {draw_mode!r}")
    final = sample_state(rollout, sample, scene)
    t0, num = rollout.start_step, rollout.num_steps
    paths = final.sim.xy
    renderer = Renderer(config)
    frames = []
    for t in range(num if steps is None else min(steps, num)):
        state = dataclasses.replace(final, current_step=t0 + t)
        if draw_mode == "map":
            trajectories = mask = None
        else:
            upto = t0 + (num if draw_mode == "entire_traj" else t + 1)
            trajectories, mask = paths, final.sim.valid.copy()
            mask[:, :t0] = False
            mask[:, upto:] = False
        frames.append(renderer.render(state, trajectories=trajectories, trajectory_mask=mask,
                                      title=f"{rollout.scene_id} [{rollout.policy}] sample {sample}  t={t * rollout.dt:.1f} s"))
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
