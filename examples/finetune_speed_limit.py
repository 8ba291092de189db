"""Fine-tune the traffic model toward a rule you write in a few lines: a speed limit.

The term below is all a user writes. Stage 3 (closed-loop PPO on the denoising chain) then makes
the model keep the limit *by itself*: the fine-tuned model runs without guidance. The example
fine-tunes the shipped model on the train split of nuScenes-mini, then rolls out the pretrained
and the fine-tuned model (both unguided) on the held-out val scenes and prints the share of
vehicle-steps above the limit next to collision and off-road rates::

    python examples/finetune_speed_limit.py --data-dir ../shared/data/nuscenes-mini --limit 8 --iterations 20
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from blm_gym.data.registry import open_source
from blm_gym.metrics.report import compute_report
from blm_gym.models.checkpoint import load_model
from blm_gym.models.guidance import GuidanceConfig
from blm_gym.policies.latent_diffusion import DEFAULT_CHECKPOINT, LatentDiffusionPolicy
from blm_gym.rewards import register_term
from blm_gym.rl.ppo import FinetuneConfig, finetune
from blm_gym.rollout.runner import run_rollouts


@register_term("speed_limit")
def speed_limit(ctx, limit: float = 8.0):
    """Minus the mean excess speed [m/s] over ``limit`` of the scored vehicle-steps."""
    excess = np.where(ctx.focus, np.maximum(ctx.speed - limit, 0.0), 0.0)
    return 0.0 - excess.sum((-2, -1)) / np.maximum(ctx.focus.sum((-2, -1)), 1)


def evaluate(checkpoint: str, source, limit: float, samples: int) -> dict[str, float]:
    policy = lambda: LatentDiffusionPolicy(load_model(checkpoint), guidance=GuidanceConfig(steps=0))  # noqa: E731
    rollouts = run_rollouts(source, policy, scene_ids=list(source.scene_ids), samples=samples, horizon_s=8.0,
                            progress=False)
    over = [((r.speed > limit) & r.valid & r.controlled[None, :, None]).sum() /
            max((r.valid & r.controlled[None, :, None]).sum(), 1) for r in rollouts]
    sim = compute_report(rollouts, {sid: source.load(i).road.drivable
                                    for i, sid in enumerate(source.scene_ids)})["overall"]["sim"]
    return {"above_limit": float(np.mean(over)), "collision_rate_any": sim["collision_rate_any"]["value"],
            "offroad_rate_any": sim["offroad_rate_any"]["value"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a ScenarioNet folder (e.g. ../shared/data/nuscenes-mini)")
    p.add_argument("--limit", type=float, default=8.0, help="m/s")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--samples", type=int, default=4, help="closed-loop samples per held-out scene")
    p.add_argument("--out", default="runs/speed_limit.pt")
    p.add_argument("--smoke", action="store_true", help="a tiny run (tests)")
    args = p.parse_args()
    small = dict(scenes_per_step=1, samples_per_scene=2, num_chains=2, max_scenes=2) if args.smoke else {}
    cfg = FinetuneConfig(checkpoint=str(DEFAULT_CHECKPOINT), env="BLM-ScenarioNet-v0", data_dir=args.data_dir,
                         reward=f"speed_limit(limit={args.limit})=1,collision=1,offroad(from_road=1)=1",
                         steps=args.iterations, out=args.out, **small)
    if Path(args.out).exists():
        Path(args.out).unlink()  # a fresh run each time
    tuned = finetune(cfg)
    held_out = open_source("scenarionet", args.data_dir, split="heldout")
    print(f"held-out scenes {list(held_out.scene_ids)}, limit {args.limit} m/s, unguided, {args.samples} samples:")
    for name, ckpt in (("pretrained", str(DEFAULT_CHECKPOINT)), ("fine-tuned", str(tuned))):
        print(name, {k: round(v, 4) for k, v in evaluate(ckpt, held_out, args.limit, args.samples).items()})


if __name__ == "__main__":
    main()
