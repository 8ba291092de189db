"""``blm-gym demo``: the whole bi-level pipeline on one machine, stage by stage.

1. train the action VAE (stage 1) and 2. the scene-level latent diffusion model (stage 2) on the
training scenes; 3. PPO-fine-tune the diffusion model toward a rule-based objective (stage 3),
keeping the iteration that training scenes set aside rate best;
4. roll both models out closed loop on the source's held-out split (``blm_gym.data.splits``; synthetic:
every fifth scene of each road kind) K times each, 5. score them next to the
logged ground truth, and write ``rollout.h5``, ``metrics.json``, an mp4 and a PNG contact sheet.

By default the scenes are the embedded synthetic ones (highway-env traffic, no download);
``data="nuscenes"`` / ``"scenarionet"`` with ``data_dir`` runs the same pipeline on real logs
(nuScenes: mini_train for training, mini_val for evaluation).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from blm_gym.config import config_to_dict
from blm_gym.atomic_files import atomic_path

STAGES = ("vae", "diffusion", "finetune", "evaluate")


@dataclass(frozen=True)
class DemoConfig:
    """Budgets are sized for about 10 minutes on 2 CPU cores with synthetic data (scenes recorded
    on first use, about 1 s each, then cached)."""

    data: str = "synthetic"  # "synthetic", "nuscenes" (ScenarioNet folder or raw root) or "scenarionet"
    data_dir: str | None = None  # for real data (else $BLM_GYM_DATA)
    out: str = "runs/demo"
    synthetic_scenes: int = 40  # highway/merge/roundabout/intersection x 10 seeds
    eval_scenes: tuple[str, ...] = ()  # evaluation scene ids; (): the source's heldout split (synthetic: 2 per kind)
    vae_steps: int = 1000
    diffusion_steps: int = 2500  # on synthetic scenes turns are learnt late (1000 steps: barely any)
    finetune_iterations: int = 10  # PPO iterations (collect + update)
    finetune_val_scenes: int = 4  # training scenes set aside: the fine-tune shown is the iteration they rate best
    reward: str = "collision=1,offroad=1"  # the stage-3 objective
    samples: int = 4  # closed-loop samples per evaluation scene
    horizon_s: float = 10.0
    seed: int = 0
    num_threads: int = 2


ENV_IDS = {"synthetic": "BLM-Synthetic-v0", "nuscenes": "BLM-nuScenes-v0", "scenarionet": "BLM-ScenarioNet-v0"}


def _scenes(cfg: DemoConfig):
    """(source, train scenes, eval scene ids): the source's heldout split (or ``cfg.eval_scenes``)
    is evaluated on, the rest trained on."""
    if cfg.data not in ENV_IDS:
        raise ValueError(f"demo: data must be one of {sorted(ENV_IDS)}, got {cfg.data!r}")
    from blm_gym.data.splits import split_scene_ids
    from blm_gym.envs import scene_source

    options = dict(num_scenes=cfg.synthetic_scenes, seed=cfg.seed) if cfg.data == "synthetic" else {}
    source = scene_source(ENV_IDS[cfg.data], cfg.data_dir, **options)
    eval_ids = list(cfg.eval_scenes) or split_scene_ids(source, "heldout")
    unknown = sorted(set(eval_ids) - set(source.scene_ids))
    if unknown or not eval_ids:
        raise ValueError(f"demo: evaluation scenes {unknown or 'none'} (of {len(source.scene_ids)} scenes): "
                         "pass eval_scenes from the source's ids, or more synthetic_scenes (held out: NNN % 5 == 4)")
    train = [source.load(i) for i, sid in enumerate(source.scene_ids) if sid not in eval_ids]
    if not train:
        raise ValueError(f"demo: no training scenes left after holding out {eval_ids}")
    return source, train, eval_ids


def _prepare_out(out: Path, mode: str) -> None:
    if mode == "overwrite" and out.exists():
        shutil.rmtree(out)
    if mode == "fresh" and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"demo: {out} already holds a run; pass --mode resume to reuse its finished stages "
                              "or --mode overwrite to start over (or --out another folder)")
    out.mkdir(parents=True, exist_ok=True)


def run_demo(cfg: DemoConfig, mode: str = "fresh") -> dict:
    """Run every stage; with ``mode="resume"`` stages whose outputs exist are skipped.

    Returns the before/after summary also written to ``<out>/metrics.json``.
    """
    import torch

    from blm_gym.models.checkpoint import load_checkpoint
    from blm_gym.rl.ppo import FinetuneConfig, best_checkpoint, finetune
    from blm_gym.train.diffusion import DiffusionTrainConfig, train_diffusion
    from blm_gym.train.vae import VAETrainConfig, train_vae

    if mode not in ("fresh", "resume", "overwrite"):
        raise ValueError(f"mode must be fresh, resume or overwrite; got {mode!r}")
    torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out)
    _prepare_out(out, mode)
    (out / "config.json").write_text(json.dumps({"demo": config_to_dict(cfg), "mode": mode}, indent=1))
    source, train, eval_ids = _scenes(cfg)
    print(f"[demo] {len(train)} training scenes, evaluation on {eval_ids}; outputs in {out}/")
    timings = {}

    def stage(name: str, path: Path, fn) -> Path:
        if path.exists() and mode == "resume":
            print(f"[demo] {name}: reusing {path}")
            return path
        t0 = time.perf_counter()
        fn(path)
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[demo] {name}: {timings[name]} s -> {path}")
        return path

    split = (train, train[-1:])  # training loops validate on a training scene: eval scenes stay unseen
    # the demo's windows are in memory: loader worker processes would only add IPC on 2 cores
    vae = stage("stage 1: VAE", out / "vae.pt", lambda p: train_vae(
        VAETrainConfig(data="synthetic", steps=cfg.vae_steps, seed=cfg.seed, out=str(p), val_every=10**9,
                       save_every=cfg.vae_steps, loader_workers=0), scenes=split))
    pretrained = stage("stage 2: latent diffusion", out / "pretrained.pt", lambda p: train_diffusion(
        DiffusionTrainConfig(vae_checkpoint=str(vae), data="synthetic", steps=cfg.diffusion_steps, seed=cfg.seed,
                             out=str(p), val_every=10**9, save_every=cfg.diffusion_steps, loader_workers=0),
        scenes=split))
    # rated before the first and after the last iteration, so the weights shown are never worse on the
    # validation scenes than the pretrained ones: PPO at this budget can drift either way
    last = stage("stage 3: PPO fine-tuning", out / "finetuned.pt", lambda p: finetune(
        replace(FinetuneConfig(), checkpoint=str(pretrained), reward=cfg.reward, steps=cfg.finetune_iterations,
                scenes_per_step=2, num_chains=4, seed=cfg.seed, out=str(p), val_scenes=cfg.finetune_val_scenes,
                eval_every=cfg.finetune_iterations), scenes=train))
    best = best_checkpoint(last)  # absent without validation scenes (each source keeps half)
    finetuned = best if best.exists() else last
    t0 = time.perf_counter()
    summary = evaluate(source, eval_ids, {"pretrained": pretrained, "finetuned": finetuned}, cfg, out)
    summary["finetuned_iteration"] = int(load_checkpoint(finetuned)["step"])
    timings["evaluate"] = round(time.perf_counter() - t0, 1)
    summary["seconds"] = timings
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(before_after_table(summary))
    print(f"[demo] fine-tuned weights shown: {finetuned.name}, after {summary['finetuned_iteration']} of "
          f"{cfg.finetune_iterations} PPO iterations (0: none beat the pretrained ones on the validation scenes)")
    print(f"[demo] done: {out}/metrics.json, rollout.h5, rollout.mp4, contact_sheet.png")
    return summary


def evaluate(source, eval_ids: list[str], checkpoints: dict[str, Path], cfg: DemoConfig, out: Path) -> dict:
    """Closed-loop rollouts of each checkpoint on ``eval_ids``, their metrics, a video and a contact sheet."""
    from blm_gym.metrics.report import compute_report, write_report
    from blm_gym.policies import make_policy
    from blm_gym.render import RenderConfig, contact_sheet, write_png, write_video
    from blm_gym.render.replay import rollout_frames
    from blm_gym.rollout.h5 import write_rollouts
    from blm_gym.data.registry import load_scene
    from blm_gym.rollout.runner import run_rollouts

    scenes = {sid: load_scene(source, sid) for sid in eval_ids}
    all_rollouts, summary = [], {"definitions": None, "scenes": eval_ids, "samples": cfg.samples}
    for name, ckpt in checkpoints.items():
        # the bare model (no sampling-time guidance): the before/after shows what stage 3 changed
        rollouts = run_rollouts(source, lambda: make_policy("blm_unguided", checkpoint=str(ckpt)), scene_ids=eval_ids,
                                samples=cfg.samples, horizon_s=cfg.horizon_s, seed=cfg.seed)
        rollouts = [replace(r, policy=f"blm_unguided-{name}") for r in rollouts]
        report = compute_report(rollouts, scenes)
        write_report(report, out / f"metrics_{name}")
        summary[name] = report["overall"]["sim"]
        summary["log"] = report["overall"]["log"]
        summary["definitions"] = report["definitions"]
        all_rollouts += rollouts
    write_rollouts(out / "rollout.h5", all_rollouts,
                   {"demo": config_to_dict(cfg), "env": ENV_IDS[cfg.data], "data_dir": cfg.data_dir})
    finetuned = [r for r in all_rollouts if r.policy == "blm_unguided-finetuned"]
    frames = rollout_frames(finetuned[0], 0, scenes[finetuned[0].scene_id], RenderConfig(width=480, height=480))
    write_video(frames, out / "rollout.mp4", fps=10)
    picks = [frames[i] for i in range(0, len(frames), max(1, len(frames) // 8))][:8]
    write_png(contact_sheet(picks, cols=4), out / "contact_sheet.png")
    return summary


def before_after_table(summary: dict) -> str:
    names = ("failure_rate", "collision_rate_any", "offroad_rate_any", "collision_rate_step", "offroad_rate_step",
             "min_ttc_s", "jsd_speed", "jsd_accel", "jsd_jerk", "fdd_m", "min_ade_m")

    def fmt(block, m):
        v = block.get(m, {}).get("value")
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"{'metric':<22}{'log':>10}{'pretrained':>12}{'finetuned':>12}"]
    lines += [f"{m:<22}{fmt(summary['log'], m):>10}{fmt(summary['pretrained'], m):>12}{fmt(summary['finetuned'], m):>12}"
              for m in names]
    return "\n".join(lines)
