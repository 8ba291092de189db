"""Time to collision under a constant-velocity projection, in closed form.

Definition (exact): every agent keeps its current world-frame velocity ``(vx, vy)`` and its
heading; its box is covered by ``num_discs`` equal discs. The time to collision of agents
``i != j`` is the smallest ``t`` in ``[0, horizon]`` seconds at which a disc of ``i`` and a disc
of ``j`` touch (centre distance equals the sum of radii); 0 when some pair of discs already
overlaps; ``inf`` when no pair touches within ``horizon``, when ``i == j``, or when either agent
is invalid.

Disc cover (``num_discs = n``): disc ``k`` of an agent is centred on its longitudinal axis at
``((k + 0.5) / n - 0.5) * length`` from its centre, with radius
``sqrt((width / 2)^2 + (length / (2 n))^2)``, so each disc circumscribes one of ``n`` equal
slices of the box and together they cover it. ``n = 1`` is the single bounding disc (radius half
the box diagonal), which needs no heading; it is conservative: two cars side by side in adjacent
lanes already "touch". ``n = 3`` (tbsim's choice for vehicles) keeps them apart.

For one disc pair with relative position ``p`` and relative velocity ``v`` (j minus i) and
radius sum ``R``: ``|p + v t| = R`` gives ``a t^2 + 2 b t + c = 0`` with ``a = v.v``,
``b = p.v``, ``c = p.p - R^2``; the first touch is ``t = c / (-b + sqrt(b^2 - a c))`` when
``c > 0``, ``b < 0`` (closing) and ``b^2 >= a c``.
"""
from __future__ import annotations

import numpy as np

from blm_gym.sim.geometry import disc_cover

DEFAULT_HORIZON = 5.0  # s


def time_to_collision(x, y, vx, vy, length, width, valid, horizon: float = DEFAULT_HORIZON, *,
                      heading=None, num_discs: int = 1, rows=None) -> np.ndarray:
    """Pairwise time to collision in seconds, float ``(..., N, N)`` from inputs ``(..., N)``.

    See the module docstring for the exact definition. ``heading`` (radians, ``(..., N)``) places
    the discs when ``num_discs > 1``. Symmetric; diagonal and invalid pairs are ``inf``.
    ``rows`` (int indices ``(R,)``): only those agents' rows, ``(..., R, N)`` (the env needs the
    ego's row alone).
    """
    if num_discs < 1:
        raise ValueError(f"time_to_collision: num_discs must be >= 1, got {num_discs}")
    if num_discs > 1 and heading is None:
        raise ValueError("time_to_collision: num_discs > 1 places discs along the heading; pass heading=...")
    arrays = [np.asarray(a) for a in (x, y, vx, vy, length, width)]
    dtype = np.result_type(*arrays, np.float32)
    x, y, vx, vy, length, width = np.broadcast_arrays(*(a.astype(dtype, copy=False) for a in arrays))
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), x.shape)

    # Disc centres (..., N, K) and radii (..., N, 1).
    if heading is not None:
        heading = np.broadcast_to(np.asarray(heading, dtype=dtype), x.shape)
    cx, cy, radius = disc_cover(x, y, heading, length, width, num_discs)
    radius = radius[..., None]

    n = x.shape[-1]
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64).reshape(-1)
    # Pair axes: (..., i, j, k_i, k_j); velocities are shared by all discs of an agent.
    px = cx[..., None, :, None, :] - cx[..., rows, None, :, None]
    py = cy[..., None, :, None, :] - cy[..., rows, None, :, None]
    rvx = (vx[..., None, :] - vx[..., rows, None])[..., None, None]
    rvy = (vy[..., None, :] - vy[..., rows, None])[..., None, None]
    r_sum = radius[..., None, :, None, :] + radius[..., rows, None, :, None]
    a = rvx**2 + rvy**2
    b = px * rvx + py * rvy
    c = px**2 + py**2 - r_sum**2
    disc = b * b - a * c
    closing = (b < 0) & (disc >= 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Stable form of the smaller root (-b - sqrt(disc)) / a; denominator > 0 where closing
        # (barely closing pairs overflow to inf: no contact within any horizon).
        t = np.where(closing, c / (-b + np.sqrt(np.where(closing, disc, 0.0))), np.inf)
    t = np.where(c <= 0, 0.0, t).min(axis=(-2, -1))
    t = np.where(t <= horizon, t, np.inf)
    t[..., np.arange(len(rows)), rows] = np.inf
    return np.where(valid[..., rows, None] & valid[..., None, :], t, np.inf)


def min_time_to_collision(x, y, vx, vy, length, width, valid, horizon: float = DEFAULT_HORIZON, *,
                          heading=None, num_discs: int = 1) -> np.ndarray:
    """Per-agent minimum of :func:`time_to_collision` over all other agents, ``(..., N)`` seconds."""
    return time_to_collision(x, y, vx, vy, length, width, valid, horizon,
                             heading=heading, num_discs=num_discs).min(axis=-1, initial=np.inf)
