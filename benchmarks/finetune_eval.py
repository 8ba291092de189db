"""Stage-3 acceptance run: PPO-fine-tune the shipped BLM model, then compare it closed loop with the pretrained one.

Fine-tunes on the nuScenes-mini *train* scenes (every scene but the held-out val scenes
scene-0103 and scene-0916) with ``blm-gym finetune``, evaluates ``blm`` (pretrained) and
``blm@tuned`` on nuScenes-mini val with ``policy_table.evaluate`` (10 s closed loop, K samples),
prints JSON (failure / collision / off-road rates, min TTC, JSDs, wall times) and writes
``learning_curve.png`` (reward mean +- std per iteration, from the fine-tuning CSV) into ``--out``::

    python benchmarks/finetune_eval.py --steps 20 --out runs/finetune_safe
    python benchmarks/finetune_eval.py --reward safety_critical=1 --steps 20 --out runs/finetune_adv
    python benchmarks/finetune_eval.py --finetuned runs/finetune_safe/tuned.pt --out runs/finetune_safe  # eval only

The closed-loop policy samples with the model's default DDIM steps and ``eta = 0``; the
fine-tuning defaults (``num_denoise_steps=5``, ``eta=0``) match it.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_table import DATASETS, evaluate  # noqa: E402

from blm_gym.data.scenarionet import ScenarioNetSource  # noqa: E402
from shared_data import SHARED_DATA
from blm_gym.atomic_files import atomic_path  # noqa: E402
from blm_gym.policies.latent_diffusion import DEFAULT_CHECKPOINT  # noqa: E402

REPORTED = ("failure_rate", "collision_rate_any", "offroad_rate_any", "min_ttc_s", "jsd_speed", "jsd_accel", "jsd_jerk")


def train_scene_ids() -> list[str]:
    """nuScenes-mini scenes minus the val scenes of ``policy_table``."""
    folder, val = DATASETS["nuscenes-val"]
    return [s for s in ScenarioNetSource(SHARED_DATA / folder).scene_ids if s not in val]


def run_finetune(checkpoint: str, reward: str, steps: int, out: Path, extra: list[str]) -> float:
    """``blm-gym finetune`` on the train scenes; returns its wall time [s]."""
    data = SHARED_DATA / DATASETS["nuscenes-val"][0]
    cmd = [sys.executable, "-m", "blm_gym.cli", "finetune", "--checkpoint", checkpoint, "--reward", reward,
           "--steps", str(steps), "--out", str(out), "--set", "env=BLM-ScenarioNet-v0", f"data_dir={data}",
           "scene_ids=" + json.dumps(train_scene_ids()), *extra]
    print(" ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def plot_curve(log_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    it = [int(r["iteration"]) for r in rows]
    mean = [float(r["reward_mean"]) for r in rows]
    std = [float(r["reward_std"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(it, mean, marker="o", label="reward mean")
    ax.fill_between(it, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2,
                    label="+- std over samples")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("reward on decoded plans")
    ax.set_title(log_csv.stem)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def summary(result: dict) -> dict:
    sim = result["sim"]
    return {m: sim.get(m, {}).get("value") for m in REPORTED} | {"seconds": round(result["seconds"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="pretrained BLM (default: shipped)")
    p.add_argument("--reward", default="collision=1,offroad(from_road=1)=1")
    p.add_argument("--steps", type=int, default=20, help="PPO iterations")
    p.add_argument("--out", required=True, help="folder for tuned.pt, tuned.csv, learning_curve.png, results.json")
    p.add_argument("--finetuned", default=None, help="evaluate this checkpoint instead of fine-tuning")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--horizon", type=float, default=10.0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more FinetuneConfig overrides")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tuned = Path(args.finetuned) if args.finetuned else out / "tuned.pt"
    train_s = None
    if not args.finetuned:
        train_s = run_finetune(args.checkpoint, args.reward, args.steps, tuned, args.set)
    if tuned.with_suffix(".csv").exists():
        plot_curve(tuned.with_suffix(".csv"), out / "learning_curve.png")
    res = evaluate("nuscenes-val", ["blm", "blm@tuned"], args.samples, args.horizon,
                   {"blm": args.checkpoint, "tuned": str(tuned)})
    pre, post = summary(res["blm"]), summary(res["blm@tuned"])
    jsd = lambda s: sum(s[k] for k in ("jsd_speed", "jsd_accel", "jsd_jerk")) / 3  # noqa: E731
    report = {
        "reward": args.reward, "pretrained": pre, "finetuned": post, "finetune_seconds": train_s,
        "failure_rate_ratio": post["failure_rate"] / pre["failure_rate"] if pre["failure_rate"] else None,
        "mean_jsd_increase": jsd(post) - jsd(pre), "checkpoint": str(tuned),
    }
    with atomic_path(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
