"""Rule-based reward terms, the make_reward registry and the gymnasium reward wrappers."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import shapely
from gymnasium.utils.env_checker import check_env

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories
from blm_gym.rewards import (
    CollisionPenalty,
    OffroadPenalty,
    ProgressReward,
    RewardContext,
    RewardTermWrapper,
    TTCPenalty,
    collision,
    comfort,
    make_reward,
    offroad,
    progress,
    rss_violations,
    safety_critical,
    speed_limit,
    target_speed,
    time_to_collision_penalty,
)
from blm_gym.sim.record import Rollout
from blm_gym.sim.state import Action, SimulatorState, step as sim_step


def make_scene(x, y, heading=None, speed=None, num_steps=None, types=None) -> Scene:
    """N agents (4.5 x 2 m) on a 100 x 20 m drivable road [0, 100] x [-10, 10]; arrays (N, T)."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    y = np.broadcast_to(np.asarray(y, np.float32).reshape(x.shape[0], -1), x.shape)
    n, t = x.shape
    z = np.zeros((n, t), np.float32)
    traj = Trajectories.from_states(x, y, z if heading is None else heading, z if speed is None else speed,
                                    np.full(n, 4.5), np.full(n, 2.0), np.ones((n, t), bool))
    road = RoadMap(np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool), np.zeros((0, 1, 2), np.float32),
                   np.zeros((0, 1), bool), DrivableArea.from_geometry(shapely.box(0, -10, 100, 10)))
    types = np.full(n, AgentType.VEHICLE, np.int8) if types is None else np.asarray(types, np.int8)
    return Scene("test", "test", 0.1, tuple(map(str, range(n))), types, 0, traj, road)


def ctx_of(scene: Scene, **kw) -> RewardContext:
    tr = scene.traj
    return RewardContext.from_scene(scene, tr.x, tr.y, tr.heading, tr.speed, tr.valid, **kw)


def test_collision_fires_on_overlapping_boxes_only():
    apart = ctx_of(make_scene([[10.0], [30.0]], [[0.0], [0.0]]))
    overlap = ctx_of(make_scene([[10.0], [13.0]], [[0.0], [0.5]]))
    assert collision(apart) == 0.0
    assert collision(overlap) == -1.0  # both scored agents collide at the one step
    # Only the controlled agent is scored: a third, far agent does not dilute the rate.
    three = ctx_of(make_scene([[10.0], [13.0], [60.0]], [[0.0], [0.0], [0.0]]), controlled=[True, False, False])
    assert collision(three) == -1.0


def test_collision_and_offroad_count_agents_hit_at_any_step():
    # Two cars touch at the last of 4 steps, a third is far: 2 of 3 agents collide (not 2 of 12 steps).
    x = [[10.0, 10.0, 10.0, 10.0], [30.0, 25.0, 20.0, 13.0], [80.0] * 4]
    assert collision(ctx_of(make_scene(x, [[0.0] * 4] * 3))) == pytest.approx(-2 / 3)
    # Car 0 leaves the road, car 1 starts off it (parked beside the road): from_road scores car 0 only.
    y = [[0.0, 0.0, 12.0, 12.0], [15.0] * 4]
    ctx = ctx_of(make_scene([[50.0] * 4, [20.0] * 4], y))
    assert offroad(ctx) == -1.0 and offroad(ctx, from_road=1) == -1.0
    assert offroad(ctx_of(make_scene([[50.0] * 4, [20.0] * 4], [[0.0] * 4, [15.0] * 4])), from_road=1) == 0.0


def test_offroad_fires_outside_the_drivable_area_for_vehicles_only():
    on = ctx_of(make_scene([[50.0]], [[0.0]]))
    off = ctx_of(make_scene([[50.0]], [[15.0]]))
    walker_off = ctx_of(make_scene([[50.0]], [[15.0]], types=[AgentType.PEDESTRIAN]))
    assert offroad(on) == 0.0 and offroad(off) == -1.0 and offroad(walker_off) == 0.0


def test_ttc_penalty_head_on_versus_diverging():
    # Two cars 20 m apart closing at 10 m/s each. Their facing 3-disc covers (centres 1.5 m ahead
    # of each car, radius sqrt(1 + 0.75^2) = 1.25 m) touch after (17 - 2.5) / 20 = 0.725 s.
    closing = ctx_of(make_scene([[0.0], [20.0]], [[0.0], [0.0]], heading=[[0.0], [np.pi]], speed=[[10.0], [10.0]]))
    leaving = ctx_of(make_scene([[0.0], [20.0]], [[0.0], [0.0]], heading=[[np.pi], [0.0]], speed=[[10.0], [10.0]]))
    assert time_to_collision_penalty(leaving) == 0.0
    np.testing.assert_allclose(time_to_collision_penalty(closing), -(1 - 0.725 / 2.0), rtol=1e-5)


def test_speed_progress_and_comfort_on_a_constant_speed_track():
    t = np.arange(11) * 0.1
    scene = make_scene([10.0 * t], [np.zeros_like(t)], speed=[np.full_like(t, 10.0)])
    ctx = ctx_of(scene)
    assert speed_limit(ctx, limit=15.0) == 0.0
    np.testing.assert_allclose(speed_limit(ctx, limit=8.0), -2.0)
    np.testing.assert_allclose(target_speed(ctx, target=12.0), -2.0)
    np.testing.assert_allclose(progress(ctx), 10.0, rtol=1e-5)  # 1 s at 10 m/s
    np.testing.assert_allclose(comfort(ctx), 0.0, atol=1e-3)
    # A speed bump of +1 m/s at one step: jerk 1 / dt^2 = 100 m/s^3 on three of nine windows.
    bumped = ctx_of(make_scene([10.0 * t], [np.zeros_like(t)], speed=[10.0 + (np.arange(11) == 5)]))
    np.testing.assert_allclose(comfort(bumped), -(100 + 200 + 100) / 9, rtol=1e-4)


def test_terms_score_every_leading_sample_separately():
    x = np.array([[[10.0], [13.0]], [[10.0], [40.0]]])  # (S=2, N=2, T=1): sample 0 collides
    scene = make_scene(x[0], np.zeros((2, 1)))
    ctx = RewardContext.from_scene(scene, x, np.zeros_like(x), np.zeros_like(x), np.zeros_like(x),
                                   np.ones(x.shape, bool))
    np.testing.assert_array_equal(collision(ctx), [-1.0, 0.0])
    assert make_reward("collision=2,offroad")(ctx).shape == (2,)


def test_a_recorded_rollout_scores_like_its_states():
    # K = 2 samples of 3 cars over 6 steps: sample 1 has cars 0 and 1 touching and car 2 leaving the road
    t = np.arange(6, dtype=np.float32)
    x = np.stack([np.stack([10 + t, 30 + t, 60 + t]), np.stack([10 + t, 13 + t, 60 + 10 * t])])
    y = np.stack([np.zeros((3, 6)), np.stack([0 * t, 0 * t, 3 * t])]).astype(np.float32)
    scene = make_scene(x[0], y[0], speed=np.full((3, 6), 10.0))
    valid = np.ones(x.shape, bool)
    rollout = Rollout.from_states(
        scene.road.drivable, scene_id="test", source="test", policy="hand", dt=scene.dt, start_step=0,
        ego_index=0, agent_ids=scene.agent_ids, agent_type=scene.agent_type, controlled=np.array([False, True, True]),
        x=x, y=y, heading=np.zeros_like(x), speed=np.full(x.shape, 10.0, np.float32), valid=valid, log=scene.traj)
    reward = make_reward("collision=1,offroad(from_road=1)=1,comfort=0.1")
    from_states = RewardContext.from_scene(scene, x, y, np.zeros_like(x), np.full(x.shape, 10.0), valid,
                                           controlled=[False, True, True])
    scores = reward(RewardContext.from_rollout(rollout, scene.road.drivable))
    np.testing.assert_allclose(scores, reward(from_states))
    assert scores[1] < scores[0]


def test_rss_flags_a_tailgater_not_a_distant_follower():
    close = ctx_of(make_scene([[0.0], [8.0]], [[0.0], [0.0]], speed=[[15.0], [10.0]]), controlled=[True, False])
    far = ctx_of(make_scene([[0.0], [80.0]], [[0.0], [0.0]], speed=[[15.0], [10.0]]), controlled=[True, False])
    assert rss_violations(close) == -1.0 and rss_violations(far) == 0.0


def test_safety_critical_rewards_closing_on_the_ego_not_crashing_into_others():
    def score(adv_y, bystander_y=-8.0):
        # Ego at y=0, adversary at y=adv_y and a parked bystander, driving in parallel at 10 m/s for 1 s.
        t = np.arange(11) * 0.1
        x = np.stack([10 + 10 * t, 10 + 10 * t, 10 + 10 * t])
        scene = make_scene(x, [[0.0], [adv_y], [bystander_y]], speed=np.stack([np.full(11, 10.0)] * 2 + [np.zeros(11)]))
        return float(safety_critical(ctx_of(scene)))
    near, far, hit_ego, hit_other = score(2.5), score(8.0), score(1.0), score(-6.0, bystander_y=-7.0)
    assert hit_ego > near > far
    assert hit_other < far  # the adversary overlaps the bystander: the penalty outweighs everything
    # the adversary enters only after the first step: nothing to make critical, the sample scores 0
    late = make_scene(np.stack([10 + 10 * np.arange(11) * 0.1] * 2), [[0.0], [2.5]], speed=np.full((2, 11), 10.0))
    tr = late.traj
    valid = tr.valid.copy()
    valid[1, 0] = False
    assert float(safety_critical(RewardContext.from_scene(late, tr.x, tr.y, tr.heading, tr.speed, valid))) == 0.0


def test_collision_can_leave_contact_with_the_ego_out():
    # agent 1 overlaps the ego (agent 0); agents 2 and 3 overlap each other, far away
    scene = make_scene([[10.0], [12.0], [60.0], [62.0]], [[0.0], [0.5], [0.0], [0.5]])
    assert float(collision(ctx_of(scene))) == -1.0
    np.testing.assert_allclose(collision(ctx_of(scene), ignore_ego=1), -0.5)  # agents 2 and 3 of 4
    assert float(collision(ctx_of(scene, controlled=np.array([False, True, False, False])), ignore_ego=1)) == 0.0


def test_make_reward_parses_weights_and_parameters():
    r = make_reward("collision=1, offroad=0.5, target_speed(target=12)=0.2, progress")
    assert list(r.terms) == ["collision", "offroad", "target_speed(target=12)", "progress"]
    assert [w for w, _ in r.terms.values()] == [1.0, 0.5, 0.2, 1.0]
    assert r.terms["target_speed(target=12)"][1].params == {"target": 12.0}
    assert r.window == 2
    ctx = ctx_of(make_scene([[50.0], [70.0]], [[15.0], [0.0]], speed=[[10.0], [10.0]]))
    vals = r.values(ctx)
    np.testing.assert_allclose(r(ctx), vals["collision"] + 0.5 * vals["offroad"]
                               + 0.2 * vals["target_speed(target=12)"] + vals["progress"])
    np.testing.assert_allclose(vals["offroad"], -0.5)


@pytest.mark.parametrize("spec, message", [
    ("colision=1", "unknown reward term 'colision'"),
    ("collision=abc", "weight 'abc' is not a number"),
    ("ttc(threshold)=1", "not key=number"),
    ("", "empty reward spec"),
])
def test_make_reward_rejects_bad_specs_clearly(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_reward(spec)


# ---- wrappers ---------------------------------------------------------------------------------

class TinyEnv(gym.Env):
    """Stand-in blm_gym env: the ego (agent 0) drives by (accel, yaw rate); agent 1 replays its log."""

    def __init__(self, scene: Scene):
        self.scene, self.ego_index = scene, 0
        self.observation_space = gym.spaces.Box(-1e4, 1e4, (4,), np.float32)
        self.action_space = gym.spaces.Box(np.array([-10, -2], np.float32), np.array([8, 2], np.float32))

    def _obs(self):
        s = self.state
        return np.array([s.x[0], s.y[0], s.heading[0], s.speed[0]], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = SimulatorState.from_log(self.scene, 0)
        return self._obs(), {}

    def step(self, action):
        act = Action(np.zeros((self.scene.num_agents, 2), np.float32), np.array([False, True]))
        act.accel_yaw[0] = action
        self.state = sim_step(self.state, act)
        done = self.state.step == self.scene.num_steps - 1
        return self._obs(), 0.0, False, done, {}


def tiny_scene() -> Scene:
    """Ego at x=10 going 10 m/s toward a parked car at x=20 (collision after ~0.5 s); 2 s long."""
    t = np.arange(21)
    return make_scene(np.stack([10.0 + t, np.full(21, 20.0)]), np.zeros((2, 21)),
                      speed=np.stack([np.full(21, 10.0), np.zeros(21)]))


def test_wrappers_add_exactly_their_terms_and_compose():
    env = ProgressReward(CollisionPenalty(OffroadPenalty(TinyEnv(tiny_scene())), weight=2.0), weight=0.5)
    env.reset(seed=0)
    rewards, infos = [], []
    for _ in range(10):
        _, r, _, _, info = env.step(np.zeros(2, np.float32))
        rewards.append(r)
        infos.append(info["reward_terms"])
    assert all(set(i) == {"offroad", "collision", "progress"} for i in infos)
    for r, i in zip(rewards, infos):
        assert r == pytest.approx(i["offroad"] + 2.0 * i["collision"] + 0.5 * i["progress"])
    assert infos[0]["collision"] == 0.0 and infos[-1]["collision"] == -1.0  # drives into the parked car
    assert all(i["offroad"] == 0.0 for i in infos)
    assert sum(i["progress"] for i in infos) == pytest.approx(10.0, rel=1e-3)  # 1 s at 10 m/s


def test_wrapper_accepts_a_user_function_term():
    def slow(ctx):
        return -np.abs(ctx.speed[..., ctx.ego_index, -1] - 5.0)
    env = RewardTermWrapper(TinyEnv(tiny_scene()), slow, weight=1.0)
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["reward_terms"] == {"slow": r} and r == pytest.approx(-5.0)


def test_wrapped_env_passes_gymnasium_check_env():
    check_env(TTCPenalty(CollisionPenalty(TinyEnv(tiny_scene()))), skip_render_check=True)


def test_wrapper_rejects_envs_without_a_scene():
    with pytest.raises(TypeError, match="unwrapped.state"):
        CollisionPenalty(gym.make("CartPole-v1")).reset(seed=0)


class ListSource:
    """In-memory SceneSource over a list of scenes."""

    name = "list"

    def __init__(self, scenes):
        self.scenes = scenes

    @property
    def scene_ids(self):
        return [f"s{i}" for i in range(len(self.scenes))]

    def load(self, index):
        return self.scenes[index]


def test_wrappers_on_the_real_scene_env_agree_with_its_events():
    from blm_gym.envs.scene_env import SceneEnv

    t = np.arange(40)
    scene = make_scene(np.stack([t * 1.0, np.full(40, 25.0)]), np.zeros((2, 40)),
                       speed=np.stack([np.full(40, 10.0), np.zeros(40)]))
    env = TTCPenalty(CollisionPenalty(OffroadPenalty(SceneEnv(ListSource([scene])))))
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    done = False
    while not done:
        _, r, term, trunc, info = env.step(np.zeros(2, np.float32))
        done = term or trunc
        assert info["reward_terms"]["collision"] == -float(info["collision"])
        assert info["reward_terms"]["offroad"] == -float(info["offroad"])
        assert r == pytest.approx(sum(info["reward_terms"].values()))
    assert info["collision"]  # the ego drives into the parked car and the episode ends there
