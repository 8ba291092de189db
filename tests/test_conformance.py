"""What users of gymnasium and PettingZoo expect: check_env on every id and wrapper, specs that
rebuild wrapped envs, vector envs over scenes of different sizes, the PettingZoo parallel API,
scene ids that round-trip through files, and env episodes that score like the runner's."""
import dataclasses
import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import blm_gym
from blm_gym.cli import main
from blm_gym.data.registry import load_scene, open_source
from blm_gym.envs import parallel_env
from blm_gym.metrics import compute_report
from blm_gym.policies import IDMPolicy
from blm_gym.rewards import wrappers
from blm_gym.rollout import run_rollouts

WRAPPERS = (wrappers.CollisionPenalty, wrappers.OffroadPenalty, wrappers.TTCPenalty, wrappers.SpeedLimitPenalty,
            wrappers.ComfortPenalty, wrappers.ProgressReward)
WOMD_SCENES = ["49c341dce1f65cdb", "903f0fd7bf4a17cb"]  # 2 womd-sample scenes with different agent counts


@pytest.fixture(scope="module")
def env_kwargs(data_root, tmp_path_factory):
    """Keywords that make each env id small and quick (log-replay background, one or two scenes)."""
    return {
        "BLM-nuScenes-v0": dict(data_dir=data_root / "nuscenes-mini", scene_ids=["scene-0103"], background="log"),
        "BLM-ScenarioNet-v0": dict(data_dir=data_root / "womd-sample", scene_ids=WOMD_SCENES),
        "BLM-Synthetic-v0": dict(num_scenes=1, kinds=["highway"], steps=60,
                                 cache_dir=str(tmp_path_factory.mktemp("synthetic"))),
        "BLM-Waymo-v0": dict(data_dir=data_root / "womd-protos", scene_ids=["motion_data_one_scenario.tfrecord#0"]),
        "BLM-AV2-v0": dict(data_dir=data_root / "av2-sample", scene_ids=["0a1e6f0a-1817-4a98-b02e-db8c9327d151"]),
        "BLM-INTERACTION-v0": dict(data_dir=data_root / "interaction", scene_ids=["DR_USA_Roundabout_FT/000/1001"]),
        "BLM-CommonRoad-v0": dict(data_dir=data_root / "commonroad-ngsim", scene_ids=["USA_US101-4_1_T-1"]),
    }


@pytest.mark.realdata
@pytest.mark.parametrize("env_id", blm_gym.ENV_IDS)
def test_check_env_on_every_id_wrapped_in_every_reward_wrapper(env_id, env_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's advice on Box ranges and wrapped envs
        for wrapper in WRAPPERS:
            env = wrapper(gym.make(env_id, horizon_s=2.0, **env_kwargs[env_id]), weight=0.5)
            check_env(env, skip_render_check=True)
            again = gym.make(env.spec)  # the spec records the wrapper and its arguments
            assert isinstance(again, wrapper) and again.weight == 0.5 and again.spec == env.spec
            obs, _ = again.reset(seed=0)
            _, _, _, _, info = again.step(np.zeros(2, np.float32))
            assert wrapper.term_name in info["reward_terms"]


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_over_scenes_of_different_sizes(mode, env_kwargs):
    kwargs = env_kwargs["BLM-ScenarioNet-v0"]
    sizes = {sid: load_scene(open_source("scenarionet", kwargs["data_dir"]), sid).num_agents for sid in WOMD_SCENES}
    assert len(set(sizes.values())) == 2
    envs = gym.make_vec("BLM-ScenarioNet-v0", num_envs=2, vectorization_mode=mode, horizon_s=1.0, **kwargs)
    try:
        _, info = envs.reset(seed=[0, 3])  # seeds whose random scene picks differ
        assert sorted(info["scene_id"]) == sorted(WOMD_SCENES)  # one env per scene
        for _ in range(12):  # through the autoreset at the 1 s horizon
            obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 2), np.float32))
        m = envs.single_observation_space["neighbors"].shape[0]
        assert obs["neighbors"].shape == (2, m, 8) and info["agent_collision"].shape == (2, 32)
        assert info["agent_mask"].sum(1).min() > 0
    finally:
        envs.close()


@pytest.mark.realdata
def test_parallel_env_passes_the_pettingzoo_api_test(data_root):
    from pettingzoo.test import parallel_api_test

    env = parallel_env("BLM-ScenarioNet-v0", data_root / "womd-sample", scene_id=WOMD_SCENES[0], horizon_s=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracks that never enter are never "done"
        parallel_api_test(env, num_cycles=50)
    # a policy drives some agents, the user the others; agents enter and leave as logged
    obs, _ = env.reset(seed=0)
    first = list(env.agents)
    env.attach(IDMPolicy(), first[:3])
    seen, ended = set(first), set()
    while env.agents:
        obs, rewards, terms, truncs, infos = env.step({a: np.zeros(2, np.float32) for a in env.agents
                                                      if a not in env.attached_agents})
        assert set(obs) >= set(env.agents) and set(rewards) == set(terms) == set(truncs)
        seen |= set(env.agents)
        ended |= {a for a in terms if terms[a] or truncs[a]}
    scene = env.scene
    assert seen <= set(env.possible_agents) and all(scene.is_vehicle[env.agent_index(a)] for a in seen)
    assert ended == seen  # each ends by a collision, at the horizon or when the log ends its track
    with pytest.raises(KeyError, match="no action for live agents"):
        env.reset(seed=0)
        env.step({})


@pytest.mark.realdata
def test_loose_folder_ids_round_trip_through_rollout_and_metrics(data_root, tmp_path, capsys):
    folder = tmp_path / "womd"
    folder.mkdir()
    src = sorted((data_root / "womd-sample").glob("sd_*.pkl"))[0]
    # the pickle's own id differs from the name ScenarioNet's converters give such a file
    shutil.copy(src, folder / "sd_womd_tfrecord-00001-of-01000_307.json.pkl")
    out = tmp_path / "r.h5"
    args = ["--env", "BLM-ScenarioNet-v0", "--data-dir", str(folder), "--horizon", "1", "--out", str(out)]
    assert main(["rollout", *args]) == 0
    assert main(["metrics", str(out), "--out", str(tmp_path / "m")]) == 0
    assert "307.json" in (tmp_path / "m" / "metrics.json").read_text()
    shutil.copy(src, folder / "sd_other_307.json.pkl")  # a second file with the same id
    with pytest.raises(ValueError, match="both have scene id '307.json'"):
        open_source("scenarionet", folder)


@pytest.mark.realdata
def test_env_episode_recorded_and_scored_equals_the_runners_rollout(nuscenes_dir):
    """IDM drives every agent in both: through the env (the ego by the action, the others as the
    background) and through the runner; the recorded rollouts and their metrics agree."""
    kwargs = dict(data_dir=nuscenes_dir, scene_ids=["scene-0103"], background=IDMPolicy(), horizon_s=3.0,
                  terminate_on_collision=False)
    env = gym.make("BLM-nuScenes-v0", **kwargs)
    env.reset(seed=0)
    base = env.unwrapped
    ego_driver = IDMPolicy()
    ego_driver.reset(base.scene, base.state.start_step, np.ones(base.scene.num_agents, bool), None)
    done = False
    while not done:
        action = ego_driver.act(base.state).accel_yaw[base.ego_index]
        *_, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    episode = base.rollout("idm")
    source = open_source("nuscenes", nuscenes_dir, ["scene-0103"])
    runner = run_rollouts(source, IDMPolicy, scene_ids=["scene-0103"], start_step=base.state.start_step,
                          horizon_s=3.0, controlled="all", progress=False)[0]
    for field in ("x", "y", "heading", "speed", "valid", "collision", "offroad"):
        np.testing.assert_allclose(getattr(episode, field), getattr(runner, field), atol=1e-5, err_msg=field)
    scenes = {"scene-0103": base.scene}
    ours, theirs = (compute_report([dataclasses.replace(r, controlled=runner.controlled)], scenes)["overall"]
                    for r in (episode, runner))
    for name, metric in theirs["sim"].items():
        assert ours["sim"][name]["value"] == pytest.approx(metric["value"], abs=1e-6), name
