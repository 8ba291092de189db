"""Rollout files: HDF5 (h5py), written atomically, versioned.

Schema, version 2::

    /                               file attributes
        schema_version   int        2; readers refuse other versions
        blm_gym_version  str        version of blm_gym that wrote the file
        config           str        the run configuration as JSON (policy, samples, seed, ...)
    /rollouts/000000                one group per rollout (one scene x K samples), in order
        attributes: scene_id (str), source (str, data source), policy (str), dt (float, s),
                    start_step (int, log step of t = 0), ego_index (int), num_samples (int K)
        agent_ids   (N,)      str       agent ids of the source
        agent_type  (N,)      int8      blm_gym.data.scene.AgentType
        controlled  (N,)      bool      driven by the policy (else replayed the log)
        sim/x, sim/y          (K, N, T) float32   m, world frame of the source map
        sim/heading           (K, N, T) float32   rad
        sim/speed             (K, N, T) float32   m/s along heading
        sim/valid             (K, N, T) bool
        sim/collision         (K, N, T) bool      the simulator's per-step checks: box overlap,
        sim/offroad           (K, N, T) bool      vehicle centre off the drivable area
        log/x, log/y, log/heading, log/speed, log/vx, log/vy   (N, T) float32   same steps, logged
        log/valid             (N, T)    bool
        log/length, log/width (N,)      float32   m

Index ``t = 0`` is the initial (logged) state at ``start_step``; ``t = 1 .. T - 1`` are simulated.
Maps are not stored: load the scene by ``scene_id`` from its data source and combine them with
:func:`blm_gym.sim.record.sample_state`. Float arrays are gzip-compressed (lossless).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from blm_gym.data.scene import Trajectories
from blm_gym.atomic_files import atomic_path
from blm_gym.sim.record import Rollout

SCHEMA_VERSION = 2
_SIM = ("x", "y", "heading", "speed", "valid", "collision", "offroad")
_LOG = tuple(f.name for f in dataclasses.fields(Trajectories))


def blm_gym_version() -> str:
    """``blm_gym.__version__`` if the package sets it, else the installed distribution's version."""
    import blm_gym

    version = getattr(blm_gym, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("blm_gym")
    except PackageNotFoundError:
        return "unknown"


def _put(group: h5py.Group, name: str, array: np.ndarray) -> None:
    kw = dict(compression="gzip", compression_opts=4, shuffle=True) if array.size > 1024 else {}
    group.create_dataset(name, data=array, **kw)


def write_rollouts(path: str | os.PathLike, rollouts: Sequence[Rollout], config: dict[str, Any]) -> Path:
    """Write ``rollouts`` and the run ``config`` (JSON-serialisable) to ``path`` atomically.

    The file is built under a temporary name in the same folder and moved into place with
    ``os.replace``: an interrupted run leaves nothing under ``path``. Returns ``path``.
    """
    path = Path(path)
    try:
        config_json = json.dumps(config, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"write_rollouts: config must be JSON-serialisable ({e}); convert paths/arrays first") from e
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["blm_gym_version"] = blm_gym_version()
        f.attrs["config"] = config_json
        root = f.create_group("rollouts")
        for i, r in enumerate(rollouts):
            g = root.create_group(f"{i:06d}")
            for key in ("scene_id", "source", "policy", "dt", "start_step", "ego_index"):
                g.attrs[key] = getattr(r, key)
            g.attrs["num_samples"] = r.num_samples
            g.create_dataset("agent_ids", data=np.array(r.agent_ids, dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("agent_type", data=np.asarray(r.agent_type, np.int8))
            g.create_dataset("controlled", data=np.asarray(r.controlled, bool))
            for name in _SIM:
                _put(g, f"sim/{name}", getattr(r, name))
            for name in _LOG:
                _put(g, f"log/{name}", getattr(r.log, name))
    return path


def read_rollouts(path: str | os.PathLike) -> tuple[list[Rollout], dict[str, Any]]:
    """Read a rollout file: ``(rollouts, meta)`` with ``meta`` = schema_version, blm_gym_version, config.

    Raises FileNotFoundError for a missing file, ValueError for a truncated/corrupt file or one
    written with another schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Rollout file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"Rollout file {path} is truncated or not HDF5 ({e}); "
                         "re-run the rollouts to rewrite it") from e
    with f:
        try:
            found = f.attrs.get("schema_version")
            writer = f.attrs.get("blm_gym_version", "unknown")
        except (OSError, RuntimeError) as e:
            raise ValueError(f"Rollout file {path} is corrupt ({e}); re-run the rollouts to rewrite it") from e
        if found is None or int(found) != SCHEMA_VERSION:
            raise ValueError(
                f"Rollout file {path} has schema version {found} (written by blm_gym {writer}); this blm_gym "
                f"({blm_gym_version()}) reads version {SCHEMA_VERSION}. Re-run the rollouts with this version, or "
                "read the file with the version that wrote it."
            )
        try:
            meta = {"schema_version": int(found), "blm_gym_version": str(writer),
                    "config": json.loads(f.attrs["config"])}
            rollouts = [_read_group(g) for _, g in sorted(f["rollouts"].items())]
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"Rollout file {path} is corrupt or incomplete ({type(e).__name__}: {e}); "
                             "re-run the rollouts to rewrite it") from e
    return rollouts, meta


def _read_group(g: h5py.Group) -> Rollout:
    a = g.attrs
    return Rollout(
        scene_id=str(a["scene_id"]), source=str(a["source"]), policy=str(a["policy"]), dt=float(a["dt"]),
        start_step=int(a["start_step"]), ego_index=int(a["ego_index"]),
        agent_ids=tuple(s.decode() if isinstance(s, bytes) else str(s) for s in g["agent_ids"][()]),
        agent_type=g["agent_type"][()], controlled=g["controlled"][()],
        **{name: g[f"sim/{name}"][()] for name in _SIM},
        log=Trajectories(**{name: g[f"log/{name}"][()] for name in _LOG}),
    )
