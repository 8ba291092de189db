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


class AgentEncoder(nn.Module):
    """Per-agent embedding ``(B, N, D)`` of history (agent frame), speed, extent and type.

    ``with_pose`` adds the current pose in the scene frame (where the agent is relative to the
    ego and the map), which the scene-level denoiser needs and the per-agent VAE does not.
    """

    def __init__(self, history_steps: int, dim: int, with_pose: bool):
        super().__init__()
        self.with_pose = with_pose
        n_in = history_steps * 6 + 1 + 2 + NUM_AGENT_TYPES + (4 if with_pose else 0)
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        # fixed input scales (metres / 10, m/s / 10) keep features O(1) without data statistics
        self.register_buffer("hist_scale", torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1, 1.0]), persistent=False)

    def forward(self, batch: AgentBatch) -> torch.Tensor:
        hist = agent_frame_history(batch) * self.hist_scale
        feats = [hist.flatten(-2), batch.state_scene[..., 3:4] * 0.1, batch.extent * 0.2,
                 nn.functional.one_hot(batch.agent_type.clamp(0, NUM_AGENT_TYPES - 1), NUM_AGENT_TYPES).float()]
        if self.with_pose:
            x, y, h, _ = batch.state_scene.unbind(-1)
            feats.append(torch.stack([x * 0.02, y * 0.02, torch.cos(h), torch.sin(h)], -1))
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
