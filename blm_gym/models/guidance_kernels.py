"""Compiled loops of the sampling guidance: unicycle rollout, plan costs, and their gradients.

Guidance evaluates the costs of :mod:`blm_gym.models.guidance` and their gradient ~9 times per
replan. As tensor programs they are some 200 small ops (forward and autograd backward) on arrays
of a few thousand numbers, so per-op overhead, not arithmetic, set their cost (about 2.5 ms per
evaluation for 32 agents). Written as plain loops, compiled by numba and differentiated by hand,
they take tens of microseconds. Every function is pure: arrays in, new arrays out, float64
arithmetic.

Shapes: ``R`` plan rows (scene samples), ``N`` agents, ``F`` planned steps, ``P`` agent pairs.
Gradients follow torch's conventions where the maths has a kink: a clip passes the gradient on
its bounds (inclusive), a distance of exactly 0 has gradient 0.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def rollout(actions, start, dt, min_accel, max_accel, max_yaw_rate, max_speed):
    """States ``(R, N, F, 4)`` (x, y, heading, speed after each action) of actions ``(R, N, F, 2)``
    from ``start`` ``(R, N, 4)``: :func:`blm_gym.sim.kinematics.unicycle_step`, step by step."""
    r_, n_, f_, _ = actions.shape
    out = np.empty((r_, n_, f_, 4))
    for r in range(r_):
        for n in range(n_):
            x, y, h, s = start[r, n, 0], start[r, n, 1], start[r, n, 2], start[r, n, 3]
            for t in range(f_):
                a = min(max(actions[r, n, t, 0], min_accel), max_accel)
                w = min(max(actions[r, n, t, 1], -max_yaw_rate), max_yaw_rate)
                s = min(max(s + a * dt, 0.0), max_speed)
                h = h + w * dt
                x = x + s * math.cos(h) * dt
                y = y + s * math.sin(h) * dt
                out[r, n, t, 0], out[r, n, t, 1], out[r, n, t, 2], out[r, n, t, 3] = x, y, h, s
    return out


@njit(cache=True)
def rollout_vjp(actions, start, states, grad_states, dt, min_accel, max_accel, max_yaw_rate, max_speed):
    """Gradient ``(R, N, F, 2)`` w.r.t. the actions of a scalar whose gradient w.r.t. the
    :func:`rollout` ``states`` is ``grad_states`` ``(R, N, F, 4)`` (reverse-mode, backward in time)."""
    r_, n_, f_, _ = actions.shape
    out = np.zeros((r_, n_, f_, 2))
    for r in range(r_):
        for n in range(n_):
            gx = gy = gh = gs = 0.0  # adjoints of the state after action t, from the later steps
            for t in range(f_ - 1, -1, -1):
                h, s = states[r, n, t, 2], states[r, n, t, 3]
                c, sn = math.cos(h), math.sin(h)
                gx += grad_states[r, n, t, 0]  # x_t = x_{t-1} + s_t cos(h_t) dt: x's adjoint carries back
                gy += grad_states[r, n, t, 1]
                gs += grad_states[r, n, t, 3] + (gx * c + gy * sn) * dt
                gh += grad_states[r, n, t, 2] + s * (gy * c - gx * sn) * dt
                w = actions[r, n, t, 1]
                if -max_yaw_rate <= w <= max_yaw_rate:
                    out[r, n, t, 1] = gh * dt
                s_prev = states[r, n, t - 1, 3] if t > 0 else start[r, n, 3]
                a = actions[r, n, t, 0]
                u = s_prev + min(max(a, min_accel), max_accel) * dt
                if 0.0 <= u <= max_speed:  # speed not clipped: it carries s_{t-1} and the action
                    if min_accel <= a <= max_accel:
                        out[r, n, t, 0] = gs * dt
                else:
                    gs = 0.0
    return out


@njit(cache=True)
def bilinear(values, origin_x, origin_y, resolution, x, y):
    """Value and gradient (d/dx, d/dy) at world point ``(x, y)`` of a field sampled at the cell
    centres of a raster ``values`` ``(H, W)`` (lower-left corner at the origin, ``resolution`` m
    per cell); points off the raster read the nearest edge (zero gradient across it)."""
    h_, w_ = values.shape
    u = (x - origin_x) / resolution - 0.5
    v = (y - origin_y) / resolution - 0.5
    if not (math.isfinite(u) and math.isfinite(v)):  # NaN in, NaN out (never an index off the raster)
        return math.nan, 0.0, 0.0
    du = 1.0 / resolution if 0.0 <= u <= w_ - 1 else 0.0
    dv = 1.0 / resolution if 0.0 <= v <= h_ - 1 else 0.0
    u, v = min(max(u, 0.0), w_ - 1.0), min(max(v, 0.0), h_ - 1.0)
    i0, j0 = int(math.floor(v)), int(math.floor(u))
    i1, j1 = min(i0 + 1, h_ - 1), min(j0 + 1, w_ - 1)
    fy, fx = v - i0, u - j0
    v00, v01, v10, v11 = values[i0, j0], values[i0, j1], values[i1, j0], values[i1, j1]
    bottom, top = v00 + fx * (v01 - v00), v10 + fx * (v11 - v10)
    dx = ((1 - fy) * (v01 - v00) + fy * (v11 - v10)) * du
    return bottom + fy * (top - bottom), dx, (top - bottom) * dv


@njit(cache=True)
def field_at(values, origin_x, origin_y, resolution, x, y):
    """:func:`bilinear` values at points ``x, y`` (1-D arrays of equal length)."""
    out = np.empty(x.shape[0])
    for k in range(x.shape[0]):
        out[k] = bilinear(values, origin_x, origin_y, resolution, x[k], y[k])[0]
    return out


@njit(cache=True)
def candidate_pairs(states, half_size, movable, valid, slack):
    """Pairs ``(P, 3)`` (row, i, j), ``i`` movable and ``j`` valid, each movable-movable pair once,
    whose centres in ``states`` ``(R, N, F', 4)`` come within their half sizes ``(R, N)`` (half
    the larger extent) + ``slack`` (m) at some step; ordered by row, then ``i``, then ``j``."""
    r_, n_, f_, _ = states.shape
    # each plan's bounding box: a pair whose boxes are reach apart along x or y never comes within
    # reach, which skips the step loop for nearly every pair of a big scene
    lo = np.full((r_, n_, 2), np.inf)
    hi = np.full((r_, n_, 2), -np.inf)
    for r in range(r_):
        for n in range(n_):
            for t in range(f_):
                for c in range(2):
                    lo[r, n, c] = min(lo[r, n, c], states[r, n, t, c])
                    hi[r, n, c] = max(hi[r, n, c], states[r, n, t, c])
    out = np.empty((r_ * n_ * n_, 3), np.int64)
    count = 0
    for r in range(r_):
        for i in range(n_):
            if not movable[r, i]:
                continue
            for j in range(n_):
                if j == i or not valid[r, j] or (movable[r, j] and j < i):
                    continue
                reach = half_size[r, i] + half_size[r, j] + slack
                if (lo[r, j, 0] - hi[r, i, 0] >= reach or lo[r, i, 0] - hi[r, j, 0] >= reach
                        or lo[r, j, 1] - hi[r, i, 1] >= reach or lo[r, i, 1] - hi[r, j, 1] >= reach):
                    continue
                for t in range(f_):
                    dx, dy = states[r, i, t, 0] - states[r, j, t, 0], states[r, i, t, 1] - states[r, j, t, 1]
                    if math.hypot(dx, dy) < reach:
                        out[count, 0], out[count, 1], out[count, 2] = r, i, j
                        count += 1
                        break
    return out[:count]


@njit(cache=True)
def plan_costs(states, offsets, movable, pairs, reach, offroad_scored, values, origin_x, origin_y, resolution,
               offroad_margin, clearance_weight, offroad_weight, want_grad):
    """Clearance ``(R,)`` and per-agent off-road ``(R, N)`` costs (m^2) of world plans ``states``
    ``(R, N, F', 4)`` (the scored steps), and the gradient ``(R, N, F', 4)`` of the weighted total
    w.r.t. them (zeros unless ``want_grad``; zero for agents that are not ``movable``: targets only).

    ``offsets`` ``(R, N, K)``: where each agent's ``K`` discs sit along its heading (m from its
    centre, :func:`blm_gym.sim.geometry.disc_cover`).

    ``pairs`` ``(P, 3)`` and ``reach`` ``(P, K, K)``: see :class:`~blm_gym.models.guidance.Pairs`;
    ``offroad_scored`` ``(R, N)`` bool: the vehicles that pay off-road, on the distance field
    ``values`` (see :func:`bilinear`; an empty field: no off-road cost).
    """
    r_, n_, f_, _ = states.shape
    clearance = np.zeros(r_)
    offroad = np.zeros((r_, n_))
    grad = np.zeros(states.shape)
    for p in range(pairs.shape[0]):
        r, i, j = pairs[p, 0], pairs[p, 1], pairs[p, 2]
        oi, oj = offsets[r, i], offsets[r, j]
        j_moves = want_grad and movable[r, j]
        for t in range(f_):
            ci, si = math.cos(states[r, i, t, 2]), math.sin(states[r, i, t, 2])
            cj, sj = math.cos(states[r, j, t, 2]), math.sin(states[r, j, t, 2])
            for k in range(oi.shape[0]):
                for m in range(oj.shape[0]):
                    dx = states[r, i, t, 0] + oi[k] * ci - states[r, j, t, 0] - oj[m] * cj
                    dy = states[r, i, t, 1] + oi[k] * si - states[r, j, t, 1] - oj[m] * sj
                    d = math.hypot(dx, dy)
                    e = reach[p, k, m] - d
                    if e <= 0:
                        continue
                    clearance[r] += e * e
                    if want_grad and d > 0:
                        q = -2.0 * e / d * clearance_weight  # d(e^2)/d(disc i centre) = -2 e (dx, dy) / d
                        gx, gy = q * dx, q * dy
                        grad[r, i, t, 0] += gx
                        grad[r, i, t, 1] += gy
                        grad[r, i, t, 2] += oi[k] * (gy * ci - gx * si)
                        if j_moves:
                            grad[r, j, t, 0] -= gx
                            grad[r, j, t, 1] -= gy
                            grad[r, j, t, 2] -= oj[m] * (gy * cj - gx * sj)
    if values.size:
        for r in range(r_):
            for n in range(n_):
                if not offroad_scored[r, n]:
                    continue
                for t in range(f_):
                    x, y = states[r, n, t, 0], states[r, n, t, 1]
                    sd, dx, dy = bilinear(values, origin_x, origin_y, resolution, x, y)
                    e = sd + offroad_margin
                    if e > 0:
                        offroad[r, n] += e * e
                        if want_grad:
                            grad[r, n, t, 0] += 2.0 * e * dx * offroad_weight
                            grad[r, n, t, 1] += 2.0 * e * dy * offroad_weight
    return clearance, offroad, grad
