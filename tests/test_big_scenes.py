"""Big scenes: neighbourhood plans of the BLM policy, several episodes replanned in one model call."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from blm_gym.data.scene import AgentType
from blm_gym.models import guidance_kernels as kernels
from blm_gym.models import make_agent_batch
from blm_gym.models.blm import DECODE_CHUNK
from blm_gym.models.execution import movable_agents, planned_actions
from blm_gym.models.guidance import DistanceField, GuidanceConfig, PlanCost, make_guide
from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy, _SceneView, neighbourhood_groups
from blm_gym.rollout.runner import RolloutConfig, run_rollouts
from blm_gym.sim.state import SimulatorState, step
from test_models import run_closed_loop, tiny_model, toy_scene

torch.set_num_threads(1)


def crowd_scene(seed: int = 0, num_agents: int = 30, steps: int = 60):
    """A toy scene of many cars on three lanes, a few of them pedestrians (context, never executed)."""
    scene = toy_scene(seed, num_agents=num_agents, steps=steps)
    types = scene.agent_type.copy()
    types[[3, 10, 17]] = AgentType.PEDESTRIAN
    return dataclasses.replace(scene, agent_type=types, scene_id=f"crowd-{seed}")


def test_neighbourhood_groups_cover_every_target_once_within_the_bound():
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(3, 120))
        xy = rng.uniform(0, 200, (n, 2))
        pool = rng.random(n) < 0.9
        targets = pool & (rng.random(n) < 0.6)
        size = int(rng.integers(2, 40))
        interior = max(size // 4, 1)
        groups = neighbourhood_groups(xy, pool, targets, size, interior, prefer=rng.random(n) < 0.7)
        executed = np.concatenate([m[e] for _, m, e in groups]) if groups else np.zeros(0, int)
        assert sorted(executed.tolist()) == np.flatnonzero(targets).tolist()  # every target exactly once
        rows = np.flatnonzero(pool)
        for anchor, members, ex in groups:
            assert len(members) == min(size, pool.sum()) and len(set(members.tolist())) == len(members)
            assert pool[members].all() and members[0] == anchor and targets[anchor] and ex.any()
            for a in members[ex]:  # executed where interior: its nearest pool agents are planned with it
                near = rows[np.argsort(np.linalg.norm(xy[rows] - xy[a], axis=-1), kind="stable")[:interior]]
                assert set(near.tolist()) <= set(members.tolist())


def test_guiding_only_the_agents_that_pull_is_a_gradient_step_on_every_agent():
    """make_guide decodes and differentiates only the agents with a cost gradient; the reference
    decodes every agent with gradient at every iteration (what guidance did before)."""
    scene, model = crowd_scene(num_agents=40), tiny_model()
    batch = make_agent_batch(scene, 10, max_agents=41)
    ctx = model.encode_context(batch)
    config = GuidanceConfig(iterations=4)
    cost = PlanCost(batch, movable_agents(batch, scene.is_vehicle), DistanceField.from_drivable(scene.road.drivable),
                    config)

    def decode(x, agents=None):
        if agents is None:
            return planned_actions(model, x, batch, ctx, config.horizon_steps)
        return model.decode_actions(x, batch, ctx, config.horizon_steps, agents)

    x0 = torch.randn(1, 41, 13, 4, generator=torch.Generator().manual_seed(0)) * 2
    x, pairs = x0, None
    for _ in range(config.iterations):
        xa = x.clone().requires_grad_(True)
        actions = decode(xa)
        costs = cost(actions.detach(), pairs, grad=True)
        pairs = costs["pairs"]
        (grad,) = torch.autograd.grad(actions, xa, costs["grad"])
        delta = config.step_size * grad
        x = x - delta * (config.max_step / delta.flatten(-2).norm(dim=-1)[..., None, None].clamp(min=config.max_step))
    pulled = (x != x0).flatten(2).any(-1)
    assert 0 < pulled.sum() < movable_agents(batch, scene.is_vehicle).sum()  # some agents move, not all
    with torch.no_grad():
        guided = make_guide(decode, cost, 1)(x0, 0)
    torch.testing.assert_close(guided, x, rtol=0, atol=1e-5)


def test_decoding_in_chunks_and_scoring_candidate_pairs_in_boxes_are_exact():
    model = tiny_model()
    scene = crowd_scene(num_agents=DECODE_CHUNK + 30)
    batch = make_agent_batch(scene, 10, max_agents=scene.num_agents)
    z = torch.randn(1, scene.num_agents, 13, 4)
    with torch.no_grad():
        whole = model.vae.decode_actions(z * model.latent_scale, model.vae.context(batch), 30)
        torch.testing.assert_close(model.decode_actions(z, batch, horizon=30), whole, rtol=0, atol=1e-6)
    # candidate pairs: the bounding-box skip keeps exactly the pairs a check of every step finds
    rng = np.random.default_rng(0)
    states = np.zeros((2, 60, 30, 4))
    states[..., :2] = rng.uniform(0, 300, (2, 60, 1, 2)) + np.cumsum(rng.normal(0, 1, (2, 60, 30, 2)), 2)
    half, movable, valid = rng.uniform(0.3, 2.5, (2, 60)), rng.random((2, 60)) < 0.7, rng.random((2, 60)) < 0.9
    near = np.linalg.norm(states[:, :, None, :, :2] - states[:, None, :, :, :2], axis=-1).min(-1) < (
        half[:, :, None] + half[:, None, :] + 3.0)
    want = [(r, i, j) for r, i, j in zip(*np.nonzero(near)) if i != j and movable[r, i] and valid[r, j]
            and not (movable[r, j] and j < i)]
    assert 0 < len(want) and kernels.candidate_pairs(states, half, movable, valid, 3.0).tolist() == [
        list(p) for p in want]


def old_replan(policy: LatentDiffusionPolicy, state: SimulatorState) -> None:
    """The policy's replan before neighbourhoods (one joint plan, BLMModel.sample), for comparison."""
    batch = policy.plan_inputs(state)
    movable = movable_agents(batch, policy._controlled)
    k, g, model = policy.candidates, policy.guidance, policy.model
    ctx = model.encode_context(batch)
    batch_k, ctx_k, movable_k = batch.repeat_interleave(k), ctx.repeat_interleave(k), movable.expand(k, -1)

    def decode(x, agents=None, horizon=g.horizon_steps):
        if agents is None:
            return planned_actions(model, x, batch_k, ctx_k, horizon)
        return model.decode_actions(x, batch_k, ctx_k, horizon, agents)

    cost = PlanCost(batch_k, movable_k, policy._field, g, model.config.dt)
    guide = make_guide(decode, cost, len(model.timesteps(policy.num_steps)))
    with torch.no_grad():
        latents = model.sample(batch, k, policy.num_steps, policy.eta, policy._gen, ctx=ctx, guide=guide)[0]
        best = int(torch.argmin(cost(decode(latents))["total"])) if k > 1 else 0
    policy.execute(latents[best, None], batch, state, ctx)


@pytest.mark.parametrize("kwargs", [{}, {"candidates": 2}, {"eta": 0.5, "guidance": GuidanceConfig(steps=0)}])
def test_a_scene_within_the_bound_plans_exactly_as_before(kwargs):
    scene = toy_scene(steps=60)  # 6 road users: within any neighbourhood bound here
    model = tiny_model()
    new = run_closed_loop(LatentDiffusionPolicy(model, num_steps=3, max_plan_agents=6, neighbourhood=6,
                                                     **kwargs), scene, 5, 25)
    before = LatentDiffusionPolicy(model, num_steps=3, **kwargs)
    before._replan = lambda state: old_replan(before, state)
    np.testing.assert_array_equal(new, run_closed_loop(before, scene, 5, 25))


def test_a_big_scene_plans_bounded_neighbourhoods_in_one_call():
    scene, model = crowd_scene(), tiny_model()
    policy = LatentDiffusionPolicy(model, num_steps=3, max_plan_agents=8, neighbourhood=8)
    policy.reset(scene, 10, scene.is_vehicle.copy(), np.random.default_rng(0))
    state = SimulatorState.from_log(scene, 10)
    batch, executed = policy.plan_groups(state)
    assert batch.num_agents == 8 and batch.batch_size > 1
    ex_rows = batch.agent_index[executed]
    assert sorted(ex_rows.tolist()) == np.flatnonzero(scene.is_vehicle & state.valid).tolist()
    # one batched denoiser call per DDIM step, every neighbourhood in it
    calls = []
    forward = model.denoiser.forward
    model.denoiser.forward = lambda x, t, ctx: calls.append(x.shape) or forward(x, t, ctx)
    try:
        action = policy.act(state)
    finally:
        del model.denoiser.forward
    assert calls == [(batch.batch_size, 8, 13, 4)] * 3
    moved = np.abs(action.accel_yaw).sum(-1) > 0
    assert (moved == (scene.is_vehicle & state.valid)).all()  # every controlled vehicle, nobody else
    # the scene view: every planned agent once, its own copy the executed one; copies sync to it
    ctx = model.encode_context(batch)
    rows = np.array([0, batch.batch_size])
    view = _SceneView(batch, executed, rows, 2, batch.repeat_interleave(2), ctx.repeat_interleave(2))
    planned = batch.agent_index[batch.agent_index >= 0]
    mine = view.batch.agent_index[view.valid]
    assert view.batch.batch_size == 2 and sorted(mine[: len(mine) // 2].tolist()) == sorted(set(planned.tolist()))
    torch.testing.assert_close(view.batch.state_world[view.valid][:, :2],
                               torch.as_tensor(np.stack([state.x, state.y], -1)[mine.numpy()], dtype=torch.float32))
    index_k = batch.repeat_interleave(2).agent_index
    assert (index_k[view.sr, view.sc] == index_k).all()
    ex_k = executed.repeat_interleave(2, 0)
    of_executed = torch.isin(index_k, ex_rows)  # copies of an executed agent sync to its executed copy
    assert ex_k[view.sr, view.sc][of_executed].all() and (~ex_k[view.sr, view.sc][~of_executed]).all()
    x = torch.randn(batch.batch_size * 2, 8, 13, 4)
    synced = view.sync(x)
    for a in planned.unique().tolist():  # every copy of an agent holds one latent per candidate
        for c in range(2):
            copies = synced[c::2][batch.agent_index == a]
            assert (copies == copies[0]).all()


def test_replanning_episodes_together_matches_one_at_a_time():
    model = tiny_model()
    scenes = [toy_scene(1, steps=60), crowd_scene(2), crowd_scene(3, num_agents=24)]
    def make():
        return LatentDiffusionPolicy(model, num_steps=3, max_plan_agents=8, neighbourhood=8, replan_every_s=0.5)

    alone = [run_closed_loop(make(), s, 10, 12, seed=i) for i, s in enumerate(scenes)]
    lead = make()
    policies = [lead] + [copy.copy(lead) for _ in scenes[1:]]
    states = [SimulatorState.from_log(s, 10) for s in scenes]
    for i, (p, s) in enumerate(zip(policies, scenes)):
        p.reset(s, 10, s.is_vehicle.copy(), np.random.default_rng(i))
    together = [[] for _ in scenes]
    for _ in range(12):
        actions = LatentDiffusionPolicy.act_many(policies, states)
        for i, a in enumerate(actions):
            together[i].append(a.accel_yaw)
            states[i] = step(states[i], a)
    # each episode's own noise and inputs: equal up to the float rounding of batched matmuls
    for a, b in zip(alone, together):
        np.testing.assert_allclose(np.stack(b), a, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="share the model"):
        LatentDiffusionPolicy.replan_many([lead, LatentDiffusionPolicy(tiny_model(1), num_steps=3)], states[:2])


class ToySource:
    name = "toy"

    def __init__(self):
        self._scenes = [toy_scene(1, steps=40), crowd_scene(2, steps=40), crowd_scene(3, num_agents=20, steps=35)]

    @property
    def scene_ids(self):
        return [s.scene_id for s in self._scenes]

    def load(self, index):
        return self._scenes[index]


def test_rollouts_in_lockstep_equal_one_at_a_time():
    model = tiny_model()
    factory = lambda: LatentDiffusionPolicy(model, num_steps=2, max_plan_agents=8, neighbourhood=8)  # noqa: E731
    kw = dict(scene_ids=ToySource().scene_ids, samples=2, start_step=10, horizon_s=1.5, progress=False)
    one = run_rollouts(ToySource(), factory, **kw)
    for n in (2, 4):
        many = run_rollouts(ToySource(), factory, scenes_per_batch=n, **kw)
        assert [r.scene_id for r in many] == [r.scene_id for r in one]
        for a, b in zip(one, many):
            assert b.x.shape == a.x.shape  # the third scene's horizon is clamped to its log
            for name in ("x", "y", "heading", "speed"):
                np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-3, rtol=0)
            np.testing.assert_array_equal(b.valid, a.valid)
    with pytest.raises(ValueError, match="scenes_per_batch"):
        RolloutConfig(scenes_per_batch=0)


@pytest.mark.parametrize("kwargs", [{"candidates": 2}, {"eta": 0.5, "guidance": GuidanceConfig(steps=0)}])
def test_a_big_scene_with_candidates_or_noise_drives_every_vehicle(kwargs):
    scene = crowd_scene()
    policy = LatentDiffusionPolicy(tiny_model(), num_steps=2, max_plan_agents=8, neighbourhood=8,
                                   replan_every_s=0.5, **kwargs)
    acts = run_closed_loop(policy, scene, 10, 12)
    assert np.isfinite(acts).all()
    moved = np.abs(acts).sum(-1) > 0  # (steps, agents): the vehicles valid throughout move, nobody else
    vehicles = scene.is_vehicle & scene.traj.valid[:, 10:22].all(-1)
    assert moved[:, vehicles].all() and not moved[:, ~scene.is_vehicle].any()
