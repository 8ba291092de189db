"""Oriented-box geometry for the simulator: corners, pairwise overlap, off-road.

Pure numpy, batched over any leading dims. An agent is a rectangle centred at ``(x, y)``
(metres) with its long side ``length`` along ``heading`` (radians, world frame) and
``width`` across it.

Overlap uses the separating-axis theorem on the box extents directly (no corners): two
rectangles are disjoint iff their centre offset, projected on one of the four edge normals
(two per box), is at least the sum of their half-projections. Boxes that only touch (share an
edge or a corner, zero-area intersection) count as *not* overlapping.
"""
from __future__ import annotations

import numpy as np

from blm_gym.data.scene import DrivableArea
from blm_gym.sim.kinematics import array_module


def _float(a) -> np.ndarray:
    """``a`` as a float array of at least float32 precision (float64 stays float64)."""
    a = np.asarray(a)
    return a.astype(np.result_type(a.dtype, np.float32), copy=False)


def box_corners(x, y, heading, length, width) -> np.ndarray:
    """Corners ``(..., 4, 2)`` of oriented boxes given arrays ``(...)`` (broadcastable).

    Order: front-left, rear-left, rear-right, front-right (counter-clockwise).
    """
    x, y, heading, length, width = np.broadcast_arrays(*map(_float, (x, y, heading, length, width)))
    c, s = np.cos(heading)[..., None], np.sin(heading)[..., None]
    # Box-frame corners as multiples of the half extents, counter-clockwise from front-left.
    fl = np.array([1.0, -1.0, -1.0, 1.0], dtype=c.dtype) * (0.5 * length)[..., None]
    fw = np.array([1.0, 1.0, -1.0, -1.0], dtype=c.dtype) * (0.5 * width)[..., None]
    return np.stack([x[..., None] + c * fl - s * fw, y[..., None] + s * fl + c * fw], axis=-1)


def disc_cover(x, y, heading, length, width, num_discs: int):
    """``num_discs`` equal discs along each box's heading that together cover it.

    Disc ``k`` is centred on the box's long axis at ``((k + 0.5) / n - 0.5) * length`` from its
    centre, with radius ``sqrt((width / 2)^2 + (length / (2 n))^2)``: it circumscribes one of ``n``
    equal slices of the box. Inputs ``(...)`` broadcast; returns centres ``cx, cy`` ``(..., n)``
    and ``radius`` ``(...)``. Works on numpy arrays and on torch tensors (differentiably: the
    sampling guidance uses it); ``heading`` may be None for ``n = 1``.
    """
    xp = array_module(length)
    k = (xp.arange(num_discs, dtype=length.dtype, device=length.device) if xp is not np
         else np.arange(num_discs, dtype=length.dtype))
    frac = (k + 0.5) / num_discs - 0.5
    radius = xp.sqrt((0.5 * width) ** 2 + (0.5 * length / num_discs) ** 2)
    if num_discs == 1:
        return x[..., None], y[..., None], radius
    offset = frac * length[..., None]
    return x[..., None] + offset * xp.cos(heading)[..., None], y[..., None] + offset * xp.sin(heading)[..., None], radius


def boxes_overlap(x, y, heading, length, width, valid) -> np.ndarray:
    """Pairwise oriented-box overlap of N agents: bool ``(..., N, N)`` from inputs ``(..., N)``.

    ``out[..., i, j]`` is True when boxes ``i`` and ``j`` intersect with positive area (touching
    edges or corners does not count). The diagonal is False and invalid agents overlap nothing.
    Fully vectorised separating-axis test over the 4 edge normals of each pair.
    """
    x, y, heading, length, width = np.broadcast_arrays(*map(_float, (x, y, heading, length, width)))
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), x.shape)
    hl, hw = 0.5 * length, 0.5 * width
    cos_h, sin_h = np.cos(heading), np.sin(heading)
    dx = x[..., None, :] - x[..., :, None]  # offset of j from i, (..., N, N)
    dy = y[..., None, :] - y[..., :, None]
    # |cos| and |sin| of the relative heading give every cross term of the half-projections.
    ac = np.abs(cos_h[..., :, None] * cos_h[..., None, :] + sin_h[..., :, None] * sin_h[..., None, :])
    as_ = np.abs(sin_h[..., :, None] * cos_h[..., None, :] - cos_h[..., :, None] * sin_h[..., None, :])
    li, wi = hl[..., :, None], hw[..., :, None]
    lj, wj = hl[..., None, :], hw[..., None, :]
    # Offset projected on box i's axes (u_i along heading, v_i across) and on box j's axes.
    ci, si = cos_h[..., :, None], sin_h[..., :, None]
    cj, sj = cos_h[..., None, :], sin_h[..., None, :]
    overlap = np.abs(dx * ci + dy * si) < li + lj * ac + wj * as_
    overlap &= np.abs(dy * ci - dx * si) < wi + lj * as_ + wj * ac
    overlap &= np.abs(dx * cj + dy * sj) < lj + li * ac + wi * as_
    overlap &= np.abs(dy * cj - dx * sj) < wj + li * as_ + wi * ac
    overlap &= valid[..., :, None] & valid[..., None, :]
    n = x.shape[-1]
    overlap[..., np.arange(n), np.arange(n)] = False
    return overlap


def agent_collisions(x, y, heading, length, width, valid) -> np.ndarray:
    """Bool ``(..., N)``: the agent's box overlaps the box of any other valid agent."""
    return boxes_overlap(x, y, heading, length, width, valid).any(axis=-1)


def offroad(drivable: DrivableArea, x, y, valid) -> np.ndarray:
    """Bool array shaped like ``x``: the agent's centre lies outside the drivable area.

    Raster look-up (:meth:`DrivableArea.contains`), exact up to one raster cell; False where
    ``valid`` is False.
    """
    return ~drivable.contains(x, y) & np.asarray(valid, dtype=bool)
