"""The Gymnasium env: API compliance, determinism, scene selection, bad input."""
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import blm_gym  # noqa: F401  (registers the ids)
from blm_gym.data.scene import AgentType
from blm_gym.envs import EnvConfig, SceneEnv


def _check(env):
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.realdata
def test_check_env_nuscenes_scenarionet(nuscenes_dir):
    env = gym.make("BLM-nuScenes-v0", data_dir=nuscenes_dir, scene_ids=["scene-0103"])
    assert env.unwrapped.background.name == "blm"  # the pretrained model drives the traffic by default
    _check(env)


@pytest.mark.realdata
def test_check_env_scenarionet_waymo(womd_dir):
    _check(gym.make("BLM-ScenarioNet-v0", data_dir=womd_dir))


def test_check_env_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _check(gym.make("BLM-Synthetic-v0", num_scenes=2, kinds=("highway",)))


@pytest.fixture
def env(nuscenes_dir):
    return gym.make("BLM-nuScenes-v0", data_dir=nuscenes_dir, scene_ids=["scene-0103", "scene-0916"])


@pytest.mark.realdata
def test_reset_is_deterministic_and_options_pick_scenes(env):
    o1, i1 = env.reset(seed=3)
    o2, i2 = env.reset(seed=3)
    assert i1["scene_id"] == i2["scene_id"]
    for k in o1:
        np.testing.assert_array_equal(o1[k], o2[k])
    assert env.reset(options={"scene_id": "scene-0916"})[1]["scene_id"] == "scene-0916"
    assert env.reset(options={"scene_index": 0})[1]["scene_id"] == "scene-0103"
    with pytest.raises(KeyError, match="scene-9999"):
        env.reset(options={"scene_id": "scene-9999"})


@pytest.mark.realdata
def test_log_replay_ego_follows_log_and_truncates(nuscenes_dir):
    env = gym.make("BLM-nuScenes-v0", data_dir=nuscenes_dir, scene_ids=["scene-0103"], horizon_s=2.0, background="log",
                   terminate_on_collision=False)
    env.reset(seed=0)
    base = env.unwrapped
    ego, scene = base.ego_index, base.scene
    done, n = False, 0
    while not done:
        # the ego's logged (accel, yaw rate) reproduce its log only approximately: check truncation and events
        _, reward, term, trunc, info = env.step(np.zeros(2, np.float32))
        n += 1
        done = term or trunc
    assert trunc and n == 20
    s = base.state
    others = np.arange(scene.num_agents) != ego
    np.testing.assert_allclose(s.x[others & s.valid], scene.traj.x[others & s.valid, s.step], atol=1e-5)
    assert {"collision", "offroad", "min_ttc", "agent_collision", "agent_offroad", "agent_mask"} <= set(info)


@pytest.mark.realdata
def test_bad_actions_raise(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.inf, 0.0], np.float32))


@pytest.mark.realdata
def test_joint_control_mode_drives_all_slots(nuscenes_dir):
    env = gym.make("BLM-nuScenes-v0", data_dir=nuscenes_dir, scene_ids=["scene-0103"], control="all", background="log",
                   max_agents=16, terminate_on_collision=False)
    obs, info = env.reset(seed=0)
    assert env.action_space.shape == (16, 2) and obs["agents"].shape == (16, 8)
    slots = info["agent_slots"]
    used = slots[slots >= 0]
    assert len(used) > 0 and np.all(env.unwrapped.scene.agent_type[used] == AgentType.VEHICLE)
    before = env.unwrapped.state
    action = np.zeros((16, 2), np.float32)
    action[:, 0] = 2.0  # everyone accelerates
    env.step(action)
    after = env.unwrapped.state
    moved = used[before.valid[used] & after.valid[used]]
    np.testing.assert_allclose(after.speed[moved], np.minimum(before.speed[moved] + 0.2, 40), atol=1e-5)


@pytest.mark.realdata
def test_collision_terminates_episode(nuscenes_dir):
    # scene-0103's ego, left at constant velocity, runs into the car ahead within a few seconds
    env = gym.make("BLM-nuScenes-v0", data_dir=nuscenes_dir, scene_ids=["scene-0103"], horizon_s=10.0,
                   background="log")
    env.reset(seed=0)
    for _ in range(100):
        _, _, term, trunc, info = env.step(np.zeros(2, np.float32))
        if term or trunc:
            break
    assert term and info["collision"]


def test_missing_data_dir_names_argument_and_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("BLM_GYM_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="data_dir.*BLM_GYM_DATA"):
        gym.make("BLM-nuScenes-v0")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gym.make("BLM-ScenarioNet-v0", data_dir=tmp_path / "nope")


class _TinySource:
    """Two scenes: the first has no vehicles (only a pedestrian), the second one car."""

    name = "tiny"

    def __init__(self, make_scene):
        self._scenes = [make_scene(vehicles=False), make_scene(vehicles=True)]

    @property
    def scene_ids(self):
        return [s.scene_id for s in self._scenes]

    def load(self, i):
        return self._scenes[i]


def test_scene_without_vehicles_is_skipped_with_warning(tiny_scene_factory):
    env = SceneEnv(_TinySource(tiny_scene_factory), config=dataclasses.replace(EnvConfig(), horizon_s=1.0))
    ids = set()
    with pytest.warns(UserWarning, match="no vehicles"):
        for seed in range(6):
            ids.add(env.reset(seed=seed)[1]["scene_id"])
    assert ids == {"with-car"}
    for _ in range(10):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="entry_check_s must be >= 0"):
        SceneEnv(_TinySource(tiny_scene_factory), config=EnvConfig(entry_check_s=-2.0))


def test_check_env_nuscenes_raw_via_trajdata(tmp_path):
    from nuscenes_fixture import write_nuscenes_fixture

    root = write_nuscenes_fixture(tmp_path / "nuscenes")
    env = gym.make("BLM-nuScenes-v0", data_dir=root, cache_dir=tmp_path / "cache", horizon_s=3.0, background="log")
    _check(env)
    obs, info = env.reset(options={"scene_id": "scene-0061"})
    assert info["scene_id"] == "scene-0061" and obs["lanes_mask"].any()


@pytest.mark.realdata
def test_readme_usage_runs(nuscenes_dir):
    env = gym.make("BLM-nuScenes-v0", data_dir=nuscenes_dir, background="idm")
    env = blm_gym.rewards.CollisionPenalty(env, weight=1.0)  # reachable right after `import blm_gym`
    env.reset(seed=0, options={"scene_id": "scene-0103"})
    _, reward, _, _, info = env.step(np.array([0.5, 0.0], np.float32))
    assert reward == -float(info["collision"]) and "collision" in info["reward_terms"]
