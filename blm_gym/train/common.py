"""What the VAE and diffusion trainers share: the data (sources, splits, window caches), the training loop.

Data: the training scenes' windows are cut once into an on-disk cache per source and split
(:mod:`blm_gym.train.window_cache`) and read by a DataLoader (:mod:`blm_gym.train.loader`);
scenes passed in by the caller (``scenes=``) are windowed in memory instead. Either way the loop
sees the same :class:`AgentBatch` per step.

The loop is deliberately plain (cleanrl style): seeded model init, a batch order that is a
function of the seed and the step (:class:`~blm_gym.train.loader.StepBatchSampler`), one
``torch.Generator`` that draws every training noise (and the mirror flips), AdamW with a linear
warm-up then a constant rate (so ``steps`` can be raised and a run resumed without changing the
past), optional mirror augmentation (half the windows reflected left-right: nuScenes-mini is
tiny), gradient clipping, a CSV log, periodic validation and atomic checkpoints. Resuming
restores weights, optimizer, both RNG states and the step, so a resumed run equals an
uninterrupted one.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from blm_gym.atomic_files import atomic_path
from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneSource
from blm_gym.models.batch import AgentBatch, collate, mirror, scene_windows
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_checkpoint, restore_model, save_checkpoint
from blm_gym.train import distributed
from blm_gym.train.loader import CachedWindows, InMemoryWindows, StepBatchSampler, Windows, make_loader
from blm_gym.train.window_cache import WindowConfig, default_cache_dir, open_window_cache

VAL_STRIDE = 10  # steps between validation windows


def parse_source(entry: str) -> tuple[str, str]:
    """``"<kind>:<data_dir>"`` (an entry of a trainer config's ``sources``) -> ``(kind, data_dir)``.

    ``kind`` is a :class:`~blm_gym.data.registry.SourceKind` value; a malformed entry (no colon,
    no folder, an unknown kind) raises a ValueError that says how to write it.
    """
    from blm_gym.data.registry import SourceKind, source_kind

    fix = ("write each entry of `sources` as '<kind>:<data_dir>', e.g. 'interaction:/data/interaction', "
           f"with kind one of {[k.value for k in SourceKind]}")
    if not isinstance(entry, str):
        raise ValueError(f"sources entry {entry!r} is not a string: {fix}")
    kind, sep, data_dir = entry.partition(":")
    if not sep or not kind.strip() or not data_dir.strip():
        raise ValueError(f"sources entry {entry!r} is not '<kind>:<data_dir>': {fix}")
    try:
        kind = source_kind(kind.strip()).value
    except ValueError as e:
        raise ValueError(f"sources entry {entry!r}: {e}; {fix}") from None
    return kind, data_dir.strip()


def open_sources(data: str, data_dir: str | None, sources: Sequence[str], val_scenes: Sequence[str],
                 synthetic_scenes: int, seed: int) -> tuple[list[SceneSource], SceneSource | None]:
    """(train sources, val source or None), split by scene id; no scene is loaded.

    ``data``: ``"scenarionet"`` (a ScenarioNet folder ``data_dir``) or ``"synthetic"``
    (``synthetic_scenes`` highway-env scenes). Its train split (:mod:`blm_gym.data.splits`) is
    trained on, less the validation scenes: ``val_scenes`` (ids of its scenes), or by default its
    last train-split scene set aside (none if it has only one), so that no held-out scene is
    trained on or validated on unless named. ``sources``: more sources, ``"<kind>:<data_dir>"``
    each (:func:`parse_source`), for training only: the train split of each.
    """
    from blm_gym.data.registry import SubsetSource, open_source
    from blm_gym.data.source import resolve_data_dir
    from blm_gym.data.splits import split_scene_ids

    parsed = [parse_source(entry) for entry in sources]  # all entries checked before any folder is read
    if data == "scenarionet":
        source = open_source("scenarionet", data_dir)
    elif data == "synthetic":
        source = open_source("synthetic", num_scenes=max(synthetic_scenes, 2), seed=seed)
    else:
        raise ValueError(f"unknown data {data!r}: use 'scenarionet' (with data_dir) or 'synthetic'")
    unknown = sorted(set(val_scenes) - set(source.scene_ids))
    if unknown:
        raise ValueError(f"val_scenes {unknown} are not scenes of {source.name!r} (e.g. {list(source.scene_ids)[:3]}); "
                         "name some of its scenes, or pass val_scenes=[] to set aside its last training scene")
    train_ids = [s for s in split_scene_ids(source, "train") if s not in val_scenes]
    val_ids = list(val_scenes) or (train_ids[-1:] if len(train_ids) > 1 else [])
    train_ids = [s for s in train_ids if s not in val_ids]
    train = [SubsetSource(source, train_ids)] if train_ids else []
    seen = {resolve_data_dir(data_dir, "scenes").resolve(): "data_dir"} if data == "scenarionet" else {}
    for entry, (kind, folder) in zip(sources, parsed):
        root = resolve_data_dir(folder, f"{kind} scenes (sources entry {entry!r})").resolve()
        if root in seen:
            raise ValueError(f"sources entry {entry!r} reads {root}, as {seen[root]} does already: its scenes would "
                             "be trained on twice; drop one of them")
        seen[root] = f"sources entry {entry!r}"
        side = open_source(kind, root, split="train")
        if side.scene_ids:
            train.append(side)
    if not train:
        raise ValueError(f"no training scenes left in {source.name!r} after setting aside the validation scenes "
                         f"{val_ids}: add scenes (data_dir or sources) or name other val_scenes")
    return train, SubsetSource(source, val_ids) if val_ids else None


def load_scenes(data: str, data_dir: str | None, sources: Sequence[str], val_scenes: Sequence[str],
                synthetic_scenes: int, seed: int) -> tuple[list[Scene], list[Scene]]:
    """(train, val) scenes of :func:`open_sources`, all loaded in memory."""
    train, val = open_sources(data, data_dir, sources, val_scenes, synthetic_scenes, seed)
    load = lambda src: [src.load(i) for i in range(len(src.scene_ids))]  # noqa: E731
    return [s for src in train for s in load(src)], load(val) if val is not None else []


def windows(scenes: Sequence[Scene], stride: int, max_agents: int, model: BLMModel) -> AgentBatch | None:
    """All training windows of ``scenes`` collated into one batch (None if there are none)."""
    c = model.config
    ws = list(scene_windows(scenes, stride=stride, max_agents=max_agents, history_steps=c.history_steps,
                            future_steps=c.future_steps))
    return collate(ws) if ws else None


def training_data(cfg, model: BLMModel, scenes: tuple[list[Scene], list[Scene]] | None = None,
                  sources: tuple[Sequence[SceneSource], SceneSource | None] | None = None
                  ) -> tuple[Windows, AgentBatch | None]:
    """(training windows, validation windows in one batch or None) for a trainer config ``cfg``.

    ``scenes``: (train, val) scenes in memory, windowed in memory. Else ``sources`` (train
    sources, val source), default :func:`open_sources` of ``cfg``'s data fields, each windowed
    through its on-disk cache under ``cfg.window_cache`` (None: :func:`default_cache_dir`), built
    or rebuilt as ``cfg.rebuild_cache`` says. ``cfg`` fields used: window_stride, max_agents,
    window_cache, rebuild_cache and the data fields.
    """
    c = model.config
    window = WindowConfig(stride=cfg.window_stride, max_agents=cfg.max_agents, history_steps=c.history_steps,
                          future_steps=c.future_steps)
    val_window = dataclasses.replace(window, stride=VAL_STRIDE)
    if scenes is not None:
        train_batch = windows(scenes[0], window.stride, window.max_agents, model)
        val = windows(scenes[1], val_window.stride, val_window.max_agents, model)
        train = InMemoryWindows(train_batch) if train_batch is not None else None
    else:
        train_sources, val_source = sources if sources is not None else open_sources(
            cfg.data, cfg.data_dir, cfg.sources, cfg.val_scenes, cfg.synthetic_scenes, cfg.seed)
        root = cfg.window_cache if cfg.window_cache is not None else default_cache_dir()
        ctx = distributed.init_from_env(cfg.device)

        def cache(source: SceneSource, split: str, w: WindowConfig):
            return open_window_cache(source, w, root, split=split, rebuild=cfg.rebuild_cache, progress=ctx.is_main)

        caches = [k for k in (cache(src, "train", window) for src in train_sources) if k.num_windows]
        train = CachedWindows(caches) if caches else None
        val_cache = cache(val_source, "val", val_window) if val_source is not None else None
        val = CachedWindows([val_cache]).read_all() if val_cache is not None and val_cache.num_windows else None
    if train is None:
        raise ValueError("no training windows: scenes are shorter than history + future "
                         f"({c.history_steps + c.future_steps + 1} steps)")
    return train, val


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


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(cfg, step: int) -> float:
    """The learning rate of (0-based) ``step``: a linear warm-up over ``cfg.warmup_steps``, then
    ``cfg.lr`` (``lr_schedule="constant"``) or a cosine decay from it to 0 at ``cfg.steps``
    (``"cosine"``: a short budget ends on small steps instead of Adam's noise floor)."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    done = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)))
    return cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * done))


def train_loop(cfg, model: BLMModel, params: list[torch.nn.Parameter], train: Windows | AgentBatch, loss_fn: LossFn,
               val_fn: ValFn | None, resume: bool, desc: str,
               finalize: Callable[[BLMModel], None] | None = None) -> tuple[BLMModel, list[dict]]:
    """Optimise ``params`` of ``model`` for ``cfg.steps`` steps on random batches of ``train``.

    ``cfg`` fields used: steps, batch_size, mirror, lr, lr_schedule, weight_decay, warmup_steps, grad_clip, seed, out,
    log_every, val_every, save_every, and ``loader_workers`` (DataLoader processes; 0 if absent).
    ``finalize`` runs once after the last step, before the final checkpoint (e.g. to set
    ``latent_scale``). Returns the model and the CSV rows.
    Under ``torchrun`` each rank trains on its shard of ``train`` with averaged gradients and only
    rank 0 validates and writes files (:mod:`blm_gym.train.distributed`).
    """
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}")
    if isinstance(train, AgentBatch):
        train = InMemoryWindows(train)
    out = Path(cfg.out)
    log_path = out.with_suffix(".csv")
    ctx = distributed.init_from_env(next(model.parameters()).device)
    mine = distributed.shard_range(len(train), ctx)
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
    sampler = StepBatchSampler(mine, cfg.batch_size, cfg.seed, start=step, stop=cfg.steps)
    loader = make_loader(train, sampler, getattr(cfg, "loader_workers", 0))
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=None if ctx.is_main else True)
    for batch in loader:
        if cfg.mirror:
            batch = mirror(batch, torch.rand(batch.batch_size, generator=data_rng) < 0.5)
        batch = batch.to(device).trimmed()
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step)
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

