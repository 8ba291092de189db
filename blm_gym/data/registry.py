"""The data registry: every scene source behind one call.

``open_source(kind, data_dir, scene_ids, split=...)`` opens the scenes of one dataset kind; it
reads file listings only (scenes load lazily, no model is built). ``load_scene(source,
scene_id)`` loads one scene by id. Envs, training, fine-tuning, the demo and the CLI all go
through these two. ``split="train"`` / ``"heldout"`` keeps one side of the source's named split
(:mod:`blm_gym.data.splits`).
"""
from __future__ import annotations

import difflib
import enum
import os
from pathlib import Path
from typing import Sequence

from blm_gym.data.build import IndexedSource
from blm_gym.data.scene import Scene
from blm_gym.data.source import SceneSource, resolve_data_dir


class SourceKind(str, enum.Enum):
    """Dataset kinds, each read by one adapter.

    ``scenarionet``: any ScenarioNet/MetaDrive folder (database layout or loose ``sd_*.pkl``);
    ``nuscenes``: a ScenarioNet-converted nuScenes folder or a raw nuScenes root (read through
    trajdata), detected from the folder; ``synthetic``: highway-env scenes generated locally;
    ``womd``: raw Waymo Open Motion ``Scenario`` TFRecords (a folder of ``*.tfrecord*`` or one
    file); ``av2``: Argoverse 2 motion-forecasting scenarios and / or sensor-log annotations
    (detected; a folder with ``motion-forecasting/`` and ``sensor-logs/`` gives both);
    ``interaction``: the INTERACTION dataset (``maps/`` + ``recorded_trackfiles/``, cut into
    windows); ``commonroad``: CommonRoad scenario XML files.
    """

    SCENARIONET = "scenarionet"
    NUSCENES = "nuscenes"
    SYNTHETIC = "synthetic"
    WOMD = "womd"
    AV2 = "av2"
    INTERACTION = "interaction"
    COMMONROAD = "commonroad"


# the env id reading each kind (blm_gym.envs.ENV_SOURCES is the source of truth; a test checks they agree)
KIND_ENV_IDS = {"scenarionet": "BLM-ScenarioNet-v0", "nuscenes": "BLM-nuScenes-v0", "synthetic": "BLM-Synthetic-v0",
                "womd": "BLM-Waymo-v0", "av2": "BLM-AV2-v0", "interaction": "BLM-INTERACTION-v0",
                "commonroad": "BLM-CommonRoad-v0"}
# options each kind takes (None values are ignored for every kind)
KIND_OPTIONS = {"scenarionet": (), "nuscenes": ("cache_dir",),
                "synthetic": ("num_scenes", "seed", "kinds", "steps", "cache_dir"),
                "womd": (), "av2": ("layout",), "interaction": ("locations", "window_steps", "stride"),
                "commonroad": ()}
# names people reach for -> the kind
_ALIASES = {"waymo": "womd", "womd_proto": "womd", "womd-proto": "womd", "womd-protos": "womd", "tfrecord": "womd",
            "argoverse": "av2", "argoverse2": "av2", "argoverse-2": "av2", "av2-sensor": "av2",
            "av2-motion-forecasting": "av2", "lanelet2": "interaction", "ngsim": "commonroad",
            "commonroad-ngsim": "commonroad", "nuscenes-mini": "nuscenes", "scenario_net": "scenarionet",
            "metadrive": "scenarionet", "highway-env": "synthetic"}


def source_kind(kind: str | SourceKind) -> SourceKind:
    """``kind`` as a :class:`SourceKind`; unknown names raise a ValueError listing the known ones
    (and the likely one)."""
    try:
        return SourceKind(kind)
    except ValueError:
        known = [k.value for k in SourceKind]
        text = str(kind).lower()
        guess = _ALIASES.get(text) or next(iter(difflib.get_close_matches(text, known, n=1)), None)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise ValueError(f"unknown data source kind {kind!r}{hint}; choose one of {known}") from None


def guess_kind(root: Path) -> str | None:
    """The kind a folder looks like, from a few cheap file-name checks (None: no idea)."""
    from blm_gym.data.av2 import detect_layouts
    from blm_gym.data.womd_proto import TFRECORD_NAME

    root = Path(root)
    if root.is_file():
        return "womd" if TFRECORD_NAME.fullmatch(root.name) else "commonroad" if root.suffix == ".xml" else None
    if not root.is_dir():
        return None
    if (root / "dataset_summary.pkl").is_file() or next(root.glob("sd_*.pkl"), None):
        return "scenarionet"
    if any(TFRECORD_NAME.fullmatch(p.name) for p in root.glob("*.tfrecord*")):
        return "womd"
    if (root / "maps").is_dir() and (root / "recorded_trackfiles").is_dir():
        return "interaction"
    if next(root.glob("*.xml"), None):
        return "commonroad"
    if any((root / d).is_dir() for d in ("v1.0-mini", "v1.0-trainval", "v1.0-test")):
        return "nuscenes"
    return "av2" if detect_layouts(root) else None


def _wrong_folder(kind: SourceKind, root: Path, error: Exception) -> Exception:
    """``error`` with the fix appended: the kind (and env id) the folder looks like."""
    guess = guess_kind(root)
    if guess is None or guess == kind.value or (kind is SourceKind.NUSCENES and guess == "scenarionet"):
        return error
    fix = (f"{root} looks like {guess!r} data: open it with open_source({guess!r}, ...) or "
           f"gym.make({KIND_ENV_IDS[guess]!r}, data_dir=...)")
    return type(error)(f"{error}\n{fix}")


def _check_options(kind: SourceKind, options: dict) -> dict:
    """The non-None ``options``; ones ``kind`` does not take raise a TypeError naming those it does."""
    given = {k: v for k, v in options.items() if v is not None}
    allowed = KIND_OPTIONS[kind.value]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"open_source({kind.value!r}): unexpected option(s) {unknown}; "
                        f"{kind.value} takes {list(allowed) or 'no options'} (besides data_dir, scene_ids, split)")
    return given


def open_source(kind: str | SourceKind, data_dir: str | os.PathLike | None = None,
                scene_ids: Sequence[str] | None = None, *, split: str | None = None, **options) -> SceneSource:
    """The scenes of dataset ``kind`` under ``data_dir`` (else ``$BLM_GYM_DATA``), optionally only
    ``scene_ids`` (in that order) and / or only one side of the named split.

    ``split``: ``"train"`` or ``"heldout"`` (:mod:`blm_gym.data.splits`); None keeps every scene.
    With ``scene_ids`` too, every id must be on that side (a ValueError names the ones that are not).
    ``options`` go to the adapter: ``cache_dir`` for raw nuScenes; ``num_scenes``, ``seed``,
    ``kinds``, ``steps``, ``cache_dir`` for synthetic scenes; ``layout`` for av2
    (``"motion_forecasting"``, ``"sensor"`` or None: detected); ``locations``, ``window_steps``,
    ``stride`` for INTERACTION. Other options raise a TypeError.
    """
    kind = source_kind(kind)
    options = _check_options(kind, options)
    ids = list(scene_ids) if scene_ids is not None else None
    source = _open(kind, data_dir, ids if split is None else None, options)
    if split is None:
        return source
    from blm_gym.data.splits import select_split

    side = select_split(kind.value, source.scene_ids, split)
    if ids is not None:
        on_side = set(side)
        other = [s for s in ids if s not in on_side]
        if other:
            known = set(source.scene_ids)
            missing = [s for s in other if s not in known]
            if missing:
                raise KeyError(f"Unknown scene ids {missing} in source {source.name!r}; "
                               f"e.g. {list(source.scene_ids)[:5]}")
            raise ValueError(f"scene ids {other} are not in the {split!r} split of {kind.value!r} "
                             "(blm_gym.data.splits); drop them or pass split=None")
        side = ids
    if not side:
        raise ValueError(f"no scene of source {source.name!r} is in the {split!r} split ({len(source.scene_ids)} "
                         "scenes in all; rules in blm_gym.data.splits); pass split=None for all of them")
    return SubsetSource(source, side)


def _open(kind: SourceKind, data_dir, ids: list[str] | None, options: dict) -> SceneSource:
    if kind is SourceKind.SYNTHETIC:
        from blm_gym.data.synthetic import SyntheticSource

        if "kinds" in options:
            options["kinds"] = tuple(options["kinds"])
        source = SyntheticSource(**options)
        return source if ids is None else SubsetSource(source, ids)
    root = resolve_data_dir(data_dir, f"{kind.value} scenes")
    try:
        return _open_folder(kind, root, ids, options)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise _wrong_folder(kind, root, e) from e


def _open_folder(kind: SourceKind, root: Path, ids: list[str] | None, options: dict) -> SceneSource:
    if kind is SourceKind.WOMD:
        from blm_gym.data.womd_proto import WomdProtoSource

        return WomdProtoSource(root, scene_ids=ids)
    if kind is SourceKind.AV2:
        return open_av2(root, ids, options.get("layout"))
    if kind is SourceKind.INTERACTION:
        from blm_gym.data.interaction import InteractionSource

        return InteractionSource(root, scene_ids=ids, **options)
    if kind is SourceKind.COMMONROAD:
        from blm_gym.data.commonroad import CommonRoadSource

        return CommonRoadSource(root, scene_ids=ids)
    from blm_gym.data.scenarionet import ScenarioNetSource, detect_scenarionet

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


def open_av2(root: str | os.PathLike, scene_ids: Sequence[str] | None = None, layout: str | None = None
             ) -> SceneSource:
    """Argoverse 2 scenes under ``root``: motion-forecasting scenarios, sensor logs, or both (a
    folder holding ``motion-forecasting/`` and ``sensor-logs/``: motion-forecasting first).

    ``layout``: ``"motion_forecasting"`` or ``"sensor"`` to read only that one (None: every
    layout :func:`blm_gym.data.av2.detect_layouts` finds).
    """
    from blm_gym.data import av2

    root = Path(root)
    if layout is not None and layout not in av2.LAYOUTS:
        raise ValueError(f"unknown AV2 layout {layout!r}; choose one of {av2.LAYOUTS} or None (detected)")
    found = av2.detect_layouts(root)
    if layout is not None:
        # an explicit layout reads root itself when it has no combined sub-folders
        found = {layout: found.get(layout, root)}
    if not found:
        raise FileNotFoundError(
            f"{root} holds no Argoverse 2 data: expected motion-forecasting scenarios "
            "(<id>/scenario_<id>.parquet + log_map_archive_<id>.json), sensor logs (<log id>/annotations.feather, "
            "city_SE3_egovehicle.feather, map/), or a folder with motion-forecasting/ and sensor-logs/")
    makers = {"motion_forecasting": av2.Av2MotionForecastingSource, "sensor": av2.Av2SensorSource}
    sources = [makers[name](folder) for name, folder in found.items()]
    source = sources[0] if len(sources) == 1 else ConcatSource(sources, name="av2")
    return source if scene_ids is None else SubsetSource(source, scene_ids)


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
        position = {s: i for i, s in enumerate(known)}
        unknown = [s for s in scene_ids if s not in position]
        if unknown:
            raise KeyError(f"Unknown scene ids {unknown} in source {source.name!r}; available: {known[:20]}"
                           f"{' ...' if len(known) > 20 else ''}")
        self.source, self._index = source, [position[s] for s in scene_ids]
        self.name = source.name

    @property
    def scene_ids(self) -> tuple[str, ...]:
        ids = self.source.scene_ids
        return tuple(ids[i] for i in self._index)

    def __len__(self) -> int:
        return len(self._index)

    def load(self, index: int) -> Scene:
        return self.source.load(self._index[index])


class ConcatSource(IndexedSource[tuple[int, int]]):
    """Several sources as one, in order (e.g. the two Argoverse 2 layouts); scene ids must be unique."""

    def __init__(self, sources: Sequence[SceneSource], name: str):
        self.sources, self.name = list(sources), name
        self.root = " + ".join(str(getattr(src, "root", src.name)) for src in self.sources)
        self._entries = {}  # scene id -> (source, index in it)
        for k, src in enumerate(self.sources):
            for i, sid in enumerate(src.scene_ids):
                if sid in self._entries:
                    raise ValueError(f"scene id {sid!r} is in both {self.sources[self._entries[sid][0]].name!r} "
                                     f"and {src.name!r}; open them separately")
                self._entries[sid] = (k, i)

    def load(self, index: int) -> Scene:
        k, i = self.entry(index)[1]
        return self.sources[k].load(i)
