"""``blm-gym`` command line: demo, train, finetune, rollout, metrics, render."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # offscreen pygame unless the user asks otherwise


def _flag_overrides(args, names: dict[str, str]) -> list[str]:
    """``key=value`` overrides for the flags in ``names`` (flag attribute -> config field) that were given."""
    out = []
    for attr, field in names.items():
        value = getattr(args, attr)
        if value is not None and value is not False:
            out.append(f"{field}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def cmd_rollout(args) -> int:
    from blm_gym.config import config_to_dict, load_config
    from blm_gym.envs import scene_source
    from blm_gym.policies import make_policy
    from blm_gym.rollout.h5 import write_rollouts
    from blm_gym.rollout.runner import RolloutConfig, run_rollouts

    flags = {"env": "env", "data_dir": "data_dir", "policy": "policy", "checkpoint": "checkpoint", "samples": "samples",
             "start_step": "start_step", "horizon": "horizon_s", "controlled": "controlled", "seed": "seed",
             "membership": "membership", "entry_check_s": "entry_check_s", "protocol": "protocol",
             "scenes_per_batch": "scenes_per_batch", "out": "out"}
    overrides = _flag_overrides(args, flags) + ([f"scenes={json.dumps(args.scenes.split(','))}"] if args.scenes else [])
    cfg = load_config(RolloutConfig, args.config, overrides + list(args.set)).resolved()
    source = scene_source(cfg.env, cfg.data_dir, list(cfg.scenes) or None)
    rollouts = run_rollouts(source, lambda: make_policy(cfg.policy, checkpoint=cfg.checkpoint),
                            scene_ids=list(source.scene_ids), samples=cfg.samples, start_step=cfg.start_step,
                            horizon_s=cfg.horizon_s, controlled=cfg.controlled, seed=cfg.seed,
                            membership=cfg.membership, entry_check_s=cfg.entry_check_s,
                            scenes_per_batch=cfg.scenes_per_batch)
    path = write_rollouts(cfg.out, rollouts, json.loads(json.dumps(config_to_dict(cfg), default=str)))
    print(f"wrote {len(rollouts)} scene(s) x {cfg.samples} sample(s) to {path}")
    if args.render or args.render_img:
        from blm_gym.render import write_png
        from blm_gym.render.draw import RenderConfig
        from blm_gym.render.replay import render_rollout_videos, rollout_frames
        from blm_gym.data.registry import load_scene

        render_cfg = RenderConfig(width=args.render_size, height=args.render_size, px_per_m=args.px_per_m)
        out_dir = Path(cfg.out).with_suffix("")
        if args.render:
            for video in render_rollout_videos(rollouts, source, out_dir, render_cfg, args.draw_mode):
                print(f"wrote {video}")
        if args.render_img:  # the first frame of each scene's first sample, as a PNG
            for r in rollouts:
                frame = rollout_frames(r, 0, load_scene(source, r.scene_id), render_cfg, args.draw_mode, steps=1)[0]
                print(f"wrote {write_png(frame, out_dir / f'{r.scene_id}_s0.png')}")
    return 0


def cmd_metrics(args) -> int:
    from blm_gym.data.registry import load_scene
    from blm_gym.envs import scene_source
    from blm_gym.metrics.report import compute_report, format_table, write_report
    from blm_gym.rollout.h5 import read_rollouts

    rollouts, meta = read_rollouts(args.rollout)
    ids = [r.scene_id for r in rollouts]
    duplicates = sorted({s for s in ids if ids.count(s) > 1})
    if duplicates:
        raise ValueError(f"{args.rollout} holds scene ids {duplicates} more than once; score one policy run per file")
    cfg = meta.get("config", {})
    source = scene_source(cfg.get("env", "BLM-Synthetic-v0"), args.data_dir or cfg.get("data_dir"), ids)
    scenes = {sid: load_scene(source, sid) for sid in ids}
    if args.suite == "wosac":
        from blm_gym.metrics.report import wosac_report

        report = wosac_report(rollouts, scenes)
    else:
        report = compute_report(rollouts, scenes, suite=args.suite)
    out = write_report(report, args.out)
    print(format_table(report))
    print(f"wrote {out}")
    return 0


def cmd_train(args) -> int:
    from blm_gym.config import load_config

    if args.stage == "vae":
        from blm_gym.train.vae import VAETrainConfig as Config, train_vae as train
    else:
        from blm_gym.train.diffusion import DiffusionTrainConfig as Config, train_diffusion as train
    cfg = load_config(Config, args.config, args.set)
    train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes the checkpoint
        print(f"checkpoint: {cfg.out}")
    return 0


def cmd_finetune(args) -> int:
    from blm_gym.config import load_config
    from blm_gym.rl.ppo import FinetuneConfig, finetune

    overrides = list(args.set)
    for key in ("checkpoint", "reward", "steps", "out", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    path = finetune(load_config(FinetuneConfig, args.config, overrides), resume=args.resume)
    print(f"checkpoint: {path}")
    return 0


def cmd_demo(args) -> int:
    from blm_gym.config import load_config
    from blm_gym.demo import DemoConfig, run_demo

    overrides = list(args.set) + [f"data={args.data}", f"out={args.out}"]
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    run_demo(load_config(DemoConfig, args.config, overrides), mode=args.mode)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from blm_gym.sim.state import ENTRY_CHECK_S, Membership  # numpy only: keeps `blm-gym --help` fast

    p = argparse.ArgumentParser(prog="blm-gym", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the whole bi-level pipeline on embedded synthetic data (or real data)")
    d.add_argument("--data", default="synthetic", help="synthetic | nuscenes | scenarionet")
    d.add_argument("--data-dir", default=None, help="folder for --data nuscenes/scenarionet")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--mode", choices=("fresh", "resume", "overwrite"), default="fresh",
                   help="fresh: refuse an existing run folder; resume: reuse finished stages; overwrite: start over")
    d.add_argument("--config", default=None, help="JSON/TOML file with DemoConfig fields")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="DemoConfig overrides")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train the VAE (stage 1) or the latent diffusion model (stage 2)")
    t.add_argument("stage", choices=("vae", "diffusion"))
    t.add_argument("--config", default=None)
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint at the config's out path")
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("finetune", help="PPO fine-tuning of the diffusion model toward rule-based rewards (stage 3)")
    f.add_argument("--checkpoint", default=None)
    f.add_argument("--reward", default=None, help="weighted terms, e.g. collision=1,offroad=1")
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--out", default=None)
    f.add_argument("--device", default=None)
    f.add_argument("--config", default=None)
    f.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    f.add_argument("--resume", action="store_true")
    f.set_defaults(func=cmd_finetune)

    r = sub.add_parser("rollout", help="closed-loop rollouts of a policy, recorded to HDF5 (RolloutConfig; flags "
                       "override --config, --set overrides both)")
    r.add_argument("--env", default=None, help="env id whose scenes to use (default BLM-Synthetic-v0)")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--policy", default=None, help="log | constant_velocity | idm (default) | blm | blm_unguided")
    r.add_argument("--checkpoint", default=None, help="BLM weights for --policy blm (default: shipped model)")
    r.add_argument("--scenes", default=None, help="comma-separated scene ids (default: all)")
    r.add_argument("--samples", type=int, default=None)
    r.add_argument("--start-step", type=int, default=None)
    r.add_argument("--horizon", type=float, default=None, help="seconds")
    r.add_argument("--controlled", default=None, help="all_vehicles (default) | all | non_ego")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--membership", choices=[m.value for m in Membership], default=None,
                   help="log (default): agents enter and leave as logged; frozen: only those at the start, leaving "
                        "when their log ends (trajdata/tbsim); persistent: only those at the start, for the whole run")
    r.add_argument("--entry-check-s", type=float, default=None,
                   help="a newcomer waits while its logged box would overlap a simulated agent, or reach one "
                        f"sooner than in the log, within this many seconds (default {ENTRY_CHECK_S:g}; 0: off)")
    r.add_argument("--protocol", choices=("closed_loop", "wosac"), default=None,
                   help="wosac: current step 10, 80 steps, 32 samples, every agent valid then simulated throughout")
    r.add_argument("--scenes-per-batch", type=int, default=None,
                   help="episodes (scene x sample) run in lockstep, their replans in one batched call of the model "
                        "(blm policies; default 1: one at a time)")
    r.add_argument("--out", default=None, help="HDF5 file (default results/rollout.h5)")
    r.add_argument("--config", default=None, help="JSON/TOML file with RolloutConfig fields")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="RolloutConfig overrides")
    r.add_argument("--render", action="store_true", help="also write one mp4 per scene and sample")
    r.add_argument("--render-img", action="store_true", help="also write the first frame of each scene as a PNG")
    r.add_argument("--render-size", type=int, default=600)
    r.add_argument("--px-per-m", type=float, default=5.0)
    r.add_argument("--draw-mode", choices=("action", "entire_traj", "map"), default="action")
    r.set_defaults(func=cmd_rollout)

    m = sub.add_parser("metrics", help="score a rollout file: metrics.json, per-scene CSV, plots")
    m.add_argument("rollout")
    m.add_argument("--out", default="results/metrics")
    m.add_argument("--data-dir", default=None, help="data folder if it moved since the rollout")
    m.add_argument("--suite", choices=("default", "blm", "wosac"), default="default",
                   help="default: this package's metrics; blm: the BLM paper's definitions; wosac: the Waymo Sim "
                        "Agents realism meta-metric (rollouts made with --protocol wosac)")
    m.set_defaults(func=cmd_metrics)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"blm-gym {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
