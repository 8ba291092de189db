"""Training loops: losses fall, resume equals an uninterrupted run, logs and errors."""
from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from conftest import SHARED_DATA
from blm_gym.models import BLMModel, collate, make_agent_batch
from blm_gym.models.checkpoint import load_checkpoint, load_model
from blm_gym.train import DiffusionTrainConfig, VAETrainConfig, train_diffusion, train_vae
from blm_gym.train.common import learning_rate
from blm_gym.train.vae import model_config
from test_models import toy_scene

torch.set_num_threads(1)
TINY_VAE = dict(vae_channels=16, d_model=16, num_layers=1, batch_size=4, window_stride=4, max_agents=8,
                log_every=5, val_every=10, save_every=10, warmup_steps=5)


def toy_split():
    return [toy_scene(0), toy_scene(1)], [toy_scene(2)]


def vae_cfg(tmp_path, **kw) -> VAETrainConfig:
    return VAETrainConfig(**{**TINY_VAE, "out": str(tmp_path / "vae.pt"), **kw})


def diff_cfg(tmp_path, vae: str, **kw) -> DiffusionTrainConfig:
    base = {k: v for k, v in TINY_VAE.items() if k in {f.name for f in dataclasses.fields(DiffusionTrainConfig)}}
    return DiffusionTrainConfig(**{**base, "vae_checkpoint": vae, "out": str(tmp_path / "blm.pt"), **kw})


def fixed_batch(scenes):
    return collate([make_agent_batch(s, t, max_agents=8) for s in scenes for t in (10, 20)])


def test_vae_then_diffusion_losses_fall(tmp_path):
    train, val = toy_split()
    batch = fixed_batch(train)
    cfg = vae_cfg(tmp_path, steps=60, lr=3e-3)
    torch.manual_seed(cfg.seed)
    before = BLMModel(model_config(cfg)).vae_losses(batch, sample=False)["ade"].item()
    model = train_vae(cfg, scenes=(train, val))
    with torch.no_grad():
        after = model.vae_losses(batch, sample=False)["ade"].item()
    assert after < 0.5 * before
    assert not torch.equal(model.latent_scale, torch.ones(4))
    rows = list(csv.DictReader(open(tmp_path / "vae.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5)) and "val_ade" in rows[-1]

    dcfg = diff_cfg(tmp_path, cfg.out, steps=40, lr=3e-3)

    def diffusion_loss(m):
        with torch.no_grad():
            return m.diffusion_loss(batch, generator=torch.Generator().manual_seed(0)).item()

    before = diffusion_loss(load_model(cfg.out))
    blm = train_diffusion(dcfg, scenes=(train, val))
    assert diffusion_loss(blm) < 0.8 * before
    torch.testing.assert_close(blm.vae.state_dict(), load_model(cfg.out).vae.state_dict())  # VAE frozen
    assert "val_plan_ade" in list(csv.DictReader(open(tmp_path / "blm.csv")))[-1]


def test_resume_equals_uninterrupted(tmp_path):
    scenes = toy_split()
    full = train_vae(vae_cfg(tmp_path / "a", steps=20, mirror=True), scenes=scenes)
    train_vae(vae_cfg(tmp_path / "b", steps=10, mirror=True), scenes=scenes)
    resumed = train_vae(vae_cfg(tmp_path / "b", steps=20, mirror=True), resume=True, scenes=scenes)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    rows = lambda p: list(csv.DictReader(open(p / "vae.csv")))  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "vae.pt")["step"] == 20

    # diffusion resume, from the same VAE
    vae = str(tmp_path / "a" / "vae.pt")
    full = train_diffusion(diff_cfg(tmp_path / "a", vae, steps=12), scenes=scenes)
    train_diffusion(diff_cfg(tmp_path / "b", vae, steps=6), scenes=scenes)
    resumed = train_diffusion(diff_cfg(tmp_path / "b", vae, steps=12), resume=True, scenes=scenes)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_into_other_architecture_fails(tmp_path):
    scenes = toy_split()
    train_vae(vae_cfg(tmp_path, steps=2), scenes=scenes)
    with pytest.raises(ValueError, match="another architecture"):
        train_vae(vae_cfg(tmp_path, steps=4, d_model=32), resume=True, scenes=scenes)


def test_bad_data_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data"):
        train_vae(vae_cfg(tmp_path, data="bogus"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_vae(vae_cfg(tmp_path, data_dir=str(tmp_path / "nowhere")))


@pytest.mark.realdata
def test_vae_trains_on_one_real_scene(tmp_path):
    root = SHARED_DATA / "nuscenes-mini"
    if not root.is_dir():
        pytest.skip(f"real data missing: {root} (set BLM_GYM_DATA)")
    from blm_gym.data.scenarionet import ScenarioNetSource

    source = ScenarioNetSource(root, scene_ids=["scene-0061", "scene-0103"])
    train, val = [source.load(0)], [source.load(1)]
    batch = fixed_batch(train)
    cfg = vae_cfg(tmp_path, steps=40, lr=3e-3, max_agents=16)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        before = BLMModel(model_config(cfg)).vae_losses(batch, sample=False)["ade"].item()
    model = train_vae(cfg, scenes=(train, val))
    with torch.no_grad():
        assert model.vae_losses(batch, sample=False)["ade"].item() < 0.7 * before


@pytest.mark.parametrize("entry, match", [
    ("interaction", "is not '<kind>:<data_dir>'"),  # no colon
    ("interaction:", "is not '<kind>:<data_dir>'"),  # no folder
    (":/data/interaction", "is not '<kind>:<data_dir>'"),  # no kind
    ("bogus:/data/x", "unknown data source kind 'bogus'"),
    ("ngsim:/data/x", "did you mean 'commonroad'"),
])
def test_sources_entry_errors(tmp_path, entry, match):
    from blm_gym.train.common import parse_source

    with pytest.raises(ValueError, match=match) as err:
        parse_source(entry)
    assert "'<kind>:<data_dir>', e.g." in str(err.value)  # names the fix
    # checked before any folder is read (data_dir does not exist either)
    with pytest.raises(ValueError, match=match):
        train_vae(vae_cfg(tmp_path, data_dir=str(tmp_path / "nowhere"), sources=(entry,)))


def test_validation_is_set_aside_from_the_train_split_or_named():
    """Stages 1-2 validate on a training scene they set aside, never on a held-out one by default;
    named ``val_scenes`` must be scenes of the data."""
    from blm_gym.data.registry import open_source
    from blm_gym.train.common import open_sources

    ids = open_source("synthetic", num_scenes=20, seed=0).scene_ids  # <kind>-000 .. -004; *-004 held out
    train, val = open_sources("synthetic", None, (), (), 20, 0)
    assert list(val.scene_ids) == ["intersection-003"]
    assert set(train[0].scene_ids) == {s for s in ids if not s.endswith("4")} - {"intersection-003"}
    train, val = open_sources("synthetic", None, (), ("merge-004",), 20, 0)  # named: even a held-out one
    assert list(val.scene_ids) == ["merge-004"] and "intersection-003" in train[0].scene_ids
    with pytest.raises(ValueError, match=r"val_scenes \['scene-0103'\] are not scenes of .*val_scenes=\[\]"):
        open_sources("synthetic", None, (), ("scene-0103",), 20, 0)


@pytest.mark.realdata
def test_sources_train_split_windowed_heldout_never(tmp_path, nuscenes_dir, data_root):
    """Each ``sources`` entry is windowed on its train split only: no window of a held-out scene."""
    from blm_gym.data.registry import open_source
    from blm_gym.data.splits import split_scene_ids
    from blm_gym.train.common import open_sources, training_data
    from blm_gym.train.window_cache import WindowCache

    entries = {"scenarionet": data_root / "womd-sample", "commonroad": data_root / "commonroad-ngsim"}
    for folder in entries.values():
        if not folder.is_dir():
            pytest.skip(f"real data missing: {folder}")
    cfg = vae_cfg(tmp_path, data_dir=str(nuscenes_dir), sources=tuple(f"{k}:{v}" for k, v in entries.items()),
                  window_cache=str(tmp_path / "cache"), steps=2, log_every=1, val_every=2, save_every=2)
    with pytest.raises(ValueError, match="trained on twice"):
        open_sources("scenarionet", str(nuscenes_dir), cfg.sources + (f"scenarionet:{entries['scenarionet']}",),
                     cfg.val_scenes, 0, 0)

    heldout = {kind: set(split_scene_ids(open_source(kind, folder), "heldout", kind))
               for kind, folder in entries.items()}
    assert heldout["scenarionet"] == {"49c341dce1f65cdb", "8a346109094cd5aa", "eb4b91b10ca94ff2"}
    assert heldout["commonroad"] == {"USA_Peach-4_8_T-1"}
    torch.manual_seed(cfg.seed)
    train_sources, val_source = open_sources(cfg.data, cfg.data_dir, cfg.sources, cfg.val_scenes, 0, 0)
    nuscenes_train = split_scene_ids(open_source("scenarionet", nuscenes_dir), "train", "scenarionet")
    assert list(val_source.scene_ids) == nuscenes_train[-1:]  # validation: a training scene set aside
    assert list(train_sources[0].scene_ids) == nuscenes_train[:-1]
    train, val = training_data(cfg, BLMModel(model_config(cfg)))
    assert val is not None and val.batch_size > 0
    windowed, start = {}, 0
    for folder in train.folders:  # map every training window back to its scene id
        cache = WindowCache(folder)
        scenes = train.scene_index(range(start, start + cache.num_windows))
        windowed[cache.folder.name] = {cache.scene_ids[i] for i in scenes}
        start += cache.num_windows
    assert start == len(train)
    ids = set().union(*windowed.values())
    assert not ids & (heldout["scenarionet"] | heldout["commonroad"] | {"scene-0103", "scene-0916", *val_source.scene_ids})
    for kind, name in (("scenarionet", "womd-sample"), ("commonroad", "commonroad")):
        got = next(v for k, v in windowed.items() if name in k)
        assert got and got <= set(split_scene_ids(open_source(kind, entries[kind]), "train", kind))
    train_vae(cfg)  # and the trainer runs on them
    assert tuple(load_checkpoint(cfg.out)["train_config"]["sources"]) == cfg.sources


def test_learning_rate_warms_up_then_stays_or_decays_to_zero(tmp_path):
    cfg = lambda schedule: vae_cfg(tmp_path, lr=1e-3, warmup_steps=10, steps=110, lr_schedule=schedule)  # noqa: E731
    assert learning_rate(cfg("constant"), 0) == pytest.approx(1e-4)
    assert learning_rate(cfg("constant"), 100) == pytest.approx(1e-3)
    cosine = [learning_rate(cfg("cosine"), s) for s in range(110)]
    assert cosine[:10] == pytest.approx([learning_rate(cfg("constant"), s) for s in range(10)])
    assert cosine[60] == pytest.approx(5e-4) and cosine[-1] < 1e-6
    assert all(a >= b for a, b in zip(cosine[9:], cosine[10:]))
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        train_vae(cfg("linear"), scenes=toy_split())
