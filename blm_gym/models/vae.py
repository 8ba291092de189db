"""Stage 1 of BLM: a temporal-convolutional VAE over future action sequences.

An agent's 5.2 s of actions ``(F=52, 2)`` (acceleration, yaw rate; normalised by fixed scales)
is encoded by strided 1-D convolutions (stride 2, twice) into a latent ``(T'=13, d=4)`` with a
Gaussian posterior (mean, log-variance). The decoder is *context-aware*: transposed convolutions
back to ``(F, 2)`` actions, with the agent's history embedding added to its feature maps, so the
latent only has to carry what the history does not already say. States follow by unicycle
integration (:func:`blm_gym.sim.kinematics.unicycle_rollout`), differentiably.

The decoder sees no map: the latent (52 numbers for 104 action values) carries the path, and the
denoiser (stage 2) is the one that reads the map.
"""
from __future__ import annotations

import torch
from torch import nn

from blm_gym.data.scene import AgentType
from blm_gym.models.batch import AgentBatch

NUM_AGENT_TYPES = len(AgentType)


def agent_frame_history(batch: AgentBatch) -> torch.Tensor:
    """History ``(B, N, H, 6)`` re-expressed in each agent's current frame (position, heading)."""
    cx, cy, ch = (batch.state_scene[..., i, None] for i in range(3))
    c, s = torch.cos(ch), torch.sin(ch)
    hx, hy, hc, hs, hv, valid = batch.hist.unbind(-1)
    dx, dy = hx - cx, hy - cy
    rel = torch.stack([c * dx + s * dy, -s * dx + c * dy,
                       c * hc + s * hs, c * hs - s * hc,  # cos/sin of (heading - current heading)
                       hv, valid], -1)
    return rel * valid[..., None]


def lane_directions(lanes: torch.Tensor) -> torch.Tensor:
    """Unit direction ``(..., P, 2)`` of lane polylines ``(..., P, 2)`` at each point (the last
    point continues the last segment)."""
    direction = torch.diff(lanes, dim=-2, append=lanes[..., -1:, :] * 2 - lanes[..., -2:-1, :])
    return direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-3)


def agent_frame_lane_points(batch: AgentBatch, k: int) -> torch.Tensor:
    """For the ``k`` lanes nearest each agent, nearest first, the lane's closest point to the agent
    in the agent's current frame: ``(B, N, k, 5)`` = x, y [m] (x forward, y left), cos and sin of
    the lane's direction there minus the agent's heading, and 1 for a real lane (all 0 where the
    map has fewer than ``k`` lanes).

    Where an agent is in its lane is a decimetre-scale question that scene-frame lane tokens
    answer poorly; in the agent's frame the lateral offset and heading error are direct inputs."""
    cx, cy, ch = (batch.state_scene[..., i, None, None] for i in range(3))  # (B, N, 1, 1)
    c, s = torch.cos(ch), torch.sin(ch)
    lanes = batch.lanes[:, None]  # (B, 1, L, P, 2)
    dx, dy = lanes[..., 0] - cx, lanes[..., 1] - cy
    x, y = c * dx + s * dy, -s * dx + c * dy  # lane points in each agent's frame (B, N, L, P)
    # the closest point of every segment to the agent (the frame's origin)
    sx, sy = x.diff(dim=-1), y.diff(dim=-1)
    t = (-(x[..., :-1] * sx + y[..., :-1] * sy) / (sx * sx + sy * sy).clamp(min=1e-6)).clamp(0, 1)
    qx, qy = x[..., :-1] + t * sx, y[..., :-1] + t * sy
    segment = (batch.lane_mask[..., 1:] & batch.lane_mask[..., :-1])[:, None]
    dist, seg = torch.hypot(qx, qy).masked_fill(~segment, torch.inf).min(-1)  # nearest segment per lane (B, N, L)
    near, lane = dist.topk(min(k, dist.shape[-1]), dim=-1, largest=False)  # (B, N, k)

    def at(v: torch.Tensor) -> torch.Tensor:  # v (B, N, L, P - 1) at the nearest lanes' nearest segments
        return torch.gather(torch.gather(v, -1, seg[..., None]).squeeze(-1), -1, lane)

    norm = torch.hypot(sx, sy).clamp(min=1e-6)
    feats = torch.stack([at(qx), at(qy), at(sx / norm), at(sy / norm), torch.ones_like(near)], -1)
    feats = feats * torch.isfinite(near)[..., None]
    return nn.functional.pad(feats, (0, 0, 0, k - feats.shape[-2]))


class AgentEncoder(nn.Module):
    """Per-agent embedding ``(B, N, D)`` of history (agent frame), speed, extent and type.

    ``with_pose`` adds the current pose in the scene frame (where the agent is relative to the
    ego and the map), which the scene-level denoiser needs and the per-agent VAE does not;
    ``lane_points`` > 0 the nearest lane points in the agent's frame (:func:`agent_frame_lane_points`).
    """

    def __init__(self, history_steps: int, dim: int, with_pose: bool, lane_points: int = 0):
        super().__init__()
        self.with_pose, self.lane_points = with_pose, int(lane_points)
        n_in = history_steps * 6 + 1 + 2 + NUM_AGENT_TYPES + (4 if with_pose else 0) + 5 * self.lane_points
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        # fixed input scales (metres / 10, m/s / 10) keep features O(1) without data statistics
        self.register_buffer("hist_scale", torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1, 1.0]), persistent=False)
        self.register_buffer("lane_scale", torch.tensor([0.1, 0.1, 1.0, 1.0, 1.0]), persistent=False)

    def forward(self, batch: AgentBatch) -> torch.Tensor:
        hist = agent_frame_history(batch) * self.hist_scale
        feats = [hist.flatten(-2), batch.state_scene[..., 3:4] * 0.1, batch.extent * 0.2,
                 nn.functional.one_hot(batch.agent_type.clamp(0, NUM_AGENT_TYPES - 1), NUM_AGENT_TYPES).float()]
        if self.with_pose:
            x, y, h, _ = batch.state_scene.unbind(-1)
            feats.append(torch.stack([x * 0.02, y * 0.02, torch.cos(h), torch.sin(h)], -1))
        if self.lane_points:
            feats.append((agent_frame_lane_points(batch, self.lane_points) * self.lane_scale).flatten(-2))
        return self.mlp(torch.cat(feats, -1))


class ActionVAE(nn.Module):
    """Conv encoder ``(..., F, 2) -> (..., T', d)`` x2 and context-aware conv decoder back.

    ``F`` must be divisible by 4 (two stride-2 stages); ``T' = F / 4``. Actions are physical
    (m/s^2, rad/s) at the interface and normalised by ``action_scale`` inside.
    """

    def __init__(self, future_steps: int, history_steps: int, latent_dim: int, channels: int,
                 action_scale: tuple[float, float]):
        super().__init__()
        if future_steps % 4:
            raise ValueError(f"ActionVAE: future_steps must be divisible by 4 (two stride-2 convs), got {future_steps}")
        c, d = channels, latent_dim
        self.register_buffer("action_scale", torch.tensor(action_scale, dtype=torch.float32))
        self.encoder = nn.Sequential(
            nn.Conv1d(2, c, 5, padding=2), nn.GELU(),
            nn.Conv1d(c, c, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(c, c, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(c, 2 * d, 1),
        )
        self.context = AgentEncoder(history_steps, c, with_pose=False)
        self.dec_in = nn.Conv1d(d, c, 3, padding=1)
        self.up1 = nn.Sequential(nn.GELU(), nn.Conv1d(c, c, 3, padding=1), nn.GELU(),
                                 nn.ConvTranspose1d(c, c, 4, stride=2, padding=1))
        self.up2 = nn.Sequential(nn.GELU(), nn.ConvTranspose1d(c, c, 4, stride=2, padding=1), nn.GELU(),
                                 nn.Conv1d(c, 2, 3, padding=1))

    def encode(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical actions ``(..., F, 2)`` -> posterior mean and log-variance ``(..., T', d)``."""
        lead = actions.shape[:-2]
        x = (actions / self.action_scale).reshape(-1, *actions.shape[-2:]).transpose(1, 2)
        mean, logvar = self.encoder(x).transpose(1, 2).chunk(2, dim=-1)
        return mean.reshape(*lead, *mean.shape[1:]), logvar.clamp(-10, 5).reshape(*lead, *mean.shape[1:])

    def latents_needed(self, steps: int) -> int:
        """How many leading latent steps the first ``steps`` decoded actions depend on (walking the
        decoder's receptive field back from action ``steps - 1``): decoding only those is exact."""
        last = steps - 1
        convs = [m for m in (self.dec_in, *self.up1, *self.up2) if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
        for conv in reversed(convs):
            (k,), (s,), (p,) = conv.kernel_size, conv.stride, conv.padding
            # ConvTranspose: output o reads inputs i with o + p - s * i in [0, k); Conv: the reverse
            last = (last + p) // s if isinstance(conv, nn.ConvTranspose1d) else last * s - p + k - 1
        return last + 1

    def decode_actions(self, z: torch.Tensor, cond: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Latents ``(..., T', d)`` + context ``(..., C)`` -> physical actions ``(..., F, 2)``;
        ``steps``: only the first that many actions ``(..., steps, 2)``, decoded from the latents
        they depend on (:meth:`latents_needed`; guidance scores 3 s of a 5.2 s plan)."""
        if steps is not None:
            if steps < 1:
                raise ValueError(f"decode_actions: steps must be >= 1 (actions to decode) or None (all), got {steps}")
            z = z[..., :min(self.latents_needed(steps), z.shape[-2]), :]
        lead = z.shape[:-2]
        z = z.reshape(-1, *z.shape[-2:]).transpose(1, 2)
        cond = cond.reshape(-1, cond.shape[-1], 1)
        h = self.up1(self.dec_in(z) + cond)
        a = self.up2(h + cond).transpose(1, 2)[:, :steps]
        return a.reshape(*lead, *a.shape[1:]) * self.action_scale
