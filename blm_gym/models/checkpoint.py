"""BLM checkpoints: weights + architecture + training state, written atomically.

A checkpoint is a ``torch.save`` dict read back with ``weights_only=True`` (no code runs while
loading)::

    format, package_version, model_config (BLMConfig as a dict), architecture (signature string),
    model (state_dict), step, train_config (dict), optimizer (state_dict or None),
    rng (torch CPU RNG state and the data-order generator state, for --resume)

The architecture signature hashes the config and every parameter's name and shape, so weights
of another architecture are refused with a message that says what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from blm_gym.atomic_files import atomic_path
from blm_gym.models.blm import BLMConfig, BLMModel

FORMAT = "blm_gym.blm/1"


class ArchitectureMismatchError(ValueError):
    """A checkpoint's architecture differs from the model it is loaded into."""


def package_version() -> str:
    try:
        return metadata.version("blm_gym")
    except metadata.PackageNotFoundError:
        return "unknown"


# BLMConfig fields of optional features: switched off (their default) they are left out of the
# signature, so checkpoints written before the feature existed still load
OPTIONAL_FEATURES = ("agent_lane_points",)


def architecture_signature(model: BLMModel) -> str:
    """Hash of the model config (optional features only when on) and all state-dict entry names and shapes."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    config = {k: v for k, v in dataclasses.asdict(model.config).items()
              if not (k in OPTIONAL_FEATURES and v == getattr(BLMConfig, k))}
    blob = json.dumps({"config": config, "shapes": shapes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, model: BLMModel, *, step: int = 0, train_config: Any = None,
                    optimizer: torch.optim.Optimizer | None = None, data_rng: torch.Generator | None = None) -> Path:
    """Write ``model`` (+ optional training state) to ``path`` atomically; returns the path."""
    ckpt = {
        "format": FORMAT,
        "package_version": package_version(),
        "model_config": dataclasses.asdict(model.config),
        "architecture": architecture_signature(model),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "train_config": dataclasses.asdict(train_config) if dataclasses.is_dataclass(train_config) else train_config,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": {"torch": torch.get_rng_state(), "data": data_rng.get_state() if data_rng is not None else None},
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, checked to be a BLM checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BLM checkpoint not found: {path} (train one with `blm-gym train vae|diffusion`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for corrupt files
        raise ValueError(f"{path} is not a readable BLM checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a BLM checkpoint (format {found!r}, expected {FORMAT!r})")
    return ckpt


def config_of(ckpt: dict) -> BLMConfig:
    return BLMConfig(**ckpt["model_config"])


def restore_model(model: BLMModel, ckpt: dict, where: str = "checkpoint") -> BLMModel:
    """Load ``ckpt``'s weights into ``model``; ArchitectureMismatchError names what differs."""
    if ckpt["architecture"] != architecture_signature(model):
        mine, theirs = dataclasses.asdict(model.config), ckpt["model_config"]
        diff = {k: (theirs.get(k), mine.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}
        raise ArchitectureMismatchError(
            f"{where} holds a BLM model of another architecture ({ckpt['architecture']} vs {architecture_signature(model)}"
            f"); config differences (checkpoint, model): {diff or 'none (layer shapes differ: other package version?)'}. "
            "Build the model from the checkpoint's config (load_model) or train a new one."
        )
    model.load_state_dict(ckpt["model"])
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> BLMModel:
    """A :class:`BLMModel` built from the checkpoint's config with its weights, in eval mode."""
    ckpt = load_checkpoint(path)
    model = restore_model(BLMModel(config_of(ckpt)), ckpt, where=str(path))
    return model.to(device).eval()
