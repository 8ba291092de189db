"""Training-data scaling: building and reading the on-disk window cache for 100 vs 5,000 scenes.

Prints one JSON object. For each size, in a fresh subprocess each (so peak RSS is that phase's own):

* ``build``: :func:`blm_gym.train.window_cache.open_window_cache` cutting every window into a
  fresh cache: seconds, scenes/s, windows, bytes on disk, peak RSS (``ru_maxrss``) of the process.
* ``read``: ``batches`` training batches of ``batch_size`` windows through the trainers' own
  loader (:func:`~blm_gym.train.loader.make_loader`, :class:`~blm_gym.train.loader.StepBatchSampler`:
  uniform, seeded by (seed, step)), with ``0`` and ``workers`` worker processes: windows/s after
  the first batch, peak RSS of the reading process and (with workers) of the largest worker, and
  ``cpu_us_per_batch``: CPU time of the reading (training) process per batch, what reading costs
  the training step. Load on a shared machine only slows a run down, so the figure is the best
  of ``repeats`` runs in each of ``rounds`` subprocesses, the sizes taking turns (peak RSS: the
  highest seen; CPU: the lowest).
  Every shard file is read through once first, so both sizes are read from a warm page cache
  (the machine's free memory holds the 5,000-scene cache): this measures the loader, not the disk.
* ``control``: the floor set by memory itself: the same random gather of window-sized rows from
  an in-RAM numpy array as large as the cache (no loader, no files). Random rows of a 2 GB
  table miss the CPU caches and TLB far more than those of a 44 MB one.

``ratio_large_over_small``: 5,000 over 100 scenes, with the goals: peak RSS of reading within
1.5x, windows/s at least 0.8x (``control_windows_per_s``: the same ratio for the in-RAM gather;
``cpu_per_batch``: of the reading process's CPU per batch, less sensitive to other load than
windows/s, reported only).
``in_memory_100``: for reference, the old path (every window collated in one in-memory batch)
on the 100 scenes: its peak RSS and the batch's bytes (x 50 for 5,000 scenes).

Scenes: generating 5,000 highway-env scenes is too slow, so scene ``i`` is base scene ``i % 4``
(the first four :class:`~blm_gym.data.synthetic.SyntheticSource` scenes: highway, merge,
roundabout, intersection; 200 steps) with id ``<base id>-copy<i>`` and every track perturbed,
seeded by ``i``: each agent moved sideways (across its heading) by a constant N(0, 0.3) m and its
speed scaled by a constant 1 + N(0, 0.03), so windows differ from scene to scene while the map is
shared.

Usage: ``python benchmarks/train_data.py [--sizes 100 5000] [--stride 20] [--batches 400]
[--workers 2] [--repeats 3] [--rounds 2] [--cache-dir DIR --keep]``. The 5,000-scene cache at stride 20 (7 windows per
scene, 32 agents) is about 2.2 GB and builds in a few minutes on one core.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASE_SCENES = 4
SIGMA_LATERAL_M = 0.3
SIGMA_SPEED = 0.03


class PerturbedSource:
    """``num_scenes`` cheap deterministic scenes from the first ``BASE_SCENES`` synthetic scenes (see the module doc)."""

    name = "bench-perturbed"

    def __init__(self, num_scenes: int):
        from blm_gym.data.synthetic import SyntheticSource

        self.base_source = SyntheticSource(num_scenes=BASE_SCENES, seed=0)
        self.num_scenes = num_scenes
        self._base = [None] * BASE_SCENES

    @property
    def scene_ids(self) -> list[str]:
        ids = self.base_source.scene_ids
        return [f"{ids[i % BASE_SCENES]}-copy{i:05d}" for i in range(self.num_scenes)]

    def fingerprint(self) -> dict:
        return {"generator": "benchmarks/train_data.py", "version": 1, "num_scenes": self.num_scenes,
                "base": list(self.base_source.scene_ids), "sigma": [SIGMA_LATERAL_M, SIGMA_SPEED]}

    def load(self, index: int):
        from blm_gym.data.scene import Trajectories

        b = index % BASE_SCENES
        if self._base[b] is None:
            self._base[b] = self.base_source.load(b)
        base = self._base[b]
        t = base.traj
        rng = np.random.default_rng(index)
        d = rng.normal(0.0, SIGMA_LATERAL_M, (base.num_agents, 1))
        k = 1.0 + rng.normal(0.0, SIGMA_SPEED, (base.num_agents, 1))
        traj = Trajectories.from_states(t.x - np.sin(t.heading) * d, t.y + np.cos(t.heading) * d, t.heading,
                                        t.speed * k, t.length, t.width, t.valid)
        return dataclasses.replace(base, scene_id=self.scene_ids[index], traj=traj)


def window_config(args):
    from blm_gym.train.window_cache import WindowConfig

    return WindowConfig(stride=args.stride, max_agents=args.max_agents)


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def child_build(args) -> dict:
    from blm_gym.train.window_cache import open_window_cache

    t0 = time.perf_counter()
    cache = open_window_cache(PerturbedSource(args.size), window_config(args), args.cache_dir, split="bench",
                              progress=False)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "scenes_per_s": round(args.size / seconds, 1),
            "windows": cache.num_windows, "shards": len(cache.shards),
            "gbytes": round(sum(s.size for s in cache.shards) / 1e9, 3), "peak_rss_mb": round(peak_rss_mb())}


def warm_page_cache(cache) -> None:
    """Read every shard file once, sequentially (1 MB at a time), so both sizes are read warm."""
    buf = bytearray(2**20)
    for shard in cache.shards:
        with open(shard.path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def child_read(args) -> dict:
    import torch

    from blm_gym.train.loader import CachedWindows, StepBatchSampler, make_loader
    from blm_gym.train.window_cache import open_window_cache

    torch.set_num_threads(1)
    cache = open_window_cache(PerturbedSource(args.size), window_config(args), args.cache_dir, split="bench",
                              rebuild="never", progress=False)
    warm_page_cache(cache)
    data = CachedWindows([cache])
    out = {"windows_in_cache": len(data)}
    for workers in (0, args.workers):
        rates, cpu = [], []
        for rep in range(args.repeats):  # best of repeats: on a shared machine contention only slows a run
            sampler = StepBatchSampler(range(len(data)), args.batch_size, seed=rep, start=0, stop=args.batches + 1)
            count, t0, c0 = 0, None, None
            for i, batch in enumerate(make_loader(data, sampler, workers)):
                if i == 0:
                    t0, c0 = time.perf_counter(), time.process_time()  # after the first batch: workers started
                    continue
                count += batch.batch_size
            rates.append(count / (time.perf_counter() - t0))
            cpu.append((time.process_time() - c0) / args.batches)
        out[f"workers_{workers}"] = {"windows_per_s": round(max(rates)), "peak_rss_mb": round(peak_rss_mb()),
                                     "cpu_us_per_batch": round(min(cpu) * 1e6)}
    out[f"workers_{args.workers}"]["worker_peak_rss_mb"] = round(peak_rss_mb(resource.RUSAGE_CHILDREN))
    return out


def child_control(args) -> dict:
    """The floor set by memory itself: the same random gather (batches of ``batch_size`` rows of a
    window's bytes) from an in-RAM array as large as the cache."""
    from blm_gym.train.window_cache import open_window_cache

    cache = open_window_cache(PerturbedSource(args.size), window_config(args), args.cache_dir, split="bench",
                              rebuild="never", progress=False)
    table = np.ones((cache.num_windows, cache.dtype.itemsize), np.uint8)
    rates = []
    for rep in range(args.repeats):
        rng = np.random.default_rng(rep)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            table[rng.integers(0, len(table), args.batch_size)]
        rates.append(args.batches * args.batch_size / (time.perf_counter() - t0))
    return {"windows_per_s": round(max(rates)), "table_gbytes": round(table.nbytes / 1e9, 3)}


def child_in_memory(args) -> dict:
    from blm_gym.models.batch import collate

    source, window = PerturbedSource(args.size), window_config(args)
    batch = collate([w for i in range(args.size) for w in window.windows(source.load(i))])
    nbytes = sum(getattr(batch, f.name).nbytes for f in dataclasses.fields(batch))
    return {"windows": batch.batch_size, "batch_gbytes": round(nbytes / 1e9, 3), "peak_rss_mb": round(peak_rss_mb())}


def best(a: dict | None, b: dict) -> dict:
    """``b`` with every ``windows_per_s`` and ``*rss_mb`` the higher of ``a``'s and ``b``'s, every
    ``cpu_us_per_batch`` the lower."""
    if a is None:
        return b
    out = {}
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = best(a[k], v)
        elif k == "windows_per_s" or k.endswith("rss_mb"):
            out[k] = max(a[k], v)
        elif k == "cpu_us_per_batch":
            out[k] = min(a[k], v)
        else:
            out[k] = v
    return out


def run_child(phase: str, size: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--size", str(size), "--cache-dir", str(args.cache_dir),
           "--stride", str(args.stride), "--max-agents", str(args.max_agents), "--batch-size", str(args.batch_size),
           "--batches", str(args.batches), "--workers", str(args.workers), "--repeats", str(args.repeats)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{phase} {size}: {run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs=2, default=[100, 5000])
    p.add_argument("--stride", type=int, default=20)
    p.add_argument("--max-agents", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None, help="default: a temp folder, removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the caches")
    p.add_argument("--child", choices=["build", "read", "control", "in_memory"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        phases = {"build": child_build, "read": child_read, "control": child_control, "in_memory": child_in_memory}
        print(json.dumps(phases[args.child](args)))
        return

    warm = PerturbedSource(BASE_SCENES)  # records the base scenes once (highway-env), cached on disk for the children
    for i in range(BASE_SCENES):
        warm.load(i)
    temp = args.cache_dir is None
    args.cache_dir = Path(tempfile.mkdtemp(prefix="blm_windows_")) if temp else args.cache_dir
    try:
        report = {"config": {"stride": args.stride, "max_agents": args.max_agents, "batch_size": args.batch_size,
                             "batches": args.batches, "workers": args.workers, "repeats": args.repeats, "rounds": args.rounds},
                  "sizes": {}}
        for size in args.sizes:
            report["sizes"][str(size)] = {"build": run_child("build", size, args)}
        for _ in range(args.rounds):  # the sizes in turn, best of the rounds (load on a shared machine varies)
            for size in args.sizes:
                for phase in ("read", "control"):
                    report["sizes"][str(size)][phase] = best(report["sizes"][str(size)].get(phase),
                                                             run_child(phase, size, args))
        report["in_memory_100"] = run_child("in_memory", args.sizes[0], args)
        small, large = (report["sizes"][str(s)] for s in args.sizes)
        ratio = {}
        for key in ("workers_0", f"workers_{args.workers}"):
            a, b = small["read"][key], large["read"][key]
            ratio[key] = {"peak_rss": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                          "windows_per_s": round(b["windows_per_s"] / a["windows_per_s"], 3),
                          "cpu_per_batch": round(b["cpu_us_per_batch"] / a["cpu_us_per_batch"], 3)}
        ratio["build_peak_rss"] = round(large["build"]["peak_rss_mb"] / small["build"]["peak_rss_mb"], 3)
        ratio["control_windows_per_s"] = round(large["control"]["windows_per_s"] / small["control"]["windows_per_s"], 3)
        ratio["goals"] = {"peak_rss <= 1.5": all(r["peak_rss"] <= 1.5 for k, r in ratio.items() if k.startswith("w")),
                          "windows_per_s >= 0.8": all(r["windows_per_s"] >= 0.8 for k, r in ratio.items()
                                                      if k.startswith("w"))}
        report["ratio_large_over_small"] = ratio
        print(json.dumps(report, indent=1))
    finally:
        if temp and not args.keep:
            shutil.rmtree(args.cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
