"""Stage 2 of BLM: a scene-level latent denoiser with factorised attention.

Tokens are the latents of *all agents of a scene jointly*, ``(B, N, T', d)``. Each layer

1. attends over time within each agent (``T'`` tokens),
2. attends over agents at each latent time step (``N`` tokens, padded agents masked out), which
   is what lets agents react to each other,
3. cross-attends to map tokens (lane polylines encoded PointNet-style: a shared point MLP and a
   max-pool over each lane's points) plus one learned "no map" token so empty maps are fine,
4. applies a feed-forward block.

Conditioning: a per-agent embedding (history in the agent frame + current pose in the scene
frame) and the diffusion-step embedding are added to every token. Pre-norm residual blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blm_gym.models.batch import AgentBatch
from blm_gym.models.vae import AgentEncoder, lane_directions


@dataclass(frozen=True)
class SceneContext:
    """What the denoiser and decoder need of a scene, computed once per scene (``encode_context``).

    ``agent_emb`` ``(B, N, D)``, ``map_tokens`` ``(B, L', D)`` with ``map_mask`` ``(B, L')`` (the
    "no map" token and the lanes some scene of the batch has: ``L' <= L + 1``), ``agent_mask``
    ``(B, N)``, ``vae_cond`` ``(B, N, C)`` (decoder context).
    """

    agent_emb: torch.Tensor
    map_tokens: torch.Tensor
    map_mask: torch.Tensor
    agent_mask: torch.Tensor
    vae_cond: torch.Tensor

    def map(self, fn) -> "SceneContext":
        """Apply ``fn`` to every tensor."""
        return SceneContext(*(fn(t) for t in (self.agent_emb, self.map_tokens, self.map_mask, self.agent_mask,
                                              self.vae_cond)))

    def repeat_interleave(self, k: int) -> "SceneContext":
        """Each scene ``k`` times in a row (``B -> B * k``), for K samples per scene."""
        return self.map(lambda t: t.repeat_interleave(k, dim=0))

    def index(self, rows) -> "SceneContext":
        """Select scenes along the batch dim."""
        return self.map(lambda t: t[rows])


class MapEncoder(nn.Module):
    """PointNet-style polyline encoder: lanes ``(B, L, P, 2)`` -> tokens ``(B, L+1, D)`` + mask."""

    def __init__(self, dim: int):
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(4, dim), nn.GELU(), nn.Linear(dim, dim))
        self.lane_mlp = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, lanes: torch.Tensor, lane_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.point_mlp(torch.cat([lanes * 0.02, lane_directions(lanes)], -1))
        h = h.masked_fill(~lane_mask[..., None], -1e4).amax(-2)
        tokens = self.lane_mlp(h)
        b = lanes.shape[0]
        tokens = torch.cat([self.null_token.expand(b, -1, -1), tokens], 1)
        mask = torch.cat([lane_mask.new_ones(b, 1), lane_mask.any(-1)], 1)
        return tokens, mask


def key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention bias ``(B, 1, 1, L)`` that keeps every query off the keys where ``mask``
    ``(B, L)`` is False, or None when every key may be read (the unmasked kernel is faster).

    A bias over keys costs ``B x L`` numbers where a boolean ``(B, Lq, L)`` mask had to be built
    and converted at every call. Masked keys get the most negative finite value: their weight is
    exactly 0, and a query with no key left (a padded agent of an empty scene) reads every key
    evenly instead of giving NaN; its output is padding that nothing reads."""
    if bool(mask.all()):
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min)[:, None, None]


class Attention(nn.Module):
    """Multi-head attention; ``mask`` (bool, True = may attend; or an additive float bias)
    broadcasts to ``(B, h, Lq, Lk)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        ctx = x if ctx is None else ctx
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q, (k, v) = split(self.q(x)), map(split, self.kv(ctx).chunk(2, -1))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).flatten(-2))


class FactorisedLayer(nn.Module):
    """Time attention per agent, agent attention per time step, map cross-attention, MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.time_attn = Attention(dim, heads)
        self.agent_attn = Attention(dim, heads)
        self.map_attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, agent_attn_mask: torch.Tensor | None, map_tokens: torch.Tensor,
                map_attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, t, d = h.shape
        h = h + self.time_attn(self.norms[0](h).reshape(b * n, t, d)).reshape(b, n, t, d)
        a = self.norms[1](h).transpose(1, 2).reshape(b * t, n, d)
        h = h + self.agent_attn(a, mask=agent_attn_mask).reshape(b, t, n, d).transpose(1, 2)
        m = self.map_attn(self.norms[2](h).reshape(b, n * t, d), map_tokens, mask=map_attn_mask)
        h = h + m.reshape(b, n, t, d)
        return h + self.mlp(self.norms[3](h))


def step_embedding(t: torch.Tensor, dim: int, train_steps: int) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of diffusion steps ``t`` ``(B,)``."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    ang = (t.float() / train_steps * 1000.0)[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], -1)


class SceneDenoiser(nn.Module):
    """Predicts clean latents ``x_0`` ``(B, N, T', d)`` from ``x_t``, step ``t`` ``(B,)`` and a context."""

    def __init__(self, latent_steps: int, latent_dim: int, history_steps: int, dim: int, layers: int, heads: int,
                 train_steps: int, lane_points: int = 0):
        super().__init__()
        self.dim, self.train_steps = dim, train_steps
        self.agent_encoder = AgentEncoder(history_steps, dim, with_pose=True, lane_points=lane_points)
        self.map_encoder = MapEncoder(dim)
        self.map_agent_attn = Attention(dim, heads)  # agents read the map once per scene
        self.in_proj = nn.Linear(latent_dim, dim)
        self.time_pos = nn.Parameter(torch.randn(latent_steps, dim) * 0.02)
        self.step_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(FactorisedLayer(dim, heads) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, latent_dim)

    def encode(self, batch: AgentBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Agent embeddings ``(B, N, D)`` (map-aware), map tokens ``(B, L+1, D)`` and their mask."""
        map_tokens, map_mask = self.map_encoder(batch.lanes, batch.lane_mask)
        # lane slots no scene of the batch fills (padding) would get attention weight 0: drop them
        used = map_mask.any(0)
        map_tokens, map_mask = map_tokens[:, used], map_mask[:, used]
        agents = self.agent_encoder(batch)
        agents = agents + self.map_agent_attn(agents, map_tokens, mask=key_bias(map_mask, agents.dtype))
        return agents, map_tokens, map_mask

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ctx: SceneContext) -> torch.Tensor:
        b, n, tl, _ = x_t.shape
        cond = self.step_mlp(step_embedding(t, self.dim, self.train_steps))
        h = self.in_proj(x_t) + self.time_pos + ctx.agent_emb[:, :, None] + cond[:, None, None]
        # agents attend to present agents (rows of the agent attention: scene-major, then time step)
        agent_mask = key_bias(ctx.agent_mask, h.dtype)
        agent_mask = agent_mask.repeat_interleave(tl, 0) if agent_mask is not None else None
        map_mask = key_bias(ctx.map_mask, h.dtype)
        for layer in self.layers:
            h = layer(h, agent_mask, ctx.map_tokens, map_mask)
        return self.out(self.out_norm(h))
