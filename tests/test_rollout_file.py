"""Closed-loop runner, HDF5 rollout files (round trip, errors, atomic writes), rollout -> scene."""
import dataclasses

import h5py
import numpy as np
import pytest
import shapely

import blm_gym.rollout.h5 as rollout_h5
from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories
from blm_gym.metrics import compute_report
from blm_gym.policies.base import Policy
from blm_gym.rollout import SCHEMA_VERSION, read_rollouts, run_rollouts, sample_state, write_rollouts
from blm_gym.sim.state import Action


def make_scene(scene_id: str, num_steps: int = 60) -> Scene:
    """Three agents driving along x on a straight road: ego car, a car, a pedestrian."""
    t = np.arange(num_steps) * 0.1
    speed = np.array([10.0, 8.0, 1.0])[:, None] * np.ones(num_steps)
    x = np.array([0.0, 30.0, 5.0])[:, None] + speed * t
    y = np.array([0.0, 0.0, 8.0])[:, None] * np.ones(num_steps)
    valid = np.ones((3, num_steps), bool)
    valid[1, :20] = False  # the second car enters the scene at step 20
    traj = Trajectories.from_states(x, y, np.zeros_like(x), speed, [4.5, 4.0, 0.5], [2.0, 1.8, 0.5], valid)
    road = DrivableArea.from_geometry(shapely.box(-10, -6, 200, 6), resolution=0.5)
    lanes = np.array([[[-10.0, 0.0], [200.0, 0.0]]], np.float32)
    return Scene(scene_id=scene_id, source="test", dt=0.1, agent_ids=("ego", "car", "ped"),
                 agent_type=np.array([AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN], np.int8),
                 ego_index=0, traj=traj, road=RoadMap(lanes, np.ones((1, 2), bool), np.zeros((0, 1, 2), np.float32),
                                                     np.zeros((0, 1), bool), road))


class TinySource:
    name = "tiny"

    def __init__(self):
        self._scenes = [make_scene("a"), make_scene("b", num_steps=45)]

    @property
    def scene_ids(self):
        return [s.scene_id for s in self._scenes]

    def load(self, index):
        return self._scenes[index]


class NoisyBraking:
    """Brakes at a random rate drawn per episode (so samples differ, reproducibly per seed)."""

    name = "noisy-braking"

    def reset(self, scene, start_step, controlled, rng):
        self.accel = -rng.uniform(0.5, 2.0, scene.num_agents)

    def act(self, state):
        return Action(np.stack([self.accel, np.zeros_like(self.accel)], -1).astype(np.float32),
                      np.zeros(len(self.accel), bool))


@pytest.fixture(scope="module")
def rollouts():
    return run_rollouts(TinySource(), NoisyBraking, scene_ids=["a", "b"], samples=3, horizon_s=2.0, seed=7,
                        progress=False)


def test_runner_closed_loop(rollouts):
    assert isinstance(NoisyBraking(), Policy)
    a, b = rollouts
    assert a.x.shape == (3, 3, 21) and b.x.shape == (3, 3, 15)  # b: horizon clamped to the 45-step log
    assert a.policy == "noisy-braking" and a.start_step == 30
    assert a.controlled.tolist() == [True, True, False]  # all_vehicles
    assert np.array_equal(a.x[:, :, 0], np.broadcast_to(a.log.x[:, 0], (3, 3)))  # starts from the log
    assert np.allclose(a.x[:, 2], a.log.x[2])  # the pedestrian replays the log
    assert (a.speed[:, :2, -1] < a.log.speed[:2, -1]).all()  # controlled cars braked
    assert not np.allclose(a.x[0], a.x[1])  # samples differ
    again = run_rollouts(TinySource(), NoisyBraking, scene_ids=["a"], samples=3, horizon_s=2.0, seed=7,
                         progress=False)
    assert np.array_equal(again[0].x, a.x)  # reproducible per seed
    non_ego = run_rollouts(TinySource(), NoisyBraking, scene_ids=["a"], horizon_s=0.5, controlled="non_ego",
                           progress=False)[0]
    assert np.allclose(non_ego.x[0, 0], non_ego.log.x[0])
    with pytest.raises(ValueError, match="start_step=50 leaves nothing"):
        run_rollouts(TinySource(), NoisyBraking, scene_ids=["b"], start_step=50, progress=False)
    with pytest.raises(KeyError, match="'zzz' is not in source 'tiny'"):
        run_rollouts(TinySource(), NoisyBraking, scene_ids=["zzz"], progress=False)
    with pytest.raises(ValueError, match="entry_check_s must be >= 0"):  # reaches the simulator's step
        run_rollouts(TinySource(), NoisyBraking, scene_ids=["a"], entry_check_s=-1.0, progress=False)



def test_frozen_agents_keep_the_start_set_in_sim_and_log():
    # the second car enters at step 20: from step 10 it joins unless the agents are frozen
    entering, frozen = (run_rollouts(TinySource(), NoisyBraking, scene_ids=["a"], start_step=10, horizon_s=2.0,
                                     membership=m, progress=False)[0] for m in ("log", "frozen"))
    assert entering.valid[0, 1, 10:].all() and entering.log.valid[1, 10:].all()
    assert not frozen.valid[0, 1].any() and not frozen.log.valid[1].any()
    assert frozen.valid[0, [0, 2]].all()  # the others stay as logged
    report = compute_report([frozen], {"a": make_scene("a")})["overall"]
    assert report["sim"]["collision_rate_any"]["total"] == report["log"]["collision_rate_any"]["total"] == 1  # the ego

def test_round_trip_exact(rollouts, tmp_path):
    path = write_rollouts(tmp_path / "r.h5", rollouts, {"policy": "noisy-braking", "seed": 7})
    back, meta = read_rollouts(path)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["config"] == {"policy": "noisy-braking", "seed": 7}
    assert meta["blm_gym_version"]
    assert len(back) == len(rollouts)
    for r, s in zip(rollouts, back):
        for f in dataclasses.fields(r):
            a, b = getattr(r, f.name), getattr(s, f.name)
            if f.name == "log":
                for g in dataclasses.fields(a):
                    assert np.array_equal(getattr(a, g.name), getattr(b, g.name)), g.name
            elif isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), f.name
            else:
                assert a == b, f.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_sample_state_and_report(rollouts):
    source = TinySource()
    r = rollouts[0]
    state = sample_state(r, 1, source.load(0))
    steps = slice(r.start_step, r.start_step + r.num_steps)
    assert state.current_step == r.start_step + r.num_steps - 1 and state.scene is source.load(0)
    np.testing.assert_array_equal(state.sim.x[:, steps], r.x[1])
    np.testing.assert_array_equal(state.collision[:, steps], r.collision[1])
    with pytest.raises(ValueError, match="rollout is of scene 'a'"):
        sample_state(r, 0, source.load(1))
    report = compute_report(rollouts, {s.scene_id: s for s in source._scenes})
    assert report["overall"]["sim"]["collision_rate_step"]["value"] == 0.0
    assert report["overall"]["sim"]["fdd_m"]["value"] > 0.0
    assert report["overall"]["log"]["mean_ade_m"]["value"] == 0.0


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_rollouts(tmp_path / "nope.h5")


def test_truncated_file(rollouts, tmp_path):
    path = write_rollouts(tmp_path / "r.h5", rollouts, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="r.h5.*(truncated|corrupt)"):
        read_rollouts(path)


def test_wrong_schema_version(rollouts, tmp_path):
    path = write_rollouts(tmp_path / "r.h5", rollouts, {})
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION + 1}.*reads version {SCHEMA_VERSION}"):
        read_rollouts(path)


def test_interrupted_write_leaves_nothing(rollouts, tmp_path, monkeypatch):
    calls = []

    def failing_put(group, name, array):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated interruption")
        group.create_dataset(name, data=array)

    monkeypatch.setattr(rollout_h5, "_put", failing_put)
    with pytest.raises(KeyboardInterrupt):
        write_rollouts(tmp_path / "r.h5", rollouts, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.realdata
def test_log_replay_on_nuscenes_scores_like_the_log(nuscenes_dir, tmp_path):
    from blm_gym.data.scenarionet import ScenarioNetSource
    from blm_gym.policies import LogReplayPolicy
    from blm_gym.data.registry import load_scene

    source = ScenarioNetSource(nuscenes_dir)
    ids = ["scene-0103", "scene-0916"]  # the official mini_val scenes
    rollouts = run_rollouts(source, LogReplayPolicy, scene_ids=ids, samples=2, horizon_s=3.0, progress=False)
    path = write_rollouts(tmp_path / "val.h5", rollouts, {"policy": "log"})
    back, _ = read_rollouts(path)
    report = compute_report(back, {s: load_scene(source, s) for s in ids})
    sim, log = report["overall"]["sim"], report["overall"]["log"]
    for name in ("collision_rate_step", "offroad_rate_step", "min_ttc_s", "rss_lon_violation_rate", "min_ade_m"):
        assert sim[name]["value"] == pytest.approx(log[name]["value"]), name
    assert sim["fdd_m"]["value"] == 0.0 and sim["jsd_speed"]["value"] == pytest.approx(0.0)
    assert all(s["num_controlled_vehicles"] > 0 for s in report["per_scene"])
