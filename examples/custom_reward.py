"""Write your own rule-based reward term and use it everywhere blm_gym takes one.

A term is any function ``term(ctx) -> scores`` over a :class:`blm_gym.rewards.RewardContext`
(numpy arrays ``(..., N, T)`` of x, y, heading, speed, valid, plus extents, agent types, the
``controlled`` agents being scored, the ego index, dt and the drivable area). Higher is better.
The same term then serves

- the env, per step, through :class:`blm_gym.rewards.RewardTermWrapper` (scores the ego), and
- PPO fine-tuning of the traffic model, through ``make_reward("...")`` once registered
  (scores the vehicles the traffic model drives, on the states each denoising chain's plan produced
  in closed loop): ``blm-gym finetune --reward keep_gap=1,collision=1``
  (``examples/finetune_custom_term.py`` fine-tunes for a term written like these).

Run: ``python examples/custom_reward.py``
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

import blm_gym  # noqa: F401  (registers the env ids)
from blm_gym.rewards import CollisionPenalty, RewardContext, RewardTermWrapper, make_reward, register_term


@register_term("keep_gap")
def keep_gap(ctx: RewardContext, min_gap: float = 10.0) -> np.ndarray:
    """Minus the mean shortfall [m] of each scored agent's distance to its nearest other agent."""
    dx = ctx.x[..., :, None, :] - ctx.x[..., None, :, :]  # (..., N, N, T)
    dy = ctx.y[..., :, None, :] - ctx.y[..., None, :, :]
    both = ctx.valid[..., :, None, :] & ctx.valid[..., None, :, :] & ~np.eye(ctx.x.shape[-2], dtype=bool)[:, :, None]
    nearest = np.where(both, np.hypot(dx, dy), np.inf).min(-2)  # (..., N, T)
    shortfall = np.where(ctx.focus & np.isfinite(nearest), np.maximum(min_gap - nearest, 0.0), 0.0)
    return 0.0 - shortfall.sum((-2, -1)) / np.maximum(ctx.focus.sum((-2, -1)), 1)


class SlowZone:
    """A term as a class: penalise speed above ``limit`` m/s inside a circle (e.g. a school zone)."""

    window = 1  # states this term needs per env step

    def __init__(self, centre: tuple[float, float], radius: float, limit: float):
        self.centre, self.radius, self.limit = centre, radius, limit

    def __call__(self, ctx: RewardContext) -> np.ndarray:
        inside = np.hypot(ctx.x - self.centre[0], ctx.y - self.centre[1]) < self.radius
        excess = np.where(inside & ctx.focus, np.maximum(ctx.speed - self.limit, 0.0), 0.0)
        return 0.0 - excess.sum((-2, -1)) / np.maximum(ctx.focus.sum((-2, -1)), 1)


def main() -> None:
    env = gym.make("BLM-Synthetic-v0", num_scenes=1)
    obs, info = env.reset(seed=0)
    scene = env.unwrapped.scene
    ego = scene.traj.select(agents=[scene.ego_index])
    zone = SlowZone(centre=(float(ego.x[0, -1]), float(ego.y[0, -1])), radius=30.0, limit=5.0)

    # 1. Per-step env rewards: nest wrappers; info["reward_terms"] holds each unweighted value.
    env = RewardTermWrapper(CollisionPenalty(env), make_reward("keep_gap(min_gap=8)=0.1"), name="keep_gap")
    env = RewardTermWrapper(env, zone, weight=1.0, name="slow_zone")
    obs, info = env.reset(seed=0)
    total, steps = 0.0, 0
    for steps in range(1, 31):
        obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0], np.float32))
        total += reward
        if terminated or truncated:
            break
    print(f"scene {scene.scene_id}: return over {steps} steps = {total:.3f}; last terms {info['reward_terms']}")

    # 2. The same terms scoring whole logged trajectories (fine-tuning scores simulated ones the same way).
    tr = scene.traj
    ctx = RewardContext.from_scene(scene, tr.x, tr.y, tr.heading, tr.speed, tr.valid)
    reward = make_reward("keep_gap=1,collision=1,offroad=1,progress=0.01")
    print("logged scene, every agent scored:", {k: round(float(v), 4) for k, v in reward.values(ctx).items()})


if __name__ == "__main__":
    main()
