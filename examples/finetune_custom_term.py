"""Fine-tune the traffic model toward a rule you write in a few lines: slow down near pedestrians.

The term below is all a user writes (built-in terms such as ``speed_limit`` work the same way).
Stage 3 (closed-loop PPO on the denoising chain) then makes the model keep the rule *by itself*:
the fine-tuned model runs without guidance. The example fine-tunes the shipped model on the
train split of nuScenes-mini, then rolls out the pretrained
and the fine-tuned model (both unguided) on the held-out val scenes and prints the share of
vehicle-steps near a pedestrian above the limit next to collision and off-road rates::

    python examples/finetune_custom_term.py --data-dir ../shared/data/nuscenes-mini --limit 3 --iterations 20
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from blm_gym.data.registry import open_source
from blm_gym.data.scene import AgentType
from blm_gym.metrics.report import compute_report
from blm_gym.models.checkpoint import load_model
from blm_gym.models.guidance import GuidanceConfig
from blm_gym.policies.latent_diffusion import DEFAULT_CHECKPOINT, LatentDiffusionPolicy
from blm_gym.rewards import register_term
from blm_gym.rl.ppo import FinetuneConfig, finetune
from blm_gym.rollout.runner import run_rollouts


@register_term("yield_to_pedestrians")
def yield_to_pedestrians(ctx, limit: float = 3.0, radius: float = 10.0):
    """Minus the mean excess speed [m/s] over ``limit`` of scored vehicle-steps within ``radius`` [m] of a pedestrian."""
    near = near_pedestrian(ctx.x, ctx.y, ctx.valid, ctx.agent_type, radius)
    excess = np.where(ctx.focus & near, np.maximum(ctx.speed - limit, 0.0), 0.0)
    return 0.0 - excess.sum((-2, -1)) / np.maximum(ctx.focus.sum((-2, -1)), 1)


def near_pedestrian(x, y, valid, agent_type, radius: float) -> np.ndarray:
    """Bool ``(..., N, T)``: agents within ``radius`` of a valid pedestrian at that step."""
    d = np.hypot(x[..., :, None, :] - x[..., None, :, :], y[..., :, None, :] - y[..., None, :, :])
    ped = (np.asarray(agent_type) == AgentType.PEDESTRIAN)[:, None]
    return ((d < radius) & ped & valid[..., None, :, :]).any(-2)


def evaluate(checkpoint: str, source, limit: float, samples: int) -> dict[str, float]:
    policy = lambda: LatentDiffusionPolicy(load_model(checkpoint), guidance=GuidanceConfig(steps=0))  # noqa: E731
    rollouts = run_rollouts(source, policy, scene_ids=list(source.scene_ids), samples=samples, horizon_s=8.0,
                            progress=False)
    fast, near = 0, 0
    for r in rollouts:
        close = near_pedestrian(r.x, r.y, r.valid, r.agent_type, 10.0) & r.valid & r.controlled[None, :, None]
        fast, near = fast + (close & (r.speed > limit)).sum(), near + close.sum()
    sim = compute_report(rollouts, {sid: source.load(i).road.drivable
                                    for i, sid in enumerate(source.scene_ids)})["overall"]["sim"]
    return {"near_pedestrian_above_limit": float(fast / max(near, 1)), "near_pedestrian_steps": int(near),
            "collision_rate_any": sim["collision_rate_any"]["value"],
            "offroad_rate_any": sim["offroad_rate_any"]["value"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a ScenarioNet folder (e.g. ../shared/data/nuscenes-mini)")
    p.add_argument("--limit", type=float, default=3.0, help="m/s within 10 m of a pedestrian")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--samples", type=int, default=4, help="closed-loop samples per held-out scene")
    p.add_argument("--out", default="runs/yield_to_pedestrians.pt")
    p.add_argument("--smoke", action="store_true", help="a tiny run (tests)")
    args = p.parse_args()
    small = dict(scenes_per_step=1, samples_per_scene=2, num_chains=2, max_scenes=2) if args.smoke else {}
    cfg = FinetuneConfig(checkpoint=str(DEFAULT_CHECKPOINT), env="BLM-ScenarioNet-v0", data_dir=args.data_dir,
                         reward=f"yield_to_pedestrians(limit={args.limit})=1,collision=1,offroad(from_road=1)=1",
                         steps=args.iterations, out=args.out, **small)
    if Path(args.out).exists():
        Path(args.out).unlink()  # a fresh run each time
    tuned = finetune(cfg)
    held_out = open_source("scenarionet", args.data_dir, split="heldout")
    print(f"held-out scenes {list(held_out.scene_ids)}, {args.limit} m/s near pedestrians, unguided, "
          f"{args.samples} samples:")
    for name, ckpt in (("pretrained", str(DEFAULT_CHECKPOINT)), ("fine-tuned", str(tuned))):
        print(name, {k: round(v, 4) for k, v in evaluate(ckpt, held_out, args.limit, args.samples).items()})


if __name__ == "__main__":
    main()
