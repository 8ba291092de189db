"""A PettingZoo ``ParallelEnv`` over one scene: every vehicle is an agent.

Agents are keyed by their track id and enter and leave as the log says (an agent is live while
the simulator has it valid): a vehicle the log brings in later joins ``env.agents`` at that step,
one whose track ends is truncated (if the log brings the track back later, it replays the log:
PettingZoo agents are not revived). Each agent observes the scene from its own viewpoint (the
observation of :class:`~blm_gym.envs.scene_env.SceneEnv`) and acts with ``(acceleration m/s^2,
yaw rate rad/s)``. Pedestrians, cyclists and static objects replay the log.

Any :class:`~blm_gym.policies.base.Policy` can drive some agents while you drive the others::

    env = blm_gym.envs.parallel_env("BLM-nuScenes-v0", data_dir=..., scene_id="scene-0103")
    obs, infos = env.reset(seed=0)
    blm = make_policy("blm")
    env.attach(blm, agents=some_track_ids)          # BLM plans for these agents every step
    while env.agents:
        actions = {a: my_policy(obs[a]) for a in env.agents if a not in env.attached_agents}
        obs, rewards, terminations, truncations, infos = env.step(actions)

Rewards are 0 (add your own from ``env.state``); ``terminate_on_collision`` ends an agent that
collides: it then brakes to a stop and stays in the scene as an obstacle.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from blm_gym.data.source import SceneSource
from blm_gym.envs.scene_env import (EnvConfig, action_box, ego_min_ttc, lane_boxes, observation_space, observe,
                                    pick_scene, start_step_of)
from blm_gym.policies.base import Policy
from blm_gym.sim.kinematics import DEFAULT_BOUNDS
from blm_gym.sim.state import Action, SimulatorState, check_entry_check_s, merge_actions, step


class SceneParallelEnv(ParallelEnv):
    """Multi-agent env over the scene ``scene_id`` of ``source`` (default: its first scene)."""

    metadata = {"name": "blm_scene_v0", "render_modes": ["rgb_array"], "render_fps": 10, "is_parallelizable": True}

    def __init__(self, source: SceneSource, *, scene_id: str | None = None, config: EnvConfig = EnvConfig(),
                 render_mode: str | None = None):
        if config.control != "ego":
            raise ValueError("the parallel env gives every vehicle its own action; leave control='ego'")
        check_entry_check_s(config.entry_check_s)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.config, self.render_mode = config, render_mode
        self.scene = pick_scene(source, {"scene_id": scene_id} if scene_id else {"scene_index": 0},
                                np.random.default_rng(0), lambda sc: start_step_of(sc, config))
        self._index = {aid: i for i, aid in enumerate(self.scene.agent_ids) if self.scene.is_vehicle[i]}
        self.possible_agents = list(self._index)
        self._observation_space, self._action_space = observation_space(config), action_box()
        self._boxes = lane_boxes(self.scene)
        self._renderer = None
        self._attached: list[tuple[Policy, np.ndarray]] = []
        self.state: SimulatorState | None = None
        self.agents: list[str] = []

    def observation_space(self, agent: str):
        return self._observation_space

    def action_space(self, agent: str):
        return self._action_space

    def agent_index(self, agent: str) -> int:
        """The scene index of track ``agent``."""
        return self._index[agent]

    @property
    def attached_agents(self) -> set[str]:
        """The agents a policy given to :meth:`attach` drives (they need no action in :meth:`step`)."""
        return {aid for _, mask in self._attached for aid, i in self._index.items() if mask[i]}

    def attach(self, policy: Policy, agents) -> None:
        """Let ``policy`` drive the track ids ``agents`` from now on (call after :meth:`reset`)."""
        if self.state is None:
            raise RuntimeError("call reset() before attach()")
        unknown = [a for a in agents if a not in self._index]
        if unknown:
            raise KeyError(f"attach: {unknown} are not vehicles of scene {self.scene.scene_id}; see env.possible_agents")
        mask = np.zeros(self.scene.num_agents, bool)
        mask[[self._index[a] for a in agents]] = True
        policy.reset(self.scene, self.state.current_step, mask, self._rng)
        self._attached.append((policy, mask))

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._rng = np.random.default_rng(seed)
        start = start_step_of(self.scene, self.config)
        self.state = SimulatorState.from_log(self.scene, start, self.config.membership)
        self._end = min(self.scene.num_steps - 1, start + int(round(self.config.horizon_s / self.scene.dt)))
        self._attached = []
        self._done, self._crashed = np.zeros(self.scene.num_agents, bool), np.zeros(self.scene.num_agents, bool)
        self.agents = self._live()
        return {a: self._observe(a) for a in self.agents}, {a: self._info(a) for a in self.agents}

    def _live(self) -> list[str]:
        valid = self.state.valid
        return [a for a, i in self._index.items() if valid[i] and not self._done[i]]

    def step(self, actions: dict[str, Any]):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        n = self.scene.num_agents
        driven, mask = Action.zeros(n), np.zeros(n, bool)
        for agent, a in actions.items():
            if agent not in self.agents:
                raise KeyError(f"step: {agent!r} is not live (env.agents: {self.agents[:8]}...)")
            a = np.asarray(a, np.float32)
            if a.shape != (2,) or not np.all(np.isfinite(a)):
                raise ValueError(f"step: the action of {agent!r} must be finite (acceleration, yaw rate), got {a!r}")
            i = self._index[agent]
            driven.accel_yaw[i], mask[i] = a, True
        brake = Action.zeros(n)
        brake.accel_yaw[:, 0] = DEFAULT_BOUNDS.min_accel  # collided agents stop where they are
        live = np.isin(np.arange(n), [self._index[a] for a in self.agents])
        missing = live & ~mask & ~np.any([m for _, m in self._attached] or [np.zeros(n, bool)], axis=0)
        if missing.any():
            names = [self.scene.agent_ids[i] for i in np.flatnonzero(missing)[:5]]
            raise KeyError(f"step: no action for live agents {names}; give one per agent in env.agents "
                           "(or attach() a policy to them)")
        parts = [(p.act(self.state), m) for p, m in self._attached] + [(driven, mask), (brake, self._crashed)]
        self.state = step(self.state, merge_actions(n, *parts), entry_check_s=self.config.entry_check_s)
        t, ended = self.state.current_step, self.state.current_step >= self._end
        before = self.agents
        terminations, truncations = {}, {}
        for a in before:
            i = self._index[a]
            failed = (self.state.collision[i, t] and self.config.terminate_on_collision) or (
                self.state.offroad[i, t] and self.config.terminate_on_offroad)
            terminations[a] = bool(failed)
            truncations[a] = bool(not failed and (ended or not self.state.valid[i]))
            self._crashed[i] |= terminations[a]
            self._done[i] |= terminations[a] or truncations[a]  # PettingZoo agents are never revived
        self.agents = [] if ended else self._live()
        entered = [a for a in self.agents if a not in terminations]  # the log brought them in this step
        terminations.update(dict.fromkeys(entered, False))
        truncations.update(dict.fromkeys(entered, False))
        keys = [*before, *entered]
        return ({a: self._observe(a) for a in keys}, dict.fromkeys(keys, 0.0), terminations, truncations,
                {a: self._info(a) for a in keys})

    def _observe(self, agent: str) -> dict[str, np.ndarray]:
        return observe(self.state, self._index[agent], self.config, self._boxes)

    def _info(self, agent: str) -> dict[str, Any]:
        i, t = self._index[agent], self.state.current_step
        return {"step": t, "collision": bool(self.state.collision[i, t]), "offroad": bool(self.state.offroad[i, t]),
                "min_ttc": ego_min_ttc(self.state, i, self.config.ttc_horizon_s)}

    def render(self):
        if self.render_mode is None or self.state is None:
            return None
        from blm_gym.render import RenderConfig, Renderer

        if self._renderer is None:
            self._renderer = Renderer(RenderConfig())
        return self._renderer.render(self.state)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
