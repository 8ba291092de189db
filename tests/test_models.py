"""BLM model: batches, frames, schedule, sampling interface, checkpoints, closed-loop policy."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import shapely
import torch

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from conftest import SHARED_DATA
from blm_gym.models import BLMConfig, BLMModel, collate, make_agent_batch, scene_windows
from blm_gym.models.batch import MAX_LANES, mirror, nearest_agents, nearest_lanes, to_scene_frame, to_world_frame
from blm_gym.models.checkpoint import (ArchitectureMismatchError, load_checkpoint, load_model, restore_model,
                                      save_checkpoint)
from blm_gym.models.schedule import cosine_alpha_bar, ddim_timesteps
from blm_gym.models.vae import agent_frame_lane_points
from blm_gym.policies.base import Policy
from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy
from blm_gym.sim.kinematics import unicycle_rollout
from blm_gym.sim.state import SimulatorState, step

torch.set_num_threads(1)
TINY = BLMConfig(vae_channels=16, d_model=16, num_layers=1, num_heads=2, sample_steps=3)


def toy_scene(seed: int = 0, num_agents: int = 6, steps: int = 80) -> Scene:
    """Cars on three straight parallel lanes driven by smooth random actions (unicycle model)."""
    rng = np.random.default_rng(seed)
    lane_y = np.array([0.0, 3.5, 7.0])
    y0 = lane_y[np.arange(num_agents) % 3]
    x0 = np.arange(num_agents) // 3 * 15.0 + rng.uniform(0, 5, num_agents)
    v0 = rng.uniform(4, 10, num_agents)
    accel = np.cumsum(rng.normal(0, 0.3, (num_agents, steps - 1)), 1).clip(-3, 3)
    yaw = np.sin(np.linspace(0, 3, steps - 1) + rng.uniform(0, 6, (num_agents, 1))) * 0.05
    states = unicycle_rollout(x0, y0, np.zeros(num_agents), v0, np.stack([accel, yaw], -1), 0.1)
    x = np.concatenate([x0[:, None], states[..., 0]], 1)
    y = np.concatenate([y0[:, None], states[..., 1]], 1)
    h = np.concatenate([np.zeros((num_agents, 1)), states[..., 2]], 1)
    v = np.concatenate([v0[:, None], states[..., 3]], 1)
    valid = np.ones((num_agents, steps), bool)
    valid[-1, 60:] = False  # one agent leaves early
    traj = Trajectories.from_states(x, y, h, v, np.full(num_agents, 4.5), np.full(num_agents, 1.8), valid)
    lanes, lane_mask = pad_polylines([np.stack([np.linspace(-20, 200, 45), np.full(45, ly)], -1) for ly in lane_y])
    area = DrivableArea.from_geometry(shapely.box(-20, -2, 200, 9), resolution=1.0)
    road = RoadMap(lanes, lane_mask, np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool), area)
    types = np.full(num_agents, AgentType.VEHICLE, np.int8)
    return Scene(f"toy-{seed}", "toy", 0.1, tuple(map(str, range(num_agents))), types, 0, traj, road)


def tiny_model(seed: int = 0, config: BLMConfig = TINY) -> BLMModel:
    torch.manual_seed(seed)
    return BLMModel(config).eval()



def test_nearest_agents_never_drops_a_valid_road_user_for_an_invalid_vehicle():
    # vehicles rank first, but a vehicle that is not there (not entered yet) must not take the
    # place of a pedestrian that is: a plan for every valid road user needs them all
    scene = toy_scene(num_agents=6)
    types = np.array([1, 1, 1, 2, 2, 3], np.int8)
    valid = np.ones(6, bool)
    valid[1:3] = False  # two vehicles not in the scene now
    scene = dataclasses.replace(scene, agent_type=types)
    xy = np.stack([scene.traj.x[:, 20], scene.traj.y[:, 20]], -1)
    picked = nearest_agents(scene, xy, valid, max_agents=int(valid.sum()))
    assert sorted(picked.tolist()) == [0, 3, 4, 5] and picked[0] == scene.ego_index

def test_agent_batch_layout():
    scene = toy_scene()
    b = make_agent_batch(scene, 20, max_agents=8)
    assert b.hist.shape == (1, 8, 10, 6) and b.fut_actions.shape == (1, 8, 52, 2)
    assert b.agent_mask[0].tolist() == [True] * 6 + [False] * 2
    assert b.agent_index[0, 0] == scene.ego_index and (b.agent_index[0, 6:] == -1).all()
    torch.testing.assert_close(b.state_scene[0, 0, :3], torch.zeros(3))  # ego at the scene-frame origin
    assert b.train_mask[0].sum() == 5  # the agent leaving at step 60 has no full future
    # future states are the unicycle rollout of the future actions (the toy log is unicycle-made)
    m = b.train_mask
    states = unicycle_rollout(*b.state_scene[m].unbind(-1), b.fut_actions[m], 0.1)
    torch.testing.assert_close(states[..., :2], b.fut_states[m][..., :2], atol=2e-3, rtol=0)
    # explicit history equal to the log gives the same batch
    hist = scene.traj.select(steps=slice(11, 21))
    b2 = make_agent_batch(scene, 20, max_agents=8, history=hist)
    for f in dataclasses.fields(b):
        torch.testing.assert_close(getattr(b, f.name), getattr(b2, f.name))
    assert collate([b, b2]).hist.shape[0] == 2
    with pytest.raises(ValueError, match="history must be"):
        make_agent_batch(scene, 20, history=scene.traj.select(steps=slice(0, 5)))
    with pytest.raises(ValueError, match="max_agents"):
        collate([b, make_agent_batch(scene, 20, max_agents=4)])
    assert len(list(scene_windows([scene], stride=5))) == len(range(9, 80 - 52 - 1, 5))


def test_agent_frame_lane_points_give_lateral_offset_and_heading_error():
    b = make_agent_batch(toy_scene(), 20, max_agents=8)
    lanes = torch.tensor([[[x, y] for x in np.linspace(-50, 150, 9)] for y in (0.0, 3.5, 7.0)])[None].float()
    pose = torch.tensor([[[10.0, 1.0, 0.0, 5.0], [20.0, 6.0, math.pi / 2, 5.0]]])  # two agents, the second facing +y
    lanes = agent_frame_lane_points(dataclasses.replace(b, state_scene=pose, lanes=lanes,
                                                        lane_mask=torch.ones(1, 3, 9, dtype=torch.bool)), 4)
    assert lanes.shape == (1, 2, 4, 5)
    # facing +x at y = 1: the lane at y = 0 is 1 m to the right, then y = 3.5 (2.5 m left), no fourth lane
    np.testing.assert_allclose(lanes[0, 0, :, :2], [[0, -1], [0, 2.5], [0, 6], [0, 0]], atol=1e-4)
    np.testing.assert_allclose(lanes[0, 0, :3, 2:], [[1, 0, 1]] * 3, atol=1e-5)
    assert lanes[0, 0, 3].abs().sum() == 0
    # facing +y at y = 6: the lane at y = 7 lies 1 m ahead, running to the agent's right (-90 degrees)
    np.testing.assert_allclose(lanes[0, 1, 0], [1, 0, 0, -1, 1], atol=1e-4)
    model = BLMModel(dataclasses.replace(TINY, agent_lane_points=4))
    assert model.denoiser.encode(b)[0].shape == (1, 8, 16)
    with pytest.raises(ValueError, match="agent_lane_points is a number of lanes"):
        dataclasses.replace(TINY, agent_lane_points=-1)


def test_mirror_is_a_consistent_reflection():
    b = collate([make_agent_batch(toy_scene(), s, max_agents=8) for s in (10, 20)])
    flip = torch.tensor([True, False])
    mb = mirror(b, flip)
    torch.testing.assert_close(mb.fut_states[1], b.fut_states[1])  # unflipped scene untouched
    torch.testing.assert_close(mb.fut_states[0, ..., 1], -b.fut_states[0, ..., 1])
    # mirrored actions integrate to the mirrored states; mirroring twice is the identity
    m = mb.train_mask
    states = unicycle_rollout(*mb.state_scene[m].unbind(-1), mb.fut_actions[m], 0.1)
    torch.testing.assert_close(states[..., :2], mb.fut_states[m][..., :2], atol=2e-3, rtol=0)
    back = mirror(mb, flip)
    for f in dataclasses.fields(b):
        torch.testing.assert_close(getattr(back, f.name), getattr(b, f.name))


def test_trimmed_batch_drops_padding_and_keeps_the_outputs():
    b = collate([make_agent_batch(toy_scene(num_agents=n), 10, max_agents=12) for n in (4, 6)])
    t = b.trimmed()
    assert t.num_agents == 6 and t.lanes.shape[1] == 3  # 6 agents of 12 slots, 3 lanes of MAX_LANES
    model = tiny_model()
    x = torch.randn(2, 12, TINY.latent_steps, TINY.latent_dim)
    steps = torch.tensor([3, 70])
    with torch.no_grad():
        full = model.denoiser(x, steps, model.encode_context(b))
        kept = model.denoiser(x[:, :6], steps, model.encode_context(t))
    torch.testing.assert_close(kept[b.agent_mask[:, :6]], full[:, :6][b.agent_mask[:, :6]], atol=1e-5, rtol=1e-5)


def test_frame_round_trip():
    g = torch.Generator().manual_seed(0)
    x, y, h = (torch.randn(3, 5, generator=g) * 50 for _ in range(3))
    frame = torch.tensor([[100.0, -20.0, 2.0], [0.0, 5.0, -1.0], [3.0, 3.0, 0.5]])
    xs, ys, hs = to_scene_frame(x, y, h, frame)
    xw, yw, hw = to_world_frame(xs, ys, hs, frame)
    torch.testing.assert_close(torch.stack([xw, yw]), torch.stack([x, y]), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cos(hw - h), torch.ones_like(h), atol=1e-5, rtol=0)


def test_schedule():
    ab = cosine_alpha_bar(100)
    assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < 1e-3 and 0.99 < ab[0] < 1
    assert ddim_timesteps(5, 100).tolist() == [99, 79, 59, 39, 19]
    assert ddim_timesteps(3, 100).tolist() == [99, 66, 32]
    with pytest.raises(ValueError):
        ddim_timesteps(0, 100)


def test_sampling_interface():
    model = tiny_model()
    scene = toy_scene()
    batch = collate([make_agent_batch(scene, s, max_agents=8) for s in (10, 20)])
    ctx = model.encode_context(batch)
    ts = model.timesteps(4)
    x = torch.randn(2, 8, 13, 4)
    with torch.no_grad():
        for i in range(len(ts)):
            mean, std = model.denoise_mean_std(x, i, ctx, ts, eta=1.0)
            assert mean.shape == std.shape == x.shape
            assert (std > 0).all() if i < len(ts) - 1 else (std == 0).all()
            x = mean + std * torch.randn_like(x)
        _, std0 = model.denoise_mean_std(x, 0, ctx, ts, eta=0.0)
        assert (std0 == 0).all()
        g = torch.Generator().manual_seed(1)
        lat = model.sample(batch, num_samples=3, num_steps=4, eta=0.5, generator=g)
        assert lat.shape == (2, 3, 8, 13, 4)
        actions, states = model.decode(lat, batch)
        assert actions.shape == (2, 3, 8, 52, 2) and states.shape == (2, 3, 8, 52, 4)
        assert torch.isfinite(states).all()
        a1, s1 = model.decode(lat[:, 0], batch)
        torch.testing.assert_close(s1, states[:, 0])
        # a subset of agents decodes to the same plans (the decoder is per agent)
        some = batch.agent_mask.clone()
        some[:, ::2] = False
        _, s_some = model.decode(lat[:, 0][some], batch, agents=some)
        torch.testing.assert_close(s_some, s1[some])
        with pytest.raises(ValueError, match="agents must be a bool"):
            model.decode(lat[:, 0], batch, agents=some)  # full latents with a mask
        # a horizon decodes only the latents its actions depend on, and gives the same plans
        for horizon in (1, 30, 37):
            a_h, s_h = model.decode(lat[:, 0], batch, horizon=horizon)
            assert a_h.shape[-2] == s_h.shape[-2] == horizon
            torch.testing.assert_close(a_h, a1[..., :horizon, :])
            torch.testing.assert_close(s_h, s1[..., :horizon, :])
        assert model.vae.latents_needed(30) == 11 and model.vae.latents_needed(52) > 13
        # decoded world states start next to each agent's current world state
        step1 = (s1[..., 0, :2] - batch.state_world[..., :2]).norm(dim=-1)[batch.agent_mask]
        assert (step1 < 5.0).all()
        # decode integrates in the world; integrating in the scene frame and mapping back is the same
        scene_states = model.rollout(a1, batch.state_scene)
        xw, yw, hw = to_world_frame(*scene_states[..., :3].unbind(-1), batch.frame)
        m = batch.agent_mask
        torch.testing.assert_close(torch.stack([xw, yw], -1)[m], s1[..., :2][m], atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.cos(hw - s1[..., 2])[m], torch.ones_like(hw[m]), atol=1e-5, rtol=0)
        torch.testing.assert_close(scene_states[..., 3][m], s1[..., 3][m])
        # K samples are the same as repeating the context
        lat2 = model.sample(batch, 3, 4, 0.5, torch.Generator().manual_seed(1),
                            ctx=model.encode_context(batch))
        torch.testing.assert_close(lat2, lat)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = tiny_model()
    model.latent_scale.copy_(torch.tensor([0.5, 1.5, 2.0, 0.25]))
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "m.pt", model, step=7, optimizer=opt, data_rng=torch.Generator())
    loaded = load_model(path)
    assert loaded.config == model.config and load_checkpoint(path)["step"] == 7
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    other = BLMModel(dataclasses.replace(TINY, d_model=32))
    with pytest.raises(ArchitectureMismatchError, match="d_model"):
        restore_model(other, load_checkpoint(path))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable BLM checkpoint"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp files


def run_closed_loop(policy, scene: Scene, start: int, steps: int, seed: int = 0) -> np.ndarray:
    controlled = scene.is_vehicle.copy()
    policy.reset(scene, start, controlled, np.random.default_rng(seed))
    state = SimulatorState.from_log(scene, start)
    actions = []
    for _ in range(steps):
        action = policy.act(state)
        actions.append(action.accel_yaw)
        state = step(state, action)
    return np.stack(actions)


def test_policy_closed_loop():
    scene = toy_scene(steps=60)
    policy = LatentDiffusionPolicy(tiny_model(), replan_every_s=0.5, num_steps=2, max_agents=4)
    assert isinstance(policy, Policy)
    acts = run_closed_loop(policy, scene, start=5, steps=15)
    assert acts.shape == (15, scene.num_agents, 2) and np.isfinite(acts).all()
    # only max_agents agents (the ego among them) are planned; the others get the zero action
    moving = np.abs(acts).sum(-1) > 0
    assert (moving.sum(-1) == 4).all() and moving[:, scene.ego_index].all()
    np.testing.assert_array_equal(acts, run_closed_loop(policy, scene, start=5, steps=15))  # seeded
    with pytest.raises(ValueError, match="replan_every_s"):
        LatentDiffusionPolicy(tiny_model(), replan_every_s=10.0)
    # the history comes from the state itself: a state from another time just gets a fresh plan
    policy.reset(scene, 5, scene.is_vehicle, np.random.default_rng(0))
    late = policy.act(SimulatorState.from_log(scene, 9))
    assert policy._plan_step == 9 and np.isfinite(late.accel_yaw).all()


def test_nearest_lanes_cover_every_agent():
    # lanes 0..9 line up along x; an agent far from the ego must get the lane under it
    lanes, mask = pad_polylines([np.stack([np.linspace(0, 10, 5) + 20 * i, np.zeros(5)], -1) for i in range(10)])
    assert list(nearest_lanes(lanes, mask, np.array([[1.0, 0.0]]), 2)) == [0, 1]
    assert set(nearest_lanes(lanes, mask, np.array([[1.0, 0.0], [185.0, 1.0]]), 2)) == {0, 9}


def test_batch_keeps_road_users_as_context():
    scene = toy_scene()
    types = scene.agent_type.copy()
    types[1], types[2] = AgentType.PEDESTRIAN, AgentType.UNKNOWN
    b = make_agent_batch(dataclasses.replace(scene, agent_type=types), 20, max_agents=8)
    rows = set(b.agent_index[0][b.agent_mask[0]].tolist())
    assert 1 in rows and 2 not in rows


def test_policy_standstill_hold():
    scene = toy_scene(steps=60)
    traj = scene.traj
    parked = np.zeros_like(traj.speed)  # agent 1 stands still for the whole log
    traj = dataclasses.replace(traj, speed=np.where(np.arange(6)[:, None] == 1, parked, traj.speed),
                               x=np.where(np.arange(6)[:, None] == 1, traj.x[:, :1], traj.x),
                               y=np.where(np.arange(6)[:, None] == 1, traj.y[:, :1], traj.y),
                               vx=np.where(np.arange(6)[:, None] == 1, parked, traj.vx),
                               vy=np.where(np.arange(6)[:, None] == 1, parked, traj.vy))
    scene = dataclasses.replace(scene, traj=traj)
    held = run_closed_loop(LatentDiffusionPolicy(tiny_model(), num_steps=2, standstill_speed=50.0), scene, 5, 10)
    free = run_closed_loop(LatentDiffusionPolicy(tiny_model(), num_steps=2, standstill_speed=0.0), scene, 5, 10)
    assert np.abs(held[:, 1]).max() == 0  # stands and (with this threshold) plans to stand: held
    assert np.abs(free[:, 1]).max() > 0  # the untrained model's plan moves it


@pytest.mark.realdata
def test_shipped_policy_on_real_scene():
    root = SHARED_DATA / "nuscenes-mini"
    if not root.is_dir():
        pytest.skip(f"real data missing: {root} (set BLM_GYM_DATA)")
    from blm_gym.data.scenarionet import ScenarioNetSource

    scene = ScenarioNetSource(root, scene_ids=["scene-0103"]).load(0)
    policy = LatentDiffusionPolicy.from_checkpoint(num_steps=5)
    acts = run_closed_loop(policy, scene, start=10, steps=12)
    assert acts.shape == (12, scene.num_agents, 2) and np.isfinite(acts).all()
    batch = make_agent_batch(scene, 10)
    assert batch.agent_mask.sum() > 5 and batch.lane_mask.any(-1).sum() == MAX_LANES
