"""End-to-end runs of the blm-gym command with tiny budgets."""
import json

import h5py
import pytest

from blm_gym.cli import main
from blm_gym.rollout import SCHEMA_VERSION


@pytest.mark.realdata
def test_rollout_then_metrics_on_nuscenes(nuscenes_dir, tmp_path, capsys):
    out = tmp_path / "idm.h5"
    assert main(["rollout", "--env", "BLM-nuScenes-v0", "--data-dir", str(nuscenes_dir), "--policy", "idm",
                 "--scenes", "scene-0103", "--horizon", "2", "--out", str(out), "--render"]) == 0
    with h5py.File(out) as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and len(f["rollouts"]) == 1
    assert (tmp_path / "idm" / "scene-0103_s0.mp4").stat().st_size > 0
    assert main(["metrics", str(out), "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert report["overall"]["log"]["collision_rate_step"]["value"] is not None
    assert "collision_rate_any" in capsys.readouterr().out


@pytest.mark.realdata
def test_blm_suite_and_first_frame_png(nuscenes_dir, tmp_path):
    out = tmp_path / "cv.h5"
    assert main(["rollout", "--env", "BLM-nuScenes-v0", "--data-dir", str(nuscenes_dir), "--policy",
                 "constant_velocity", "--scenes", "scene-0916", "--horizon", "2", "--samples", "2", "--out", str(out),
                 "--render-img"]) == 0
    assert (tmp_path / "cv" / "scene-0916_s0.png").stat().st_size > 1000
    assert main(["metrics", str(out), "--suite", "blm", "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert report["suite"] == "blm" and "RoboSafe-Lab/BLM" in report["definitions"]["blm_collision_rate"]
    assert report["overall"]["sim"]["blm_collision_rate"]["value"] is not None
    assert report["overall"]["sim"]["blm_fdd_m"]["value"] == 0.0  # constant velocity: the samples agree


@pytest.mark.realdata
def test_log_replay_reproduces_ground_truth(nuscenes_dir, tmp_path):
    out = tmp_path / "log.h5"
    assert main(["rollout", "--env", "BLM-nuScenes-v0", "--data-dir", str(nuscenes_dir), "--policy", "log",
                 "--scenes", "scene-0103,scene-0916", "--out", str(out)]) == 0
    assert main(["metrics", str(out), "--out", str(tmp_path / "m")]) == 0
    overall = json.loads((tmp_path / "m" / "metrics.json").read_text())["overall"]
    for name in ("collision_rate_step", "collision_rate_any", "offroad_rate_step", "offroad_rate_any"):
        assert overall["sim"][name]["value"] == pytest.approx(overall["log"][name]["value"])
    for name in ("jsd_speed", "jsd_accel", "jsd_jerk"):
        assert overall["sim"][name]["value"] == pytest.approx(0.0, abs=1e-12)


def test_missing_rollout_file_is_a_clear_error(tmp_path, capsys):
    assert main(["metrics", str(tmp_path / "nope.h5")]) == 2
    assert "nope.h5" in capsys.readouterr().err


def test_demo_refuses_to_mix_runs(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "vae.pt").write_bytes(b"old")
    assert main(["demo", "--out", str(tmp_path / "run")]) == 2
    assert "--mode resume" in capsys.readouterr().err


def test_demo_without_held_out_scenes_says_how_to_get_some():
    from blm_gym.demo import DemoConfig, _scenes

    with pytest.raises(ValueError, match="more synthetic_scenes"):
        _scenes(DemoConfig(synthetic_scenes=4))  # ids *-000: all in the train split


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--set", "vae_steps=10", "diffusion_steps=10", "finetune_iterations=1",
                 "samples=2", "horizon_s=2", "synthetic_scenes=8", "finetune_val_scenes=2",
                 'eval_scenes=["intersection-000"]']) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert {"pretrained", "finetuned", "log"} <= set(summary) and summary["finetuned_iteration"] in (0, 1)
    for name in ("rollout.h5", "rollout.mp4", "contact_sheet.png", "finetuned.pt", "finetuned.best.pt"):
        assert (out / name).stat().st_size > 0


@pytest.mark.realdata
def test_wosac_protocol_end_to_end(womd_dir, tmp_path, capsys):
    out = tmp_path / "cv.h5"
    args = ["--env", "BLM-ScenarioNet-v0", "--data-dir", str(womd_dir), "--scenes", "2a1e44d405a6833f",
            "--policy", "constant_velocity"]
    assert main(["rollout", *args, "--protocol", "wosac", "--out", str(out)]) == 0
    with h5py.File(out) as f:  # 32 samples of the current state + 80 steps, every agent of the start throughout
        valid = f["rollouts/000000/sim/valid"][()]
        assert valid.shape[0] == 32 and valid.shape[2] == 81 and (valid == valid[:, :, :1]).all()
    assert main(["metrics", str(out), "--suite", "wosac", "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    sim, log = (report["overall"][side]["metametric"]["value"] for side in ("sim", "log"))
    assert 0 < sim < log <= 1 and log > 0.7  # the log scored as its own rollouts is realistic, constant velocity less
    assert "linear_speed_likelihood" in report["definitions"]
    closed_loop = tmp_path / "closed.h5"
    assert main(["rollout", *args, "--horizon", "2", "--out", str(closed_loop)]) == 0
    assert main(["metrics", str(closed_loop), "--suite", "wosac", "--out", str(tmp_path / "m2")]) == 2
    assert "--protocol wosac" in capsys.readouterr().err


@pytest.mark.realdata
def test_wosac_on_nuscenes_marks_map_scores_not_comparable(nuscenes_dir, tmp_path):
    out = tmp_path / "log.h5"
    assert main(["rollout", "--env", "BLM-nuScenes-v0", "--data-dir", str(nuscenes_dir), "--scenes", "scene-0916",
                 "--policy", "constant_velocity", "--protocol", "wosac", "--out", str(out)]) == 0
    assert main(["metrics", str(out), "--suite", "wosac", "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "metametric" in report["not_comparable"]["metrics"] and report["not_comparable"]["scenes"] == ["scene-0916"]
    assert 0 < report["overall"]["sim"]["linear_speed_likelihood"]["value"] <= 1


@pytest.mark.realdata
def test_rollout_scenes_per_batch_matches_one_at_a_time(nuscenes_dir, tmp_path):
    from blm_gym.rollout import read_rollouts

    args = ["rollout", "--env", "BLM-nuScenes-v0", "--data-dir", str(nuscenes_dir), "--policy", "blm",
            "--scenes", "scene-0103,scene-0916", "--horizon", "1.5", "--samples", "2"]
    assert main(args + ["--out", str(tmp_path / "one.h5")]) == 0
    assert main(args + ["--scenes-per-batch", "3", "--out", str(tmp_path / "many.h5")]) == 0
    (one, _), (many, meta) = read_rollouts(tmp_path / "one.h5"), read_rollouts(tmp_path / "many.h5")
    assert meta["config"]["scenes_per_batch"] == 3 and [r.scene_id for r in many] == [r.scene_id for r in one]
    for a, b in zip(one, many):  # each episode keeps its seed and noise: the same rollouts up to float rounding
        for name in ("x", "y", "heading", "speed"):
            assert abs(getattr(a, name) - getattr(b, name)).max() < 1e-3, name
    assert main(args + ["--scenes-per-batch", "0", "--out", str(tmp_path / "bad.h5")]) == 2
