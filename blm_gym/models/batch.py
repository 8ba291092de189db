"""Typed model inputs: one :class:`AgentBatch` per (scene, step), collated along a batch dim.

Everything the BLM model sees is expressed in the **scene frame**: centred on the ego's position
at the current step and rotated so the ego heads along +x. ``frame`` keeps the transform
(:func:`to_world_frame` maps scene-frame coordinates back); decoded plans are integrated from
``state_world``, so they come out in the world frame.

Time layout around the current step ``s`` (0.1 s per step):

- history: ``H`` states at steps ``s - H + 1 .. s`` (the last one is the current state);
- future: ``F`` actions at steps ``s .. s + F - 1``; future state ``k`` is the state *after*
  action ``k`` (step ``s + k + 1``), as :func:`blm_gym.sim.kinematics.unicycle_rollout` returns.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from blm_gym.data.scene import AgentType, Scene, Trajectories
from blm_gym.sim.kinematics import actions_from_states, wrap_angle

HISTORY_STEPS = 10  # 1 s of history (states s-9 .. s)
FUTURE_STEPS = 52  # 5.2 s of future actions
MAX_LANES = 64  # lane centerlines kept per scene, those nearest to any of its agents
LANE_POINTS = 20  # points per lane after resampling
HIST_FEATURES = 6  # x, y, cos(heading), sin(heading), speed, valid (scene frame)


@dataclass(frozen=True)
class AgentBatch:
    """Model input for ``B`` scenes of up to ``N`` agents; torch tensors with leading dims ``(B, N)``.

    Scene frame unless noted; metres, radians, m/s. Padded agent rows have ``agent_mask`` False
    and ``agent_index`` -1.
    """

    hist: torch.Tensor  # (B, N, H, 6) x, y, cos h, sin h, speed, valid — zero at invalid steps
    state_scene: torch.Tensor  # (B, N, 4) current x, y, heading, speed
    state_world: torch.Tensor  # (B, N, 4) current x, y, heading, speed in the world frame
    extent: torch.Tensor  # (B, N, 2) length, width
    agent_type: torch.Tensor  # (B, N) long, AgentType
    agent_mask: torch.Tensor  # (B, N) bool, agent exists and is valid at the current step
    agent_index: torch.Tensor  # (B, N) long, row in the Scene (-1: padding)
    fut_actions: torch.Tensor  # (B, N, F, 2) logged (accel m/s^2, yaw rate rad/s); zero where unknown
    fut_states: torch.Tensor  # (B, N, F, 4) logged x, y, heading, speed after each action
    fut_valid: torch.Tensor  # (B, N, F) bool, action k and state k+1 are logged
    lanes: torch.Tensor  # (B, L, P, 2) lane centerlines
    lane_mask: torch.Tensor  # (B, L, P) bool
    frame: torch.Tensor  # (B, 3) world x, y, heading of the scene frame's origin (the ego)

    @property
    def batch_size(self) -> int:
        return self.hist.shape[0]

    @property
    def num_agents(self) -> int:
        return self.hist.shape[1]

    @property
    def train_mask(self) -> torch.Tensor:
        """``(B, N)`` agents that count in training losses: present with a fully logged future."""
        return self.agent_mask & self.fut_valid.all(-1)

    def map(self, fn) -> "AgentBatch":
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.to(device)``)."""
        return AgentBatch(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, device: str | torch.device) -> "AgentBatch":
        return self.map(lambda t: t.to(device))

    def index(self, idx) -> "AgentBatch":
        """Select scenes along the batch dim (int tensor, slice or list)."""
        return self.map(lambda t: t[idx])

    def repeat_interleave(self, k: int) -> "AgentBatch":
        """Each scene ``k`` times in a row: ``(B, ...) -> (B * k, ...)`` (K samples per scene)."""
        return self.map(lambda t: t.repeat_interleave(k, dim=0))

    def trimmed(self) -> "AgentBatch":
        """The batch without the trailing agent rows and lane slots that are padding in every scene.

        Padding is masked out of every attention and loss, so the rows kept come out the same;
        training on scenes with fewer agents or lanes than ``max_agents`` / ``max_lanes`` gets
        cheaper (synthetic scenes fill about 14 of 32 agent rows and 4 of 64 lane slots).
        """
        def extent(used: torch.Tensor) -> int:
            return int(used.nonzero().max()) + 1 if used.any() else 1

        n, lanes = extent(self.agent_mask.any(0)), extent(self.lane_mask.any(-1).any(0))
        return dataclasses.replace(self, **{k: getattr(self, k)[:, :n] for k in AGENT_FIELDS},
                                   **{k: getattr(self, k)[:, :lanes] for k in LANE_FIELDS})


# the layout of AgentBatch's fields: (B, L, ...) lanes, (B, 3) frame, (B, N, ...) all the others
LANE_FIELDS = ("lanes", "lane_mask")
AGENT_FIELDS = tuple(f.name for f in dataclasses.fields(AgentBatch) if f.name not in (*LANE_FIELDS, "frame"))

# what the model reads to plan (the logged future fields are training targets only)
PLAN_FIELDS = ("hist", "state_scene", "state_world", "extent", "agent_type", "agent_mask", "agent_index", "lanes",
               "lane_mask", "frame")


def plan_inputs(batch: AgentBatch) -> dict[str, np.ndarray]:
    """The :data:`PLAN_FIELDS` of a one-scene batch as numpy arrays without the batch dim
    (an observation; ``blm_gym.rl.denoising_mdp.batch_from_obs`` stacks them back)."""
    if batch.batch_size != 1:
        raise ValueError(f"plan_inputs: expected a batch of one scene, got {batch.batch_size}")
    return {k: getattr(batch, k)[0].cpu().numpy() for k in PLAN_FIELDS}


def collate(batches: Sequence[AgentBatch]) -> AgentBatch:
    """Concatenate batches along the batch dim; they must share N, H, F, L and P."""
    if not batches:
        raise ValueError("collate: got no batches")
    fields = [f.name for f in dataclasses.fields(AgentBatch)]
    for name in fields:
        shapes = {tuple(getattr(b, name).shape[1:]) for b in batches}
        if len(shapes) > 1:
            raise ValueError(f"collate: field {name!r} has different shapes {sorted(shapes)}; build every batch "
                             "with the same max_agents / max_lanes / lane_points")
    return AgentBatch(**{n: torch.cat([getattr(b, n) for b in batches]) for n in fields})


def pad_agents(batch: AgentBatch, num_agents: int) -> AgentBatch:
    """``batch`` with its agent dim padded to ``num_agents`` rows as :func:`make_agent_batch` pads
    (zeros, ``agent_index`` -1, ``agent_mask`` False), so batches of different N can be collated."""
    n = batch.num_agents
    if num_agents < n:
        raise ValueError(f"pad_agents: the batch has {n} agents, more than num_agents={num_agents}")

    def pad(name: str, t: torch.Tensor) -> torch.Tensor:
        fill = t.new_full((t.shape[0], num_agents - n) + tuple(t.shape[2:]), -1 if name == "agent_index" else 0)
        return torch.cat([t, fill], 1)

    if num_agents == n:
        return batch
    return dataclasses.replace(batch, **{k: pad(k, getattr(batch, k)) for k in AGENT_FIELDS})


def mirror(batch: AgentBatch, flip: torch.Tensor) -> AgentBatch:
    """Reflect scenes where ``flip`` ``(B,)`` is True across the scene frame's x axis (training
    augmentation: y, headings and yaw rates change sign). ``state_world`` and ``frame`` are left
    as they are, so a mirrored batch must not be decoded to the world."""

    def reflect(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
        c = torch.ones(t.shape[-1], dtype=t.dtype, device=t.device)
        c[idx] = -1.0
        return torch.where(flip.reshape((-1,) + (1,) * (t.dim() - 1)), t * c, t)

    return dataclasses.replace(
        batch, hist=reflect(batch.hist, [1, 3]), state_scene=reflect(batch.state_scene, [1, 2]),
        fut_actions=reflect(batch.fut_actions, [1]), fut_states=reflect(batch.fut_states, [1, 2]),
        lanes=reflect(batch.lanes, [1]),
    )


def to_scene_frame(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, frame: torch.Tensor):
    """World -> scene frame. ``frame`` ``(..., 3)`` broadcasts against ``x`` after adding trailing dims."""
    extra = x.dim() - frame.dim() + 1
    fx, fy, fh = (frame[..., i].reshape(frame.shape[:-1] + (1,) * extra) for i in range(3))
    c, s = torch.cos(fh), torch.sin(fh)
    dx, dy = x - fx, y - fy
    return c * dx + s * dy, -s * dx + c * dy, wrap_angle(heading - fh)


def to_world_frame(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, frame: torch.Tensor):
    """Scene -> world frame; the inverse of :func:`to_scene_frame`."""
    extra = x.dim() - frame.dim() + 1
    fx, fy, fh = (frame[..., i].reshape(frame.shape[:-1] + (1,) * extra) for i in range(3))
    c, s = torch.cos(fh), torch.sin(fh)
    return fx + c * x - s * y, fy + s * x + c * y, wrap_angle(heading + fh)


def road_users(scene: Scene) -> np.ndarray:
    """Bool ``(N,)``: the agents a plan is made around: vehicles, and pedestrians, cyclists and
    static obstacles as the context vehicles must react to (the model plans for them too; the
    policy executes only the vehicles' plans)."""
    return scene.agent_type != AgentType.UNKNOWN


def nearest_agents(scene: Scene, xy: np.ndarray, valid: np.ndarray, max_agents: int,
                   candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to ``max_agents`` agents nearest to the ego (ego first, then vehicles, then others).

    ``xy`` ``(N, 2)`` and ``valid`` ``(N,)`` are the current positions; ``candidates`` (bool
    ``(N,)``, default: :func:`road_users`) restricts the pick; the ego is always kept.
    """
    cand = road_users(scene) if candidates is None else candidates
    cand = cand & valid
    cand[scene.ego_index] = True
    dist = np.linalg.norm(xy - xy[scene.ego_index], axis=-1)
    dist = np.where(cand, dist, np.inf)
    dist[scene.ego_index] = -1.0
    # vehicles first (nearest first), then the other road users: a small max_agents keeps the
    # vehicles; agents out of the pick last, so they never take the place of a valid one
    order = np.lexsort((dist, ~scene.is_vehicle & (dist >= 0), np.isinf(dist)))[:max_agents]
    return order[np.isfinite(dist[order])]


def nearest_lanes(lanes: np.ndarray, lane_mask: np.ndarray, xy: np.ndarray, max_lanes: int) -> np.ndarray:
    """Indices of up to ``max_lanes`` lanes ``(L, P, 2)`` nearest to any of the positions ``xy`` ``(n, 2)``.

    Lanes are ranked by their distance to the nearest position, so every agent of a spread-out
    scene gets the lanes around it (not only the ego).
    """
    pts = lanes[lane_mask]  # (M, 2) valid points, lane by lane
    owner = np.nonzero(lane_mask)[0]
    d = np.full(len(pts), np.inf)
    for i in range(0, len(xy), 32):  # chunks keep the (M, 32) distance table small
        d = np.minimum(d, np.linalg.norm(pts[:, None] - xy[None, i:i + 32], axis=-1).min(-1))
    lane_d = np.full(len(lanes), np.inf)
    np.minimum.at(lane_d, owner, d)
    return np.argsort(lane_d, kind="stable")[:max_lanes]


def _resample_lanes(lanes: np.ndarray, mask: np.ndarray, points: int) -> np.ndarray:
    """``(L, P_src, 2)`` padded polylines -> ``(L, points, 2)``, evenly spaced over valid points."""
    n = mask.sum(-1).clip(min=1)
    idx = np.rint(np.linspace(0.0, 1.0, points)[None, :] * (n[:, None] - 1)).astype(np.int64)
    return np.take_along_axis(lanes, idx[..., None], axis=1)


def make_agent_batch(scene: Scene, step: int, *, max_agents: int = 32, agents: np.ndarray | None = None,
                     history: Trajectories | None = None, history_steps: int = HISTORY_STEPS,
                     future_steps: int = FUTURE_STEPS, max_lanes: int = MAX_LANES,
                     lane_points: int = LANE_POINTS) -> AgentBatch:
    """Build the :class:`AgentBatch` (B = 1) of ``scene`` at ``step``.

    ``history``: states of all ``scene.num_agents`` agents at steps ``step - H + 1 .. step``
    (``(N, H)`` Trajectories, e.g. what a closed-loop policy simulated); default: the log.
    ``agents``: scene rows to include (at most ``max_agents``); default: the ego and the nearest
    road users valid at ``step``. Future targets come from the log where it extends that far.
    """
    n_scene, t_log = scene.num_agents, scene.num_steps
    if not 0 <= step < t_log:
        raise ValueError(f"make_agent_batch: step {step} outside the scene's {t_log} steps")
    if history is None:
        lo = step - history_steps + 1
        history = scene.traj.select(steps=slice(max(lo, 0), step + 1))
        if lo < 0:  # before the log starts: pad with invalid steps
            pad = lambda a: np.concatenate([np.zeros((n_scene, -lo), a.dtype), a], 1)  # noqa: E731
            history = dataclasses.replace(history, **{k: pad(getattr(history, k)) for k in
                                                      ("x", "y", "heading", "speed", "vx", "vy", "valid")})
    if history.x.shape != (n_scene, history_steps):
        raise ValueError(f"make_agent_batch: history must be ({n_scene}, {history_steps}) agents x steps, "
                         f"got {history.x.shape}")
    cur_xy = np.stack([history.x[:, -1], history.y[:, -1]], -1)
    if agents is None:
        agents = nearest_agents(scene, cur_xy, history.valid[:, -1], max_agents)
    agents = np.asarray(agents, dtype=np.int64)
    if len(agents) > max_agents:
        raise ValueError(f"make_agent_batch: {len(agents)} agents requested but max_agents={max_agents}")
    n, pad_n = len(agents), max_agents - len(agents)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    h = history.select(agents=agents)
    ego = scene.ego_index
    frame = t([history.x[ego, -1], history.y[ego, -1], history.heading[ego, -1]])

    hx, hy, hh = to_scene_frame(t(h.x), t(h.y), t(h.heading), frame)
    hv = t(h.valid)
    hist = torch.stack([hx, hy, torch.cos(hh), torch.sin(hh), t(h.speed), hv], -1) * hv[..., None]
    cur_world = torch.stack([t(h.x[:, -1]), t(h.y[:, -1]), t(h.heading[:, -1]), t(h.speed[:, -1])], -1)
    cur_scene = torch.stack([hx[:, -1], hy[:, -1], hh[:, -1], t(h.speed[:, -1])], -1)

    # future: actions s .. s+F-1 need states s .. s+F of the log
    fut = scene.traj.select(agents=agents, steps=slice(step, min(step + future_steps + 1, t_log)))
    acts, ok = actions_from_states(fut.heading, fut.speed, fut.valid, scene.dt)
    k = min(future_steps, fut.num_steps - 1)
    fut_actions = torch.zeros(n, future_steps, 2)
    fut_states = torch.zeros(n, future_steps, 4)
    fut_valid = torch.zeros(n, future_steps, dtype=torch.bool)
    if k > 0:
        fx, fy, fh = to_scene_frame(t(fut.x[:, 1:k + 1]), t(fut.y[:, 1:k + 1]), t(fut.heading[:, 1:k + 1]), frame)
        fut_actions[:, :k] = t(acts[:, :k])
        fut_states[:, :k] = torch.stack([fx, fy, fh, t(fut.speed[:, 1:k + 1])], -1)
        fut_valid[:, :k] = torch.as_tensor(ok[:, :k])

    road = scene.road
    if len(road.lanes):
        keep = nearest_lanes(road.lanes, road.lane_mask, cur_xy[agents[h.valid[:, -1]]], max_lanes)
        lanes_w = _resample_lanes(road.lanes[keep], road.lane_mask[keep], lane_points)
        lx, ly, _ = to_scene_frame(t(lanes_w[..., 0]), t(lanes_w[..., 1]), torch.zeros(lanes_w.shape[:2]), frame)
        lanes = torch.zeros(max_lanes, lane_points, 2)
        lane_mask = torch.zeros(max_lanes, lane_points, dtype=torch.bool)
        lanes[:len(keep)] = torch.stack([lx, ly], -1)
        lane_mask[:len(keep)] = torch.as_tensor(road.lane_mask[keep].any(-1))[:, None]
    else:
        lanes = torch.zeros(max_lanes, lane_points, 2)
        lane_mask = torch.zeros(max_lanes, lane_points, dtype=torch.bool)

    def padded(x: torch.Tensor, value=0) -> torch.Tensor:
        return torch.cat([x, x.new_full((pad_n,) + tuple(x.shape[1:]), value)])[None]

    return AgentBatch(
        hist=padded(hist), state_scene=padded(cur_scene), state_world=padded(cur_world),
        extent=padded(torch.stack([t(h.length), t(h.width)], -1)),
        agent_type=padded(torch.as_tensor(scene.agent_type[agents], dtype=torch.long)),
        agent_mask=padded(torch.as_tensor(h.valid[:, -1])),
        agent_index=padded(torch.as_tensor(agents), -1),
        fut_actions=padded(fut_actions), fut_states=padded(fut_states), fut_valid=padded(fut_valid),
        lanes=lanes[None], lane_mask=lane_mask[None], frame=frame[None],
    )


def scene_windows(scenes: Sequence[Scene], *, stride: int = 5, max_agents: int = 32,
                  history_steps: int = HISTORY_STEPS, future_steps: int = FUTURE_STEPS,
                  max_lanes: int = MAX_LANES, lane_points: int = LANE_POINTS) -> Iterator[AgentBatch]:
    """Training windows: every ``stride`` steps of each scene where a full history and future fit.

    Agents are the ego + nearest road users valid at the window's current step; those whose future
    is not fully logged stay in the batch as context and drop out of losses (``train_mask``).
    """
    for scene in scenes:
        for step in range(history_steps - 1, scene.num_steps - future_steps - 1, stride):
            yield make_agent_batch(scene, step, max_agents=max_agents, history_steps=history_steps,
                                   future_steps=future_steps, max_lanes=max_lanes, lane_points=lane_points)


__all__ = ["AgentBatch", "collate", "make_agent_batch", "mirror", "nearest_agents", "nearest_lanes", "pad_agents",
           "road_users", "scene_windows",
           "to_scene_frame", "to_world_frame", "HISTORY_STEPS", "FUTURE_STEPS"]
