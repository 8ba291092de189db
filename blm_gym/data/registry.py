"""The data registry: every scene source behind one call.

``open_source(kind, data_dir, scene_ids)`` opens the scenes of one dataset kind; it reads file
listings only (scenes load lazily, no model is built). ``load_scene(source, scene_id)`` loads one
scene by id. Envs, training, fine-tuning, the demo and the CLI all go through these two.
"""
from __future__ import annotations

import enum
import os
from typing import Sequence

from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneSource, resolve_data_dir


class SourceKind(str, enum.Enum):
    """Dataset kinds, each read by one adapter.

    ``scenarionet``: any ScenarioNet/MetaDrive folder (database layout or loose ``sd_*.pkl``);
    ``nuscenes``: a ScenarioNet-converted nuScenes folder or a raw nuScenes root (read through
    trajdata), detected from the folder; ``synthetic``: highway-env scenes generated locally.
    """

    SCENARIONET = "scenarionet"
    NUSCENES = "nuscenes"
    SYNTHETIC = "synthetic"


def source_kind(kind: str | SourceKind) -> SourceKind:
    """``kind`` as a :class:`SourceKind`; unknown names raise a ValueError listing the known ones."""
    try:
        return SourceKind(kind)
    except ValueError:
        raise ValueError(f"unknown data source kind {kind!r}; choose one of {[k.value for k in SourceKind]}") from None


def open_source(kind: str | SourceKind, data_dir: str | os.PathLike | None = None,
                scene_ids: Sequence[str] | None = None, **options) -> SceneSource:
    """The scenes of dataset ``kind`` under ``data_dir`` (else ``$BLM_GYM_DATA``), optionally only
    ``scene_ids`` (in that order). ``options`` go to the adapter: ``cache_dir`` for raw nuScenes;
    ``num_scenes``, ``seed``, ``kinds``, ``steps``, ``cache_dir`` for synthetic scenes.
    """
    kind = source_kind(kind)
    ids = list(scene_ids) if scene_ids is not None else None
    if kind is SourceKind.SYNTHETIC:
        from blm_gym.data.synthetic import SyntheticSource

        if "kinds" in options and options["kinds"] is not None:
            options["kinds"] = tuple(options["kinds"])
        source = SyntheticSource(**{k: v for k, v in options.items() if v is not None})
        return source if ids is None else SubsetSource(source, ids)
    from blm_gym.data.scenarionet import ScenarioNetSource, detect_scenarionet

    root = resolve_data_dir(data_dir, f"{kind.value} scenes")
    if kind is SourceKind.SCENARIONET or detect_scenarionet(root):
        return ScenarioNetSource(root, scene_ids=ids)
    from blm_gym.data.trajdata_source import TrajdataSource, detect_raw_nuscenes  # imports trajdata: slow

    dataset = detect_raw_nuscenes(root)
    if dataset is None:
        raise ValueError(
            f"{root} is neither a ScenarioNet folder (sd_*.pkl or dataset_summary.pkl) nor a raw nuScenes root "
            "(with a v1.0-mini / v1.0-trainval folder); point data_dir at one of them."
        )
    return TrajdataSource(root, dataset=dataset, scene_ids=ids, cache_dir=options.get("cache_dir"))


def load_scene(source: SceneSource, scene_id: str) -> Scene:
    """Load the scene with id ``scene_id`` from ``source``."""
    ids = list(source.scene_ids)
    if scene_id not in ids:
        raise KeyError(f"Scene {scene_id!r} is not in source {source.name!r} ({len(ids)} scenes, "
                       f"e.g. {ids[:3]}); pick one of source.scene_ids")
    return source.load(ids.index(scene_id))


class SubsetSource:
    """The scenes ``scene_ids`` of another source, in that order (unknown ids raise KeyError)."""

    def __init__(self, source: SceneSource, scene_ids: Sequence[str]):
        known = list(source.scene_ids)
        unknown = [s for s in scene_ids if s not in known]
        if unknown:
            raise KeyError(f"Unknown scene ids {unknown} in source {source.name!r}; available: {known}")
        self.source, self._index = source, [known.index(s) for s in scene_ids]
        self.name = source.name

    @property
    def scene_ids(self) -> tuple[str, ...]:
        ids = self.source.scene_ids
        return tuple(ids[i] for i in self._index)

    def load(self, index: int) -> Scene:
        return self.source.load(self._index[index])
