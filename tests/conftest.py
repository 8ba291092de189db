import os
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

# Real data: $BLM_GYM_DATA, else ../shared/data beside the repo (the library itself never guesses a path).
SHARED_DATA = Path(os.environ.get("BLM_GYM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_root():
    root = SHARED_DATA
    if not (root / "nuscenes-mini").is_dir():
        pytest.skip(f"real data not found at {root}; set BLM_GYM_DATA to the folder holding nuscenes-mini/")
    return root


@pytest.fixture(scope="session")
def nuscenes_dir(data_root):
    return data_root / "nuscenes-mini"


@pytest.fixture(scope="session")
def womd_dir(data_root):
    return data_root / "womd-sample"


@pytest.fixture
def tiny_scene_factory():
    """Builds a small straight-road Scene: 2 s at 0.1 s, a 7 m wide road along x."""
    import numpy as np
    import shapely

    from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines

    def make(vehicles: bool = True, steps: int = 40):
        t = np.arange(steps) * 0.1
        types = [AgentType.VEHICLE if vehicles else AgentType.PEDESTRIAN, AgentType.PEDESTRIAN]
        x = np.stack([5.0 + 10.0 * t, 20.0 + 0 * t])
        y = np.stack([0.0 * t, 5.0 + 1.0 * t])
        heading = np.stack([0 * t, 0 * t + np.pi / 2])
        speed = np.stack([10.0 + 0 * t, 1.0 + 0 * t])
        traj = Trajectories.from_states(x, y, heading, speed, [4.5, 0.6], [1.9, 0.6], np.ones((2, steps), bool))
        lanes, mask = pad_polylines([np.stack([np.linspace(0, 200, 101), np.zeros(101)], -1)])
        road = shapely.box(-10, -3.5, 210, 3.5)
        return Scene(scene_id="with-car" if vehicles else "no-vehicles", source="test", dt=0.1,
                     agent_ids=("a", "b"), agent_type=np.array(types, np.int8), ego_index=0, traj=traj,
                     road=RoadMap(lanes, mask, np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), bool),
                                  DrivableArea.from_geometry(road)))

    return make
