"""Gymnasium env ids, registered on ``import blm_gym``.

``BLM-nuScenes-v0``   nuScenes: a ScenarioNet-converted folder or a raw nuScenes root (read by
                      trajdata), detected from ``data_dir``.
``BLM-ScenarioNet-v0`` any ScenarioNet/MetaDrive folder (Waymo, nuPlan, ... conversions).
``BLM-Synthetic-v0``  scenes recorded from highway-env traffic; works out of the box.

Background agents default to the pretrained BLM model on ``BLM-nuScenes-v0`` and to log replay
elsewhere.

Every id takes ``data_dir=`` (else ``$BLM_GYM_DATA``), ``background=`` (policy name or instance),
``render_mode=``, ``render_config=`` and any :class:`EnvConfig` field as a keyword
(``horizon_s=5.0``, ``control="all"``, ...).
"""
from __future__ import annotations

import dataclasses

from gymnasium.envs.registration import register

from blm_gym.data.source import SceneSource, resolve_data_dir
from blm_gym.envs.scene_env import EnvConfig, SceneEnv

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(EnvConfig)}


def _make(source: SceneSource, config: EnvConfig | None, kwargs: dict) -> SceneEnv:
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
    config = dataclasses.replace(config or EnvConfig(), **overrides)
    return SceneEnv(source, config=config, **kwargs)


def make_scenarionet_env(data_dir=None, *, scene_ids=None, config: EnvConfig | None = None, **kwargs) -> SceneEnv:
    from blm_gym.data.scenarionet import ScenarioNetSource

    root = resolve_data_dir(data_dir, "BLM-ScenarioNet-v0")
    return _make(ScenarioNetSource(root, scene_ids=scene_ids), config, kwargs)


def make_nuscenes_env(data_dir=None, *, scene_ids=None, cache_dir=None, config: EnvConfig | None = None,
                      background="blm", **kwargs) -> SceneEnv:
    """Background traffic: the pretrained BLM model shipped with the package, unless ``background=``
    says otherwise. ``cache_dir``: trajdata's cache for a raw nuScenes root (default
    ``~/.cache/blm_gym/trajdata``)."""
    kwargs["background"] = background
    from blm_gym.data.scenarionet import ScenarioNetSource, detect_scenarionet

    root = resolve_data_dir(data_dir, "BLM-nuScenes-v0")
    if detect_scenarionet(root):
        return _make(ScenarioNetSource(root, scene_ids=scene_ids), config, kwargs)
    from blm_gym.data.trajdata_source import TrajdataSource, detect_raw_nuscenes  # imports trajdata: slow

    if (dataset := detect_raw_nuscenes(root)) is not None:
        source = TrajdataSource(root, dataset=dataset, scene_ids=scene_ids, cache_dir=cache_dir)
    else:
        raise ValueError(
            f"{root} is neither a ScenarioNet folder (sd_*.pkl or dataset_summary.pkl) nor a raw nuScenes root "
            "(with a v1.0-mini / v1.0-trainval folder); point data_dir at one of them."
        )
    return _make(source, config, kwargs)


def make_synthetic_env(*, num_scenes: int = 8, seed: int = 0, kinds=None, config: EnvConfig | None = None,
                       **kwargs) -> SceneEnv:
    from blm_gym.data.synthetic import SyntheticSource

    source = SyntheticSource(num_scenes=num_scenes, seed=seed, **({"kinds": tuple(kinds)} if kinds else {}))
    return _make(source, config, kwargs)


ENV_IDS = ("BLM-nuScenes-v0", "BLM-ScenarioNet-v0", "BLM-Synthetic-v0")


def scene_source(env_id: str, data_dir=None, scene_ids=None) -> SceneSource:
    """The scene source behind an env id: the one ``gym.make(env_id, data_dir=...)`` would use."""
    makers = {"BLM-nuScenes-v0": make_nuscenes_env, "BLM-ScenarioNet-v0": make_scenarionet_env}
    if env_id == "BLM-Synthetic-v0":
        return make_synthetic_env().source
    if env_id not in makers:
        raise ValueError(f"unknown env id {env_id!r}; choose one of {ENV_IDS}")
    return makers[env_id](data_dir, scene_ids=list(scene_ids) if scene_ids else None).source


def register_envs() -> None:
    register(id="BLM-nuScenes-v0", entry_point="blm_gym.envs:make_nuscenes_env")
    register(id="BLM-ScenarioNet-v0", entry_point="blm_gym.envs:make_scenarionet_env")
    register(id="BLM-Synthetic-v0", entry_point="blm_gym.envs:make_synthetic_env")


__all__ = ["EnvConfig", "SceneEnv", "ENV_IDS", "scene_source", "make_nuscenes_env", "make_scenarionet_env", "make_synthetic_env"]
