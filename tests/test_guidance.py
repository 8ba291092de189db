"""Sampling-time guidance: the distance field, the plan costs, and that guided plans cost less."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
import torch

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from blm_gym.models import make_agent_batch
from blm_gym.models import guidance_kernels as kernels
from blm_gym.models.guidance import DistanceField, GuidanceConfig, PlanCost, make_guide
from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy
from blm_gym.sim.kinematics import unicycle_rollout

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
    x, y = np.array([0.0, 0.0, 0.0, 80.0]), np.array([0.0, 2.5, 6.5, -5.0])
    # inside negative, outside positive, within one 0.5 m raster cell of the exact distance
    np.testing.assert_allclose(field(x, y), [-3.5, -1.0, 3.0, 1.5], atol=0.5)
    args = field.values, *field.origin, field.resolution
    for xi, yi in zip(x, y):  # the kernel's gradient is the slope of the bilinear field
        _, dx, dy = kernels.bilinear(*args, xi + 0.13, yi + 0.11)
        step = lambda ex, ey: kernels.bilinear(*args, xi + 0.13 + ex, yi + 0.11 + ey)[0]  # noqa: E731
        assert dx == pytest.approx((step(1e-4, 0) - step(-1e-4, 0)) / 2e-4, abs=1e-6)
        assert dy == pytest.approx((step(0, 1e-4) - step(0, -1e-4)) / 2e-4, abs=1e-6)
    assert [kernels.bilinear(*args, xi, yi)[2] for xi, yi in zip(x, y)][1:] > [0, 0, -1]  # away from the middle
    assert kernels.bilinear(*args, 1e4, 1e4)[1:] == (0.0, 0.0)  # off the raster: the edge value, flat
    assert np.isnan(field(np.array([np.nan]), np.array([0.0]))).all()  # NaN stays NaN, never a wild index


def _states(xy_a, xy_b, steps: int = 10) -> np.ndarray:
    """World states (1, 2, F, 4) of two agents standing at ``xy_a`` / ``xy_b`` heading +x."""
    s = np.zeros((1, 2, steps, 4))
    s[0, 0, :, :2] = xy_a
    s[0, 1, :, :2] = xy_b
    return s


def test_plan_costs_clearance_and_targets_only():
    batch = make_agent_batch(head_on_scene(), 0, max_agents=2)
    field = DistanceField.from_drivable(DrivableArea.from_geometry(ROAD))
    cfg = GuidanceConfig(horizon_steps=10, stride=1)
    movable = torch.tensor([[True, False]])
    cost = PlanCost(batch, movable, field, cfg)
    far = cost.score(_states((0.0, 0.0), (20.0, 0.0)))
    assert far["clearance"].item() == 0 and far["offroad"].item() == 0
    costs = cost.score(_states((0.0, 0.0), (3.0, 0.0)), grad=True)
    assert costs["clearance"].item() > 0
    grad = costs["grad_states"]
    assert (grad[0, 0, :, 0] > 0).all()  # cost rises toward the other car: descent backs the movable one off
    assert np.abs(grad[0, 1]).max() == 0  # the non-movable agent is a target only
    # a movable vehicle that starts on the road pays for leaving it, the more the farther
    off = [cost.score(_states((0.0, y), (20.0, 0.0)))["offroad"].item() for y in (2.0, 4.0, 6.0)]
    assert off[0] == 0 < off[1] < off[2]
    with pytest.raises(ValueError, match="movable must be a bool"):
        PlanCost(batch, torch.tensor([True, False]), field, cfg)
    with pytest.raises(ValueError, match="states must be world plans"):
        cost.score(_states((0.0, 0.0), (20.0, 0.0))[..., :2])
    with pytest.raises(ValueError, match="plans must be actions"):
        cost(torch.zeros(1, 2, 10, 4))
    with pytest.raises(ValueError, match="actions hold NaN"):
        cost(torch.full((1, 2, 10, 2), float("nan")))
    nan_states = _states((0.0, 0.0), (20.0, 0.0))
    nan_states[0, 1, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"states hold NaN or inf at \[0, 1, 3, 0\]"):
        cost.score(nan_states)


def test_plan_cost_of_actions_integrates_like_the_simulator_and_has_the_exact_gradient():
    """Three cars squeezed together near the road edge (the third not movable): the kernel rollout
    equals :func:`unicycle_rollout`, and the gradient w.r.t. the movable cars' actions equals
    central finite differences of the total cost (float64). The non-movable car is a target only:
    its plan moves the cost, but it gets no gradient."""
    rng = np.random.default_rng(0)
    t = np.arange(40) * 0.1
    x = np.stack([0 + 8 * t, 4 + 7 * t, 2 + 8 * t])
    y = np.stack([0 * t + 1.0, 0 * t + 3.4, 0 * t - 0.4])
    traj = Trajectories.from_states(x, y, np.zeros_like(x), np.full_like(x, 8.0), [4.5, 4.5, 4.0], [1.9, 1.9, 1.8],
                                    np.ones(x.shape, bool))
    scene = dataclasses.replace(head_on_scene(), traj=traj, agent_ids=("a", "b", "c"),
                                agent_type=np.full(3, AgentType.VEHICLE, np.int8))
    batch = make_agent_batch(scene, 5, max_agents=3)
    target = batch.agent_index == 2  # the batch orders agents by distance to the ego: find car c
    cost = PlanCost(batch, ~target, DistanceField.from_drivable(scene.road.drivable), GuidanceConfig(horizon_steps=20))
    actions = torch.tensor(rng.normal(0, [1.0, 0.3], (1, 3, 24, 2)))
    actions[0, 0, 3, 0] = 12.0  # a clipped acceleration of the ego: no gradient through it
    start = batch.state_world[0].double().numpy()
    np.testing.assert_allclose(cost.rollout(actions)[0], unicycle_rollout(*start.T, actions[0].numpy(), 0.1),
                               rtol=1e-9, atol=1e-9)
    out = cost(actions, grad=True)
    assert out["clearance"].item() > 0 and out["offroad"].item() > 0
    grad = out["grad"].numpy()
    numeric = np.zeros_like(grad)
    for idx in np.ndindex(grad.shape):
        if target[idx[:2]]:
            continue
        plus, minus = actions.clone(), actions.clone()
        plus[idx] += 1e-6
        minus[idx] -= 1e-6
        numeric[idx] = (cost(plus)["total"] - cost(minus)["total"]).item() / 2e-6
    assert np.abs(grad).max() > 1
    np.testing.assert_allclose(grad, numeric, atol=2e-3 * np.abs(grad).max())
    assert np.abs(grad[target.numpy()]).max() == 0 and grad[0, 0, 3, 0] == 0 and np.abs(grad[:, :, 20:]).max() == 0


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
    parked, closer = cost.score(_states((0.0, 0.0), (0.0, 2.1))), cost.score(_states((0.0, 0.3), (0.0, 2.1)))
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
            c = plan_cost(model.decode_actions(z, batch_k, ctx_k))
        return (c["clearance"] + c["offroad"]).mean().item()

    guide = make_guide(lambda z, agents: model.decode_actions(z, batch_k, ctx_k, agents=agents), plan_cost,
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
    from blm_gym.sim.state import SimulatorState, step

    scene = head_on_scene(gap_m=60.0, steps=60)
    policy = LatentDiffusionPolicy.from_checkpoint()
    policy.reset(scene, 10, np.ones(2, bool), np.random.default_rng(0))
    state = SimulatorState.from_log(scene, 10)
    for _ in range(40):
        state = step(state, policy.act(state))
        assert not agent_collisions(state.x, state.y, state.heading, state.length, state.width, state.valid).any()
        assert not offroad(scene.road.drivable, state.x, state.y, state.valid).any()
    log_end = scene.traj.x[:, 50]
    assert log_end[0] > log_end[1]  # in the log they have passed through each other by now
