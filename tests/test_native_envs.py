"""The native sources behind the registry and their env ids (BLM-Waymo-v0, BLM-AV2-v0,
BLM-INTERACTION-v0, BLM-CommonRoad-v0); the named train / held-out splits of every source.

Unit tests need no data; ``realdata`` tests read ``../shared/data`` (or ``$BLM_GYM_DATA``). The
closed-loop figures of these sources come from ``benchmarks/native_closed_loop.py``, not from here.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import blm_gym
from blm_gym.data import registry, splits
from blm_gym.data.registry import ConcatSource, SourceKind, open_source
from blm_gym.envs import ENV_SOURCES, scene_source

NATIVE = {  # env id -> (folder under the shared data, keywords that keep it small)
    "BLM-Waymo-v0": ("womd-protos", {}),
    "BLM-AV2-v0": ("av2-sample", {}),
    "BLM-INTERACTION-v0": ("interaction", {"locations": ["DR_USA_Roundabout_FT"]}),
    "BLM-CommonRoad-v0": ("commonroad-ngsim", {}),
}
# the named splits of the shared datasets: kind, folder -> (train, heldout) scene counts
SHARED_SPLITS = {
    ("nuscenes", "nuscenes-mini"): (8, 2),
    ("scenarionet", "womd-sample"): (6, 3),
    ("scenarionet", "womd-gpudrive"): (132, 40),
    ("womd", "womd-protos"): (1, 1),
    ("av2", "av2-sample"): (3, 2),
    ("interaction", "interaction"): (616, 635),
    ("commonroad", "commonroad-ngsim"): (3, 1),
}


# --- registration and the registry --------------------------------------------------------------

def test_env_ids_registered_cheaply_and_consistent():
    for env_id in NATIVE:
        assert env_id in blm_gym.ENV_IDS and env_id in gym.registry
    assert {ENV_SOURCES[e] for e in NATIVE} == {"womd", "av2", "interaction", "commonroad"}
    # every kind has an env id (the registry's error hints name them) and a split rule
    assert {k.value for k in SourceKind} == set(ENV_SOURCES.values()) == set(splits.SPLITS)
    assert registry.KIND_ENV_IDS == {kind: env_id for env_id, kind in ENV_SOURCES.items()}
    code = ("import sys, blm_gym; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('shapely', 'pyarrow', 'torch', 'scipy') or m.startswith('blm_gym.data')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_kinds_and_options_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data source kind 'waymo' \(did you mean 'womd'\?\)"):
        open_source("waymo", tmp_path)
    with pytest.raises(ValueError, match=r"did you mean 'interaction'"):
        open_source("interacton", tmp_path)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['locations'\]; womd takes no options"):
        open_source("womd", tmp_path, locations=["x"])
    with pytest.raises(ValueError, match=r"unknown env id 'BLM-Waymo-v1' \(did you mean 'BLM-Waymo-v0'\?\)"):
        scene_source("BLM-Waymo-v1", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        open_source("synthetic", split="test", num_scenes=1)
    with pytest.raises(ValueError, match="unknown AV2 layout"):
        open_source("av2", tmp_path, layout="lidar")
    # a folder of ScenarioNet pickles named after their WOMD shard, opened as raw TFRecords
    (tmp_path / "sd_training.tfrecord-00000-of-01000_abc.pkl").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"(?s)No TFRecord files.*looks like 'scenarionet' data.*"
                                                r"BLM-ScenarioNet-v0"):
        open_source("womd", tmp_path)


class _Ids:
    def __init__(self, name, ids):
        self.name, self.scene_ids = name, tuple(ids)

    def load(self, index):
        return self.scene_ids[index]


def test_concat_source_keeps_order_and_rejects_shared_ids():
    both = ConcatSource([_Ids("a", ["x", "y"]), _Ids("b", ["z"])], name="ab")
    assert both.scene_ids == ("x", "y", "z") and len(both) == 3 and both.load(2) == "z"
    with pytest.raises(ValueError, match="scene id 'y' is in both 'a' and 'b'"):
        ConcatSource([_Ids("a", ["x", "y"]), _Ids("b", ["y"])], name="ab")


# --- splits (no data) ---------------------------------------------------------------------------

def test_split_rules_per_scene_id():
    side = splits.scene_split
    assert side("nuscenes", "scene-0103") == side("scenarionet", "scene-0916") == "heldout"
    assert side("scenarionet", "scene-0061") == "train"
    assert side("scenarionet", "eb4b91b10ca94ff2") == "heldout" and side("scenarionet", "2a1e44d405a6833f") == "train"
    # INTERACTION: whole recordings; every window of one recording on one side
    assert {side("interaction", f"DR_USA_Roundabout_FT/001/{s}") for s in (1, 51, 2001)} == {"heldout"}
    assert side("interaction", "TC_BGR_Intersection_VA/002/0") == "heldout"
    assert side("interaction", "TC_BGR_Intersection_VA/000/0") == "train"
    # CommonRoad: the recording stretch decides, so new windows of a held-out stretch stay held out
    assert side("commonroad", "USA_Peach-4_8_T-1") == side("commonroad", "USA_Peach-4_2_T-1") == "heldout"
    assert side("commonroad", "USA_US101-3_3_T-1") == "train"
    # WOMD TFRecords: official shard names, else the hash rule
    assert side("womd", "validation.tfrecord-00007-of-00150#3") == "heldout"
    assert side("womd", "training_20s.tfrecord-00000-of-01000#0") == "train"
    assert side("synthetic", "merge-004") == "heldout" and side("synthetic", "merge-003") == "train"
    # the hash rule: deterministic, about HELDOUT_FRACTION held out
    keys = [f"{i:016x}" for i in range(4000)]
    share = np.mean([splits.hash_split(k) == "heldout" for k in keys])
    assert abs(share - splits.HELDOUT_FRACTION) < 0.03
    assert [splits.hash_split(k) for k in keys[:50]] == [splits.hash_split(k) for k in keys[:50]]
    # explicit tables never list a key on both sides
    with pytest.raises(ValueError, match="both train and heldout"):
        splits.SourceSplit("x", "why", train=frozenset({"a"}), heldout=frozenset({"a"}))


def test_nuscenes_trainval_follows_the_official_split():
    pytest.importorskip("nuscenes")
    assert splits.scene_split("nuscenes", "scene-0001") == "train"  # official train
    assert splits.scene_split("nuscenes", "scene-0003") == "heldout"  # official val


def test_split_of_a_synthetic_source_via_open_source(tmp_path):
    kw = dict(num_scenes=5, kinds=["highway"], steps=40, cache_dir=str(tmp_path))
    every = open_source("synthetic", **kw)
    held = open_source("synthetic", split="heldout", **kw)
    assert list(held.scene_ids) == splits.split_scene_ids(every, "heldout") == ["highway-004"]
    assert len(open_source("synthetic", split="train", **kw).scene_ids) == 4


# --- real data ----------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.parametrize("env_id", list(NATIVE))
def test_check_env_on_the_native_ids(env_id, data_root):
    folder, kwargs = NATIVE[env_id]
    env = gym.make(env_id, data_dir=data_root / folder, horizon_s=2.0, **kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's advice on Box ranges
            check_env(env.unwrapped, skip_render_check=True)
        assert env.unwrapped.background.name == "log"  # log replay by default
        ids = list(env.unwrapped.source.scene_ids)
        for sid in (ids[0], ids[-1]):
            obs, info = env.reset(seed=0, options={"scene_id": sid})
            assert info["scene_id"] == sid and env.observation_space.contains(obs)
            obs, _, _, _, info = env.step(np.zeros(2, np.float32))
            assert env.observation_space.contains(obs) and info["step"] == env.unwrapped.state.start_step + 1
    finally:
        env.close()


@pytest.mark.realdata
def test_named_splits_of_the_shared_data(data_root):
    for (kind, folder), (n_train, n_heldout) in SHARED_SPLITS.items():
        source = open_source(kind, data_root / folder)
        train, held = (splits.split_scene_ids(source, s) for s in splits.SPLIT_NAMES)
        assert (len(train), len(held)) == (n_train, n_heldout), folder
        assert not set(train) & set(held) and set(train) | set(held) == set(source.scene_ids)
        assert splits.split_scene_ids(source, "heldout", kind=kind) == held
        # a scene's side does not depend on what else is opened with it
        sub = open_source(kind, data_root / folder, held[:1] + train[:1])
        assert splits.split_scene_ids(sub, "heldout") == held[:1]
        if folder != "interaction":
            assert list(open_source(kind, data_root / folder, split="heldout").scene_ids) == held
    windows = open_source("interaction", data_root / "interaction", split="heldout").scene_ids
    assert {w.rsplit("/", 1)[0].rsplit("/", 1)[1] for w in windows} == {"001", "002"}


@pytest.mark.realdata
def test_env_split_keyword_and_conflicts(data_root):
    env = gym.make("BLM-CommonRoad-v0", data_dir=data_root / "commonroad-ngsim", split="heldout")
    assert env.unwrapped.source.scene_ids == ("USA_Peach-4_8_T-1",)
    _, info = env.reset(seed=1)
    assert info["scene_id"] == "USA_Peach-4_8_T-1"
    with pytest.raises(ValueError, match=r"\['USA_Peach-4_8_T-1'\] are not in the 'train' split"):
        open_source("commonroad", data_root / "commonroad-ngsim", ["USA_Peach-4_8_T-1"], split="train")
    with pytest.raises(KeyError, match="Unknown scene ids"):
        open_source("commonroad", data_root / "commonroad-ngsim", ["nope"], split="train")


@pytest.mark.realdata
def test_av2_layouts_detected(data_root, tmp_path):
    root = data_root / "av2-sample"
    both = open_source("av2", root)
    mf, sensor = (open_source("av2", root, layout=layout) for layout in ("motion_forecasting", "sensor"))
    assert both.scene_ids == mf.scene_ids + sensor.scene_ids and (len(mf.scene_ids), len(sensor.scene_ids)) == (1, 4)
    assert open_source("av2", root / "sensor-logs").scene_ids == sensor.scene_ids
    assert open_source("av2", root / "motion-forecasting").scene_ids == mf.scene_ids
    one_log = sensor.scene_ids[0]
    assert open_source("av2", root / "sensor-logs" / one_log).scene_ids == (one_log,)
    scene = registry.load_scene(both, mf.scene_ids[0])
    assert scene.source == "av2-motion-forecasting" and scene.num_steps == 110
    # a folder holding only sensor-logs/ reads just those
    shutil.copytree(root / "sensor-logs" / one_log, tmp_path / "sensor-logs" / one_log)
    assert open_source("av2", tmp_path).scene_ids == (one_log,)
    with pytest.raises(FileNotFoundError, match=r"(?s)holds no Argoverse 2 data.*looks like 'interaction' data"):
        open_source("av2", data_root / "interaction")


@pytest.mark.realdata
def test_wrong_folders_name_the_right_kind(data_root):
    cases = [("womd", "womd-sample", "scenarionet"), ("scenarionet", "womd-protos", "womd"),
             ("interaction", "av2-sample", "av2"), ("commonroad", "interaction", "interaction"),
             ("womd", "commonroad-ngsim", "commonroad")]
    for kind, folder, right in cases:
        fix = f"looks like '{right}' data: open it with open_source('{right}', ...) or " \
              f"gym.make('{registry.KIND_ENV_IDS[right]}', data_dir=...)"
        with pytest.raises(FileNotFoundError, match=re.escape(fix)):
            open_source(kind, data_root / folder)
