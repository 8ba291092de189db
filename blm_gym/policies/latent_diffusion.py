"""The BLM model as a closed-loop policy: joint latent plans, replanned every ``replan_every_s``.

At each replan the policy builds an :class:`~blm_gym.models.batch.AgentBatch` from the scene and
the history it simulated (the log before the episode starts), samples a joint plan for the ego
and the nearest road users (by default all valid ones: vehicles, pedestrians, cyclists, static
obstacles; controlled or not: the others are context), and executes the planned (acceleration,
yaw rate) of the current step for the agents it controls. With ``candidates`` > 1 it samples
that many plans in one batch and keeps the one with the lowest guidance cost (clearance +
off-road, :mod:`blm_gym.models.guidance`). Controlled agents outside the plan (beyond
``max_agents``) keep their speed and heading (zero action).

Sampling-time guidance (``guidance``, default on; ``GuidanceConfig(steps=0)`` gives the bare
model): the last DDIM steps are nudged down the gradient of the clearance and off-road costs of
the decoded plans; only the vehicles this policy executes are moved. The obstacles are the other
vehicles' planned futures and, for pedestrians, cyclists and static obstacles (whose motion the
VAE never learnt), a constant-velocity prediction.

What the policy executes of a plan (which vehicles move, pedestrians at constant velocity, the
standstill hold) is :mod:`blm_gym.models.execution`, shared with guidance and fine-tuning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blm_gym.data.scene import Scene, Trajectories
from blm_gym.models.batch import MAX_LANES, AgentBatch, make_agent_batch, road_users
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_model
from blm_gym.models.denoiser import SceneContext
from blm_gym.models.execution import ExecutionRule, executed_actions, movable_agents, planned_actions
from blm_gym.models.guidance import DistanceField, GuidanceConfig, PlanCost, make_guide
from blm_gym.sim.state import Action, SimulatorState

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "blm.pt"


class LatentDiffusionPolicy:
    """:class:`~blm_gym.policies.base.Policy` driven by a :class:`BLMModel`.

    ``replan_every_s``: seconds between plans (at most the plan length, 5.2 s);
    ``num_steps``/``eta``: DDIM steps (None: the model's default) and stochasticity (0: DDIM);
    ``max_agents``: agents per joint plan (ego + nearest road users; None: every one valid at the
    replan); ``max_lanes``: lane centerlines the plan sees; ``standstill_speed`` (m/s; 0 disables)
    and ``standstill_hold_s``: the standstill hold of the module docstring; ``candidates``: joint
    plans sampled per replan, the cheapest executed (default 1: with guidance's 0.8 m clearance
    margin one plan holds the realism bars, README "Results"); ``guidance``: sampling-time guidance.
    """

    name = "blm"

    def __init__(self, model: BLMModel, *, replan_every_s: float = 1.0, num_steps: int | None = None,
                 eta: float = 0.0, max_agents: int | None = None, standstill_speed: float = 0.5,
                 standstill_hold_s: float = 2.0, max_lanes: int = MAX_LANES, candidates: int = 1,
                 guidance: GuidanceConfig = GuidanceConfig()):
        c = model.config
        self.replan_steps = int(round(replan_every_s / c.dt))
        if not 1 <= self.replan_steps <= c.future_steps:
            raise ValueError(f"replan_every_s must be in [{c.dt}, {c.future_steps * c.dt:.1f}] s "
                             f"(one step .. the plan length), got {replan_every_s}")
        self.model = model.eval()
        if max_agents is not None and max_agents < 1:
            raise ValueError(f"max_agents must be >= 1 or None (every valid road user), got {max_agents}")
        self.num_steps, self.eta, self.max_agents = num_steps, eta, max_agents
        self.max_lanes = max_lanes
        self.rule = ExecutionRule(self.replan_steps, standstill_speed,
                                  min(max(int(round(standstill_hold_s / c.dt)), 1), c.future_steps))
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1 (joint plans sampled per replan), got {candidates}")
        self.candidates, self.guidance = candidates, guidance
        self.device = next(model.parameters()).device
        self._field, self._field_scene = None, None

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: str = "cpu", **kwargs) -> "LatentDiffusionPolicy":
        """Load a trained model (default: the shipped model ``blm_gym/assets/blm.pt``)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"BLM checkpoint not found: {path}; train one with `blm-gym train vae` then "
                                    "`blm-gym train diffusion`, or reinstall blm_gym to get the shipped model")
        return cls(load_model(path, device), **kwargs)

    def reset(self, scene: Scene, start_step: int, controlled: np.ndarray, rng: np.random.Generator) -> None:
        needs_field = self.guidance.steps > 0 or self.candidates > 1  # the costs guidance and candidates use
        if needs_field and self._field_scene is not scene:  # built once per scene, reused over its samples
            self._field = DistanceField.from_drivable(scene.road.drivable)
            self._field_scene = scene
        self._scene = scene
        self._controlled = np.asarray(controlled, bool)
        self._gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        self._plan: np.ndarray | None = None  # (N, F, 2) actions from _plan_step on
        self._plan_step = start_step

    def _history(self, state: SimulatorState) -> Trajectories:
        """The last ``history_steps`` states of every agent (the log before the episode, then the
        simulation), ``(N, H)``; steps before the scene's start are invalid."""
        steps = np.arange(state.current_step - self.model.config.history_steps + 1, state.current_step + 1)
        ok = steps >= 0
        take = lambda a: np.where(ok, a[:, steps.clip(min=0)], 0).astype(a.dtype)  # noqa: E731
        sim = state.sim
        return Trajectories.from_states(length=sim.length, width=sim.width,
                                        **{k: take(getattr(sim, k)) for k in ("x", "y", "heading", "speed", "valid")})

    def plan_inputs(self, state: SimulatorState) -> AgentBatch:
        """The model inputs of a joint plan from ``state`` (B = 1): the ego and its nearest road users."""
        s = self._scene
        n = self.max_agents or int((road_users(s) & state.valid).sum()) + 1  # + 1: the ego may not be one
        return make_agent_batch(s, state.step, max_agents=n, max_lanes=self.max_lanes, history=self._history(state),
                                history_steps=self.model.config.history_steps,
                                future_steps=self.model.config.future_steps).to(self.device)

    @torch.no_grad()
    def execute(self, latents: torch.Tensor, batch: AgentBatch, state: SimulatorState,
                ctx: SceneContext | None = None) -> None:
        """Adopt the plan of latents ``(1, N, T', d)`` (of ``batch``) from ``state`` on: the next
        :meth:`act` calls execute it (:func:`~blm_gym.models.execution.executed_actions`)."""
        actions = executed_actions(self.model, latents, batch, self.rule, ctx)[0]
        rows = batch.agent_index[0]
        keep = rows >= 0
        plan = np.zeros((self._scene.num_agents, self.model.config.future_steps, 2), np.float32)
        plan[rows[keep].cpu().numpy()] = actions[keep].cpu().numpy()
        self._plan, self._plan_step = plan, state.step

    @torch.no_grad()
    def _replan(self, state: SimulatorState) -> None:
        batch = self.plan_inputs(state)
        movable = movable_agents(batch, self._controlled)
        k, g = self.candidates, self.guidance
        ctx = self.model.encode_context(batch)
        batch_k, ctx_k, movable_k = batch.repeat_interleave(k), ctx.repeat_interleave(k), movable.expand(k, -1)

        def decode(x: torch.Tensor, agents: torch.Tensor | None = None, horizon: int | None = g.horizon_steps):
            if agents is None:
                return planned_actions(self.model, x, batch_k, ctx_k, horizon)
            return self.model.decode_actions(x, batch_k, ctx_k, horizon, agents)  # agents: movable vehicles only

        cost = PlanCost(batch_k, movable_k, self._field, g, self.model.config.dt)
        guide = make_guide(decode, cost, len(self.model.timesteps(self.num_steps)))
        latents = self.model.sample(batch, k, self.num_steps, self.eta, self._gen, ctx=ctx, guide=guide)[0]
        best = 0
        if k > 1:  # keep the joint plan with the fewest conflicts (the costs look g.horizon_steps ahead)
            best = int(torch.argmin(cost(decode(latents))["total"]))
        self.execute(latents[best, None], batch, state, ctx)

    def act(self, state: SimulatorState) -> Action:
        if self._plan is None or not 0 <= state.step - self._plan_step < self.replan_steps:
            self._replan(state)
        accel_yaw = self._plan[:, state.step - self._plan_step] * self._controlled[:, None]
        return Action(accel_yaw.astype(np.float32), np.zeros(self._scene.num_agents, bool))
