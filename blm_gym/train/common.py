"""What the VAE and diffusion trainers share: scene loading and split, windows, the training loop.

The loop is deliberately plain (cleanrl style): seeded model init, one ``torch.Generator`` that
orders the data and draws every training noise, AdamW with a linear warm-up then a constant
rate (so ``steps`` can be raised and a run resumed without changing the past), optional
mirror augmentation (half the windows reflected left-right: nuScenes-mini is tiny), gradient
clipping, a CSV log, periodic validation and atomic checkpoints. Resuming restores weights,
optimizer, both RNG states and the step, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from blm_gym.data.scene import Scene
from blm_gym.atomic_files import atomic_path
from blm_gym.models.batch import AgentBatch, collate, mirror, scene_windows
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_checkpoint, restore_model, save_checkpoint
from blm_gym.train import distributed

NUSCENES_MINI_VAL = ("scene-0103", "scene-0916")  # official v1.0-mini val split


def load_scenes(data: str, data_dir: str | None, extra_data_dirs: Sequence[str], val_scenes: Sequence[str],
                synthetic_scenes: int, seed: int) -> tuple[list[Scene], list[Scene]]:
    """(train, val) scenes, split by scene id.

    ``data``: ``"scenarionet"`` (a ScenarioNet folder ``data_dir``; scenes whose id is in
    ``val_scenes`` go to val) or ``"synthetic"`` (``synthetic_scenes`` highway-env scenes; the
    last one is val). ``extra_data_dirs``: more ScenarioNet folders, used for training only.
    """
    from blm_gym.data.registry import open_source

    if data == "scenarionet":
        source = open_source("scenarionet", data_dir)
        scenes = [source.load(i) for i in range(len(source.scene_ids))]
        train = [s for s in scenes if s.scene_id not in val_scenes]
        val = [s for s in scenes if s.scene_id in val_scenes]
    elif data == "synthetic":
        source = open_source("synthetic", num_scenes=max(synthetic_scenes, 2), seed=seed)
        scenes = [source.load(i) for i in range(len(source.scene_ids))]
        train, val = scenes[:-1], scenes[-1:]
    else:
        raise ValueError(f"unknown data {data!r}: use 'scenarionet' (with data_dir) or 'synthetic'")
    for extra in extra_data_dirs:
        source = open_source("scenarionet", extra)
        train += [source.load(i) for i in range(len(source.scene_ids))]
    if not train:
        raise ValueError(f"no training scenes left after holding out val_scenes={list(val_scenes)}")
    return train, val


def windows(scenes: Sequence[Scene], stride: int, max_agents: int, model: BLMModel) -> AgentBatch | None:
    """All training windows of ``scenes`` collated into one batch (None if there are none)."""
    c = model.config
    ws = list(scene_windows(scenes, stride=stride, max_agents=max_agents, history_steps=c.history_steps,
                            future_steps=c.future_steps))
    return collate(ws) if ws else None


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole CSV log atomically (it is small)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= up_to_step]


LossFn = Callable[[BLMModel, AgentBatch, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
ValFn = Callable[[BLMModel], dict[str, float]]


def train_loop(cfg, model: BLMModel, params: list[torch.nn.Parameter], train: AgentBatch, loss_fn: LossFn,
               val_fn: ValFn | None, resume: bool, desc: str,
               finalize: Callable[[BLMModel], None] | None = None) -> tuple[BLMModel, list[dict]]:
    """Optimise ``params`` of ``model`` for ``cfg.steps`` steps on random batches of ``train``.

    ``cfg`` fields used: steps, batch_size, mirror, lr, weight_decay, warmup_steps, grad_clip, seed, out,
    log_every, val_every, save_every. ``finalize`` runs once after the last step, before the
    final checkpoint (e.g. to set ``latent_scale``). Returns the model and the CSV rows.
    Under ``torchrun`` each rank trains on its shard of ``train`` with averaged gradients and only
    rank 0 validates and writes files (:mod:`blm_gym.train.distributed`).
    """
    out = Path(cfg.out)
    log_path = out.with_suffix(".csv")
    ctx = distributed.init_from_env(next(model.parameters()).device)
    train = distributed.shard(train, ctx)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    data_rng = torch.Generator().manual_seed(cfg.seed)
    step, rows = 0, []
    if resume and out.is_file():
        ckpt = load_checkpoint(out)
        restore_model(model, ckpt, where=str(out))
        if ckpt["optimizer"] is None:
            raise ValueError(f"{out} has no optimizer state (a shipped model?); train without --resume")
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        data_rng.set_state(ckpt["rng"]["data"])
        step = ckpt["step"]
        rows = read_csv(log_path, step)
    elif resume:
        tqdm.write(f"{desc}: nothing to resume at {out}; starting from step 0")
    distributed.setup_model(model, ctx)
    device = next(model.parameters()).device
    n = train.batch_size
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=None if ctx.is_main else True)
    while step < cfg.steps:
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=data_rng)
        batch = train.index(idx)
        if cfg.mirror:
            batch = mirror(batch, torch.rand(len(idx), generator=data_rng) < 0.5)
        batch = batch.to(device)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        model.train()
        loss, logs = loss_fn(model, batch, data_rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(params, ctx)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        last = step == cfg.steps
        if ctx.is_main and (step % cfg.log_every == 0 or last):
            row = {"step": step, "loss": float(loss.detach()), **logs}
            if val_fn is not None and (step % cfg.val_every == 0 or last):
                model.eval()
                with torch.no_grad():
                    row.update({f"val_{k}": v for k, v in val_fn(model).items()})
            rows.append(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "step"})
            write_csv(log_path, rows)
        if last and finalize is not None:
            finalize(model)
        if ctx.is_main and (step % cfg.save_every == 0 or last):
            save_checkpoint(out, model, step=step, train_config=cfg, optimizer=opt, data_rng=data_rng)
    bar.close()
    model.eval()
    return model, rows

