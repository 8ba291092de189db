"""The user examples run to completion as written (tiny budgets), on the real nuScenes-mini data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
pytestmark = pytest.mark.realdata


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    run = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_evaluate_av_stack(nuscenes_dir, tmp_path):
    out = run_example("evaluate_av_stack.py", "--data-dir", str(nuscenes_dir), "--episodes", "1",
                      "--out", str(tmp_path), "--adversarial-checkpoint", str(tmp_path / "absent.pt"))
    assert "skipping that background" in out
    lines = out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.split()[:2] == ["background", "episodes"])) + 1:]
    assert [row.split()[0] for row in table] == ["log", "idm", "blm"]
    assert all(int(row.split()[1]) == 2 for row in table)  # one episode per val scene
    for name in ("log", "idm", "blm"):
        assert (tmp_path / f"ego_vs_{name}.mp4").stat().st_size > 1000


def test_train_ego_ppo_smoke(nuscenes_dir, tmp_path):
    out = run_example("train_ego_ppo.py", "--smoke", "--data-dir", str(nuscenes_dir), "--out",
                      str(tmp_path / "ppo.pt"))
    epochs = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and all("mean return" in line for line in epochs)
    assert (tmp_path / "ppo.pt").stat().st_size > 0


def test_finetune_custom_term_smoke(nuscenes_dir, tmp_path):
    out = run_example("finetune_custom_term.py", "--smoke", "--iterations", "1", "--samples", "1", "--data-dir",
                      str(nuscenes_dir), "--out", str(tmp_path / "custom.pt"))
    rows = [line for line in out.splitlines() if line.startswith(("pretrained", "fine-tuned"))]
    assert len(rows) == 2 and all("near_pedestrian_above_limit" in row for row in rows)
    assert (tmp_path / "custom.pt").stat().st_size > 0
