"""Typed, frozen dataclass configs loadable from JSON/TOML files and overridable from the CLI.

Every stage (VAE, diffusion, fine-tuning, rollout, demo) has one frozen dataclass with documented
defaults; ``load_config(Cls, path, ["lr=1e-3", "steps=200"])`` builds it from defaults, then the
file, then ``key=value`` overrides (values parsed as JSON where possible, e.g. ``true``, ``[1,2]``).
"""
from __future__ import annotations

import dataclasses
import enum
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

C = TypeVar("C")


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Cast ``value`` to the declared type of field ``name`` (tuples from lists, floats from ints)."""
    hint = typing.get_type_hints(cls)[name]
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is tuple or origin is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def config_from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a dict; unknown keys raise a ValueError that lists the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-3", "name=foo"]`` -> ``{"lr": 0.001, "name": "foo"}``."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. steps=200)")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Defaults <- file (``.json`` or ``.toml``) <- ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        try:
            values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    values.update(parse_overrides(overrides))
    return config_from_dict(cls, values, where=str(path or "overrides"))


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (stored inside checkpoints and rollout files); enum
    choices become their values."""
    return dataclasses.asdict(config, dict_factory=lambda items: {k: v.value if isinstance(v, enum.Enum) else v
                                                                  for k, v in items})
