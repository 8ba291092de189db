"""An on-disk cache of training windows: built once per (source, split, window config), read by shards.

Training windows (:func:`blm_gym.models.batch.scene_windows`: one :class:`AgentBatch` row per
scene and step) of a :class:`~blm_gym.data.source.SceneSource` are cut once and stored as

::

    <cache_dir>/<name>-<key>/manifest.json     what was built, from what (JSON)
    <cache_dir>/<name>-<key>/shard-00000.npy   (W_0,) structured records, one per window
    <cache_dir>/<name>-<key>/shard-00001.npy   ...

A record holds every :class:`AgentBatch` field of one window without the batch dim (``hist``
``(N, H, 6)`` float32, ..., ``frame`` ``(3,)``; same dtypes as the tensors) plus ``scene`` (int32,
the scene's position in the source). A shard is a plain ``.npy`` file (``np.load(path,
mmap_mode="r")["hist"]`` reads it); shards hold at most ``shard_bytes`` of records.

Reading (:class:`ShardReader`) scatters each requested record's fields straight from its shard
into the batch's field-major buffer with one ``os.preadv``, through the OS page cache. A
long-lived memory map reads as fast, but the pages it touches count in the reader's RSS, which
would then grow with the cache.

Building (:func:`build_window_cache`) loads one scene at a time and flushes full shards, so its
memory does not grow with the number of scenes. It writes into a temp folder beside the final one
and renames it into place with the manifest written last: a crash never leaves a half cache under
the final name (a later build removes the temp folder).

The manifest holds a **fingerprint** (:func:`source_fingerprint`): the cache format version, a
hash of the code that cuts windows (``blm_gym/models/batch.py``), the window config, the scene ids
and, per scene, its files' sizes and mtimes (or the synthetic generator's config, or the source's
own ``fingerprint()``). :func:`open_window_cache` recomputes it on every open; when it differs the
cache is rebuilt (``rebuild="auto"``) or a :class:`StaleWindowCacheError` says how to rebuild
(``rebuild="never"``). A stale cache is never read. A missing or damaged shard raises
:class:`DamagedWindowCacheError` naming the folder to delete.

The cache folder's name depends on the source (type, name, root), the split label, the scene ids
and the window config, so other splits and configs get their own folders; a change of the files
behind the same scene ids rebuilds the folder in place. One process at a time builds a folder
(an ``flock`` beside it); the others wait, then read what it built (e.g. ranks under torchrun).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from blm_gym.data.source import SceneSource
from blm_gym.models.batch import FUTURE_STEPS, HISTORY_STEPS, LANE_POINTS, MAX_LANES, AgentBatch, scene_windows

CACHE_FORMAT_VERSION = 1  # bump when the on-disk layout or the manifest changes
MANIFEST = "manifest.json"
SHARD_BYTES = 64 * 2**20  # records per shard: at most this many bytes (at least one record)
BATCH_FIELDS = tuple(f.name for f in dataclasses.fields(AgentBatch))
Rebuild = Literal["auto", "never"]


class WindowCacheError(RuntimeError):
    """Base of the window cache's errors; the message says how to fix it."""


class StaleWindowCacheError(WindowCacheError):
    """The cache is missing or was built from other data / another config, and rebuilding is off."""


class DamagedWindowCacheError(WindowCacheError):
    """The manifest or a shard is missing, truncated or unreadable."""


@dataclass(frozen=True)
class WindowConfig:
    """Which windows are cut from a scene and how big they are (all of it is in the fingerprint).

    ``stride``: steps (0.1 s) between windows; ``max_agents`` (N): ego + nearest road users per
    window; ``history_steps`` (H) and ``future_steps`` (F): the model's input and target lengths;
    ``max_lanes`` (L) x ``lane_points`` (P): the lane centerlines kept per window.
    """

    stride: int = 2
    max_agents: int = 32
    history_steps: int = HISTORY_STEPS
    future_steps: int = FUTURE_STEPS
    max_lanes: int = MAX_LANES
    lane_points: int = LANE_POINTS

    def windows(self, scene) -> Iterator[AgentBatch]:
        """The windows of one scene (each a B = 1 :class:`AgentBatch`), as :func:`scene_windows` cuts them."""
        return scene_windows([scene], stride=self.stride, max_agents=self.max_agents,
                             history_steps=self.history_steps, future_steps=self.future_steps,
                             max_lanes=self.max_lanes, lane_points=self.lane_points)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/blm_gym/windows`` (``~/.cache/blm_gym/windows`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "blm_gym" / "windows"


def record_dtype(window: WindowConfig) -> np.dtype:
    """The structured dtype of one cached window: every :class:`AgentBatch` field, then ``scene``."""
    n, h, f, lanes, p = (window.max_agents, window.history_steps, window.future_steps, window.max_lanes,
                         window.lane_points)
    f4, i8, b1 = np.float32, np.int64, np.bool_
    shapes = {"hist": (f4, (n, h, 6)), "state_scene": (f4, (n, 4)), "state_world": (f4, (n, 4)),
              "extent": (f4, (n, 2)), "agent_type": (i8, (n,)), "agent_mask": (b1, (n,)),
              "agent_index": (i8, (n,)), "fut_actions": (f4, (n, f, 2)), "fut_states": (f4, (n, f, 4)),
              "fut_valid": (b1, (n, f)), "lanes": (f4, (lanes, p, 2)), "lane_mask": (b1, (lanes, p)),
              "frame": (f4, (3,))}
    missing = set(BATCH_FIELDS) ^ set(shapes)
    if missing:  # AgentBatch gained or lost a field: the layout here must follow
        raise RuntimeError(f"window cache layout out of date with AgentBatch (fields {sorted(missing)}); "
                           "update record_dtype and bump CACHE_FORMAT_VERSION")
    return np.dtype([(k, *shapes[k]) for k in BATCH_FIELDS] + [("scene", np.int32)])


# --- fingerprint ----------------------------------------------------------------------------------

def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def window_code_hash() -> str:
    """SHA-256 of the module that cuts windows (``blm_gym/models/batch.py``): editing it rebuilds caches."""
    from blm_gym.models import batch

    return _sha(Path(batch.__file__).read_bytes())


class _Stamper:
    """What each scene of a source depends on, looked up through the registry's wrappers.

    Entry lists are read once per source (looking an entry up by id rebuilds the id tuple: O(n)
    per scene), and file stats and custom fingerprints once per file / source.
    """

    def __init__(self):
        self._entries: dict[int, list] = {}
        self._stats: dict[Path, list] = {}
        self._custom: dict[int, str] = {}

    def entries(self, source) -> list:
        """``source``'s per-scene entries in scene order (ScenarioNet: files; indexed / concat: entries)."""
        if id(source) not in self._entries:
            table = source._files if hasattr(source, "_files") else source._entries
            self._entries[id(source)] = list(table.values())
        return self._entries[id(source)]

    def unwrap(self, source: SceneSource, index: int) -> tuple[SceneSource, int]:
        """The innermost source and index behind split subsets and concatenations."""
        from blm_gym.data.registry import ConcatSource, SubsetSource

        while True:
            if isinstance(source, SubsetSource):
                source, index = source.source, source._index[index]
            elif isinstance(source, ConcatSource):
                k, index = self.entries(source)[index]
                source = source.sources[k]
            else:
                return source, index

    def files(self, source: SceneSource, index: int) -> list[Path] | None:
        """The files scene ``index`` of an unwrapped source is read from (None: the source does not say)."""
        from blm_gym.data.build import IndexedSource
        from blm_gym.data.scenarionet import ScenarioNetSource

        if isinstance(source, ScenarioNetSource):
            return [Path(self.entries(source)[index])]
        if isinstance(source, IndexedSource):
            entry = self.entries(source)[index]
            paths = [e for e in (entry if isinstance(entry, tuple) else (entry,)) if isinstance(e, Path)]
            files = []
            for p in paths:  # a folder entry (an Argoverse 2 log) stands for every file in it
                files += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
            return files or None
        return None

    def stat(self, path: Path) -> list:
        """``[path, size, mtime_ns]`` (``None``s for a missing file)."""
        if path not in self._stats:
            try:
                st = path.stat()
                self._stats[path] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                self._stats[path] = [str(path), None, None]
        return self._stats[path]

    def scene(self, source: SceneSource, index: int) -> list | None:
        """Scene ``index``'s stamp: the source's own ``fingerprint()`` and the index, the synthetic
        generator's config, or its files' stats; None when the source offers none of these."""
        from blm_gym.data import synthetic

        inner, i = self.unwrap(source, index)
        if callable(getattr(inner, "fingerprint", None)):
            if id(inner) not in self._custom:
                self._custom[id(inner)] = _sha(json.dumps(inner.fingerprint(), sort_keys=True, default=str))
            return ["fingerprint", self._custom[id(inner)], i]
        if isinstance(inner, synthetic.SyntheticSource):
            kind, seed = inner._kind_seed(i)
            return ["synthetic", kind, seed, inner.steps, synthetic.CACHE_VERSION]
        files = self.files(inner, i)
        return None if files is None else [self.stat(p) for p in files]

    def root(self, source: SceneSource) -> Path | None:
        """The folder (or file) the source reads, if it has one."""
        inner = self.unwrap(source, 0)[0] if len(source.scene_ids) else source
        root = getattr(inner, "root", None) or getattr(source, "root", None)
        return Path(root) if isinstance(root, (str, os.PathLike)) and Path(root).exists() else None


def describe_source(source: SceneSource) -> dict:
    """Who a source is (type, name, root): part of the cache folder's key and the manifest."""
    stamper = _Stamper()
    root = stamper.root(source)
    inner = stamper.unwrap(source, 0)[0] if len(source.scene_ids) else source
    return {"type": type(inner).__name__, "name": str(source.name), "root": str(root.resolve()) if root else None}


def source_fingerprint(source: SceneSource, window: WindowConfig) -> dict:
    """The parts a cache of ``source`` under ``window`` depends on, each a short JSON value; their
    hash is ``fingerprint["digest"]``.

    ``content``: per scene (through split subsets and concatenations), by the first that applies:
    its source's own ``fingerprint()`` (any JSON value) and its index; the synthetic generator's
    (kind, seed, steps, version); its files' (path, size, mtime). When a scene has none of these,
    every file under the source's ``root`` instead; a source without a root raises a TypeError
    (give it a ``fingerprint()`` method). Nothing is loaded: a few ``stat`` calls per scene.
    """
    ids = [str(s) for s in source.scene_ids]
    stamper, h = _Stamper(), hashlib.sha256()
    for i in range(len(ids)):
        stamp = stamper.scene(source, i)
        if stamp is None:  # no per-scene files: everything under the root
            root = stamper.root(source)
            if root is None:
                raise TypeError(
                    f"cannot fingerprint scene source {source.name!r} ({type(source).__name__}): it lists no "
                    "files and has no root folder; give it a fingerprint() method returning what its scenes "
                    "depend on (e.g. a version or a content hash)")
            h = hashlib.sha256(b"tree")
            for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
                if p.is_file():
                    h.update(json.dumps(stamper.stat(p)).encode())
            break
        h.update(json.dumps(stamp).encode())
    parts = {"format_version": CACHE_FORMAT_VERSION, "window_code": window_code_hash(),
             "window": dataclasses.asdict(window), "source": describe_source(source),
             "scene_ids": _sha("\n".join(ids)), "content": h.hexdigest()}
    return {**parts, "digest": _sha(json.dumps(parts, sort_keys=True))}


def cache_folder(cache_dir: str | os.PathLike, source: SceneSource, window: WindowConfig, split: str = "all") -> Path:
    """The folder of the cache of ``source`` (``split``: a label, e.g. ``"train"``) under ``window``."""
    key = {"source": describe_source(source), "split": split, "window": dataclasses.asdict(window),
           "scene_ids": _sha("\n".join(map(str, source.scene_ids)))}
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{source.name}-{split}").strip("-")[:60]
    return Path(cache_dir).expanduser() / f"{slug}-{len(source.scene_ids)}scenes-{_sha(json.dumps(key, sort_keys=True))[:12]}"


def _difference(old: dict, new: dict) -> str:
    names = {"format_version": "the cache format version", "window_code": "the window code (models/batch.py)",
             "window": "the window config", "source": "the source", "scene_ids": "the scene ids",
             "content": "the scene files (sizes / mtimes) or generator config"}
    changed = [names[k] for k in names if old.get(k) != new.get(k)]
    return ", ".join(changed) or "the fingerprint"


# --- building -------------------------------------------------------------------------------------

class _ShardWriter:
    """Collects window records into a bounded buffer and writes it out as numbered shards."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_bytes: int):
        self.folder, self.dtype = folder, dtype
        self.capacity = max(1, shard_bytes // dtype.itemsize)
        self.buffer = np.zeros(self.capacity, dtype)
        self.size, self.shards = 0, []

    def add(self, window: AgentBatch, scene: int) -> None:
        row = self.buffer[self.size]
        for name in BATCH_FIELDS:
            row[name] = getattr(window, name)[0].numpy()
        row["scene"] = scene
        self.size += 1
        if self.size == self.capacity:
            self.flush()

    def flush(self) -> None:
        if not self.size:
            return
        name = f"shard-{len(self.shards):05d}.npy"
        with open(self.folder / name, "wb") as f:
            np.save(f, self.buffer[:self.size])
            f.flush()
            os.fsync(f.fileno())
        self.shards.append({"file": name, "windows": self.size, "bytes": (self.folder / name).stat().st_size})
        self.size = 0  # every field of a record is written by add: no need to clear


def build_window_cache(source: SceneSource, folder: str | os.PathLike, window: WindowConfig, *,
                       fingerprint: dict | None = None, shard_bytes: int = SHARD_BYTES,
                       progress: bool = True) -> dict:
    """Cut every window of ``source`` into a cache at ``folder`` (replacing what is there); returns the manifest.

    One scene in memory at a time, shards of at most ``shard_bytes``; written in a temp folder
    renamed into place at the end (an exception or a crash leaves no cache under ``folder``).
    Not safe against a concurrent build of the same folder: :func:`open_window_cache` locks.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or source_fingerprint(source, window)
    for pattern in (f".{folder.name}.tmp-*", f".{folder.name}.old-*"):  # left by a build that crashed
        for leftover in folder.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = folder.parent / f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = _ShardWriter(tmp, record_dtype(window), shard_bytes)
        ids = list(source.scene_ids)
        for i in tqdm(range(len(ids)), desc=f"window cache {folder.name}", disable=None if progress else True):
            scene = source.load(i)
            for w in window.windows(scene):
                writer.add(w, i)
            del scene
        writer.flush()
        manifest = {"format": "blm_gym.window_cache", "format_version": CACHE_FORMAT_VERSION,
                    "fingerprint": fingerprint, "window": dataclasses.asdict(window),
                    "record_dtype": _descr(writer.dtype),
                    "num_windows": sum(s["windows"] for s in writer.shards), "shards": writer.shards,
                    "scene_ids": ids}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_folder(new: Path, final: Path) -> None:
    """Put the folder ``new`` at ``final``; an old ``final`` is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<folder>.lock`` (waits for another builder of ``folder``)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"window cache {folder}: waiting for another process building it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_window_cache(source: SceneSource, window: WindowConfig, cache_dir: str | os.PathLike | None = None, *,
                      split: str = "all", rebuild: Rebuild = "auto", shard_bytes: int = SHARD_BYTES,
                      progress: bool = True) -> "WindowCache":
    """The up-to-date cache of ``source``'s windows under ``cache_dir`` (None: :func:`default_cache_dir`).

    Built when missing or stale (the fingerprint differs) with ``rebuild="auto"``; with
    ``rebuild="never"`` that raises :class:`StaleWindowCacheError` instead. ``split`` labels the
    folder (``"train"``, ``"val"``, ...). A damaged cache raises :class:`DamagedWindowCacheError`.
    """
    if rebuild not in ("auto", "never"):
        raise ValueError(f"rebuild must be 'auto' or 'never', got {rebuild!r} (to force a rebuild, delete the folder)")
    folder = cache_folder(cache_dir if cache_dir is not None else default_cache_dir(), source, window, split)
    with _locked(folder):
        fingerprint = source_fingerprint(source, window)
        problem = None
        if not folder.exists():
            problem = "it does not exist yet"
        else:
            old = _read_manifest(folder)["fingerprint"]  # a folder without a readable manifest is damaged
            if old.get("digest") != fingerprint["digest"]:
                problem = f"it was built from other data or another config ({_difference(old, fingerprint)} changed)"
        if problem is not None:
            if rebuild == "never":
                raise StaleWindowCacheError(
                    f"window cache {folder} cannot be used: {problem}. Rebuild it: run with rebuild_cache='auto' "
                    f"(or call open_window_cache(..., rebuild='auto'))")
            build_window_cache(source, folder, window, fingerprint=fingerprint, shard_bytes=shard_bytes,
                               progress=progress)
        return WindowCache(folder)


# --- reading --------------------------------------------------------------------------------------

def _damaged(folder: Path, what: str) -> DamagedWindowCacheError:
    return DamagedWindowCacheError(f"window cache {folder} is damaged: {what}; delete the folder (rm -r {folder}) "
                                   "and run again to rebuild it")


def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise _damaged(folder, f"{MANIFEST} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(folder, f"{MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("format") != "blm_gym.window_cache" or "fingerprint" not in manifest:
        raise _damaged(folder, f"{MANIFEST} is not a window cache manifest")
    return manifest


@dataclass(frozen=True)
class Shard:
    """One shard file: ``windows`` records of ``dtype`` from byte ``offset``; ``inode`` and ``size``
    as seen when the cache was opened (a rebuild while reading is detected)."""

    path: str
    offset: int
    windows: int
    inode: int
    size: int


class WindowCache:
    """A built cache folder, checked on open: its manifest, record dtype and every shard's header and size."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        self.window = WindowConfig(**self.manifest["window"])
        self.dtype = record_dtype(self.window)
        if _descr(self.dtype) != self.manifest["record_dtype"]:
            raise _damaged(self.folder, "its record layout is not this version's")
        self.shards = [self._check_shard(s) for s in self.manifest["shards"]]

    def _check_shard(self, entry: dict) -> Shard:
        path = self.folder / entry["file"]
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                offset, st = f.tell(), os.fstat(f.fileno())
        except FileNotFoundError:
            raise _damaged(self.folder, f"shard {entry['file']} is missing") from None
        except (ValueError, OSError) as e:
            raise _damaged(self.folder, f"shard {entry['file']} is unreadable ({e})") from None
        if dtype != self.dtype or shape != (entry["windows"],) or st.st_size != entry["bytes"] \
                or st.st_size != offset + entry["windows"] * self.dtype.itemsize:
            raise _damaged(self.folder, f"shard {entry['file']} is truncated or not the one the manifest lists "
                                        f"({st.st_size} bytes, header {shape})")
        return Shard(str(path), offset, int(entry["windows"]), st.st_ino, st.st_size)

    @property
    def num_windows(self) -> int:
        return int(self.manifest["num_windows"])

    @property
    def scene_ids(self) -> list[str]:
        return list(self.manifest["scene_ids"])

    def __repr__(self) -> str:
        return f"WindowCache({str(self.folder)!r}, {self.num_windows} windows in {len(self.shards)} shards)"


def _descr(dtype: np.dtype) -> list:
    """``dtype.descr`` as the manifest's JSON holds it (lists for tuples)."""
    return json.loads(json.dumps(dtype.descr))


@functools.lru_cache(maxsize=64)  # asked twice per batch, for a few batch sizes
def field_layout(dtype: np.dtype, n: int) -> tuple[tuple[tuple[str, np.dtype, int], ...], int]:
    """How ``n`` records of ``dtype`` lie field by field in one buffer: ``(name, field dtype, byte
    offset)`` per field, each field ``(n, *shape)`` C-contiguous from an 8-byte aligned offset; and
    the buffer's size in bytes."""
    layout, offset = [], 0
    for name in dtype.names:
        sub = dtype.fields[name][0]
        layout.append((name, sub, offset))
        offset += -(-n * sub.itemsize // 8) * 8
    return tuple(layout), offset


def field_views(buffer: np.ndarray, dtype: np.dtype, n: int) -> dict[str, np.ndarray]:
    """The fields ``{name: (n, *shape)}`` of ``n`` records laid out in ``buffer`` (uint8) by :func:`field_layout`."""
    return {name: buffer[offset: offset + n * sub.itemsize].view(sub.base).reshape((n,) + sub.shape)
            for name, sub, offset in field_layout(dtype, n)[0]}


class ShardReader:
    """Reads records of the concatenated ``shards`` (all of ``dtype``) by global window index.

    Reads are positional: one ``os.preadv`` per record scatters its fields straight from the OS
    page cache into a field-major buffer (:func:`field_layout`), the layout of the batch's tensors,
    so each byte is copied once. Not a long-lived memory map: pages mapped into a process count in
    its RSS, so mapping a cache of many GB would grow the reader's memory with every window it
    touches, while ``preadv`` leaves the process's memory flat. Up to ``max_open`` shard files
    stay open (None: a quarter of the process's file limit, at least 64: every shard of a cache of
    many GB, rather than an open and a close per read); the handles are not pickled (each
    DataLoader worker opens its own).
    """

    def __init__(self, shards: list[Shard], dtype: np.dtype, max_open: int | None = None):
        if max_open is None:
            max_open = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
        self.shards, self.dtype, self.max_open = list(shards), dtype, max_open
        self.starts = np.concatenate([[0], np.cumsum([s.windows for s in self.shards], dtype=np.int64)])
        # file offset of global window i in shard s: base[s] + i * itemsize
        self.base = np.array([s.offset for s in self.shards] + [0], np.int64) - self.starts * dtype.itemsize
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def _fd(self, s: int) -> int:
        """The descriptor of shard ``s``'s file: opened and checked on first use; beyond
        ``max_open`` the oldest is closed (reads are uniform: no order is better)."""
        f = self._files.get(s)
        if f is None:
            shard = self.shards[s]
            folder, name = Path(shard.path).parent, Path(shard.path).name
            try:
                f = open(shard.path, "rb", buffering=0)
            except FileNotFoundError:
                raise _damaged(folder, f"shard {name} vanished while reading") from None
            st = os.fstat(f.fileno())
            if (st.st_ino, st.st_size) != (shard.inode, shard.size):
                f.close()
                raise _damaged(folder, f"shard {name} changed while reading (rebuilt by another process?)")
            if len(self._files) >= self.max_open:
                self._files.pop(next(iter(self._files))).close()
            self._files[s] = f
        return f.fileno()

    def read(self, indices: Iterable[int], out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The records at global window ``indices`` (any order, repeats allowed), as their fields
        ``{name: (len(indices), *shape)}``: views of ``out`` (uint8, at least :func:`field_layout`'s
        size; None: a new buffer), row ``j`` holding window ``indices[j]``."""
        idx = np.asarray(indices if isinstance(indices, (np.ndarray, torch.Tensor)) else list(indices), np.int64)
        n = len(idx)
        if n and (idx.min() < 0 or idx.max() >= self.starts[-1]):
            raise IndexError(f"window index out of range [0, {self.starts[-1]})")
        layout, nbytes = field_layout(self.dtype, n)
        out = np.empty(nbytes, np.uint8) if out is None else out
        if out.dtype != np.uint8 or out.ndim != 1 or out.nbytes < nbytes:
            raise ValueError(f"out must be a 1-D uint8 buffer of at least {nbytes} bytes")
        fields = [(memoryview(out[offset: offset + n * sub.itemsize]), sub.itemsize) for _, sub, offset in layout]
        # ascending file order: one file lookup per shard, reads moving forward through each file
        rows = np.argsort(idx, kind="stable")
        which = np.searchsorted(self.starts, idx[rows], side="right") - 1
        at = self.base[which] + idx[rows] * self.dtype.itemsize
        current, fd = -1, -1
        for j, s, pos in zip(rows.tolist(), which.tolist(), at.tolist()):
            if s != current:
                current, fd = s, self._fd(s)
            if os.preadv(fd, [view[j * size: (j + 1) * size] for view, size in fields], pos) != self.dtype.itemsize:
                shard = Path(self.shards[s].path)
                raise _damaged(shard.parent, f"shard {shard.name} is truncated")
        return field_views(out, self.dtype, n)


def fields_to_batch(fields: dict[str, np.ndarray]) -> AgentBatch:
    """The :class:`AgentBatch` whose tensors share memory with ``fields`` (e.g. :meth:`ShardReader.read`'s)."""
    return AgentBatch(**{name: torch.from_numpy(fields[name]) for name in BATCH_FIELDS})


__all__ = ["WindowConfig", "WindowCache", "open_window_cache", "build_window_cache", "source_fingerprint",
           "cache_folder", "default_cache_dir", "record_dtype", "ShardReader", "field_layout", "field_views",
           "fields_to_batch", "WindowCacheError", "StaleWindowCacheError", "DamagedWindowCacheError",
           "CACHE_FORMAT_VERSION"]
