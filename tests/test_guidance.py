"""Sampling-time guidance: the distance field, the plan costs, and that guided plans cost less."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
import torch

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from blm_gym.models import make_agent_batch
from blm_gym.models.guidance import DistanceField, GuidanceConfig, PlanCost, make_guide
from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy

torch.set_num_threads(1)
ROAD = shapely.box(-50, -3.5, 150, 3.5)  # a 7 m wide road along x


def head_on_scene(gap_m: float = 60.0, steps: int = 40) -> Scene:
    """Two cars at 10 m/s driving at each other in the middle of one 7 m road (logged as if they pass through)."""
    t = np.arange(steps) * 0.1
    x = np.stack([0.0 + 10 * t, gap_m - 10 * t])
    y = np.zeros_like(x)
    heading = np.stack([0 * t, 0 * t + np.pi])
    traj = Trajectories.from_states(x, y, heading, np.full_like(x, 10.0), [4.5, 4.5], [1.9, 1.9],
                                    np.ones(x.shape, bool))
    lanes, mask = pad_polylines([np.stack([np.linspace(-50, 150, 81), np.full(81, 0.0)], -1)])
    road = RoadMap(lanes, mask, np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool),
                   DrivableArea.from_geometry(ROAD))
    return Scene("head-on", "test", 0.1, ("a", "b"), np.full(2, AgentType.VEHICLE, np.int8), 0, traj, road)


def test_distance_field_is_signed_distance_to_the_road_edge():
    field = DistanceField.from_drivable(DrivableArea.from_geometry(ROAD))
    x = torch.tensor([0.0, 0.0, 0.0, 80.0])
    y = torch.tensor([0.0, 2.5, 6.5, -5.0], requires_grad=True)
    d = field(x, y)
    # inside negative, outside positive, within one 0.5 m raster cell of the exact distance
    np.testing.assert_allclose(d.detach().numpy(), [-3.5, -1.0, 3.0, 1.5], atol=0.5)
    (grad,) = torch.autograd.grad(d.sum(), y)
    assert grad[1] > 0 and grad[2] > 0 and grad[3] < 0  # uphill = away from the road's middle


def _states(xy_a, xy_b, steps: int = 10) -> torch.Tensor:
    """World states (1, 2, F, 4) of two agents standing at ``xy_a`` / ``xy_b`` heading +x."""
    s = torch.zeros(1, 2, steps, 4)
    s[0, 0, :, :2] = torch.tensor(xy_a)
    s[0, 1, :, :2] = torch.tensor(xy_b)
    return s


def test_plan_costs_clearance_and_targets_only():
    batch = make_agent_batch(head_on_scene(), 0, max_agents=2)
    field = DistanceField.from_drivable(DrivableArea.from_geometry(ROAD))
    cfg = GuidanceConfig(horizon_steps=10, stride=1)
    movable = torch.tensor([[True, False]])
    cost = PlanCost(batch, movable, field, cfg)
    far = cost(_states((0.0, 0.0), (20.0, 0.0)))
    assert far["clearance"].item() == 0 and far["offroad"].item() == 0
    close = _states((0.0, 0.0), (3.0, 0.0)).requires_grad_(True)
    costs = cost(close)
    assert costs["clearance"].item() > 0
    (grad,) = torch.autograd.grad(costs["clearance"].sum(), close)
    assert grad[0, 0, :, 0].gt(0).all()  # cost rises toward the other car: descent backs the movable one off
    assert grad[0, 1].abs().max() == 0  # the non-movable agent is a target only
    # a movable vehicle that starts on the road pays for leaving it, the more the farther
    off = [cost(_states((0.0, y), (20.0, 0.0)))["offroad"].item()
           for y in (2.0, 4.0, 6.0)]
    assert off[0] == 0 < off[1] < off[2]
    with pytest.raises(ValueError, match="movable must be a bool"):
        PlanCost(batch, torch.tensor([True, False]), field, cfg)
    with pytest.raises(ValueError, match="states must be world plans"):
        cost(_states((0.0, 0.0), (20.0, 0.0))[..., :2])


def test_clearance_keeps_close_neighbours_from_closing_in_but_does_not_push_them_apart():
    # two cars parked side by side 2.1 m apart (closer than their discs + margin): standing still
    # costs nothing, closing in does
    scene = head_on_scene()
    y = np.array([0.0, 2.1])[:, None] + 0 * scene.traj.x
    traj = Trajectories.from_states(np.zeros_like(y), y, np.zeros_like(y), np.zeros_like(y), [4.5, 4.5], [1.9, 1.9],
                                    np.ones(y.shape, bool))
    batch = make_agent_batch(dataclasses.replace(scene, traj=traj), 0, max_agents=2)
    cfg = GuidanceConfig(horizon_steps=10)
    movable = torch.tensor([[True, True]])
    cost = PlanCost(batch, movable, None, cfg)
    parked, closer = cost(_states((0.0, 0.0), (0.0, 2.1))), cost(_states((0.0, 0.3), (0.0, 2.1)))
    assert parked["clearance"].item() == 0 < closer["clearance"].item()


def test_guided_plans_cost_less_than_unguided():
    """The shipped model's plans for two cars closing head-on in one lane, with and without guidance."""
    policy = LatentDiffusionPolicy.from_checkpoint()
    model, cfg = policy.model, GuidanceConfig()
    scene = head_on_scene()
    batch = make_agent_batch(scene, 10, max_agents=2)
    k = 8
    batch_k, ctx = batch.repeat_interleave(k), model.encode_context(batch)
    ctx_k = ctx.repeat_interleave(k)
    movable = torch.ones(k, 2, dtype=torch.bool)
    plan_cost = PlanCost(batch_k, movable, DistanceField.from_drivable(scene.road.drivable), cfg)

    def cost(guide):
        with torch.no_grad():
            z = model.sample(batch, k, generator=torch.Generator().manual_seed(0), ctx=ctx, guide=guide)[0]
            c = plan_cost(model.decode(z, batch_k, ctx_k)[1])
        return (c["clearance"] + c["offroad"]).mean().item()

    guide = make_guide(lambda z, agents: model.decode(z, batch_k, ctx_k, agents=agents)[1], plan_cost,
                       len(model.timesteps()))
    plain, guided = cost(None), cost(guide)
    assert plain > 0  # the scene is built so that plain plans do conflict
    assert guided < 0.5 * plain
    bare = PlanCost(batch_k, movable, None, GuidanceConfig(steps=0))
    assert make_guide(lambda z, agents: z, bare, 5) is None


def test_guidance_config_and_policy_reject_bad_values():
    with pytest.raises(ValueError, match="iterations"):
        GuidanceConfig(iterations=0)
    with pytest.raises(ValueError, match="step_size"):
        GuidanceConfig(step_size=0.0)
    with pytest.raises(ValueError, match="candidates"):
        LatentDiffusionPolicy.from_checkpoint(candidates=0)


def test_make_policy_names_the_guided_and_the_bare_model():
    from blm_gym.policies import make_policy

    guided, bare = make_policy("blm"), make_policy("blm_unguided")
    assert guided.guidance.steps > 0
    assert bare.candidates == 1 and bare.guidance.steps == 0
    with pytest.raises(ValueError, match="blm_unguided"):
        make_policy("blm-guided")


def test_guided_policy_keeps_head_on_cars_apart_in_closed_loop():
    """Both cars driven by the shipped guided policy for 4 s: their boxes never overlap and they
    stay on the 7 m road, although the log drives them through each other."""
    from blm_gym.sim.geometry import agent_collisions, offroad
    from blm_gym.sim.state import SimState, step

    scene = head_on_scene(gap_m=60.0, steps=60)
    policy = LatentDiffusionPolicy.from_checkpoint()
    policy.reset(scene, 10, np.ones(2, bool), np.random.default_rng(0))
    state = SimState.from_log(scene.traj, 10)
    for _ in range(40):
        state = step(state, policy.act(state), scene.traj, scene.dt)
        assert not agent_collisions(state.x, state.y, state.heading, state.length, state.width, state.valid).any()
        assert not offroad(scene.road.drivable, state.x, state.y, state.valid).any()
    log_end = scene.traj.x[:, 50]
    assert log_end[0] > log_end[1]  # in the log they have passed through each other by now
