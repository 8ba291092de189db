"""Sampling-time guidance: steer DDIM toward plans that keep clear of others and stay on the road.

CTG-style reconstruction guidance (Zhong et al. 2023) in the latent space: at each guided DDIM
step the denoiser's clean estimate ``x0_hat`` is decoded to actions (VAE decoder), integrated to
world plans (unicycle rollout), scored by two smooth costs, and moved down their gradient before
the DDIM update uses it. The costs are the differentiable twins of the collision and off-road
metrics:

- **clearance**: every agent as 3 discs along its length that cover its box; for every pair with
  a *movable* agent (a vehicle the policy executes) and every planned step,
  ``relu(min(r_i + r_j + margin, distance now) - distance)^2`` summed over disc pairs, in m^2: pairs
  already closer than that (cars parked side by side) are only kept from closing in, not pushed
  apart (pushing made parked cars creep into their neighbours). Agents that are not movable
  (pedestrians, whose plans are predictions the simulator does not execute) are targets only:
  their plans get no gradient, so a vehicle yields to a pedestrian rather than the other way round.
- **off-road**: movable vehicles that start inside the drivable area pay
  ``relu(signed distance to its boundary + margin)^2`` (m^2; positive outside) at every planned
  step, read bilinearly from a distance field built once per scene (:class:`DistanceField`).

Costs are per plan (summed over scored steps, agent pairs and vehicles). The rollout, the costs
and their gradient w.r.t. the actions are compiled loops (:mod:`blm_gym.models.guidance_kernels`,
float64); autograd takes the gradient on from the actions through the decoder. Guidance moves the
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
from scipy.ndimage import distance_transform_edt

from blm_gym.data.scene import AgentType, DrivableArea
from blm_gym.models import guidance_kernels as kernels
from blm_gym.models.batch import AgentBatch
from blm_gym.sim.geometry import disc_cover
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, ActionBounds

NUM_DISCS = 3  # discs per agent along its length (sim.geometry.disc_cover): a car's box with little slack


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

    ``values`` ``(H, W)`` float64 at the raster's cell centres (same layout as
    :class:`~blm_gym.data.scene.DrivableArea.raster`), ``origin`` world (x, y) of the lower-left
    corner, ``resolution`` m per cell. Read bilinearly; points off the raster read the nearest edge.
    """

    values: np.ndarray
    origin: tuple[float, float]
    resolution: float

    @staticmethod
    def from_drivable(drivable: DrivableArea) -> "DistanceField":
        inside = drivable.raster
        if inside.all() or not inside.any():  # no boundary: nothing to steer toward
            values = np.full(inside.shape, -1e3 if inside.all() else 0.0)
        else:
            # distance from each outside cell to the nearest inside cell and vice versa
            values = (distance_transform_edt(~inside) - distance_transform_edt(inside)) * drivable.resolution
        return DistanceField(np.ascontiguousarray(values, np.float64), tuple(map(float, drivable.origin)),
                             float(drivable.resolution))

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance at world points ``x, y`` (arrays of one shape)."""
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        flat = kernels.field_at(self.values, *self.origin, self.resolution, x.ravel(), y.ravel())
        return flat.reshape(x.shape)


@dataclass(frozen=True)
class Pairs:
    """The agent pairs one guided DDIM step scores: ``index`` ``(P, 3)`` (row, i, j), ``i`` movable,
    ``j`` any other agent (each movable-movable pair once), and ``reach`` ``(P, 3, 3)`` the wanted
    gap (m) between their discs: touching + margin, but never more than the gap there is now."""

    index: np.ndarray
    reach: np.ndarray


class PlanCost:
    """Clearance and off-road costs (m^2, see the module docstring) of the plans of ``B`` samples of
    *one* scene, and their gradient, with what does not depend on the plans computed once.

    ``batch`` those rows, ``movable`` ``(B, N)`` bool: the agents whose plans may move, ``field``
    the scene's distance field (None: no off-road cost). Plans are actions ``(B, N, F, 2)``
    (acceleration m/s^2, yaw rate rad/s), integrated from the batch's current world states with
    ``dt`` and ``bounds`` (the model's unicycle); :meth:`score` takes world states directly.
    Costs are float64 tensors on the batch's device.
    """

    def __init__(self, batch: AgentBatch, movable: torch.Tensor, field: DistanceField | None, config: GuidanceConfig,
                 dt: float = 0.1, bounds: ActionBounds = DEFAULT_BOUNDS):
        if movable.dtype != torch.bool or movable.shape != batch.agent_mask.shape:
            raise ValueError(f"PlanCost: movable must be a bool {tuple(batch.agent_mask.shape)} mask (batch rows x "
                             f"agents), got {movable.dtype} {tuple(movable.shape)}; repeat it with the batch for K "
                             "samples")
        self.config, self.field, self.device = config, field, batch.state_world.device
        self.dt, self.bounds = dt, bounds
        self.start = _numpy(batch.state_world).astype(np.float64)  # (B, N, 4) world x, y, heading, speed
        self.valid = _numpy(batch.agent_mask)
        self.movable = _numpy(movable) & self.valid
        length, width = _numpy(batch.extent).astype(np.float64).transpose(2, 0, 1)
        self.half_size = np.maximum(length, width) / 2
        x, y, heading = self.start[..., :3].transpose(2, 0, 1)
        zero = np.zeros_like(length)
        self.offsets = disc_cover(zero, zero, zero, length, width, NUM_DISCS)[0]  # (B, N, 3) along the heading
        cx, cy, self.radius = disc_cover(x, y, heading, length, width, NUM_DISCS)
        self.discs_now = np.stack([cx, cy], -1)  # (B, N, 3, 2)
        # off-road: movable vehicles that start on the road (one that starts off it is not pushed)
        vehicles = _numpy(batch.agent_type) == AgentType.VEHICLE
        self.offroad_scored = self.movable & vehicles & (field(x, y) <= 0 if field is not None else False)

    def rollout(self, actions: torch.Tensor) -> np.ndarray:
        """World states ``(B, N, F, 4)`` (float64) after each of the actions ``(B, N, F, 2)``."""
        if actions.dim() != 4 or actions.shape[:2] != self.movable.shape or actions.shape[-1] != 2:
            raise ValueError(f"PlanCost: plans must be actions (B, N, F, 2) with (B, N) = {self.movable.shape}, "
                             f"got {tuple(actions.shape)}")
        actions = _finite(_numpy(actions), "actions")
        b = self.bounds
        return kernels.rollout(actions, self.start, self.dt, b.min_accel, b.max_accel, b.max_yaw_rate, b.max_speed)

    def scored_steps(self, states: np.ndarray) -> np.ndarray:
        """The planned steps the costs look at: ``(B, N, F', 4)``."""
        return states[..., :self.config.horizon_steps:self.config.stride, :]

    def pairs(self, states: np.ndarray, slack_m: float = 3.0) -> Pairs:
        """The pairs whose planned centres (``states`` ``(B, N, F, 4)``) come within their half sizes
        + ``slack_m`` at some scored step: the only pairs a few guidance steps can bring into contact."""
        index = kernels.candidate_pairs(np.ascontiguousarray(self.scored_steps(states)), self.half_size,
                                        self.movable, self.valid, slack_m)
        b, i, j = index.T
        gap_now = np.linalg.norm(self.discs_now[b, i][:, :, None] - self.discs_now[b, j][:, None], axis=-1)
        touching = (self.radius[b, i] + self.radius[b, j])[:, None, None]
        return Pairs(index, np.minimum(touching + self.config.clearance_margin_m, gap_now))

    def score(self, states: np.ndarray, pairs: Pairs | None = None, grad: bool = False) -> dict:
        """Costs of world plans ``states`` ``(B, N, F, 4)``: ``clearance``, ``offroad`` and the
        weighted ``total`` ``(B,)`` and ``offroad_agent`` ``(B, N)`` tensors, and the ``pairs``
        scored (given, or by default :meth:`pairs` of ``states``); with ``grad`` also
        ``grad_states`` (numpy ``(B, N, F, 4)``), the gradient of ``total.sum()`` (zero for agents
        that are not movable: they are targets only)."""
        if states.ndim != 4 or states.shape[:2] != self.movable.shape or states.shape[-1] != 4:
            raise ValueError(f"PlanCost: states must be world plans (B, N, F, 4) with (B, N) = "
                             f"{self.movable.shape}, got {tuple(states.shape)}")
        _finite(states, "states")
        pairs = pairs if pairs is not None else self.pairs(states)
        c, f = self.config, self.field
        values, origin, res = (f.values, f.origin, f.resolution) if f is not None else (np.zeros((0, 0)), (0, 0), 1)
        scored = np.ascontiguousarray(self.scored_steps(states), np.float64)
        clearance, offroad_agent, g = kernels.plan_costs(
            scored, self.offsets, self.movable, pairs.index, pairs.reach, self.offroad_scored, values, *origin, res,
            c.offroad_margin_m, c.clearance_weight, c.offroad_weight, grad)
        tensor = lambda a: torch.as_tensor(a, device=self.device)  # noqa: E731
        offroad = offroad_agent.sum(-1)
        out = {"clearance": tensor(clearance), "offroad": tensor(offroad), "offroad_agent": tensor(offroad_agent),
               "total": tensor(c.clearance_weight * clearance + c.offroad_weight * offroad), "pairs": pairs}
        if grad:
            out["grad_states"] = np.zeros(states.shape)
            out["grad_states"][..., :c.horizon_steps:c.stride, :] = g
        return out

    def __call__(self, actions: torch.Tensor, pairs: Pairs | None = None, grad: bool = False) -> dict:
        """Costs of the plans ``actions`` ``(B, N, F, 2)`` (as :meth:`score`); with ``grad`` also
        ``grad`` ``(B, N, F, 2)``, the gradient of ``total.sum()`` w.r.t. the actions (a tensor like
        ``actions``)."""
        states = self.rollout(actions)
        out = self.score(states, pairs, grad)
        if grad:
            b = self.bounds
            g = kernels.rollout_vjp(_numpy(actions), self.start, states, out.pop("grad_states"),
                                    self.dt, b.min_accel, b.max_accel, b.max_yaw_rate, b.max_speed)
            out["grad"] = torch.as_tensor(g, dtype=actions.dtype, device=actions.device)
        return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(a).all():
        raise ValueError(f"PlanCost: {name} hold NaN or inf at {np.argwhere(~np.isfinite(a))[0].tolist()} (row, agent, "
                         "step, channel); a plan must be finite: check the model's checkpoint and its inputs")
    return a


def make_guide(decode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], cost: PlanCost,
               num_ddim_steps: int) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """The ``guide(x0_hat, i) -> x0_hat`` hook of :meth:`BLMModel.sample` (None when disabled).

    ``decode(latents, agents)`` maps normalised latents to actions: ``(B, N, T', d) -> (B, N, F,
    2)`` for the scenes of the ``cost`` (already repeated for K samples) when ``agents`` is None,
    and ``(M, T', d) -> (M, F, 2)`` for the agents of the bool ``(B, N)`` mask ``agents`` otherwise
    (:meth:`BLMModel.decode_actions`). Guides the last ``cost.config.steps`` of ``num_ddim_steps``
    DDIM steps.

    Each step decodes every agent once, without gradient: the plans that enter the step, and the
    base the candidate pairs come from. Each iteration then decodes with gradient only the agents
    that *pull*: whose plan has a non-zero cost gradient (the movable members of a pair closer than
    its wanted gap, the vehicles off the road). The others' gradient is zero, so their latents and
    plans do not change in this iteration: leaving them out is exact, and in a big scene few
    agents pull (of 200 cars on a highway, some 20-80). The movers are decoded again (without
    gradient) for the next iteration's costs. A step without cost returns ``x0_hat`` as it is.
    """
    config = cost.config
    if config.steps == 0:
        return None
    first = num_ddim_steps - min(config.steps, num_ddim_steps)

    def guide(x0_hat: torch.Tensor, i: int) -> torch.Tensor:
        if i < first:
            return x0_hat
        x, moved = x0_hat.detach(), False
        base, pairs = decode(x, None), None  # every agent's plan as it enters this step
        for it in range(config.iterations):
            costs = cost(base, pairs, grad=True)
            pairs = costs["pairs"]  # the candidate pairs of the step's first plans, kept for the step
            pull = costs["grad"].flatten(2).ne(0).any(-1)  # (B, N)
            if not pull.any():  # resolved: zero gradient from here on
                break
            with torch.enable_grad():
                xa = x[pull].requires_grad_(True)
                (grad,) = torch.autograd.grad(decode(xa, pull), xa, costs["grad"][pull])
            # quadratic costs of deep overlaps have steep gradients: clip each agent's move
            delta = config.step_size * grad
            norm = delta.flatten(-2).norm(dim=-1)[..., None, None]
            step = delta * (config.max_step / norm.clamp(min=config.max_step))
            x, moved = x.index_put((pull,), xa.detach() - step), True
            if it + 1 < config.iterations:
                base = base.index_put((pull,), decode(x[pull], pull))
        return x if moved else x0_hat

    return guide


__all__ = ["DistanceField", "GuidanceConfig", "Pairs", "PlanCost", "make_guide"]
