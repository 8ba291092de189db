"""The BLM traffic model: action VAE (stage 1) + scene-level latent diffusion (stage 2).

Interface (what the closed-loop policy and the RL fine-tuner code against)::

    model = BLMModel(BLMConfig())                         # or blm_gym.models.checkpoint.load_model(path)
    batch = make_agent_batch(scene, step, max_agents=32)  # AgentBatch, B scenes x N agents
    ctx = model.encode_context(batch)                     # SceneContext, once per scene; ctx.repeat_interleave(K)
    ts = model.timesteps(num_steps)                       # DDIM steps, descending, e.g. [99, 79, 59, 39, 19]
    x = torch.randn(B, N, T', d, generator=g)             # T' = 13, d = 4; "latents" below are always
    for i in range(len(ts)):                              # *normalised* (divided by model.latent_scale)
        mean, std = model.denoise_mean_std(x, i, ctx, ts, eta)   # Gaussian of x_{t_{i+1}} given x_{t_i}
        x = mean + std * torch.randn(x.shape, generator=g)
    actions, world_states = model.decode(x, batch)        # (B, N, F, 2) m/s^2, rad/s; (B, N, F, 4) x, y, h, v

    latents = model.sample(batch, num_samples=K, num_steps=5, eta=0.0, generator=g)  # (B, K, N, T', d)
    actions, world_states = model.decode(latents, batch)  # (B, K, N, F, 2), (B, K, N, F, 4)
    actions = model.decode_actions(latents, batch)        # the actions alone (what guidance scores)

``denoise_mean_std``: ``x_t`` ``(B, N, T', d)``, ``i`` the DDIM step index into ``timesteps``
(``t = timesteps[i]``, next ``timesteps[i+1]`` or the clean end ``-1`` after the last);
``std`` has ``mean``'s shape and is ``> 0`` for every step but the last when ``eta > 0`` (the
last step lands on ``alpha_bar = 1`` and is deterministic, std 0: floor it before taking
log-probs). Rows of padded agents (``batch.agent_mask`` False) are meaningless: mask them.

Decoded states are the unicycle integration of the decoded actions from each agent's current
world state (heading not wrapped), state ``k`` being the state after action ``k``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from blm_gym.data.scene import AgentType
from blm_gym.models.batch import FUTURE_STEPS, HISTORY_STEPS, AgentBatch
from blm_gym.models.denoiser import SceneContext, SceneDenoiser
from blm_gym.models.schedule import DiffusionSchedule, ddim_timesteps
from blm_gym.models.vae import ActionVAE
from blm_gym.sim.kinematics import unicycle_rollout

DECODE_CHUNK = 64  # agents per decoder call (decode_actions)
Guide = Callable[[torch.Tensor, int], torch.Tensor]  # (x0_hat (B, N, T', d), DDIM step index) -> x0_hat


@dataclass(frozen=True)
class BLMConfig:
    """Architecture of a BLM model (stored in checkpoints; a change is a new architecture)."""

    history_steps: int = HISTORY_STEPS  # states of history, 0.1 s apart
    future_steps: int = FUTURE_STEPS  # actions planned, 0.1 s apart (divisible by 4)
    dt: float = 0.1  # s per step
    latent_dim: int = 4  # d: channels per latent time step (T' = future_steps / 4)
    vae_channels: int = 64  # conv width of the VAE
    d_model: int = 64  # denoiser width
    num_layers: int = 2  # factorised attention layers
    num_heads: int = 4
    train_steps: int = 100  # DDPM steps T of the cosine schedule
    sample_steps: int = 5  # default DDIM steps (5 beat 10 and 20 on nuScenes-mini val ADE)
    accel_scale: float = 4.0  # m/s^2; actions are divided by these scales inside the nets
    yaw_scale: float = 0.5  # rad/s
    agent_lane_points: int = 0  # nearest lanes, in each agent's frame, in the denoiser's agent embedding (0: off)

    def __post_init__(self):
        if self.agent_lane_points < 0:
            raise ValueError(f"BLMConfig.agent_lane_points is a number of lanes (0: off), got {self.agent_lane_points}")

    @property
    def latent_steps(self) -> int:
        return self.future_steps // 4


class BLMModel(nn.Module):
    """VAE + denoiser + schedule; see the module docstring for the sampling interface."""

    def __init__(self, config: BLMConfig = BLMConfig()):
        super().__init__()
        self.config = c = config
        self.vae = ActionVAE(c.future_steps, c.history_steps, c.latent_dim, c.vae_channels, (c.accel_scale, c.yaw_scale))
        self.denoiser = SceneDenoiser(c.latent_steps, c.latent_dim, c.history_steps, c.d_model, c.num_layers,
                                      c.num_heads, c.train_steps, c.agent_lane_points)
        self.schedule = DiffusionSchedule(c.train_steps)
        # per-channel std of the VAE posterior means on training data, set after stage 1
        self.register_buffer("latent_scale", torch.ones(c.latent_dim))

    # ---- stage 1: VAE -------------------------------------------------------------------------
    def rollout(self, actions: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Unicycle states ``(..., F, 4)`` from actions ``(..., F, 2)`` and start states ``(..., 4)``."""
        return unicycle_rollout(start[..., 0], start[..., 1], start[..., 2], start[..., 3], actions, self.config.dt)

    def vae_losses(self, batch: AgentBatch, generator: torch.Generator | None = None,
                   sample: bool = True) -> dict[str, torch.Tensor]:
        """Stage-1 losses over ``batch.train_mask`` vehicles.

        ``ade``/``fde``: mean / final distance (m) of decoded states to the log (decoded from a
        posterior sample, or its mean when ``sample`` is False; integrated in the scene frame, as
        distances are frame-invariant); ``action``: MSE of normalised actions; ``kl``: mean KL
        per latent element to N(0, 1).
        """
        # vehicles only: the policy executes vehicle plans, and pedestrian headings (hence yaw
        # rates) in the logs are mostly noise that would take the VAE's capacity
        m = batch.train_mask & (batch.agent_type == AgentType.VEHICLE)
        actions, fut, start = batch.fut_actions[m], batch.fut_states[m], batch.state_scene[m]
        mean, logvar = self.vae.encode(actions)
        z = mean
        if sample:
            z = z + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator, device=mean.device)
        rec = self.vae.decode_actions(z, self.vae.context(batch)[m])
        states = self.rollout(rec, start)
        err = (states[..., :2] - fut[..., :2]).norm(dim=-1)
        scale = self.vae.action_scale
        return {
            "ade": err.mean(), "fde": err[:, -1].mean(),
            "action": ((rec - actions) / scale).pow(2).mean(),
            "kl": 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean(),
        }

    @torch.no_grad()
    def encode_latents(self, batch: AgentBatch) -> torch.Tensor:
        """Normalised posterior-mean latents ``(B, N, T', d)`` of the logged futures (diffusion targets)."""
        mean, _ = self.vae.encode(batch.fut_actions)
        return mean / self.latent_scale

    # ---- stage 2: diffusion -------------------------------------------------------------------
    def encode_context(self, batch: AgentBatch) -> SceneContext:
        agents, map_tokens, map_mask = self.denoiser.encode(batch)
        return SceneContext(agents, map_tokens, map_mask, batch.agent_mask, self.vae.context(batch))

    def timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """DDIM step indices, descending (default ``config.sample_steps``)."""
        return ddim_timesteps(num_steps or self.config.sample_steps, self.config.train_steps)

    def denoise_mean_std(self, x_t: torch.Tensor, i: int, ctx: SceneContext, timesteps: torch.Tensor,
                         eta: float = 0.0, guide: Guide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``(B, N, T', d)`` of ``x_{t_{i+1}}`` given ``x_{t_i}`` (DDIM step ``i``).

        ``guide(x0_hat, i) -> x0_hat`` may move the denoiser's clean estimate before the DDIM
        update uses it (sampling-time guidance, :func:`blm_gym.models.guidance.make_guide`)."""
        t = int(timesteps[i])
        t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0_hat = self.denoiser(x_t, tt, ctx)
        if guide is not None:
            x0_hat = guide(x0_hat, i)
        return self.schedule.ddim_mean_std(x_t, x0_hat, t, t_prev, eta)

    def diffusion_loss(self, batch: AgentBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0-prediction MSE at uniform random steps, over ``batch.train_mask`` agents.

        Agents without a fully logged future are left out of the scene (as padding), since their
        latents encode zero-filled actions.
        """
        m = batch.train_mask
        x0 = self.encode_latents(batch)
        b = x0.shape[0]
        t = torch.randint(0, self.config.train_steps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        ctx = self.encode_context(batch)
        ctx = SceneContext(ctx.agent_emb, ctx.map_tokens, ctx.map_mask, m, ctx.vae_cond)
        x0_hat = self.denoiser(self.schedule.q_sample(x0, t, noise), t, ctx)
        return ((x0_hat - x0).pow(2).mean((-1, -2)) * m).sum() / m.sum().clamp(min=1)

    def sample(self, batch: AgentBatch, num_samples: int = 1, num_steps: int | None = None, eta: float = 0.0,
               generator: torch.Generator | None = None, ctx: SceneContext | None = None,
               guide: Guide | None = None) -> torch.Tensor:
        """Joint latent plans ``(B, K, N, T', d)`` (normalised) for every scene of ``batch``.

        ``guide``: see :meth:`denoise_mean_std`; it sees the ``B * K`` rows scene-major."""
        ctx = (ctx if ctx is not None else self.encode_context(batch)).repeat_interleave(num_samples)
        c = self.config
        b = batch.batch_size
        dev = batch.hist.device
        x = torch.randn((b * num_samples, batch.num_agents, c.latent_steps, c.latent_dim), generator=generator,
                        device=dev)
        ts = self.timesteps(num_steps)
        for i in range(len(ts)):
            mean, std = self.denoise_mean_std(x, i, ctx, ts, eta, guide)
            x = mean + std * torch.randn(x.shape, generator=generator, device=dev) if eta > 0 else mean
        return x.reshape(b, num_samples, *x.shape[1:])

    def decode_actions(self, latents: torch.Tensor, batch: AgentBatch, ctx: SceneContext | None = None,
                       horizon: int | None = None, agents: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents ``(B, [K,] N, T', d)`` -> actions ``(B, [K,] N, F, 2)`` (m/s^2, rad/s);
        ``horizon``: decode only the first that many actions ``(..., horizon, 2)``, from the latents
        they depend on (guidance looks no further).

        ``agents``: bool ``(B, N)``; then ``latents`` are only those ``M`` agents' ``(M, T', d)``
        (``full[agents]``) and so are the actions, ``(M, F, 2)``: the decoder is per agent, so
        guidance decodes only the agents its costs can move."""
        cond = ctx.vae_cond if ctx is not None else self.vae.context(batch)
        if agents is not None:
            n = batch.agent_mask.shape
            if agents.dtype != torch.bool or agents.shape != n or latents.shape[0] != int(agents.sum()):
                raise ValueError(f"decode_actions: agents must be a bool {tuple(n)} mask (batch rows x agents) "
                                 f"and latents its {int(agents.sum()) if agents.dtype == torch.bool else '?'} agents' "
                                 f"(M, T', d), got agents {agents.dtype} {tuple(agents.shape)} and latents "
                                 f"{tuple(latents.shape)}; pass full[agents] with the same mask")
            cond = cond[agents]
        elif latents.dim() == 5:  # (B, K, ...): broadcast the per-scene context over K
            cond = cond[:, None].expand(-1, latents.shape[1], -1, -1)
        lead = latents.shape[:-2]
        z, cond = (latents * self.latent_scale).flatten(0, -3), cond.reshape(-1, cond.shape[-1])
        # chunks of DECODE_CHUNK agents, the last padded to a power of two: oneDNN builds its
        # convolutions per input shape, so a new agent count at every call (guidance's movers)
        # made each decode 2-3x slower, and a chunk's activations stay in cache
        out = []
        for lo in range(0, max(len(z), 1), DECODE_CHUNK):
            zc, cc = z[lo:lo + DECODE_CHUNK], cond[lo:lo + DECODE_CHUNK]
            pad = min(DECODE_CHUNK, 1 << max(len(zc) - 1, 0).bit_length()) - len(zc)
            out.append(self.vae.decode_actions(F.pad(zc, (0, 0, 0, 0, 0, pad)), F.pad(cc, (0, 0, 0, pad)),
                                               horizon)[:len(zc)])
        actions = torch.cat(out)
        return actions.reshape(*lead, *actions.shape[1:])

    def decode(self, latents: torch.Tensor, batch: AgentBatch, ctx: SceneContext | None = None,
               horizon: int | None = None, agents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode_actions` and the world states ``(B, [K,] N, F, 4)`` (x, y, heading, speed
        after each action; ``(M, F, 4)`` for ``agents``) they integrate to."""
        actions = self.decode_actions(latents, batch, ctx, horizon, agents)
        start = batch.state_world if agents is None else batch.state_world[agents]
        if agents is None and latents.dim() == 5:
            start = start[:, None]
        return actions, self.integrate(actions, start)

    def integrate(self, actions: torch.Tensor, start_world: torch.Tensor) -> torch.Tensor:
        """World states ``(..., F, 4)`` after each action ``(..., F, 2)`` from world states ``(..., 4)``."""
        # integrate from each agent's own position as the origin (world orientation), then translate:
        # the running sums stay small, so float32 keeps them exact however far the scene is from (0, 0)
        position = start_world * start_world.new_tensor([1.0, 1.0, 0.0, 0.0])
        return self.rollout(actions, start_world - position) + position[..., None, :]
