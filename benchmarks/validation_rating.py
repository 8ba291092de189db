"""Rate fine-tuned checkpoints on the validation scenes, never on the held-out ones.

The scenes are the training scenes ``benchmarks/finetune_eval.py`` sets aside
(:func:`finetune_eval.validation_scenes`); the rating is the fine-tune's own
(:func:`blm_gym.rl.ppo.evaluate`: unguided closed loop, 8 s from step 30, one evaluation seed)
with more samples per scene than a learning-curve point, so that candidates from different runs
(seeds, reward mixes, budgets) are compared on the same rollouts' footing. Prints one JSON line
per checkpoint: failure, collision and off-road rates and the mean ``--reward`` per rollout::

    python benchmarks/validation_rating.py --samples 8 --checkpoint seed0=runs/a/closed_loop.best.pt \\
        --checkpoint seed1=runs/b/closed_loop.best.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from finetune_eval import validation_scenes

from blm_gym.models.checkpoint import load_model
from blm_gym.rl.ppo import FinetuneConfig, evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH (repeat)")
    p.add_argument("--samples", type=int, default=8, help="closed-loop samples per validation scene")
    p.add_argument("--reward", default=FinetuneConfig.reward, help="reward spec scored on each rollout")
    p.add_argument("--controlled", default=FinetuneConfig.controlled, help="all_vehicles or non_ego")
    args = p.parse_args()
    if args.samples < 1:
        raise SystemExit(f"--samples must be >= 1, got {args.samples}")
    named = [c.split("=", 1) for c in args.checkpoint]
    if any(len(n) != 2 or not all(n) for n in named):
        raise SystemExit(f"--checkpoint takes NAME=PATH, got {args.checkpoint}")
    missing = [path for _, path in named if not Path(path).is_file()]
    if missing:  # before the minutes of loading the scenes
        raise SystemExit(f"--checkpoint: no such file {missing}")
    cfg = FinetuneConfig(eval_samples=args.samples, reward=args.reward, controlled=args.controlled)
    scenes = validation_scenes()
    for name, path in named:
        print(json.dumps({"name": name, "checkpoint": path, "scenes": len(scenes), "samples": args.samples,
                          **evaluate(load_model(path), scenes, cfg, prefix="val")}), flush=True)


if __name__ == "__main__":
    main()
