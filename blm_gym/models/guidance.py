"""Sampling-time guidance: steer DDIM toward plans that keep clear of others and stay on the road.

CTG-style reconstruction guidance (Zhong et al. 2023) in the latent space: at each guided DDIM
step the denoiser's clean estimate ``x0_hat`` is decoded (VAE decoder + unicycle rollout, both
differentiable), scored by two smooth costs, and moved down their gradient before the DDIM update
uses it. The costs are the differentiable twins of the collision and off-road metrics:

- **clearance**: every agent as 3 discs along its length that cover its box; for every pair with
  a *movable* agent (a vehicle the policy executes) and every planned step,
  ``relu(min(r_i + r_j + margin, distance now) - distance)^2`` summed over disc pairs, in m^2: pairs
  already closer than that (cars parked side by side) are only kept from closing in, not pushed
  apart (pushing made parked cars creep into their neighbours). Agents that are not movable
  (pedestrians, whose plans are predictions the simulator does not execute) are targets only:
  their plans are detached, so a vehicle yields to a pedestrian rather than the other way round.
- **off-road**: movable vehicles that start inside the drivable area pay
  ``relu(signed distance to its boundary + margin)^2`` (m^2; positive outside) at every planned
  step, read bilinearly from a distance field built once per scene (:class:`DistanceField`).

Costs are per plan (summed over scored steps, agent pairs and vehicles). Guidance moves the
model's own samples (a few gradient steps late in the chain, each agent's latent by at most
``max_step`` per step) and the decoder still makes the actions: no rule-based controller is put
on top. With several candidate plans per replan the policy executes the cheapest
(:class:`~blm_gym.policies.latent_diffusion.LatentDiffusionPolicy`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from blm_gym.data.scene import AgentType, DrivableArea
from blm_gym.models.batch import AgentBatch
from blm_gym.sim.geometry import disc_cover


@dataclass(frozen=True)
class GuidanceConfig:
    """How hard and where sampling is steered (``steps`` 0 disables guidance)."""

    steps: int = 3  # guided DDIM steps: the last ``steps`` of the chain (coarse structure stays the model's)
    iterations: int = 3  # gradient steps on x0_hat per guided DDIM step
    step_size: float = 0.2  # gradient step on the normalised latents per unit cost (1 / m^2)
    max_step: float = 1.0  # trust region: largest L2 move of one agent's normalised latent (T' x d) per step
    clearance_weight: float = 1.0
    offroad_weight: float = 1.0
    clearance_margin_m: float = 0.8  # wanted gap between the (box-covering) discs beyond touching (0.2 let
    # one plan per replan collide on womd-sample; 4 plans, the cheapest kept, were safe but 2x slower)
    offroad_margin_m: float = 0.5  # wanted distance of a vehicle's centre inside the road edge
    horizon_steps: int = 30  # planned steps (0.1 s) the costs look at; replanning re-plans the rest
    stride: int = 1  # score every ``stride``-th planned step (2 halves the pair work but lets contacts slip through)

    def __post_init__(self):
        for name in ("steps", "iterations", "horizon_steps", "stride"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ValueError(f"GuidanceConfig.{name} must be >= {0 if name == 'steps' else 1}, "
                                 f"got {getattr(self, name)}")
        for name in ("step_size", "max_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GuidanceConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DistanceField:
    """Signed distance (m) to the drivable area's boundary on its raster; positive outside.

    ``values`` ``(H, W)`` tensor at the raster's cell centres (same layout as
    :class:`~blm_gym.data.scene.DrivableArea.raster`), ``origin`` world (x, y) of the lower-left
    corner, ``resolution`` m per cell. Points off the raster read the nearest edge cell.
    """

    values: torch.Tensor
    origin: tuple[float, float]
    resolution: float

    @staticmethod
    def from_drivable(drivable: DrivableArea, device: str | torch.device = "cpu") -> "DistanceField":
        inside = drivable.raster
        if inside.all() or not inside.any():  # no boundary: nothing to steer toward
            values = np.full(inside.shape, -1e3 if inside.all() else 0.0, np.float32)
        else:
            # distance from each outside cell to the nearest inside cell and vice versa
            values = (distance_transform_edt(~inside) - distance_transform_edt(inside)) * drivable.resolution
        return DistanceField(torch.as_tensor(values, dtype=torch.float32, device=device), drivable.origin,
                             drivable.resolution)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bilinear signed distance at world points ``x, y`` (any shape), differentiable in both."""
        h, w = self.values.shape
        # grid_sample's corner-aligned coordinates: -1 and +1 are the centres of the edge cells
        u = ((x - self.origin[0]) / self.resolution - 0.5) * (2 / max(w - 1, 1)) - 1
        v = ((y - self.origin[1]) / self.resolution - 0.5) * (2 / max(h - 1, 1)) - 1
        grid = torch.stack([u, v], -1).reshape(1, 1, -1, 2)
        out = F.grid_sample(self.values[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(x.shape)


@dataclass(frozen=True)
class Pairs:
    """The agent pairs one guided DDIM step scores: ``index`` ``(P, 3)`` (row, i, j), ``i`` movable,
    ``j`` any other agent (each movable-movable pair once), and ``reach`` ``(P, 3, 3)`` the wanted
    gap (m) between their discs: touching + margin, but never more than the gap there is now."""

    index: torch.Tensor
    reach: torch.Tensor


class PlanCost:
    """Clearance and off-road costs (m^2, see the module docstring) of world-frame plans of ``B``
    samples of *one* scene, with what does not depend on the plans computed once.

    ``batch`` those rows, ``movable`` ``(B, N)`` bool: the agents whose plans may move, ``field``
    the scene's distance field (None: no off-road cost). Plans ``states`` are ``(B, N, F, 4)``
    (x, y, heading, speed after each action).
    """

    def __init__(self, batch: AgentBatch, movable: torch.Tensor, field: DistanceField | None, config: GuidanceConfig):
        if movable.dtype != torch.bool or movable.shape != batch.agent_mask.shape:
            raise ValueError(f"PlanCost: movable must be a bool {tuple(batch.agent_mask.shape)} mask (batch rows x "
                             f"agents), got {movable.dtype} {tuple(movable.shape)}; repeat it with the batch for K "
                             "samples")
        self.batch, self.field, self.config = batch, field, config
        self.movable = movable & batch.agent_mask
        x, y, heading = batch.state_world[..., :3].unbind(-1)
        cx, cy, self.radius = disc_cover(x, y, heading, *batch.extent.unbind(-1), 3)  # radius (B, N)
        self.discs_now = torch.stack([cx, cy], -1)  # (B, N, 3, 2)
        # off-road: movable vehicles that start on the road (one that starts off it is not pushed)
        self.offroad_scored = None
        if field is not None:
            self.offroad_scored = self.movable & (batch.agent_type == AgentType.VEHICLE) & (field(x, y) <= 0)

    def scored_steps(self, states: torch.Tensor) -> torch.Tensor:
        """The planned steps the costs look at: ``(B, N, F', 4)``."""
        return states[..., :self.config.horizon_steps:self.config.stride, :]

    def pairs(self, states: torch.Tensor, slack_m: float = 3.0) -> Pairs:
        """The pairs whose planned centres (``states`` already cut to the scored steps) come within
        their half lengths + ``slack_m`` at some step: the only pairs a few guidance steps can bring
        into contact."""
        batch, movable = self.batch, self.movable
        with torch.no_grad():
            xy = states[..., :2]
            d = (xy[:, :, None] - xy[:, None]).norm(dim=-1).amin(-1)  # (B, N, N)
            half = batch.extent.amax(-1) / 2
            near = d < half[:, :, None] + half[:, None, :] + slack_m
            n = movable.shape[-1]
            idx = torch.arange(n, device=d.device)
            both = movable[:, :, None] & movable[:, None, :]
            keep = near & movable[:, :, None] & batch.agent_mask[:, None, :] & (idx[:, None] != idx[None, :])
            keep &= ~both | (idx[:, None] < idx[None, :])
            index = keep.nonzero()
            b, i, j = index.unbind(-1)
            gap_now = _disc_gaps(self.discs_now[b, i], self.discs_now[b, j])  # (P, 3, 3)
            touching = (self.radius[b, i] + self.radius[b, j])[:, None, None]
            reach = torch.minimum(touching + self.config.clearance_margin_m, gap_now)
        return Pairs(index, reach)

    def offroad(self, states: torch.Tensor) -> torch.Tensor:
        """Off-road cost ``(B, N)`` of each scored vehicle over ``states`` (cut to the scored steps)."""
        if self.field is None:
            return torch.zeros(states.shape[:2], device=states.device)
        sd = self.field(states[..., 0], states[..., 1])  # (B, N, F')
        return (sd + self.config.offroad_margin_m).clamp(min=0).pow(2).sum(-1) * self.offroad_scored

    def __call__(self, states: torch.Tensor, pairs: Pairs | None = None) -> dict[str, torch.Tensor]:
        """``clearance``, ``offroad`` and the weighted ``total`` ``(B,)``, and ``offroad_agent``
        ``(B, N)``; ``pairs`` from :meth:`pairs` (default: computed from ``states``)."""
        if states.dim() != 4 or states.shape[:2] != self.movable.shape or states.shape[-1] != 4:
            raise ValueError(f"PlanCost: states must be world plans (B, N, F, 4) with (B, N) = "
                             f"{tuple(self.movable.shape)}, got {tuple(states.shape)}")
        states = self.scored_steps(states)
        # non-movable plans are targets only: no gradient flows into them
        states = torch.where(self.movable[..., None, None], states, states.detach())
        if pairs is None:
            pairs = self.pairs(states)
        cx, cy, _ = disc_cover(states[..., 0], states[..., 1], states[..., 2], self.batch.extent[..., 0, None],
                               self.batch.extent[..., 1, None], 3)
        discs = torch.stack([cx, cy], -1)  # (B, N, F', 3, 2)
        b, i, j = pairs.index.unbind(-1)
        per_pair = (pairs.reach[:, None] - _disc_gaps(discs[b, i], discs[b, j])).clamp(min=0).pow(2).sum((-1, -2, -3))
        clearance = torch.zeros(states.shape[0], device=states.device).index_add(0, b, per_pair)
        offroad_agent = self.offroad(states)
        offroad = offroad_agent.sum(-1)
        total = self.config.clearance_weight * clearance + self.config.offroad_weight * offroad
        return {"clearance": clearance, "offroad": offroad, "total": total, "offroad_agent": offroad_agent}


def _disc_gaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Centre distances ``(..., 3, 3)`` between every disc of ``a`` and of ``b`` ``(..., 3, 2)``."""
    return (a[..., :, None, :] - b[..., None, :, :]).norm(dim=-1)


def make_guide(decode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], cost: PlanCost,
               num_ddim_steps: int) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """The ``guide(x0_hat, i) -> x0_hat`` hook of :meth:`BLMModel.sample` (None when disabled).

    ``decode(latents, agents)`` maps normalised latents to world states: ``(B, N, T', d) ->
    (B, N, F, 4)`` for the scenes in ``cost.batch`` (already repeated for K samples) when
    ``agents`` is None, and ``(M, T', d) -> (M, F, 4)`` for the agents of the bool ``(B, N)`` mask
    ``agents`` otherwise (:meth:`BLMModel.decode`). Guides the last ``cost.config.steps`` of
    ``num_ddim_steps`` DDIM steps.

    The first iteration decodes every agent with gradient: its plans are also the base that the
    candidate pairs come from. After it only the *active* agents are decoded: the movable members
    of a candidate pair and the vehicles with an off-road cost. Every other agent has a zero
    gradient at the first iteration, so its latent, plan and costs never change within the step:
    leaving it out is exact. Likewise a row (one scene sample) whose plans cost nothing has a zero
    gradient and is done: a step without cost returns ``x0_hat`` as it is, and rows leave the
    iterations once resolved.
    """
    config, movable = cost.config, cost.movable
    if config.steps == 0:
        return None
    first = num_ddim_steps - min(config.steps, num_ddim_steps)

    def guide(x0_hat: torch.Tensor, i: int) -> torch.Tensor:
        if i < first:
            return x0_hat
        x, active = x0_hat.detach(), None  # active None: the first iteration, over every agent
        for _ in range(config.iterations):
            with torch.enable_grad():
                if active is None:
                    xa = x.clone().requires_grad_(True)
                    states = decode(xa, None)
                    base = states.detach()  # every agent's plan as it enters this step
                    pairs = cost.pairs(cost.scored_steps(base))
                else:
                    xa = x[active].requires_grad_(True)
                    states = base.index_put((active,), decode(xa, active))
                costs = cost(states, pairs)
                live = costs["total"] > 0
                if not live.any():  # resolved: zero gradient from here on
                    break
                (grad,) = torch.autograd.grad(costs["total"][live].sum(), xa)
            if active is None:
                rows, a, b = pairs.index.unbind(-1)
                active = torch.zeros_like(movable)
                active[rows, a] = True
                active[rows, b] = True
                active = ((active & movable) | (costs["offroad_agent"].detach() > 0)) & live[:, None]
                xa, grad = xa[active], grad[active]
            # quadratic costs of deep overlaps have steep gradients: clip each agent's move
            delta = config.step_size * grad
            norm = delta.flatten(-2).norm(dim=-1)[..., None, None]
            x = x.index_put((active,), (xa - delta * (config.max_step / norm.clamp(min=config.max_step))).detach())
            active &= live[:, None]  # a resolved row (sample) did not move, so it stays resolved
        return x if active is not None else x0_hat

    return guide


__all__ = ["DistanceField", "GuidanceConfig", "Pairs", "PlanCost", "make_guide"]
