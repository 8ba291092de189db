"""Evaluate your own driving stack against BLM traffic on the nuScenes-mini validation scenes.

Your stack drives the ego of ``gym.make("BLM-nuScenes-v0", ..., background=...)``; the background
policy drives every other agent, closed loop. Here the stack is a small rule-based one that reads
the observation dict only (ego frame, metres, m/s):

- lane keeping: pure pursuit on the observed lane centerline that runs along the ego's heading
  and passes closest to it;
- gap keeping: the Intelligent Driver Model (Treiber et al. 2000) behind the nearest agent in
  the ego's corridor.

It drives against several backgrounds: the logged traffic (non-reactive), IDM, the pretrained
BLM model and, when it exists, a BLM model fine-tuned toward safety-critical behaviour
(``--adversarial-checkpoint``). Each episode is recorded (``env.unwrapped.rollout()``) and scored
by the metric report, the ego being the controlled vehicle, as ``blm-gym metrics`` scores a
rollout file; the reward wrappers of :mod:`blm_gym.rewards` give the return. Prints one row per
background and writes one mp4 per background (the first episode).

Run: ``python examples/evaluate_av_stack.py --episodes 2 --out results/av_stack``
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # offscreen rendering

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import blm_gym  # noqa: E402,F401  (registers the env ids)

from blm_gym.data.registry import load_scene  # noqa: E402
from blm_gym.metrics import compute_report  # noqa: E402
from blm_gym.policies import make_policy  # noqa: E402
from blm_gym.render import RenderConfig, write_video  # noqa: E402
from blm_gym.rewards import CollisionPenalty, OffroadPenalty, ProgressReward, TTCPenalty  # noqa: E402

VAL_SCENES = ("scene-0103", "scene-0916")  # official nuScenes v1.0-mini val split
ADVERSARIAL = Path(blm_gym.__file__).parent / "assets" / "blm_adversarial.pt"


@dataclass(frozen=True)
class RuleBasedStack:
    """Pure pursuit + IDM on the env's observation dict; returns (acceleration m/s^2, yaw rate rad/s)."""

    desired_speed: float = 10.0  # m/s
    time_headway: float = 1.5  # s
    min_gap: float = 2.0  # m, bumper to bumper at standstill
    max_accel: float = 1.5  # m/s^2
    comfort_decel: float = 2.0  # m/s^2
    lookahead_s: float = 0.8  # pure-pursuit lookahead time (at least 4 m)
    corridor_half_width: float = 2.0  # m either side of the ego's path that counts as "in front"

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        speed, _, ego_length, _ = obs["ego"]
        return np.array([self.accel(obs, speed, ego_length), self.yaw_rate(obs, speed)], np.float32)

    def yaw_rate(self, obs, speed: float) -> float:
        lanes, mask = obs["lanes"], obs["lanes_mask"].astype(bool)  # (L, P, 2), (L, P)
        seg = lanes[:, 1] - lanes[:, 0]  # direction of each lane piece at its point nearest the ego
        along = mask[:, :2].all(1) & (seg[:, 0] > 0.7 * np.hypot(seg[:, 0], seg[:, 1]))  # within ~45 deg
        if not along.any():
            return 0.0
        lane = np.flatnonzero(along)[np.argmin(np.abs(lanes[along, 0, 1]))]  # smallest lateral offset
        pts = lanes[lane][mask[lane]]
        reach = max(4.0, self.lookahead_s * speed)
        ahead = pts[(pts[:, 0] > 0) & (np.hypot(pts[:, 0], pts[:, 1]) <= reach)]
        x, y = (ahead[-1] if len(ahead) else pts[-1])
        curvature = 2.0 * y / max(x * x + y * y, 1e-6)  # arc through the ego and the target point
        return float(np.clip(max(speed, 1.0) * curvature, -0.5, 0.5))

    def accel(self, obs, speed: float, ego_length: float) -> float:
        nb, valid = obs["neighbors"], obs["neighbors_mask"].astype(bool)  # (K, 8): dx, dy, cos, sin, vx, vy, l, w
        in_front = valid & (nb[:, 0] > 0) & (np.abs(nb[:, 1]) < self.corridor_half_width + nb[:, 7] / 2)
        free = 1.0 - (speed / self.desired_speed) ** 4
        if not in_front.any():
            return float(self.max_accel * free)
        lead = nb[in_front][np.argmin(nb[in_front, 0])]
        gap = max(lead[0] - (ego_length + lead[6]) / 2, 0.1)
        closing = speed - lead[4]  # m/s, positive when the ego catches up
        wanted = self.min_gap + max(0.0, speed * self.time_headway
                                    + speed * closing / (2 * np.sqrt(self.max_accel * self.comfort_decel)))
        return float(np.clip(self.max_accel * (free - (wanted / gap) ** 2), -8.0, self.max_accel))


def make_env(data_dir: Path, background, render: bool) -> gym.Env:
    env = gym.make("BLM-nuScenes-v0", data_dir=data_dir, scene_ids=list(VAL_SCENES), background=background,
                   render_mode="rgb_array" if render else None, render_config=RenderConfig(width=480, height=480),
                   horizon_s=10.0, terminate_on_collision=True)
    # Rewards: +1 per metre of progress, -10 per step in collision, -5 off road, up to -1 when TTC < 2 s.
    return TTCPenalty(OffroadPenalty(CollisionPenalty(ProgressReward(env), weight=10.0), weight=5.0), weight=1.0)


def run_episode(env: gym.Env, stack: RuleBasedStack, scene_index: int, seed: int, frames: list | None):
    """One episode: its return and its record (a one-sample Rollout, the ego the controlled vehicle)."""
    obs, info = env.reset(seed=seed, options={"scene_index": scene_index})
    ret, done = 0.0, False
    while not done:
        if frames is not None:
            frames.append(env.render())
        obs, reward, terminated, truncated, info = env.step(stack(obs))
        ret += reward
        done = terminated or truncated
    return ret, env.unwrapped.rollout("av-stack")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BLM_GYM_DATA", "../shared/data")) / "nuscenes-mini",
                   help="nuScenes: a ScenarioNet folder or a raw nuScenes root")
    p.add_argument("--episodes", type=int, default=2, help="episodes (seeds) per val scene and background")
    p.add_argument("--backgrounds", default="log,idm,blm", help="comma-separated background policies")
    p.add_argument("--adversarial-checkpoint", type=Path, default=ADVERSARIAL,
                   help="BLM fine-tuned toward safety-critical traffic (skipped if the file is missing)")
    p.add_argument("--out", type=Path, default=Path("results/av_stack"), help="folder for the videos")
    args = p.parse_args()
    torch.set_num_threads(1)  # the BLM model is small: threads cost more than they give

    backgrounds = {name: name for name in args.backgrounds.split(",")}
    if args.adversarial_checkpoint.is_file():
        # unguided: guidance would steer the adversarial model's plans back toward safety
        adversarial = str(args.adversarial_checkpoint)
        backgrounds["blm-adversarial"] = lambda: make_policy("blm_unguided", checkpoint=adversarial)
    else:
        print(f"no adversarial checkpoint at {args.adversarial_checkpoint}: skipping that background")

    stack = RuleBasedStack()
    header = (f"{'background':<16}{'episodes':>9}{'collision':>11}{'off-road':>10}{'min TTC s':>11}{'return':>9}"
              f"{'s/ep':>7}")
    rows = []
    for name, background in backgrounds.items():
        env = make_env(args.data_dir, background, render=True)
        returns, episodes, frames, t0 = [], [], [], time.perf_counter()
        for scene_index in range(len(VAL_SCENES)):
            for seed in range(args.episodes):
                ret, episode = run_episode(env, stack, scene_index, seed, frames if not episodes else None)
                returns.append(ret)
                episodes.append(episode)
        seconds = (time.perf_counter() - t0) / len(episodes)
        video = write_video(frames, args.out / f"ego_vs_{name}.mp4")
        scenes = {s: load_scene(env.unwrapped.source, s) for s in VAL_SCENES}
        ego = compute_report(episodes, scenes)["overall"]["sim"]
        env.close()
        value = lambda m: float("nan") if ego[m]["value"] is None else ego[m]["value"]  # noqa: E731
        rows.append(f"{name:<16}{len(episodes):>9}{value('collision_rate_any'):>11.2f}"
                    f"{value('offroad_rate_step'):>10.3f}{value('min_ttc_s'):>11.2f}{np.mean(returns):>9.1f}"
                    f"{seconds:>7.2f}")
        print(f"{name}: {len(episodes)} episodes, video {video}")
    print("\nego metrics over the val scenes (blm-gym metrics on the recorded episodes): collision = "
          "collision_rate_any,\noff-road = offroad_rate_step, min TTC = min_ttc_s (mean over episodes); "
          "return = mean episode return of the wrapped env.")
    print(header, *rows, sep="\n")


if __name__ == "__main__":
    main()
