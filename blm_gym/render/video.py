"""Write rendered frames to disk: mp4 videos, PNG images and contact sheets, atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import imageio.v2 as imageio
import numpy as np

from blm_gym.atomic_files import atomic_path


def _check_frame(frame: np.ndarray, what: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"{what}: expected an RGB frame (H, W, 3) uint8, got shape {frame.shape} "
                         f"dtype {frame.dtype} (blm_gym.render.render_frame returns one)")
    return frame


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 10) -> Path:
    """Encode RGB frames ``(H, W, 3)`` uint8 (all the same size) as an H.264 mp4 at ``fps``.

    Frames are streamed (any iterable works). Sizes are padded up to even numbers by the encoder.
    Returns ``path``. Raises ValueError when there are no frames or they differ in shape.
    """
    path = Path(path)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"write_video: no frames to write to {path}; render at least one frame first")
    shape = _check_frame(first, "write_video").shape
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                    macro_block_size=2, ffmpeg_log_level="error")
        try:
            writer.append_data(first)
            for k, frame in enumerate(it, start=1):
                if np.shape(frame) != shape:
                    raise ValueError(f"write_video: frame {k} has shape {np.shape(frame)}, "
                                     f"frame 0 has {shape}; all frames must share one size")
                writer.append_data(_check_frame(frame, "write_video"))
        finally:
            writer.close()
    return path


def write_png(frame: np.ndarray, path: str | os.PathLike) -> Path:
    """Save one RGB frame ``(H, W, 3)`` uint8 as a PNG; returns ``path``."""
    frame = _check_frame(frame, "write_png")
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, frame, format="PNG")
    return Path(path)


def contact_sheet(frames: Sequence[np.ndarray], cols: int, pad: int = 4,
                  background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Tile same-size frames row by row into one image ``(rows*(H+pad)+pad, cols*(W+pad)+pad, 3)``
    uint8, ``rows = ceil(len(frames) / cols)``; empty cells stay ``background``."""
    if len(frames) == 0:
        raise ValueError("contact_sheet: no frames given")
    if cols < 1:
        raise ValueError(f"contact_sheet: cols must be >= 1, got {cols}")
    h, w, _ = _check_frame(frames[0], "contact_sheet").shape
    cols = min(cols, len(frames))
    rows = -(-len(frames) // cols)
    sheet = np.empty((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    sheet[:] = background
    for k, frame in enumerate(frames):
        if np.shape(frame) != (h, w, 3):
            raise ValueError(f"contact_sheet: frame {k} has shape {np.shape(frame)}, expected {(h, w, 3)}")
        r, c = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = _check_frame(frame, "contact_sheet")
    return sheet
