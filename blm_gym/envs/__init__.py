"""Gymnasium env ids (registered on ``import blm_gym``) and the PettingZoo parallel env.

``BLM-nuScenes-v0``   nuScenes: a ScenarioNet-converted folder or a raw nuScenes root (read by
                      trajdata), detected from ``data_dir``.
``BLM-ScenarioNet-v0`` any ScenarioNet/MetaDrive folder (Waymo, nuPlan, ... conversions).
``BLM-Synthetic-v0``  scenes recorded from highway-env traffic; works out of the box.
``BLM-Waymo-v0``      raw Waymo Open Motion ``Scenario`` TFRecords (a folder of ``*.tfrecord*``).
``BLM-AV2-v0``        Argoverse 2: motion-forecasting scenarios and / or sensor-log annotations
                      (detected; a folder with ``motion-forecasting/`` and ``sensor-logs/`` gives both).
``BLM-INTERACTION-v0`` the INTERACTION dataset (``maps/`` + ``recorded_trackfiles/``), cut into 9.1 s windows.
``BLM-CommonRoad-v0`` CommonRoad scenario XML files (e.g. the NGSIM-derived US-101, Lankershim, Peachtree).

Background agents default to the pretrained BLM model on ``BLM-nuScenes-v0`` and to log replay
elsewhere.

Every id takes ``data_dir=`` (else ``$BLM_GYM_DATA``), ``scene_ids=``, ``split=`` (``"train"`` or
``"heldout"``: one side of the source's named split, :mod:`blm_gym.data.splits`),
``background=`` (policy name or instance), ``render_mode=``, ``render_config=`` and any
:class:`EnvConfig` field as a keyword (``horizon_s=5.0``, ``control="all"``, ...); source options
where the source has them (``layout=`` for AV2; ``locations=``, ``window_steps=``, ``stride=`` for
INTERACTION; ``cache_dir=`` for raw nuScenes; ``num_scenes=``, ``seed=``, ``kinds=``, ``steps=``
for synthetic scenes). This module imports nothing heavy: the env classes load when an env is made.
"""
from __future__ import annotations

# env id -> (source kind of blm_gym.data.registry, default background, maker function of this module)
_ENVS = {
    "BLM-nuScenes-v0": ("nuscenes", "blm", "make_nuscenes_env"),
    "BLM-ScenarioNet-v0": ("scenarionet", "log", "make_scenarionet_env"),
    "BLM-Synthetic-v0": ("synthetic", "log", "make_synthetic_env"),
    "BLM-Waymo-v0": ("womd", "log", "make_waymo_env"),
    "BLM-AV2-v0": ("av2", "log", "make_av2_env"),
    "BLM-INTERACTION-v0": ("interaction", "log", "make_interaction_env"),
    "BLM-CommonRoad-v0": ("commonroad", "log", "make_commonroad_env"),
}
ENV_SOURCES = {env_id: kind for env_id, (kind, _, _) in _ENVS.items()}
ENV_IDS = tuple(ENV_SOURCES)
_SOURCE_OPTIONS = ("split", "cache_dir", "num_scenes", "seed", "kinds", "steps", "layout", "locations",
                   "window_steps", "stride")


def scene_source(env_id: str, data_dir=None, scene_ids=None, **options):
    """The scene source behind an env id: the one ``gym.make(env_id, data_dir=...)`` reads (no
    env and no model is built)."""
    from blm_gym.data.registry import open_source

    if env_id not in ENV_SOURCES:
        import difflib

        close = difflib.get_close_matches(env_id, ENV_IDS, n=1, cutoff=0.5)
        raise ValueError(f"unknown env id {env_id!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                         f"choose one of {ENV_IDS}")
    return open_source(ENV_SOURCES[env_id], data_dir, scene_ids, **options)


def _make(env_id: str, data_dir, scene_ids, config, kwargs):
    import dataclasses

    from blm_gym.envs.scene_env import EnvConfig, SceneEnv

    options = {k: kwargs.pop(k) for k in _SOURCE_OPTIONS if k in kwargs}
    fields = {f.name for f in dataclasses.fields(EnvConfig)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    config = dataclasses.replace(config or EnvConfig(), **overrides)
    kwargs.setdefault("background", _ENVS[env_id][1])
    return SceneEnv(scene_source(env_id, data_dir, scene_ids, **options), config=config, **kwargs)


def make_nuscenes_env(data_dir=None, *, scene_ids=None, config=None, **kwargs):
    """``BLM-nuScenes-v0``; ``cache_dir``: trajdata's cache for a raw nuScenes root
    (default ``~/.cache/blm_gym/trajdata``)."""
    return _make("BLM-nuScenes-v0", data_dir, scene_ids, config, kwargs)


def make_scenarionet_env(data_dir=None, *, scene_ids=None, config=None, **kwargs):
    """``BLM-ScenarioNet-v0``."""
    return _make("BLM-ScenarioNet-v0", data_dir, scene_ids, config, kwargs)


def make_synthetic_env(*, scene_ids=None, config=None, **kwargs):
    """``BLM-Synthetic-v0``; ``num_scenes``, ``seed``, ``kinds``, ``steps`` choose the generated scenes."""
    return _make("BLM-Synthetic-v0", None, scene_ids, config, kwargs)


def make_waymo_env(data_dir=None, *, scene_ids=None, config=None, **kwargs):
    """``BLM-Waymo-v0``: raw WOMD ``Scenario`` TFRecords; scene ids ``"<file name>#<record index>"``."""
    return _make("BLM-Waymo-v0", data_dir, scene_ids, config, kwargs)


def make_av2_env(data_dir=None, *, scene_ids=None, config=None, **kwargs):
    """``BLM-AV2-v0``: Argoverse 2 scenario / log ids; ``layout="motion_forecasting"|"sensor"``
    reads one layout only (default: every layout found)."""
    return _make("BLM-AV2-v0", data_dir, scene_ids, config, kwargs)


def make_interaction_env(data_dir=None, *, scene_ids=None, config=None, **kwargs):
    """``BLM-INTERACTION-v0``: windows ``"<location>/<NNN>/<start frame>"``; ``locations``,
    ``window_steps``, ``stride`` choose them."""
    return _make("BLM-INTERACTION-v0", data_dir, scene_ids, config, kwargs)


def make_commonroad_env(data_dir=None, *, scene_ids=None, config=None, **kwargs):
    """``BLM-CommonRoad-v0``: CommonRoad XML scenarios; scene id = file stem."""
    return _make("BLM-CommonRoad-v0", data_dir, scene_ids, config, kwargs)


def register_envs() -> None:
    from gymnasium.envs.registration import register, registry

    for env_id, (_, _, maker) in _ENVS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=f"blm_gym.envs:{maker}")


def parallel_env(env_id: str = "BLM-Synthetic-v0", data_dir=None, *, scene_id: str | None = None, config=None,
                 render_mode: str | None = None, **options):
    """A PettingZoo ``ParallelEnv`` over one scene of ``env_id`` in which every vehicle is an agent
    (:class:`blm_gym.envs.parallel.SceneParallelEnv`); ``scene_id`` defaults to the first scene."""
    import dataclasses

    from blm_gym.envs.parallel import SceneParallelEnv
    from blm_gym.envs.scene_env import EnvConfig

    fields = {f.name for f in dataclasses.fields(EnvConfig)}
    overrides = {k: options.pop(k) for k in list(options) if k in fields}
    config = dataclasses.replace(config or EnvConfig(), **overrides)
    source = scene_source(env_id, data_dir, [scene_id] if scene_id is not None else None, **options)
    return SceneParallelEnv(source, scene_id=scene_id, config=config, render_mode=render_mode)


def __getattr__(name: str):
    if name in ("EnvConfig", "SceneEnv"):
        from blm_gym.envs import scene_env

        return getattr(scene_env, name)
    raise AttributeError(f"module 'blm_gym.envs' has no attribute {name!r}")


__all__ = ["ENV_IDS", "ENV_SOURCES", "EnvConfig", "SceneEnv", "scene_source", "parallel_env", "make_nuscenes_env",
           "make_scenarionet_env", "make_synthetic_env", "make_waymo_env", "make_av2_env", "make_interaction_env",
           "make_commonroad_env"]
