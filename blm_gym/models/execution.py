"""What the BLM policy executes of a joint latent plan: one definition for the closed-loop policy,
sampling-time guidance and fine-tuning.

- **Who moves**: the vehicles the policy controls (:func:`movable_agents`); every other planned
  agent is context.
- **Pedestrians, cyclists, static obstacles**: the VAE learnt vehicle actions only, so their
  plans are a constant-velocity prediction (zero actions, :func:`planned_actions`): the
  obstacles guidance steers around and the plans rewards see.
- **Standstill hold** (a real controller's brake hold): an agent that stands (speed below
  ``standstill_speed``) and whose plan stays below that speed for the next ``hold_steps`` brakes
  to a stop by the next replan and stays there. Latent plans of parked cars carry small non-zero
  accelerations (the denoiser never lands exactly on the "all zero" latent), and replanning
  compounds them into creep; a plan that pulls away is executed as planned.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from blm_gym.data.scene import AgentType
from blm_gym.models.batch import AgentBatch
from blm_gym.models.blm import BLMModel
from blm_gym.models.denoiser import SceneContext


@dataclass(frozen=True)
class ExecutionRule:
    """How a plan is executed: ``replan_steps`` steps (0.1 s) run before the next plan;
    ``standstill_speed`` [m/s] (0 disables the hold) and ``hold_steps``: the standstill hold."""

    replan_steps: int = 10
    standstill_speed: float = 0.5
    hold_steps: int = 20


def movable_agents(batch: AgentBatch, controlled: np.ndarray) -> torch.Tensor:
    """Bool ``(B, N)``: the planned rows the policy executes, the vehicles among the scene agents
    ``controlled`` (bool ``(num_scene_agents,)``); the only plans guidance may move."""
    rows = batch.agent_index
    ctrl = torch.as_tensor(np.asarray(controlled, bool), device=rows.device)[rows.clamp(min=0)]
    return ctrl & (rows >= 0) & (batch.agent_type == AgentType.VEHICLE)


def walkers(batch: AgentBatch) -> torch.Tensor:
    """Bool ``(B, N)``: planned agents predicted at constant velocity (not vehicles)."""
    return batch.agent_type != AgentType.VEHICLE


def planned_actions(model: BLMModel, latents: torch.Tensor, batch: AgentBatch, ctx: SceneContext | None = None,
                    horizon: int | None = None) -> torch.Tensor:
    """Actions ``(B, N, F, 2)`` (m/s^2, rad/s) of latents ``(B, N, T', d)``, non-vehicles at zero."""
    actions = model.decode_actions(latents, batch, ctx, horizon)
    return actions.masked_fill(walkers(batch)[..., None, None], 0.0)


def standstill(speed_now: torch.Tensor, planned_speed: torch.Tensor, threshold: float, hold_steps: int) -> torch.Tensor:
    """Bool ``(..., N)``: agents slower than ``threshold`` [m/s] now whose planned speed ``(..., N, F)``
    stays below it for the next ``hold_steps`` steps; ``threshold`` 0 disables the hold."""
    return (speed_now < threshold) & (planned_speed[..., :hold_steps] < threshold).all(-1)


def executed_actions(model: BLMModel, latents: torch.Tensor, batch: AgentBatch, rule: ExecutionRule,
                     ctx: SceneContext | None = None) -> torch.Tensor:
    """The actions ``(B, N, F, 2)`` the simulator is given for latents ``(B, N, T', d)``: planned
    actions (non-vehicles at constant velocity) with the standstill hold applied."""
    actions = planned_actions(model, latents, batch, ctx)
    speed_now = batch.state_world[..., 3]
    speed = model.integrate(actions, batch.state_world)[..., 3]
    hold = standstill(speed_now, speed, rule.standstill_speed, rule.hold_steps)
    r = rule.replan_steps  # stop gently (about 0.5 m/s^2 from the hold threshold) by the next replan
    brake = torch.zeros_like(actions)
    brake[..., :r, 0] = -speed_now[..., None].clamp(min=0) / (r * model.config.dt)
    return torch.where(hold[..., None, None], brake, actions)
