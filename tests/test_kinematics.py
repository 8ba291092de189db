"""Unicycle kinematics, inverse kinematics and the pure simulator step."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
import torch

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from blm_gym.sim.geometry import boxes_overlap
from blm_gym.sim.kinematics import (
    DEFAULT_BOUNDS, ActionBounds, actions_from_states, unicycle_rollout, unicycle_step,
)
from blm_gym.sim.state import Action, Membership, SimulatorState, step

torch.set_num_threads(1)
DT = 0.1


def test_unicycle_step_by_hand():
    # speed 10 + 2 * 0.1 = 10.2; heading 0 + 0.5 * 0.1 = 0.05; position moves with the new state.
    x, y, h, v = unicycle_step(np.float64(1.0), np.float64(2.0), np.float64(0.0), np.float64(10.0),
                               np.float64(2.0), np.float64(0.5), DT)
    assert v == pytest.approx(10.2) and h == pytest.approx(0.05)
    assert x == pytest.approx(1.0 + 10.2 * np.cos(0.05) * DT)
    assert y == pytest.approx(2.0 + 10.2 * np.sin(0.05) * DT)


def test_unicycle_step_clips_actions_and_speed():
    b = ActionBounds()
    zeros = np.zeros(4)
    accel = np.array([-50.0, 50.0, -3.0, 8.0])
    yaw = np.array([-9.0, 9.0, 0.0, 1.0])
    speed = np.array([10.0, 10.0, 0.1, 39.9])
    _, _, h, v = unicycle_step(zeros, zeros, zeros, speed, accel, yaw, DT, b)
    np.testing.assert_allclose(h, [-b.max_yaw_rate * DT, b.max_yaw_rate * DT, 0.0, 0.1])
    np.testing.assert_allclose(v, [10.0 + b.min_accel * DT, 10.0 + b.max_accel * DT, 0.0, b.max_speed])


def smooth_actions(rng, shape, steps):
    """Gentle actions well inside the bounds: sums of slow sinusoids."""
    t = np.arange(steps) * DT
    phase = rng.uniform(0, 2 * np.pi, shape + (1, 2))
    amp = np.array([1.5, 0.3])
    return (amp * np.sin(0.8 * t[:, None] + phase)).astype(np.float32)


def test_rollout_numpy_matches_torch_and_is_differentiable():
    rng = np.random.default_rng(0)
    n, steps = 5, 30
    init = [rng.uniform(-10, 10, n), rng.uniform(-10, 10, n), rng.uniform(-3, 3, n), rng.uniform(2, 15, n)]
    actions = smooth_actions(rng, (n,), steps)
    out_np = unicycle_rollout(*init, actions, DT)
    t_init = [torch.tensor(a) for a in init]
    t_actions = torch.tensor(actions, dtype=torch.float64, requires_grad=True)
    out_t = unicycle_rollout(*t_init, t_actions, DT)
    assert out_np.shape == tuple(out_t.shape) == (n, steps, 4)
    np.testing.assert_allclose(out_t.detach().numpy(), out_np, rtol=1e-6, atol=1e-6)
    out_t[:, -1, :2].sum().backward()
    grad = t_actions.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Earlier accelerations move the final position further (speed acts for more steps).
    assert (grad[:, 0, 0].abs() > grad[:, -1, 0].abs()).all()


def test_actions_from_states_inverts_a_smooth_track():
    # An analytic lane change at varying speed (not produced by the unicycle model itself).
    t = np.arange(60) * DT
    speed = 12.0 + 2.0 * np.sin(0.5 * t)
    heading = 0.15 * np.sin(0.9 * t)
    x = np.concatenate([[0.0], np.cumsum(speed[1:] * np.cos(heading[1:]) * DT)])
    y = np.concatenate([[0.0], np.cumsum(speed[1:] * np.sin(heading[1:]) * DT)])
    valid = np.ones((1, len(t)), bool)
    actions, ok = actions_from_states(heading[None], speed[None], valid, DT)
    assert ok[0, :-1].all() and not ok[0, -1]
    states = unicycle_rollout(x[:1], y[:1], heading[:1], speed[:1], actions[:, :-1], DT)
    np.testing.assert_allclose(states[0, :, 2], heading[1:], atol=1e-5)
    np.testing.assert_allclose(states[0, :, 3], speed[1:], atol=1e-4)
    np.testing.assert_allclose(states[0, :, 0], x[1:], atol=1e-3)
    np.testing.assert_allclose(states[0, :, 1], y[1:], atol=1e-3)


def test_actions_from_states_masks_gaps_and_clips():
    heading = np.zeros((1, 4), np.float32)
    speed = np.array([[0.0, 5.0, 5.0, 5.0]], np.float32)  # +50 m/s^2 is clipped to the bound
    valid = np.array([[True, True, False, True]])
    actions, ok = actions_from_states(heading, speed, valid, DT)
    np.testing.assert_array_equal(ok, [[True, False, False, False]])
    assert actions[0, 0, 0] == DEFAULT_BOUNDS.max_accel
    assert (actions[0, 1:] == 0).all()


def make_log(rng, n=4, steps=12) -> Trajectories:
    x = np.cumsum(rng.uniform(0.5, 1.5, (n, steps)), axis=1)
    y = rng.uniform(-5, 5, (n, 1)) + np.cumsum(rng.uniform(-0.1, 0.1, (n, steps)), axis=1)
    heading = rng.uniform(-0.2, 0.2, (n, steps))
    speed = rng.uniform(5, 15, (n, steps))
    valid = np.ones((n, steps), bool)
    valid[1, :5] = False  # appears mid-log
    valid[2, 8:] = False  # leaves the scene
    return Trajectories.from_states(x, y, heading, speed, np.full(n, 4.5), np.full(n, 2.0), valid)


def start(log: Trajectories, membership=Membership.LOG) -> SimulatorState:
    """The simulation of ``log`` (as a scene without a map) at step 0."""
    scene = Scene("log", "test", DT, tuple(map(str, range(log.num_agents))),
                  np.full(log.num_agents, AgentType.VEHICLE, np.int8), 0, log,
                  RoadMap(*pad_polylines([]), *pad_polylines([]), DrivableArea.from_geometry(shapely.Polygon())))
    return SimulatorState.from_log(scene, 0, membership)


def test_log_replay_reproduces_the_log_exactly():
    log = make_log(np.random.default_rng(1))
    n = log.num_agents
    state = start(log)
    action = Action(np.full((n, 2), 3.0, np.float32), np.ones(n, bool))  # ignored under replay
    for t in range(1, log.num_steps):
        state = step(state, action)
        assert state.step == t
        np.testing.assert_array_equal(state.valid, log.valid[:, t])
        for name in ("x", "y", "heading", "speed"):
            np.testing.assert_array_equal(getattr(state, name)[state.valid], getattr(log, name)[state.valid, t])
    with pytest.raises(ValueError, match="cannot step past"):
        step(state, action)


def test_step_integrates_controlled_agents_and_spawns_late_agents():
    log = make_log(np.random.default_rng(2))
    n = log.num_agents
    state = start(log)
    accel_yaw = np.tile(np.array([[1.0, 0.1]], np.float32), (n, 1))
    action = Action(accel_yaw, np.array([False, False, False, True]))
    for t in range(1, log.num_steps):
        prev = state
        state = step(prev, action)
        x, y, h, v = unicycle_step(prev.x, prev.y, prev.heading, prev.speed, 1.0, 0.1, DT)
        controlled = prev.valid & state.valid & ~action.replay_log
        np.testing.assert_allclose(state.x[controlled], x[controlled], rtol=1e-6)
        np.testing.assert_allclose(state.speed[controlled], v[controlled], rtol=1e-6)
        if t == 5:  # agent 1 enters now: spawned at its logged state although it is controlled
            assert state.valid[1] and not prev.valid[1]
            assert (state.x[1], state.y[1], state.speed[1]) == (log.x[1, 5], log.y[1, 5], log.speed[1, 5])
        np.testing.assert_array_equal(state.x[3], log.x[3, t])  # replayed agent follows the log
    assert not state.valid[2]  # left the scene when the log says so



def test_frozen_agents_never_enter_but_still_leave():
    log = make_log(np.random.default_rng(2))
    gap = log.valid.copy()
    gap[0, 3:5] = False  # agent 0 drops out for two steps, then the log has it again
    log = dataclasses.replace(log, valid=gap)
    n = log.num_agents
    action = Action(np.zeros((n, 2), np.float32), np.zeros(n, bool))
    frozen, spawning, persistent = start(log, "frozen"), start(log), start(log, "persistent")
    for _ in range(1, log.num_steps):
        frozen, spawning, persistent = (step(s, action) for s in (frozen, spawning, persistent))
    assert spawning.valid[0] and spawning.valid[1]  # re-entered / entered at their logged states
    assert not frozen.valid[0] and not frozen.valid[1]  # not valid at step 0 without a gap: never joins
    assert not frozen.valid[2] and frozen.valid[3]  # agent 2 left as the log says; agent 3 stayed
    # persistent (WOSAC): the agents valid at the start stay throughout, through gaps and past their
    # log's end, and nobody joins
    np.testing.assert_array_equal(persistent.sim.valid[:, 1:], np.repeat(log.valid[:, :1], log.num_steps - 1, 1))


def lagging_leader_log(steps: int = 40) -> Trajectories:
    """Two cars on one lane at 10 m/s: car 0 from x = 0, car 1 enters at step 5 where car 0
    was 1.5 s earlier (15 m behind it in the log)."""
    t = np.arange(steps) * DT
    x = np.stack([10 * t, 10 * t - 15])
    valid = np.ones((2, steps), bool)
    valid[1, :5] = False
    zeros = np.zeros_like(x)
    return Trajectories.from_states(x, zeros, zeros, np.full_like(x, 10.0), [4.5, 4.5], [1.8, 1.8], valid)


def test_newcomer_waits_while_a_simulated_agent_blocks_its_spawn():
    log = lagging_leader_log()
    brake = Action(np.array([[-10.0, 0.0], [0.0, 0.0]], np.float32), np.zeros(2, bool))  # car 0 stops at ~5 m
    runs = {}
    for check in (0.0, 2.0):
        state, states = start(log), []
        for _ in range(1, log.num_steps):
            state = step(state, brake, entry_check_s=check)
            states.append(state)
        runs[check] = states
    hits = lambda states: [boxes_overlap(s.x, s.y, s.heading, log.length, log.width, s.valid)[0, 1]  # noqa: E731
                           for s in states]
    # unchecked, car 1 appears at step 5, 9 m behind the car that stopped instead of 15 m behind the
    # one that drove on, closing at 10 m/s: it runs into it
    assert runs[0.0][4].valid[1] and any(hits(runs[0.0]))
    checked = runs[2.0]
    enter = next(s for s in checked if s.valid[1])
    assert enter.step > 5  # it waited for the way to clear ...
    assert (enter.x[1], enter.speed[1]) == (log.x[1, enter.step], log.speed[1, enter.step])  # ... at its log
    assert enter.x[1] - enter.x[0] > 4.5  # ahead of the stopped car and driving away from it
    assert not any(hits(checked))


def test_entry_check_leaves_log_replay_alone():
    log = lagging_leader_log()
    replay = Action(np.zeros((2, 2), np.float32), np.ones(2, bool))
    state = start(log)
    for t in range(1, log.num_steps):
        state = step(state, replay)
        np.testing.assert_array_equal(state.valid, log.valid[:, t])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="entry_check_s must be >= 0"):
            step(start(log), replay, entry_check_s=bad)


def test_rollout_closed_form_of_the_zero_clip_equals_stepping():
    # cars that brake to a stand, stay there while braking on, and pull away again (no max-speed
    # clip, so the rollout takes the closed form, not the loop), with gradients like the loop's
    rng = np.random.default_rng(3)
    n, steps = 6, 40
    accel = np.where(np.arange(steps) < 20, -4.0, 3.0) + rng.normal(0, 0.5, (n, steps))
    actions = torch.tensor(np.stack([accel, rng.normal(0, 0.2, (n, steps))], -1), requires_grad=True)
    init = [torch.tensor(rng.uniform(-5, 5, n)) for _ in range(3)] + [torch.tensor(rng.uniform(0, 6, n))]
    out = unicycle_rollout(*init, actions, DT)
    state, loop = tuple(init), []
    for t in range(steps):
        state = unicycle_step(*state, actions[:, t, 0], actions[:, t, 1], DT)
        loop.append(torch.stack(state, -1))
    loop = torch.stack(loop, 1)
    assert (loop[..., 3] == 0).sum() > n and (loop[..., 3] > 0).all(-1).logical_not().all()
    torch.testing.assert_close(out, loop, rtol=0, atol=1e-9)
    assert (out[..., 3] == 0).sum() == (loop[..., 3] == 0).sum()  # a stand is exactly 0 m/s
    weights = torch.tensor(rng.normal(size=out.shape))
    (g_out,) = torch.autograd.grad((out * weights).sum(), actions)
    (g_loop,) = torch.autograd.grad((loop * weights).sum(), actions)
    torch.testing.assert_close(g_out, g_loop, rtol=0, atol=1e-9)


def test_rollout_equals_stepping_through_clips_and_broadcasts():
    # braking through zero speed, accelerations and yaw rates beyond the bounds, and one start
    # state shared by K samples (the closed-loop policy's layout): the rollout must be the loop
    rng = np.random.default_rng(1)
    k, n, steps = 3, 4, 25
    init = [torch.tensor(rng.uniform(-50, 50, n)), torch.tensor(rng.uniform(-50, 50, n)),
            torch.tensor(rng.uniform(-3, 3, n)), torch.tensor([0.5, 3.0, 12.0, 39.5])]
    actions = torch.tensor(rng.uniform(-15, 12, (k, n, steps, 2)))
    actions[..., 1] *= 0.3
    out = unicycle_rollout(*init, actions, DT)
    state = tuple(a.expand(k, n) for a in init)
    for t in range(steps):
        state = unicycle_step(*state, actions[..., t, 0], actions[..., t, 1], DT)
        torch.testing.assert_close(out[:, :, t], torch.stack(state, -1), rtol=0, atol=1e-9)
    assert (out[..., 3] == 0).any() and (out[..., 3] == DEFAULT_BOUNDS.max_speed).any()  # both clips were hit
