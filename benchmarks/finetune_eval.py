"""Stage-3 runs behind the README's results: closed-loop and open-loop PPO fine-tuning, same budget.

Fine-tunes ``--checkpoint`` for ``--reward`` on the *train* split of every shared source
(``blm_gym.data.splits``) twice, in parallel, ``--threads`` CPU threads each (default 1) and the
same wall-clock budget: closed loop (``loop=closed``, the shipped set-up) and open loop
(``loop=open``, BLM's one plan per chain), with :data:`VALIDATION` and :data:`LOOP_SETTINGS`.
Each run logs its learning curve on a fixed set of held-out scenes (nuScenes-mini val and held-out
womd-sample) to ``<out>/<loop>_loop.csv`` / ``.png``, and keeps the weights that 8 training scenes
set aside rate best as ``<out>/<loop>_loop.best.pt`` (the shipped ``blm_safe.pt`` is the closed
loop's of ``--set seed=1``, which the set-aside scenes rated above seed 0's:
``benchmarks/validation_rating.py``). The tables comparing the two come from
``benchmarks/results_md.py`` (``@safe`` / ``@open`` columns);
``benchmarks/adversarial_eval.py --dataset validation`` rates safety-critical runs on the same
set-aside scenes::

    python benchmarks/finetune_eval.py --minutes 25 --out runs/stage3
    python benchmarks/finetune_eval.py --minutes 25 --loops closed --out runs/stage3_adversarial \\
        --reward "safety_critical=1,collision(ignore_ego=1)=1,offroad(from_road=1)=1" \\
        --set controlled=non_ego val_scenes=0
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shared_data import SHARED_DATA

from blm_gym.atomic_files import atomic_path
from blm_gym.policies.latent_diffusion import DEFAULT_CHECKPOINT

TRAIN_SOURCES = ("scenarionet:nuscenes-mini", "scenarionet:womd-sample", "scenarionet:womd-gpudrive",
                 "womd:womd-protos", "interaction:interaction", "av2:av2-sample", "commonroad:commonroad-ngsim")
EVAL_SOURCES = ("scenarionet:nuscenes-mini", "scenarionet:womd-sample")
VAL_SCENES = 8  # training scenes set aside to choose the kept iteration
# FinetuneConfig's defaults plus these (open loop executes the whole plan: no look-ahead term)
VALIDATION = f"val_scenes={VAL_SCENES}"
LOOP_SETTINGS = {"closed": ("plan_weight=1",), "open": ()}


def sources(entries) -> list[str]:
    """``FinetuneConfig.sources``: the entries with their folders under the shared data."""
    return [f"{k}:{SHARED_DATA / folder}" for k, folder in (e.split(":", 1) for e in entries)]


def validation_scenes() -> list:
    """The training scenes every run here sets aside (:data:`VAL_SCENES` of :data:`TRAIN_SOURCES`)."""
    from blm_gym.rl.ppo import FinetuneConfig, training_scenes, validation_split

    return validation_split(training_scenes(FinetuneConfig(sources=tuple(sources(TRAIN_SOURCES)))), VAL_SCENES)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="pretrained BLM (default: shipped)")
    p.add_argument("--reward", default="collision=1,offroad(from_road=1)=1")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of each run")
    p.add_argument("--loops", default="closed,open")
    p.add_argument("--out", required=True)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more FinetuneConfig overrides")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run")
    args = p.parse_args()
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    runs = {}
    for loop in args.loops.split(","):
        if loop not in LOOP_SETTINGS:
            raise SystemExit(f"--loops: {loop!r} is not one of {sorted(LOOP_SETTINGS)}")
        cmd = [sys.executable, "-m", "blm_gym.cli", "finetune", "--checkpoint", args.checkpoint, "--reward",
               args.reward, "--steps", "100000", "--out", str(out / f"{loop}_loop.pt"), "--set", f"loop={loop}",
               f"time_budget_min={args.minutes}", f"sources={json.dumps(sources(TRAIN_SOURCES))}",
               f"eval_sources={json.dumps(sources(EVAL_SOURCES))}", VALIDATION, *LOOP_SETTINGS[loop], *args.set]
        print(" ".join(cmd), file=sys.stderr)
        log = open(out / f"{loop}_loop.log", "w")
        runs[loop] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.perf_counter())
    report = {}
    for loop, (proc, t0) in runs.items():
        if proc.wait():
            raise SystemExit(f"{loop}-loop fine-tune failed; see {out / f'{loop}_loop.log'}")
        report[loop] = {"seconds": round(time.perf_counter() - t0, 1), "checkpoint": str(out / f"{loop}_loop.pt"),
                        "best": str(out / f"{loop}_loop.best.pt")}
    with atomic_path(out / "runs.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
