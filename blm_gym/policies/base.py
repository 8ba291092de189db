"""The one policy interface shared by the env, users' driving stacks and the BLM model."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from blm_gym.data.scene import Scene
from blm_gym.sim.state import Action, SimulatorState


@runtime_checkable
class Policy(Protocol):
    """Drives a set of agents in a scene, closed loop.

    ``reset`` is called once per episode with the scene, the first simulated step and the agents
    (bool mask ``(N,)``) this policy controls; ``act`` is called every step with the current
    simulator state and returns an :class:`Action` for all N agents (only the controlled rows
    are used). Policies may keep state between calls (e.g. a plan they replan every second).
    """

    def reset(self, scene: Scene, start_step: int, controlled: np.ndarray, rng: np.random.Generator) -> None: ...

    def act(self, state: SimulatorState) -> Action: ...
