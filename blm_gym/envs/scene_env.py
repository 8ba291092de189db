"""A gymnasium.Env over one traffic scene at a time.

By default the action drives the ego (the driving policy under test) and a pluggable background
policy drives every other agent. With ``control="all"`` the action drives up to ``max_agents``
agents jointly (fixed slot count + mask), e.g. for a traffic model trained as an RL agent.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from blm_gym.data.scene import AgentType, Scene
from blm_gym.data.source import SceneSource
from blm_gym.policies.base import Policy
from blm_gym.sim import geometry, ttc
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, wrap_angle
from blm_gym.sim.state import ENTRY_CHECK_S, Action, SimState, check_entry_check_s, step

AGENT_FEATURES = 8  # dx, dy, cos dh, sin dh, vx, vy (ego frame), length, width


@dataclass(frozen=True)
class EnvConfig:
    """Episode and observation settings shared by every env id.

    Times are in seconds of scene time (dt 0.1 s). ``control``: ``"ego"`` (action drives the ego)
    or ``"all"`` (action rows drive the ``max_agents`` vehicles nearest the ego at reset).
    """

    start_time_s: float = 1.0  # history before the first simulated step (models need context)
    horizon_s: float = 10.0  # episode length; truncated earlier if the log ends
    control: str = "ego"
    max_agents: int = 32  # action slots in "all" mode
    num_neighbors: int = 8  # nearest agents in the observation
    num_lanes: int = 8  # nearest lane polylines in the observation
    lane_points: int = 10  # points per observed lane (resampled from the nearest part)
    observation_radius_m: float = 50.0
    terminate_on_collision: bool = True
    terminate_on_offroad: bool = False
    ttc_horizon_s: float = 5.0
    freeze_agents: bool = False  # only the agents valid at reset take part (blm_gym.sim.state.step)
    entry_check_s: float = ENTRY_CHECK_S  # newcomers wait while their spawn conflicts (blm_gym.sim.state.step); 0: off


def _ego_frame(x, y, h, ox, oy, oh):
    """World points/headings -> frame at (ox, oy) rotated by oh."""
    c, s = np.cos(oh), np.sin(oh)
    dx, dy = x - ox, y - oy
    return c * dx + s * dy, -s * dx + c * dy, h - oh


class SceneEnv(gym.Env):
    """Multi-agent closed-loop traffic over scenes of a :class:`SceneSource`.

    Observation (dict, ego frame, metres, m/s):
      ``ego`` (4,): speed, yaw rate over the last step, length, width
      ``neighbors`` (K, 8) + ``neighbors_mask`` (K,): nearest valid agents within the radius
      ``lanes`` (L, P, 2) + ``lanes_mask`` (L, P): nearest lane centerline pieces
      in ``"all"`` mode also ``agents`` (M, 8) + ``agents_mask`` (M,) in action-slot order.
    Action: ``(2,)`` = (acceleration m/s^2, yaw rate rad/s), or ``(M, 2)`` in ``"all"`` mode.
    Reward: 0 -- rewards are added by the wrappers in :mod:`blm_gym.rewards`.
    Termination: ego collision (and off-road if configured); truncation at the horizon, at the
    end of the log, or when the log ends the ego's track.
    ``info``: ``scene_id``, ``step``, ``collision``, ``offroad``, ``min_ttc`` (ego, s),
    ``collisions``/``offroads`` (N,) bool over all agents, ``controlled`` (N,) bool.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 10}

    def __init__(self, source: SceneSource, *, config: EnvConfig = EnvConfig(),
                 background: Policy | str | Callable[[], Policy] = "log", render_mode: str | None = None,
                 render_config=None):
        if config.control not in ("ego", "all"):
            raise ValueError(f"control must be 'ego' or 'all', got {config.control!r}")
        check_entry_check_s(config.entry_check_s)  # fail at construction, not at the first step
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.source = source
        self.config = config
        self.render_mode = render_mode
        self._render_config = render_config
        self._renderer = None
        self.background = _make_policy(background)
        b = DEFAULT_BOUNDS
        low, high = np.array([b.min_accel, -b.max_yaw_rate], np.float32), np.array([b.max_accel, b.max_yaw_rate], np.float32)
        if config.control == "all":
            m = config.max_agents
            self.action_space = spaces.Box(np.tile(low, (m, 1)), np.tile(high, (m, 1)), dtype=np.float32)
        else:
            self.action_space = spaces.Box(low, high, dtype=np.float32)
        big = np.float32(1e4)
        obs = {
            "ego": spaces.Box(-big, big, (4,), np.float32),
            "neighbors": spaces.Box(-big, big, (config.num_neighbors, AGENT_FEATURES), np.float32),
            "neighbors_mask": spaces.MultiBinary(config.num_neighbors),
            "lanes": spaces.Box(-big, big, (config.num_lanes, config.lane_points, 2), np.float32),
            "lanes_mask": spaces.MultiBinary((config.num_lanes, config.lane_points)),
        }
        if config.control == "all":
            obs["agents"] = spaces.Box(-big, big, (config.max_agents, AGENT_FEATURES), np.float32)
            obs["agents_mask"] = spaces.MultiBinary(config.max_agents)
        self.observation_space = spaces.Dict(obs)
        self.scene: Scene | None = None
        self.sim_state: SimState | None = None

    # ------------------------------------------------------------------ episode
    @property
    def ego_index(self) -> int:
        return self.scene.ego_index

    def _pick_scene(self, options: dict) -> Scene:
        ids = list(self.source.scene_ids)
        if "scene_id" in options:
            if options["scene_id"] not in ids:
                raise KeyError(f"scene_id {options['scene_id']!r} not in this dataset; available: {ids}")
            return self.source.load(ids.index(options["scene_id"]))
        if "scene_index" in options:
            i = int(options["scene_index"])
            if not 0 <= i < len(ids):
                raise IndexError(f"scene_index {i} out of range: the dataset has {len(ids)} scenes")
            return self.source.load(i)
        for i in self.np_random.permutation(len(ids)):
            scene = self.source.load(int(i))
            if scene.is_vehicle.any() and scene.num_steps > self._start_step(scene) + 1:
                return scene
            warnings.warn(f"skipping scene {scene.scene_id}: no vehicles or too short to simulate", stacklevel=2)
        raise RuntimeError("no scene in this dataset has vehicles and enough steps to simulate")

    def _start_step(self, scene: Scene) -> int:
        return min(int(round(self.config.start_time_s / scene.dt)), scene.num_steps - 2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        scene = self._pick_scene(options or {})
        start = self._start_step(scene)
        if not scene.traj.valid[scene.ego_index, start]:
            valid_steps = np.flatnonzero(scene.traj.valid[scene.ego_index])
            start = int(valid_steps[0]) if len(valid_steps) and valid_steps[0] < scene.num_steps - 1 else start
        self.scene = scene
        masked = np.where(scene.road.lane_mask[..., None], scene.road.lanes, np.nan)
        self._lane_boxes = (np.nan_to_num(np.nanmin(masked, axis=1), nan=np.inf),
                            np.nan_to_num(np.nanmax(masked, axis=1), nan=-np.inf))
        self.sim_state = SimState.from_log(scene.traj, start)
        self._start = start
        self._end = min(scene.num_steps - 1, start + int(round(self.config.horizon_s / scene.dt)))
        self._slots = self._action_slots()
        self.controlled = np.zeros(scene.num_agents, bool)
        self.controlled[self._slots[self._slots >= 0]] = True
        self.background.reset(scene, start, ~self.controlled, self.np_random)
        self._prev_state = self.sim_state  # for the ego's yaw rate in the observation
        events = self._events()
        return self._observe(), self._info(events)

    def _action_slots(self) -> np.ndarray:
        """Agent index driven by each action row (-1 = empty slot)."""
        if self.config.control == "ego":
            return np.array([self.scene.ego_index])
        s = self.sim_state
        cand = np.flatnonzero(s.valid & (self.scene.agent_type == AgentType.VEHICLE))
        d = np.hypot(s.x[cand] - s.x[self.ego_index], s.y[cand] - s.y[self.ego_index])
        chosen = cand[np.argsort(d, kind="stable")][: self.config.max_agents]
        slots = np.full(self.config.max_agents, -1)
        slots[: len(chosen)] = chosen
        return slots

    def _validate_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action has shape {a.shape}; expected {self.action_space.shape} "
                             "(acceleration m/s^2, yaw rate rad/s" + (" per agent slot)" if a.ndim > 1 else ")"))
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or inf; pass finite (acceleration, yaw rate) values")
        return a.reshape(-1, 2)

    def step(self, action):
        if self.scene is None:
            raise RuntimeError("call reset() before step()")
        rows = self._validate_action(action)
        bg = self.background.act(self.sim_state)
        accel_yaw, replay = bg.accel_yaw.copy(), bg.replay_log & ~self.controlled
        used = self._slots >= 0
        accel_yaw[self._slots[used]] = rows[used]
        self._prev_state = self.sim_state
        self.sim_state = step(self.sim_state, Action(accel_yaw, replay), self.scene.traj, self.scene.dt,
                              freeze_agents=self.config.freeze_agents, entry_check_s=self.config.entry_check_s)
        events = self._events()
        ego_failed = (events["collision"] and self.config.terminate_on_collision) or (
            events["offroad"] and self.config.terminate_on_offroad)
        terminated = bool(ego_failed)
        ego_left = not self.sim_state.valid[self.ego_index]  # the log ends the ego's track (e.g. map exit)
        truncated = bool((self.sim_state.step >= self._end or ego_left) and not terminated)
        return self._observe(), 0.0, terminated, truncated, self._info(events)

    # ------------------------------------------------------------------ events / observation
    def _events(self) -> dict[str, Any]:
        s, e = self.sim_state, self.ego_index
        collisions = geometry.agent_collisions(s.x, s.y, s.heading, s.length, s.width, s.valid)
        offroads = geometry.offroad(self.scene.road.drivable, s.x, s.y, s.valid & self.scene.is_vehicle)
        # 3 discs per box (tbsim): a single bounding disc reads TTC 0 for cars in adjacent lanes
        ttc_e = ttc.time_to_collision(s.x, s.y, s.vx, s.vy, s.length, s.width, s.valid, horizon=self.config.ttc_horizon_s,
                                      heading=s.heading, num_discs=3)[e]
        return {"collision": bool(collisions[e]), "offroad": bool(offroads[e]),
                "min_ttc": float(np.min(ttc_e)) if len(ttc_e) else float("inf"),
                "collisions": collisions, "offroads": offroads}

    def _info(self, events: dict) -> dict[str, Any]:
        return {"scene_id": self.scene.scene_id, "step": self.sim_state.step, "controlled": self.controlled.copy(),
                "agent_slots": self._slots.copy(), **events}

    def _agent_features(self, idx: np.ndarray) -> np.ndarray:
        s, e = self.sim_state, self.ego_index
        x, y, h = _ego_frame(s.x[idx], s.y[idx], s.heading[idx], s.x[e], s.y[e], s.heading[e])
        v = s.speed[idx]
        return np.stack([x, y, np.cos(h), np.sin(h), v * np.cos(h), v * np.sin(h),
                         s.length[idx], s.width[idx]], -1).astype(np.float32)

    def _observe(self) -> dict[str, np.ndarray]:
        c, s, e = self.config, self.sim_state, self.ego_index
        d = np.hypot(s.x - s.x[e], s.y - s.y[e])
        near = np.flatnonzero(s.valid & (d < c.observation_radius_m) & (np.arange(len(d)) != e))
        near = near[np.argsort(d[near], kind="stable")][: c.num_neighbors]
        neighbors = np.zeros((c.num_neighbors, AGENT_FEATURES), np.float32)
        neighbors[: len(near)] = self._agent_features(near)
        mask = np.zeros(c.num_neighbors, np.int8)
        mask[: len(near)] = 1
        prev = self._prev_state
        yaw_rate = wrap_angle(s.heading[e] - prev.heading[e]) / self.scene.dt
        obs = {
            "ego": np.array([s.speed[e], yaw_rate, s.length[e], s.width[e]], np.float32),
            "neighbors": neighbors, "neighbors_mask": mask, **self._observe_lanes(),
        }
        if c.control == "all":
            used = self._slots >= 0
            agents = np.zeros((c.max_agents, AGENT_FEATURES), np.float32)
            agents[used] = self._agent_features(self._slots[used])
            obs["agents"], obs["agents_mask"] = agents, (used & s.valid[np.maximum(self._slots, 0)]).astype(np.int8)
        return obs

    def _observe_lanes(self) -> dict[str, np.ndarray]:
        """The ``num_lanes`` lanes with a point nearest the ego, each from that point on (P points)."""
        c, s, e = self.config, self.sim_state, self.ego_index
        lanes, mask = self.scene.road.lanes, self.scene.road.lane_mask
        out = np.zeros((c.num_lanes, c.lane_points, 2), np.float32)
        out_mask = np.zeros((c.num_lanes, c.lane_points), np.int8)
        # Cheap prefilter by per-lane bounding boxes (computed once per scene) before point distances.
        lo, hi = self._lane_boxes
        gap = np.maximum(np.maximum(lo - [s.x[e], s.y[e]], [s.x[e], s.y[e]] - hi), 0)
        cand = np.flatnonzero(np.hypot(gap[:, 0], gap[:, 1]) < c.observation_radius_m)
        if len(cand):
            d = np.where(mask[cand], np.hypot(lanes[cand, :, 0] - s.x[e], lanes[cand, :, 1] - s.y[e]), np.inf)
            nearest_pt = np.argmin(d, axis=1)
            nearest_d = d[np.arange(len(cand)), nearest_pt]
            order = np.argsort(nearest_d, kind="stable")[: c.num_lanes]
            order = order[nearest_d[order] < c.observation_radius_m]
            pts = nearest_pt[order, None] + np.arange(c.lane_points)[None, :]
            pts_ok = pts < lanes.shape[1]
            pts = np.minimum(pts, lanes.shape[1] - 1)
            xy = lanes[cand[order][:, None], pts]
            ok = mask[cand[order][:, None], pts] & pts_ok
            lx, ly, _ = _ego_frame(xy[..., 0], xy[..., 1], 0.0, s.x[e], s.y[e], s.heading[e])
            out[: len(order)] = np.where(ok[..., None], np.stack([lx, ly], -1), 0.0)
            out_mask[: len(order)] = ok
        return {"lanes": out, "lanes_mask": out_mask}

    # ------------------------------------------------------------------ rendering
    def render(self):
        if self.render_mode is None or self.scene is None:
            return None
        from blm_gym.render import RenderConfig, Renderer

        if self._renderer is None:
            self._renderer = Renderer(self._render_config or RenderConfig())
        ev = self._events()
        frame = self._renderer.render(self.scene, self.sim_state, collided=ev["collisions"], offroad=ev["offroads"])
        if self.render_mode == "human":
            self._renderer.show(frame)
            return None
        return frame

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def _make_policy(spec) -> Policy:
    """A policy from a name (``"log"``, ``"constant_velocity"``, ``"idm"``, ``"blm"``), a factory or an instance."""
    if isinstance(spec, str):
        from blm_gym.policies import make_policy

        return make_policy(spec)
    if isinstance(spec, Policy):
        return spec
    if callable(spec):
        return spec()
    raise TypeError(f"background must be a policy name, a Policy or a factory; got {type(spec).__name__}")
