"""Data-parallel training under torchrun: sharding, and two CPU ranks that stay in sync.

Run as a script (``python tests/test_distributed.py OUT_DIR`` under torchrun) this file is the
worker: it trains a tiny VAE on toy scenes and dumps its rank's final weights.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the worker imports the toy scenes of test_models

from blm_gym.models import collate, make_agent_batch  # noqa: E402
from blm_gym.models.checkpoint import load_checkpoint  # noqa: E402
from blm_gym.train.distributed import DistContext, average_gradients, shard  # noqa: E402
from test_models import toy_scene  # noqa: E402

TINY = dict(vae_channels=16, d_model=16, num_layers=1, batch_size=4, window_stride=4, max_agents=8,
            log_every=2, val_every=4, save_every=4, warmup_steps=2, steps=6, lr=3e-3)


def test_shard_takes_every_world_size_th_window_in_equal_shares():
    batch = collate([make_agent_batch(toy_scene(0), t, max_agents=8) for t in (10, 12, 14, 16, 18)])
    shards = [shard(batch, DistContext(rank, 2)) for rank in (0, 1)]
    assert torch.equal(shards[0].hist, batch.hist[[0, 2]]) and torch.equal(shards[1].hist, batch.hist[[1, 3]])
    assert shard(batch, DistContext()) is batch


def test_single_process_helpers_change_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p], DistContext())
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def test_two_cpu_ranks_train_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    ckpt = load_checkpoint(tmp_path / "vae.pt")
    assert ckpt["step"] == TINY["steps"]
    for name, value in ckpt["model"].items():  # both ranks end with rank 0's saved weights
        assert torch.equal(ranks[0]["final"][name], value), name
        assert torch.equal(ranks[1]["final"][name], value), name
    # they trained (weights moved) on different windows (else syncing gradients proves nothing)
    assert any(not torch.equal(ranks[0]["initial"][k], ranks[0]["final"][k]) for k in ranks[0]["final"])
    assert not torch.equal(ranks[0]["windows"], ranks[1]["windows"])
    assert {f.name for f in tmp_path.iterdir()} == {"vae.pt", "vae.csv", "rank0.pt", "rank1.pt"}  # rank 0 writes
    assert len((tmp_path / "vae.csv").read_text().splitlines()) == 1 + TINY["steps"] // TINY["log_every"]


def _worker(out: Path) -> None:
    """One torchrun rank: train a tiny VAE, dump initial/final weights and the first shard window."""
    from blm_gym.models import BLMModel
    from blm_gym.train import VAETrainConfig, train_vae
    from blm_gym.train.common import windows
    from blm_gym.train.distributed import init_from_env
    from blm_gym.train.vae import model_config

    torch.set_num_threads(1)
    ctx = init_from_env()
    scenes = ([toy_scene(0), toy_scene(1)], [toy_scene(2)])
    cfg = VAETrainConfig(**TINY, out=str(out / "vae.pt"))
    torch.manual_seed(cfg.seed)  # as train_vae does: the same initial weights
    initial = BLMModel(model_config(cfg))
    my_windows = shard(windows(scenes[0], cfg.window_stride, cfg.max_agents, initial), ctx)
    initial = {k: v.clone() for k, v in initial.state_dict().items()}
    model = train_vae(cfg, scenes=scenes)
    torch.save({"initial": initial, "final": model.state_dict(), "windows": my_windows.hist[:1]},
               out / f"rank{ctx.rank}.pt")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
