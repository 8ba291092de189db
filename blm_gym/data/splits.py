"""Named training and held-out splits of every scene source, in one place.

The project is judged on real scenes it never saw, so every source names a ``train`` split (what
models are trained, fine-tuned and tuned on) and a ``heldout`` split (only for the final
evaluation: nothing -- weights, guidance weights, thresholds -- may be tuned on it).

A split is decided **per scene id**, never from the set of scenes at hand, so the same scene
lands on the same side whatever folder, subset or order it is opened with. Each source kind
(:class:`SourceSplit`, one per kind in :data:`SPLITS`) maps a scene id to a *key*: the unit that
must not straddle the two sides (an INTERACTION recording, whose windows overlap in time; a
CommonRoad recording, whose benchmark scenarios are windows of one NGSIM stretch; else the scene
itself). A key is then, in this order:

1. in the kind's explicit ``train`` / ``heldout`` tables (the datasets of ``../shared/data``);
2. on the side its dataset's official split puts it (nuScenes train / val / test, from the
   nuscenes-devkit; WOMD ``training`` / ``validation`` / ``testing`` TFRecord shards);
3. held out when :func:`hash_fraction` of the key (SHA-256) is below :data:`HELDOUT_FRACTION`:
   deterministic and stable for scenes we have not seen yet.

The shared datasets (scene counts train / held out):

========================  =====================  =================================================
dataset (kind)            train / held out       why
========================  =====================  =================================================
nuscenes-mini             8 / 2 scenes           the official v1.0-mini split (mini_train /
(nuscenes, scenarionet)                          mini_val); other nuScenes scenes follow the
                                                 official train / val (+ test held out) split
womd-sample (scenarionet) 6 / 3 scenes           every third id in sorted order (positions 2, 5,
                                                 8): 49c341dce1f65cdb, 8a346109094cd5aa,
                                                 eb4b91b10ca94ff2 -- both episode lengths (91 and
                                                 198 steps) on both sides. NB: the shipped BLM
                                                 weights were trained on all 9 (README model card)
womd-gpudrive             132 / 40 scenes        hash rule on the Waymo scenario id (~20 %): the
(scenarionet)                                    file names no longer say which WOMD shard (training
                                                 or validation) a scene came from
womd-protos (womd)        1 / 1 scene            womd_scenario_input.tfrecord#0 held out (the dense
                                                 one, 257 tracks); new TFRecords: official shard
                                                 names, else the hash rule
interaction               9 / 9 recordings       per location, recording 000 trains and the other
                          (616 / 635 windows)    held out (001; TC_BGR_Intersection_VA has 000 and
                                                 002, so 002); whole recordings, since windows of
                                                 one recording overlap in time. DR_CHN_Merging_ZS
                                                 has a map but no tracks
av2-sample (av2)          3 / 2 scenes           sensor log adcf7d18-... (Pittsburgh, an
                                                 annotations.feather log) held out, so training
                                                 keeps both cities (MIA, PIT) and both annotation
                                                 file variants; the one motion-forecasting scenario
                                                 (Austin) held out
commonroad-ngsim          3 / 1 scenario         USA_Peach-4_8_T-1 held out: a location (Peachtree
(commonroad)                                     St.) absent from training, while training keeps an
                                                 urban arterial (Lankershim) and the freeway (US-101)
synthetic                 ids ``<kind>-NNN``:    every fifth generated scene per road kind (NNN % 5
                          NNN % 5 == 4 held out  == 4); they are generated, so more are one seed away
========================  =====================  =================================================

``open_source(kind, data_dir, split="train" | "heldout")`` opens one side;
:func:`split_scene_ids` lists the ids of one side of any opened source.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

SPLIT_NAMES = ("train", "heldout")
HELDOUT_FRACTION = 0.2  # share of unlisted keys the hash rule holds out

NUSCENES_MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077",
                       "scene-1094", "scene-1100")
NUSCENES_MINI_VAL = ("scene-0103", "scene-0916")
WOMD_SAMPLE_TRAIN = ("2a1e44d405a6833f", "3ece8d267ce5847c", "53e9adfdac0eb822", "7b24d74b506c94ce",
                     "903f0fd7bf4a17cb", "c403d5992cab9e0")
WOMD_SAMPLE_HELDOUT = ("49c341dce1f65cdb", "8a346109094cd5aa", "eb4b91b10ca94ff2")
INTERACTION_LOCATIONS = ("DR_CHN_Roundabout_LN", "DR_USA_Intersection_EP0", "DR_USA_Intersection_EP1",
                         "DR_USA_Intersection_GL", "DR_USA_Intersection_MA", "DR_USA_Roundabout_EP",
                         "DR_USA_Roundabout_FT", "DR_USA_Roundabout_SR", "TC_BGR_Intersection_VA")
INTERACTION_HELDOUT_RECORDING = {loc: "002" if loc == "TC_BGR_Intersection_VA" else "001"
                                 for loc in INTERACTION_LOCATIONS}
AV2_SENSOR_LOGS = ("3b3570b4-7b0b-3268-a571-b0889dbf40b6", "3bffdcff-c3a7-38b6-a0f2-64196d130958",
                   "7fab2350-7eaf-3b7e-a39d-6937a4c1bede", "adcf7d18-0510-35b0-a2fa-b4cea13a6d76")
AV2_HELDOUT = ("adcf7d18-0510-35b0-a2fa-b4cea13a6d76", "0a1e6f0a-1817-4a98-b02e-db8c9327d151")


def hash_fraction(key: str) -> float:
    """A uniform number in [0, 1) from the SHA-256 of ``key``: the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def hash_split(key: str, fraction: float = HELDOUT_FRACTION) -> str:
    """``"heldout"`` for about ``fraction`` of all keys (by :func:`hash_fraction`), else ``"train"``."""
    return "heldout" if hash_fraction(key) < fraction else "train"


def _nuscenes_official(scene_id: str) -> str | None:
    """nuScenes' official split of a ``scene-NNNN`` id: train -> train, val and test -> heldout
    (lists of nuscenes-devkit, imported on first use: about 4 s)."""
    if not re.fullmatch(r"scene-\d{4}", scene_id):
        return None
    try:
        from nuscenes.utils import splits as official
    except ImportError:  # pragma: no cover - the devkit is a dependency
        return None
    if scene_id in official.train:
        return "train"
    if scene_id in official.val or scene_id in official.test:
        return "heldout"
    return None


def _womd_shard(scene_id: str) -> str | None:
    """WOMD's official split from a TFRecord shard name (``training.tfrecord-00000-of-01000#3``,
    also ``training_20s``): training -> train, validation / testing -> heldout."""
    name = scene_id.rsplit("#", 1)[0].lower()
    if name.startswith("training"):
        return "train"
    if name.startswith(("validation", "testing")):
        return "heldout"
    return None


def _recording_key(scene_id: str) -> str:
    """INTERACTION ``"<location>/<NNN>/<start frame>"`` -> ``"<location>/<NNN>"``."""
    return scene_id.rsplit("/", 1)[0] if scene_id.count("/") >= 2 else scene_id


def _commonroad_key(scene_id: str) -> str:
    """CommonRoad ``COUNTRY_SCENE-CONFIG_PREDICTION_T-VERSION`` -> ``COUNTRY_SCENE-CONFIG`` (the
    recording stretch; its prediction ids are time windows of it)."""
    parts = scene_id.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[2].startswith("T-") else scene_id


def _synthetic_official(scene_id: str) -> str | None:
    m = re.fullmatch(r".+-(\d+)", scene_id)
    return None if m is None else ("heldout" if int(m.group(1)) % 5 == 4 else "train")


@dataclass(frozen=True)
class SourceSplit:
    """The split rule of one source kind (see the module docstring).

    ``key``: scene id -> the unit kept on one side; ``train`` / ``heldout``: keys listed
    explicitly; ``official``: scene id -> ``"train"`` / ``"heldout"`` / None (no opinion) from the
    dataset's own split; the rest go by :func:`hash_split` of the key. ``reason``: why.
    """

    kind: str
    reason: str
    train: frozenset[str] = field(default_factory=frozenset)
    heldout: frozenset[str] = field(default_factory=frozenset)
    key: Callable[[str], str] = str
    official: Callable[[str], str | None] | None = None

    def __post_init__(self):
        both = self.train & self.heldout
        if both:
            raise ValueError(f"split of {self.kind!r}: keys {sorted(both)} are listed in both train and heldout")

    def side(self, scene_id: str) -> str:
        """``"train"`` or ``"heldout"`` for ``scene_id``."""
        key = self.key(scene_id)
        if key in self.heldout:
            return "heldout"
        if key in self.train:
            return "train"
        side = self.official(scene_id) if self.official is not None else None
        return side or hash_split(key)


_NUSCENES = dict(train=frozenset(NUSCENES_MINI_TRAIN), heldout=frozenset(NUSCENES_MINI_VAL))
_NUSCENES_REASON = ("nuScenes v1.0-mini: the official split (mini_train 8 scenes / mini_val 2); other nuScenes "
                    "scenes: the official train / val split, test held out too (nuscenes-devkit lists)")

SPLITS: dict[str, SourceSplit] = {
    "nuscenes": SourceSplit("nuscenes", _NUSCENES_REASON, official=_nuscenes_official, **_NUSCENES),
    "scenarionet": SourceSplit(
        "scenarionet",
        _NUSCENES_REASON + "; womd-sample: every third of the 9 ids in sorted order held out (3); any other "
        "scene (womd-gpudrive and new Waymo conversions: the id is the Waymo scenario id): the hash rule, ~20 % "
        "held out (womd-gpudrive: 40 of 172)",
        train=frozenset(NUSCENES_MINI_TRAIN + WOMD_SAMPLE_TRAIN),
        heldout=frozenset(NUSCENES_MINI_VAL + WOMD_SAMPLE_HELDOUT), official=_nuscenes_official),
    "womd": SourceSplit(
        "womd", "womd-protos: womd_scenario_input.tfrecord#0 (257 tracks) held out, "
        "motion_data_one_scenario.tfrecord#0 trains; other TFRecords: WOMD's shard names (training / "
        "validation / testing), else the hash rule on the id",
        train=frozenset({"motion_data_one_scenario.tfrecord#0"}),
        heldout=frozenset({"womd_scenario_input.tfrecord#0"}), official=_womd_shard),
    "av2": SourceSplit(
        "av2", "av2-sample: sensor log adcf7d18 (PIT) and the motion-forecasting scenario 0a1e6f0a (Austin) held "
        "out; the other 3 sensor logs (MIA, PIT) train; other scenarios / logs: the hash rule",
        train=frozenset(AV2_SENSOR_LOGS) - frozenset(AV2_HELDOUT), heldout=frozenset(AV2_HELDOUT)),
    "interaction": SourceSplit(
        "interaction", "whole recordings (windows of one recording overlap): recording 000 of each location "
        "trains, 001 is held out (TC_BGR_Intersection_VA: 002); other recordings: the hash rule on "
        "'<location>/<NNN>'",
        train=frozenset(f"{loc}/000" for loc in INTERACTION_LOCATIONS),
        heldout=frozenset(f"{loc}/{num}" for loc, num in INTERACTION_HELDOUT_RECORDING.items()), key=_recording_key),
    "commonroad": SourceSplit(
        "commonroad", "commonroad-ngsim: USA_Peach-4 (Peachtree St.) held out, a location absent from training; "
        "Lankershim and US-101 train; other scenarios: the hash rule on the recording stretch "
        "(COUNTRY_SCENE-CONFIG)",
        train=frozenset({"USA_Lanker-1", "USA_US101-3", "USA_US101-4"}), heldout=frozenset({"USA_Peach-4"}),
        key=_commonroad_key),
    "synthetic": SourceSplit(
        "synthetic", "generated highway-env scenes '<kind>-NNN': NNN % 5 == 4 held out (every fifth per kind)",
        official=_synthetic_official),
}

# SceneSource.name (prefix) -> kind, for sources opened without the registry
_NAME_KINDS = (("scenarionet", "scenarionet"), ("trajdata", "nuscenes"), ("womd", "womd"), ("av2", "av2"),
               ("interaction", "interaction"), ("commonroad", "commonroad"), ("synthetic", "synthetic"))


def check_split(split: str) -> str:
    """``split`` if it is a split name; else a ValueError naming them."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLIT_NAMES} (or None for every scene)")
    return split


def source_split(kind: str) -> SourceSplit:
    """The split rule of source kind ``kind`` (a :class:`~blm_gym.data.registry.SourceKind` value)."""
    kind = getattr(kind, "value", kind)
    if kind not in SPLITS:
        raise ValueError(f"no split rule for source kind {kind!r}; kinds with one: {sorted(SPLITS)}")
    return SPLITS[kind]


def scene_split(kind: str, scene_id: str) -> str:
    """``"train"`` or ``"heldout"``: the side of scene ``scene_id`` of a ``kind`` source."""
    return source_split(kind).side(scene_id)


def kind_of(source) -> str:
    """The source kind of an opened source (from ``source.kind`` or its ``name``)."""
    kind = getattr(source, "kind", None)
    if kind is not None:
        return getattr(kind, "value", kind)
    name = str(getattr(source, "name", ""))
    for prefix, kind in _NAME_KINDS:
        if name.startswith(prefix):
            return kind
    raise ValueError(f"cannot tell the source kind of {name or type(source).__name__!r}; pass kind= "
                     f"(one of {sorted(SPLITS)})")


def select_split(kind: str, scene_ids: Iterable[str], split: str) -> list[str]:
    """The ids of ``scene_ids`` (in order) on side ``split`` of a ``kind`` source."""
    rule = source_split(kind)
    check_split(split)
    return [s for s in scene_ids if rule.side(s) == split]


def split_scene_ids(source, split: str, kind: str | None = None) -> list[str]:
    """The scene ids of ``source`` (a :class:`~blm_gym.data.source.SceneSource`) in split
    ``split`` (``"train"`` or ``"heldout"``), in the source's order. ``kind``: the source kind
    (default: from the source)."""
    return select_split(kind or kind_of(source), source.scene_ids, split)


def split_counts(kind: str, scene_ids: Sequence[str]) -> dict[str, int]:
    """How many of ``scene_ids`` fall on each side."""
    rule = source_split(kind)
    sides = [rule.side(s) for s in scene_ids]
    return {name: sides.count(name) for name in SPLIT_NAMES}
