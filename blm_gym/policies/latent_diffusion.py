"""The BLM model as a closed-loop policy: joint latent plans, replanned every ``replan_every_s``.

At each replan the policy builds an :class:`~blm_gym.models.batch.AgentBatch` from the scene and
the history it simulated (the log before the episode starts), samples a joint plan for the ego
and the nearest road users (by default all valid ones: vehicles, pedestrians, cyclists, static
obstacles; controlled or not: the others are context), and executes the planned (acceleration,
yaw rate) of the current step for the agents it controls. With ``candidates`` > 1 it samples
that many plans in one batch and keeps the one with the lowest guidance cost (clearance +
off-road, :mod:`blm_gym.models.guidance`). Controlled agents outside the plan (beyond
``max_agents``) keep their speed and heading (zero action).

**Big scenes**: when more road users are valid than one joint plan may hold (``max_plan_agents``,
default 256), the policy plans bounded *neighbourhoods* instead of one plan of everyone: each is
up to ``neighbourhood`` (32) agents around an anchor controlled vehicle (the anchor and its nearest
road users), chosen so that every controlled agent is executed from exactly one of them, one in
which it is interior (its nearest road users are planned with it; :func:`neighbourhood_groups`).
All neighbourhoods are sampled in one batched call of the model. Where they overlap they are kept
consistent: every copy of an agent takes the latent of the copy that is executed after each DDIM
step, and guidance scores the executed plans of the whole scene together, as it scores one plan.
The frame stays the ego's, as in one plan. A plan costs per agent up to a few hundred agents
(denoiser tokens, guidance decodes), so there neighbourhoods, which overlap, cost somewhat more
than one plan; beyond, one plan's N^2 attention takes over (:data:`MAX_PLAN_AGENTS`).

Sampling-time guidance (``guidance``, default on; ``GuidanceConfig(steps=0)`` gives the bare
model): the last DDIM steps are nudged down the gradient of the clearance and off-road costs of
the decoded plans; only the vehicles this policy executes are moved. The obstacles are the other
vehicles' planned futures and, for pedestrians, cyclists and static obstacles (whose motion the
VAE never learnt), a constant-velocity prediction.

Several episodes (e.g. of different scenes, one policy copy each) replan in one batched call of
the model with :meth:`LatentDiffusionPolicy.act_many`; each episode keeps its own noise, so
batching changes its plans only by float rounding.

What the policy executes of a plan (which vehicles move, pedestrians at constant velocity, the
standstill hold) is :mod:`blm_gym.models.execution`, shared with guidance and fine-tuning.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from blm_gym.data.scene import Scene, Trajectories
from blm_gym.models.batch import AGENT_FIELDS, MAX_LANES, AgentBatch, collate, make_agent_batch, pad_agents, road_users
from blm_gym.models.blm import BLMModel
from blm_gym.models.checkpoint import load_model
from blm_gym.models.denoiser import SceneContext
from blm_gym.models.execution import ExecutionRule, executed_actions, movable_agents, planned_actions
from blm_gym.models.guidance import DistanceField, GuidanceConfig, Pairs, PlanCost, make_guide
from blm_gym.sim.state import Action, SimulatorState

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "blm.pt"
# the largest joint plan by default: up to a few hundred agents one plan costs less than
# neighbourhoods (the work is per agent: denoiser tokens, guidance decodes; neighbourhoods overlap);
# beyond, its N^2 attention takes over, and a plan far bigger than the training scenes collides
# more (benchmarks/sampling.py --agents, CPU s per 8 s episode, one plan vs neighbourhoods of 32:
# 200 cars 2.3 vs 2.6, none collided; 400 cars 5.1 vs 5.5-6.2, 0.5 % vs none collided; 800 cars
# 14.0 vs 12.6-13.0, 1.9 % vs none collided)
MAX_PLAN_AGENTS = 256
FIELDS_KEPT = 16  # distance fields of the last scenes a policy (and its copies) ran on


def neighbourhood_groups(xy: np.ndarray, pool: np.ndarray, targets: np.ndarray, size: int, interior: int,
                         prefer: np.ndarray | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Cover the ``targets`` with bounded groups of agents to plan jointly.

    ``xy`` ``(N, 2)``: current world positions (m); ``pool`` bool ``(N,)``: the agents a group may
    hold; ``targets`` bool ``(N,)`` (within ``pool``): the agents to execute; ``size``: agents per
    group (at most); ``interior``: an agent is interior to a group when it and its
    ``interior - 1`` nearest pool agents are all in it; ``prefer`` bool ``(N,)``: anchors
    preferred among equally good ones (vehicles: the model's frames are centred on a vehicle).

    Each group is an anchor target and its ``size - 1`` nearest pool agents. Anchors are picked
    greedily, each time the target whose group makes the most not yet covered targets interior;
    those are executed from that group. A target is interior to its own group, so the cover ends,
    every target executed from exactly one group. Returns ``[(anchor row, member rows (n,) anchor
    first then nearest first, executed bool (n,))]``, deterministic (ties: the lowest row).
    """
    rows = np.flatnonzero(pool)
    tgt = np.asarray(targets, bool)[rows]
    if not tgt.any():
        return []
    size = min(size, len(rows))
    k = min(max(interior, 1), size)
    d = np.linalg.norm(xy[rows, None] - xy[None, rows], axis=-1)
    np.fill_diagonal(d, -1.0)  # every agent first in its own list, even on top of another
    near = np.argsort(d, axis=1, kind="stable")  # (P, P) pool positions, nearest first
    member = np.zeros(d.shape, bool)  # member[a, j]: j is in the group anchored at a
    np.put_along_axis(member, near[:, :size], True, axis=1)
    inside = member[:, near[:, :k]].all(-1) & tgt[None]  # inside[a, t]: target t interior to a's group
    bonus = 0.5 * np.asarray(prefer, bool)[rows] if prefer is not None else np.zeros(len(rows))
    uncovered, groups = tgt.copy(), []
    while uncovered.any():
        gain = np.where(tgt, (inside & uncovered).sum(1) + bonus, -1.0)
        a = int(np.argmax(gain))
        members = near[a, :size]
        executed = (inside[a] & uncovered)[members]
        uncovered[members[executed]] = False
        groups.append((int(rows[a]), rows[members], executed))
    return groups


class _RowCosts:
    """:class:`~blm_gym.models.guidance.PlanCost` over plan rows of several scenes, each scene's
    rows (a contiguous ``slice``) scored with its own cost (its own distance field); the same
    interface as a PlanCost (what :func:`~blm_gym.models.guidance.make_guide` and the candidate
    pick use), pairs' rows numbered over all rows."""

    def __init__(self, parts: Sequence[tuple[slice, PlanCost]]):
        self.parts = list(parts)
        self.config = self.parts[0][1].config

    def __call__(self, actions: torch.Tensor, pairs: Pairs | None = None, grad: bool = False) -> dict:
        outs = []
        for rows, cost in self.parts:
            mine = None
            if pairs is not None:
                sel = (pairs.index[:, 0] >= rows.start) & (pairs.index[:, 0] < rows.stop)
                mine = Pairs(pairs.index[sel] - np.array([rows.start, 0, 0]), pairs.reach[sel])
            outs.append(cost(actions[rows], mine, grad))
        merged = {k: torch.cat([o[k] for o in outs]) for k in outs[0] if k != "pairs"}
        index = [o["pairs"].index + np.array([rows.start, 0, 0]) for (rows, _), o in zip(self.parts, outs)]
        merged["pairs"] = Pairs(np.concatenate(index), np.concatenate([o["pairs"].reach for o in outs]))
        return merged


class _SceneView:
    """The scene-level view of neighbourhood plans: every planned agent of an episode once.

    ``batch`` ``(B, N)``: the plans of the episodes (episode ``i``: rows ``rows[i] .. rows[i+1]``),
    ``executed`` ``(B, N)`` the copies each plan executes; ``batch_k``/``ctx_k`` the same repeated
    for ``k`` candidates (row ``b * k + c``). Each agent's *own* copy is its executed one, else
    (context nobody executes) its copy nearest its plan's anchor. The view: ``batch``/``ctx``
    ``(S * k, M)`` (row ``i * k + c``: episode ``i``'s own copies in candidate ``c``, padded to
    ``M``; only the per-agent fields and the first plan's map are meaningful: what decoding and the
    plan costs read), :meth:`gather`/:meth:`guide` between the two layouts, and :meth:`sync`, which
    gives every copy its own copy's latent.
    """

    def __init__(self, batch: AgentBatch, executed: torch.Tensor, rows: np.ndarray, k: int,
                 batch_k: AgentBatch, ctx_k: SceneContext):
        index, ex = batch.agent_index.cpu().numpy(), executed.cpu().numpy()
        b, n = index.shape
        src_row, src_col = np.repeat(np.arange(b), n).reshape(b, n), np.tile(np.arange(n), (b, 1))
        own = []  # per episode: (plan row, column) of each agent's own copy
        for lo, hi in zip(rows[:-1], rows[1:]):
            r, c = np.nonzero(index[lo:hi] >= 0)
            r = r + lo
            agent = index[r, c]
            order = np.lexsort((r, c, ~ex[r, c], agent))  # per agent: executed first, then nearest the anchor
            first = order[np.r_[True, agent[order][1:] != agent[order][:-1]]]
            lookup = dict(zip(agent[first].tolist(), zip(r[first].tolist(), c[first].tolist())))
            src = np.array([lookup[a] for a in agent.tolist()]).reshape(-1, 2)
            src_row[r, c], src_col[r, c] = src[:, 0], src[:, 1]
            own.append((r[first], c[first]))
        m = max(len(r) for r, _ in own)
        cand = np.arange(k)
        # view row i * k + c, agent j -> batch_k row own_row * k + c, column own_col (padding: the first copy)
        fill = lambda a: np.pad(a, (0, m - len(a)), constant_values=a[0])  # noqa: E731
        vr = np.concatenate([fill(r)[None] * k + cand[:, None] for r, _ in own])
        vc = np.concatenate([np.tile(fill(c), (k, 1)) for _, c in own])
        valid = np.concatenate([np.tile(np.arange(m) < len(r), (k, 1)) for r, _ in own])
        dev = batch.agent_index.device
        t = lambda a: torch.as_tensor(a, device=dev)  # noqa: E731
        self.vr, self.vc, self.valid = t(vr), t(vc), t(valid)
        # sync: batch_k row b * k + c, column j takes row src_row[b, j] * k + c, column src_col[b, j]
        self.sr = t((src_row[:, None] * k + cand[None, :, None]).reshape(b * k, n))
        self.sc = t(np.repeat(src_col, k, axis=0))
        fields = {f: getattr(batch_k, f)[self.vr, self.vc] if f in AGENT_FIELDS else getattr(batch_k, f)[self.vr[:, 0]]
                  for f in (x.name for x in dataclasses.fields(AgentBatch))}
        fields["agent_mask"] = fields["agent_mask"] & self.valid
        fields["agent_index"] = fields["agent_index"].masked_fill(~self.valid, -1)
        self.batch = AgentBatch(**fields)
        self.ctx = SceneContext(ctx_k.agent_emb[self.vr, self.vc], ctx_k.map_tokens[self.vr[:, 0]],
                                ctx_k.map_mask[self.vr[:, 0]], self.batch.agent_mask, ctx_k.vae_cond[self.vr, self.vc])

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``(B * k, N, T', d)`` -> the view's ``(S * k, M, T', d)``."""
        return x[self.vr, self.vc]

    def sync(self, x: torch.Tensor) -> torch.Tensor:
        """Every copy of an agent takes its own copy's latent ``(B * k, N, T', d)``."""
        return x[self.sr, self.sc]

    def guide(self, guide):
        """A guide over the view -> the same guide over the plans (it moves the own copies)."""
        def on_plans(x0_hat: torch.Tensor, i: int) -> torch.Tensor:
            view = self.gather(x0_hat)
            moved = guide(view, i)
            if moved is view:  # not guided at this step, or nothing to move
                return x0_hat
            return x0_hat.index_put((self.vr[self.valid], self.vc[self.valid]), moved[self.valid])
        return on_plans


class LatentDiffusionPolicy:
    """:class:`~blm_gym.policies.base.Policy` driven by a :class:`BLMModel`.

    ``replan_every_s``: seconds between plans (at most the plan length, 5.2 s);
    ``num_steps``/``eta``: DDIM steps (None: the model's default) and stochasticity (0: DDIM);
    ``max_agents``: agents per joint plan (ego + nearest road users; None: every one valid at the
    replan); ``max_plan_agents``: with ``max_agents`` None, the most agents one joint plan holds:
    a scene with more valid road users is planned as neighbourhoods of ``neighbourhood`` agents
    around the controlled agents (module docstring; ``max_plan_agents`` None: one plan of
    everyone, however many);
    ``max_lanes``: lane centerlines the plan sees; ``standstill_speed`` (m/s; 0 disables)
    and ``standstill_hold_s``: the standstill hold of the module docstring; ``candidates``: joint
    plans sampled per replan, the cheapest executed (default 1: with guidance's 0.8 m clearance
    margin one plan holds the realism bars, README "Results"); ``guidance``: sampling-time guidance.
    """

    name = "blm"

    def __init__(self, model: BLMModel, *, replan_every_s: float = 1.0, num_steps: int | None = None,
                 eta: float = 0.0, max_agents: int | None = None, max_plan_agents: int | None = MAX_PLAN_AGENTS,
                 neighbourhood: int = 32,
                 standstill_speed: float = 0.5, standstill_hold_s: float = 2.0, max_lanes: int = MAX_LANES,
                 candidates: int = 1, guidance: GuidanceConfig = GuidanceConfig()):
        c = model.config
        self.replan_steps = int(round(replan_every_s / c.dt))
        if not 1 <= self.replan_steps <= c.future_steps:
            raise ValueError(f"replan_every_s must be in [{c.dt}, {c.future_steps * c.dt:.1f}] s "
                             f"(one step .. the plan length), got {replan_every_s}")
        self.model = model.eval()
        if max_agents is not None and max_agents < 1:
            raise ValueError(f"max_agents must be >= 1 or None (every valid road user), got {max_agents}")
        if max_plan_agents is not None and max_plan_agents < 1:
            raise ValueError(f"max_plan_agents must be >= 1 or None (one plan however many), got {max_plan_agents}")
        if neighbourhood < 2:
            raise ValueError(f"neighbourhood must be >= 2 (agents per neighbourhood plan), got {neighbourhood}")
        self.num_steps, self.eta, self.max_agents = num_steps, eta, max_agents
        self.max_plan_agents, self.neighbourhood = max_plan_agents, neighbourhood
        self.max_lanes = max_lanes
        self.rule = ExecutionRule(self.replan_steps, standstill_speed,
                                  min(max(int(round(standstill_hold_s / c.dt)), 1), c.future_steps))
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1 (joint plans sampled per replan), got {candidates}")
        self.candidates, self.guidance = candidates, guidance
        self.device = next(model.parameters()).device
        # distance fields of the last scenes, built once per scene and shared with this policy's
        # copies (copy.copy: lockstep episodes of one scene would each build it otherwise)
        self._fields: OrderedDict[int, tuple[Scene, DistanceField]] = OrderedDict()
        self._field = None

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
        if needs_field:  # built once per scene, reused over its samples
            cached = self._fields.get(id(scene))
            if cached is None or cached[0] is not scene:
                cached = self._fields[id(scene)] = (scene, DistanceField.from_drivable(scene.road.drivable))
                while len(self._fields) > FIELDS_KEPT:
                    self._fields.popitem(last=False)
            self._fields.move_to_end(id(scene))
            self._field = cached[1]
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

    def plan_groups(self, state: SimulatorState) -> tuple[AgentBatch, torch.Tensor]:
        """The joint plans of a replan from ``state``: model inputs ``(B, N)`` and the bool ``(B, N)``
        rows each plan executes.

        One plan (:meth:`plan_inputs`, B = 1, every row executed) unless ``max_agents`` is None and
        more than ``max_plan_agents`` road users are valid: then one plan per neighbourhood
        (:func:`neighbourhood_groups` over the valid road users, covering the controlled ones; an
        agent is interior when its ``neighbourhood // 4`` nearest are planned with it), in the
        ego's frame; ``N = neighbourhood``.
        """
        s, n = self._scene, self.neighbourhood
        pool = road_users(s) & state.valid
        pool[s.ego_index] = state.valid[s.ego_index]  # as in one plan: the ego whatever its type
        targets = pool & self._controlled
        one_plan = self.max_agents is not None or self.max_plan_agents is None
        if one_plan or pool.sum() <= self.max_plan_agents or not targets.any():
            batch = self.plan_inputs(state)
            return batch, batch.agent_index >= 0
        groups = neighbourhood_groups(np.stack([state.x, state.y], -1), pool, targets, n, max(n // 4, 1),
                                      prefer=s.is_vehicle)
        history, c = self._history(state), self.model.config
        batches = [make_agent_batch(s, state.step, max_agents=n, agents=members, history=history,
                                    max_lanes=self.max_lanes, history_steps=c.history_steps,
                                    future_steps=c.future_steps) for _, members, _ in groups]
        executed = torch.zeros(len(groups), n, dtype=torch.bool)
        for g, (_, members, ex) in enumerate(groups):
            executed[g, :len(members)] = torch.as_tensor(ex)
        return collate(batches).to(self.device), executed.to(self.device)

    @torch.no_grad()
    def execute(self, latents: torch.Tensor, batch: AgentBatch, state: SimulatorState,
                ctx: SceneContext | None = None) -> None:
        """Adopt the plan of latents ``(1, N, T', d)`` (of ``batch``) from ``state`` on: the next
        :meth:`act` calls execute it (:func:`~blm_gym.models.execution.executed_actions`)."""
        actions = executed_actions(self.model, latents, batch, self.rule, ctx)
        self._adopt(actions, batch.agent_index, batch.agent_index >= 0, state)

    def _adopt(self, actions: torch.Tensor, agent_index: torch.Tensor, executed: torch.Tensor,
               state: SimulatorState) -> None:
        """Take the ``executed`` rows (bool ``(B, N)``) of the plans' actions ``(B, N, F, 2)`` as
        this episode's plan from ``state`` on (agents in no plan: zero actions)."""
        plan = np.zeros((self._scene.num_agents, self.model.config.future_steps, 2), np.float32)
        plan[agent_index[executed].cpu().numpy()] = actions[executed].cpu().numpy()
        self._plan, self._plan_step = plan, state.step

    def _due(self, state: SimulatorState) -> bool:
        """Whether ``state`` needs a new plan (none yet, or the replan interval is over)."""
        return self._plan is None or not 0 <= state.step - self._plan_step < self.replan_steps

    def _replan(self, state: SimulatorState) -> None:
        self.replan_many([self], [state])

    @staticmethod
    @torch.no_grad()
    def replan_many(policies: Sequence["LatentDiffusionPolicy"], states: Sequence[SimulatorState]) -> None:
        """Replan several episodes together: ``policies[i]`` (copies of one policy, each reset on
        its own episode) from ``states[i]``. The plans of all of them (:meth:`plan_groups`) are
        sampled, guided and decoded in one batched call of the model; each episode draws its noise
        from its own generator, so a batch of one is exactly :meth:`act`'s replan.

        Neighbourhood plans of a scene are kept consistent where they overlap: after every DDIM
        step each agent's copies take the latent of its *own* copy (the one executed; for an agent
        nobody executes, the one nearest its plan's anchor), so every neighbourhood sees the plans
        the others will execute, and guidance scores the scene's executed plans together, each
        agent once (:class:`_SceneView`), as it scores one plan of everyone.
        """
        lead = policies[0]
        settings = lambda p: (p.model, p.num_steps, p.eta, p.candidates, p.guidance, p.rule)  # noqa: E731
        if any(settings(p) != settings(lead) for p in policies):
            raise ValueError("replan_many: the policies must share the model and the sampling settings "
                             "(copies of one policy)")
        model, k, g = lead.model, lead.candidates, lead.guidance
        parts = [p.plan_groups(s) for p, s in zip(policies, states)]
        n = max(b.num_agents for b, _ in parts)
        batch = collate([pad_agents(b, n) for b, _ in parts])
        executed = torch.cat([torch.nn.functional.pad(e, (0, n - e.shape[1])) for _, e in parts])
        rows = np.cumsum([0] + [b.batch_size for b, _ in parts])  # each episode's plans: rows[i] .. rows[i + 1]
        scene_of_row = torch.as_tensor(np.repeat(np.arange(len(parts)), np.diff(rows)), device=lead.device)
        ctx = model.encode_context(batch)
        batch_k, ctx_k = batch.repeat_interleave(k), ctx.repeat_interleave(k)
        view = _SceneView(batch, executed, rows, k, batch_k, ctx_k) if len(scene_of_row) > len(parts) else None
        # guidance and the candidate pick see one row per (episode, candidate): the plan itself, or
        # with neighbourhoods the scene view of them
        gbatch, gctx = (view.batch, view.ctx) if view is not None else (batch_k, ctx_k)
        spans = [slice(i * k, (i + 1) * k) for i in range(len(parts))]
        movable = torch.cat([movable_agents(gbatch.index(sp), p._controlled) for p, sp in zip(policies, spans)])

        def decode(x: torch.Tensor, agents: torch.Tensor | None = None, horizon: int | None = g.horizon_steps):
            if agents is None:
                return planned_actions(model, x, gbatch, gctx, horizon)
            return model.decode_actions(x, gbatch, gctx, horizon, agents)  # agents: movable vehicles only

        # each episode's rows are scored with its own scene's distance field
        costs = [(sp, PlanCost(gbatch.index(sp), movable[sp], p._field, g, model.config.dt))
                 for p, sp in zip(policies, spans)]
        cost = costs[0][1] if len(costs) == 1 else _RowCosts(costs)
        ts = model.timesteps(lead.num_steps)
        guide = make_guide(decode, cost, len(ts))
        if view is not None and guide is not None:
            guide = view.guide(guide)
        noise = lambda: torch.cat([pad_latents(torch.randn(  # noqa: E731
            (b.batch_size * k, b.num_agents, model.config.latent_steps, model.config.latent_dim), generator=p._gen,
            device=lead.device), n) for p, (b, _) in zip(policies, parts)])
        sync = view.sync if view is not None else (lambda x: x)
        # BLMModel.sample, with each episode's noise from its own generator (and the copies synced)
        x = sync(noise())
        for i in range(len(ts)):
            mean, std = model.denoise_mean_std(x, i, ctx_k, ts, lead.eta, guide)
            x = sync(mean + std * noise() if lead.eta > 0 else mean)
        latents = x.reshape(batch.batch_size, k, *x.shape[1:])  # (B, K, N, T', d)
        best = torch.zeros(batch.batch_size, dtype=torch.long, device=x.device)
        if k > 1:  # keep each episode's candidate with the fewest conflicts (the costs look g.horizon_steps ahead)
            total = cost(decode(view.gather(x) if view is not None else x))["total"]
            best = torch.argmin(total.reshape(len(parts), k), -1).to(x.device)[scene_of_row]
        latents = latents[torch.arange(batch.batch_size, device=x.device), best]
        actions = executed_actions(model, latents, batch, lead.rule, ctx)
        for p, s, lo, hi in zip(policies, states, rows[:-1], rows[1:]):
            p._adopt(actions[lo:hi], batch.agent_index[lo:hi], executed[lo:hi], s)

    @staticmethod
    def act_many(policies: Sequence["LatentDiffusionPolicy"], states: Sequence[SimulatorState]) -> list[Action]:
        """:meth:`act` of several episodes at once (``policies[i]`` in ``states[i]``, as
        :meth:`replan_many`): the episodes due for a plan replan in one batched call of the model."""
        due = [i for i, (p, s) in enumerate(zip(policies, states)) if p._due(s)]
        if due:
            LatentDiffusionPolicy.replan_many([policies[i] for i in due], [states[i] for i in due])
        return [p.act(s) for p, s in zip(policies, states)]

    def act(self, state: SimulatorState) -> Action:
        if self._due(state):
            self._replan(state)
        return self.planned_action(state)

    def planned_action(self, state: SimulatorState) -> Action:
        """The adopted plan's action at ``state.step``, without replanning (a plan covers
        ``future_steps`` steps from the step it was made at; :meth:`act` replans every ``replan_steps``)."""
        k = state.step - self._plan_step
        if self._plan is None or not 0 <= k < self._plan.shape[1]:
            raise ValueError(f"planned_action: no adopted plan covers step {state.step} (plan made at "
                             f"{self._plan_step}); call act() or execute() first")
        accel_yaw = self._plan[:, k] * self._controlled[:, None]
        return Action(accel_yaw.astype(np.float32), np.zeros(self._scene.num_agents, bool))


def pad_latents(x: torch.Tensor, num_agents: int) -> torch.Tensor:
    """Latents ``(R, N, T', d)`` padded with zeros to ``num_agents`` agents (as :func:`pad_agents`)."""
    return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, num_agents - x.shape[1]))
