"""The on-disk window cache and its DataLoader: round trip, rebuilds, crashes, damage, workers, training."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blm_gym.data.build import IndexedSource
from blm_gym.models import collate
from blm_gym.models.batch import scene_windows
from blm_gym.models.checkpoint import load_checkpoint
from blm_gym.train import window_cache as wc
from blm_gym.train.distributed import DistContext, shard_range
from blm_gym.train.loader import CachedWindows, StepBatchSampler, make_loader
from blm_gym.train.window_cache import (DamagedWindowCacheError, StaleWindowCacheError, WindowConfig,
                                        open_window_cache, record_dtype)
from test_models import toy_scene

torch.set_num_threads(1)
WINDOW = WindowConfig(stride=4, max_agents=8)  # 5 windows per 80-step toy scene
SMALL_SHARDS = 3 * record_dtype(WINDOW).itemsize  # 3 windows per shard: several shards per cache


class SeedFileSource(IndexedSource[Path]):
    """Toy scenes read from files that hold their seed: a file-backed source whose files can change."""

    name = "toyfiles"

    def __init__(self, root: Path, ids, fail_at: int | None = None, kill_at: int | None = None):
        self.root, self.fail_at, self.kill_at, self.loads = root, fail_at, kill_at, 0
        self._entries = {sid: root / f"{sid}.txt" for sid in ids}

    def load(self, index: int):
        if index == self.kill_at:
            os.kill(os.getpid(), 9)  # a hard crash mid-build: no cleanup runs
        if index == self.fail_at:
            raise KeyboardInterrupt("interrupted mid-build")
        self.loads += 1
        sid, path = self.entry(index)
        return dataclasses.replace(toy_scene(int(path.read_text())), scene_id=sid)


def make_source(root: Path, seeds: dict[str, int], **kw) -> SeedFileSource:
    root.mkdir(parents=True, exist_ok=True)
    for sid, seed in seeds.items():
        (root / f"{sid}.txt").write_text(str(seed))
    return SeedFileSource(root, list(seeds), **kw)


def in_memory(seeds, window: WindowConfig = WINDOW):
    return collate(list(scene_windows([toy_scene(s) for s in seeds], stride=window.stride,
                                      max_agents=window.max_agents)))


def assert_same(a, b):
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


def test_round_trip_equals_in_memory_windows(tmp_path):
    source = make_source(tmp_path / "data", {"a": 0, "b": 1})
    cache = open_window_cache(source, WINDOW, tmp_path / "cache", split="train", shard_bytes=SMALL_SHARDS)
    assert cache.num_windows == 10 and len(cache.shards) == 4
    data = CachedWindows([cache])
    expected = in_memory([0, 1])
    assert_same(data.read_all(), expected)
    idx = [7, 0, 7, 3, 9]  # any order, repeats, across shards
    assert_same(data.read(idx), expected.index(torch.tensor(idx)))
    # read into a given buffer (a worker's shared-memory slot): field by field, views of it
    buffer = np.zeros(wc.field_layout(cache.dtype, 8)[1], np.uint8)  # room for more than 5
    fields = data.reader.read(idx, buffer)
    assert_same(wc.fields_to_batch(fields), expected.index(torch.tensor(idx)))
    assert all(np.shares_memory(v, buffer) for v in fields.values()) and fields["scene"].tolist() == [1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="at least"):
        data.reader.read(idx, buffer[:100])
    assert data.scene_index(range(10)).tolist() == [0] * 5 + [1] * 5
    assert (cache.folder / "manifest.json").is_file()
    assert np.load(cache.folder / "shard-00000.npy", mmap_mode="r")["hist"].shape == (3, 8, 10, 6)  # plain .npy
    # odd sizes (5 agents: 5-byte masks) keep every field of a read batch aligned and intact
    odd = WindowConfig(stride=7, max_agents=5)
    odd_cache = open_window_cache(source, odd, tmp_path / "cache", split="train")
    assert_same(CachedWindows([odd_cache]).read([2, 1, 4]), in_memory([0, 1], odd).index(torch.tensor([2, 1, 4])))
    # opening again reads the cache: no scene is loaded
    loads = source.loads
    open_window_cache(source, WINDOW, tmp_path / "cache", split="train", rebuild="never")
    assert source.loads == loads


def test_changed_source_or_config_rebuilds(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    source = make_source(tmp_path / "data", {"a": 0, "b": 1})
    first = open_window_cache(source, WINDOW, root)
    (tmp_path / "data" / "b.txt").write_text("12")  # a scene file changes under the same id
    with pytest.raises(StaleWindowCacheError, match=r"scene files .* changed.*rebuild_cache='auto'"):
        open_window_cache(source, WINDOW, root, rebuild="never")
    rebuilt = open_window_cache(source, WINDOW, root)
    assert rebuilt.folder == first.folder
    assert_same(CachedWindows([rebuilt]).read_all(), in_memory([0, 12]))
    # another window config: its own windows, never the stale ones
    other = WindowConfig(stride=6, max_agents=8)
    assert_same(CachedWindows([open_window_cache(source, other, root)]).read_all(), in_memory([0, 12], other))
    # the code that cuts windows changes: rebuilt
    monkeypatch.setattr(wc, "window_code_hash", lambda: "edited")
    with pytest.raises(StaleWindowCacheError, match="window code"):
        open_window_cache(source, WINDOW, root, rebuild="never")
    loads = source.loads
    open_window_cache(source, WINDOW, root)
    assert source.loads == loads + 2
    # a split (registry subset) is fingerprinted from its own scenes' files only
    from blm_gym.data.registry import SubsetSource

    subset = lambda: wc.source_fingerprint(SubsetSource(source, ["b"]), WINDOW)["digest"]  # noqa: E731
    before = subset()
    (tmp_path / "data" / "a.txt").write_text("13")
    assert subset() == before
    (tmp_path / "data" / "b.txt").write_text("14")
    assert subset() != before
    # synthetic sources are fingerprinted from their generator config (nothing is generated)
    from blm_gym.data.synthetic import SyntheticSource

    fp = lambda **kw: wc.source_fingerprint(SyntheticSource(num_scenes=3, cache_dir=tmp_path / "syn", **kw), WINDOW)  # noqa: E731
    assert fp(seed=0)["digest"] == fp(seed=0)["digest"] != fp(seed=1)["digest"]
    assert fp(seed=0)["content"] != fp(seed=0, steps=100)["content"]
    assert not (tmp_path / "syn").exists()


def test_interrupted_build_leaves_no_cache(tmp_path):
    root = tmp_path / "cache"
    seeds = {"a": 0, "b": 1, "c": 2}
    source = make_source(tmp_path / "data", seeds, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        open_window_cache(source, WINDOW, root, shard_bytes=SMALL_SHARDS)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []

    # a hard kill mid-build: the temp folder stays behind, never under the final name
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from pathlib import Path\n"
              "from test_window_cache import SeedFileSource, WINDOW, SMALL_SHARDS\n"
              "from blm_gym.train.window_cache import open_window_cache\n"
              f"src = SeedFileSource(Path({str(tmp_path / 'data')!r}), {list(seeds)!r}, kill_at=2)\n"
              f"open_window_cache(src, WINDOW, {str(root)!r}, shard_bytes=SMALL_SHARDS)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == -9, run.stderr[-2000:]
    left = [p for p in root.iterdir() if not p.name.endswith(".lock")]
    assert len(left) == 1 and ".tmp-" in left[0].name and any(left[0].glob("shard-*.npy"))
    assert not (left[0] / "manifest.json").exists()
    # the next build sweeps it and succeeds
    cache = open_window_cache(make_source(tmp_path / "data", seeds), WINDOW, root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [cache.folder.name]
    assert_same(CachedWindows([cache]).read_all(), in_memory([0, 1, 2]))


def test_damaged_cache_errors_name_the_fix(tmp_path):
    source = make_source(tmp_path / "data", {"a": 0, "b": 1})
    cache = open_window_cache(source, WINDOW, tmp_path / "cache", shard_bytes=SMALL_SHARDS)
    data = CachedWindows([cache])
    shard = cache.folder / "shard-00001.npy"
    raw = shard.read_bytes()
    shard.unlink()
    with pytest.raises(DamagedWindowCacheError, match=r"shard-00001.npy is missing.*rm -r"):
        open_window_cache(source, WINDOW, tmp_path / "cache")
    with pytest.raises(DamagedWindowCacheError, match=r"shard-00001.npy vanished"):
        data.read([4])  # opened before: reading says so too
    with pytest.raises(DamagedWindowCacheError, match=r"shard-00001.npy vanished"):  # so does a loader's worker
        list(make_loader(data, StepBatchSampler(range(len(data)), 10, 0, 0, 1), workers=1))
    shard.write_bytes(raw[:-100])  # truncated
    with pytest.raises(DamagedWindowCacheError, match=r"shard-00001.npy is truncated.*rm -r"):
        open_window_cache(source, WINDOW, tmp_path / "cache")
    (cache.folder / "manifest.json").write_text("{not json")
    with pytest.raises(DamagedWindowCacheError, match="manifest.json is not valid JSON"):
        open_window_cache(source, WINDOW, tmp_path / "cache")
    (cache.folder / "manifest.json").unlink()
    with pytest.raises(DamagedWindowCacheError, match="manifest.json is missing"):
        open_window_cache(source, WINDOW, tmp_path / "cache")


def test_loader_with_workers_yields_the_same_batches(tmp_path):
    source = make_source(tmp_path / "data", {"a": 0, "b": 1, "c": 2})
    data = CachedWindows([open_window_cache(source, WINDOW, tmp_path / "cache", shard_bytes=SMALL_SHARDS)])
    sampler = StepBatchSampler(range(len(data)), batch_size=4, seed=3, start=0, stop=14)
    serial = list(make_loader(data, sampler, workers=0))
    parallel = list(make_loader(data, sampler, workers=2))  # 7 batches per worker through its 3 reused slots
    assert len(serial) == len(parallel) == 14
    for a, b in zip(serial, parallel):  # every batch kept intact after its slot was reused
        assert_same(a, b)
    # the order is a function of (seed, step): resuming at step 4 reads steps 4 and 5 again
    resumed = list(make_loader(data, StepBatchSampler(range(len(data)), 4, 3, start=4, stop=6), workers=0))
    for a, b in zip(serial[4:], resumed):
        assert_same(a, b)
    # under torchrun, rank 1 of 2 draws only its own windows (odd indices), at rank 0's positions
    r0, r1 = (list(StepBatchSampler(shard_range(len(data), DistContext(r, 2)), 4, 3, 0, 6)) for r in (0, 1))
    assert all(i % 2 == 1 for b in r1 for i in b) and r1 == [[i + 1 for i in b] for b in r0]


def test_training_through_the_cache_equals_training_in_memory(tmp_path):
    from blm_gym.train import VAETrainConfig, train_vae

    seeds = {"a": 0, "b": 1}
    source = make_source(tmp_path / "data", seeds)
    val = make_source(tmp_path / "data", {"v": 2})
    cfg = dict(vae_channels=16, d_model=16, num_layers=1, batch_size=4, window_stride=4, max_agents=8, steps=6,
               log_every=3, val_every=3, save_every=3, warmup_steps=2, mirror=True,
               window_cache=str(tmp_path / "cache"), loader_workers=2)
    cached = train_vae(VAETrainConfig(**cfg, out=str(tmp_path / "c" / "vae.pt")), sources=([source], val))
    memory = train_vae(VAETrainConfig(**cfg, out=str(tmp_path / "m" / "vae.pt")),
                       scenes=([toy_scene(0), toy_scene(1)], [toy_scene(2)]))
    for (k, a), (_, b) in zip(cached.state_dict().items(), memory.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "c" / "vae.csv").read_text() == (tmp_path / "m" / "vae.csv").read_text()
    assert load_checkpoint(tmp_path / "c" / "vae.pt")["step"] == 6
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/manifest.json")]
    assert sorted(m["num_windows"] for m in manifests) == [2, 10]  # train (stride 4) and val (stride 10)


def test_two_torchrun_ranks_share_one_cache_and_train_in_sync(tmp_path):
    make_source(tmp_path / "data", {"a": 0, "b": 1, "c": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).parents[1]), str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["loads"] + ranks[1]["loads"] == 3  # one rank built the cache, the other waited and read it
    assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 1
    ckpt = load_checkpoint(tmp_path / "vae.pt")
    assert ckpt["step"] == 4
    for name, value in ckpt["model"].items():
        assert torch.equal(ranks[0]["final"][name], value) and torch.equal(ranks[1]["final"][name], value), name


def _torchrun_worker(out: Path) -> None:
    """One rank of the test above: train a tiny VAE through the cache (no validation), dump weights and loads."""
    from blm_gym.train import VAETrainConfig, train_vae
    from blm_gym.train.distributed import init_from_env

    ctx = init_from_env()
    source = SeedFileSource(out / "data", ["a", "b", "c"])
    cfg = VAETrainConfig(vae_channels=16, d_model=16, num_layers=1, batch_size=2, window_stride=4, max_agents=8,
                         steps=4, log_every=2, save_every=4, warmup_steps=2, window_cache=str(out / "cache"),
                         loader_workers=1, out=str(out / "vae.pt"))
    model = train_vae(cfg, sources=([source], None))
    torch.save({"final": model.state_dict(), "loads": source.loads}, out / f"rank{ctx.rank}.pt")


@pytest.mark.realdata
def test_real_scene_round_trip_and_file_fingerprint(tmp_path, nuscenes_dir):
    from blm_gym.data.registry import open_source

    source = open_source("scenarionet", nuscenes_dir, ["scene-0061"], split="train")
    window = WindowConfig(stride=10, max_agents=32)
    cache = open_window_cache(source, window, tmp_path, split="train")
    expected = collate(list(scene_windows([source.load(0)], stride=10, max_agents=32)))
    assert_same(CachedWindows([cache]).read_all(), expected)
    stamper = wc._Stamper()
    files = stamper.files(*stamper.unwrap(source, 0))
    assert len(files) == 1 and files[0].suffix == ".pkl" and Path(nuscenes_dir).resolve() in files[0].resolve().parents


if __name__ == "__main__":
    _torchrun_worker(Path(sys.argv[1]))
