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
