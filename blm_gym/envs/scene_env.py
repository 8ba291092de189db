"""A gymnasium.Env over one traffic scene at a time.

By default the action drives the ego (the driving policy under test) and a pluggable background
policy drives every other agent. With ``control="all"`` the action drives up to ``max_agents``
agents jointly (fixed slot count + mask), e.g. for a traffic model trained as an RL agent; for
one agent per vehicle use the PettingZoo env of :mod:`blm_gym.envs.parallel`.

The env holds one :class:`~blm_gym.sim.state.SimulatorState` (``env.unwrapped.state``) and
advances it with :func:`~blm_gym.sim.state.step`, the step the rollout runner takes too; an
episode can be recorded with :meth:`SceneEnv.rollout` and scored like any rollout.
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
from blm_gym.sim import ttc
from blm_gym.sim.kinematics import DEFAULT_BOUNDS, wrap_angle
from blm_gym.sim.state import (ENTRY_CHECK_S, Action, Membership, SimulatorState, check_entry_check_s,
                               merge_actions, step)

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
    membership: Membership = Membership.LOG  # who takes part and for how long (blm_gym.sim.state.Membership)
    entry_check_s: float = ENTRY_CHECK_S  # newcomers wait while their spawn conflicts (blm_gym.sim.state.step); 0: off


def _ego_frame(x, y, h, ox, oy, oh):
    """World points/headings -> frame at (ox, oy) rotated by oh."""
    c, s = np.cos(oh), np.sin(oh)
    dx, dy = x - ox, y - oy
    return c * dx + s * dy, -s * dx + c * dy, h - oh


def observation_space(config: EnvConfig) -> spaces.Dict:
    """The observation of one agent's viewpoint (see :class:`SceneEnv`); ``"all"`` mode adds the slots."""
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
    return spaces.Dict(obs)


def action_box(shape: tuple[int, ...] = ()) -> spaces.Box:
    """(acceleration m/s^2, yaw rate rad/s) within the simulator's bounds, ``shape + (2,)``."""
    b = DEFAULT_BOUNDS
    low = np.array([b.min_accel, -b.max_yaw_rate], np.float32)
    high = np.array([b.max_accel, b.max_yaw_rate], np.float32)
    return spaces.Box(np.broadcast_to(low, (*shape, 2)).copy(), np.broadcast_to(high, (*shape, 2)).copy(),
                      dtype=np.float32)


def lane_boxes(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-lane bounding boxes ``(L, 2)`` min and max (computed once per scene): a cheap prefilter."""
    masked = np.where(scene.road.lane_mask[..., None], scene.road.lanes, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows of empty lanes
        return (np.nan_to_num(np.nanmin(masked, axis=1), nan=np.inf),
                np.nan_to_num(np.nanmax(masked, axis=1), nan=-np.inf))


def agent_features(state: SimulatorState, viewpoint: int, idx: np.ndarray) -> np.ndarray:
    """Agents ``idx`` in ``viewpoint``'s frame: ``(len(idx), 8)`` = dx, dy, cos/sin dh, vx, vy, length, width."""
    s, e = state, viewpoint
    x, y, h = _ego_frame(s.x[idx], s.y[idx], s.heading[idx], s.x[e], s.y[e], s.heading[e])
    v = s.speed[idx]
    return np.stack([x, y, np.cos(h), np.sin(h), v * np.cos(h), v * np.sin(h),
                     s.length[idx], s.width[idx]], -1).astype(np.float32)


def observe(state: SimulatorState, viewpoint: int, config: EnvConfig, boxes: tuple[np.ndarray, np.ndarray]
            ) -> dict[str, np.ndarray]:
    """The observation of agent ``viewpoint`` (its own state, nearest neighbours and lanes)."""
    c, s, e = config, state, viewpoint
    d = np.hypot(s.x - s.x[e], s.y - s.y[e])
    near = np.flatnonzero(s.valid & (d < c.observation_radius_m) & (np.arange(len(d)) != e))
    near = near[np.argsort(d[near], kind="stable")][: c.num_neighbors]
    neighbors = np.zeros((c.num_neighbors, AGENT_FEATURES), np.float32)
    neighbors[: len(near)] = agent_features(s, e, near)
    mask = np.zeros(c.num_neighbors, np.int8)
    mask[: len(near)] = 1
    prev = max(s.current_step - 1, 0)
    yaw_rate = wrap_angle(s.heading[e] - s.sim.heading[e, prev]) / s.scene.dt if prev < s.current_step else 0.0
    return {"ego": np.array([s.speed[e], yaw_rate, s.length[e], s.width[e]], np.float32),
            "neighbors": neighbors, "neighbors_mask": mask, **observe_lanes(s, e, c, boxes)}


def observe_lanes(state: SimulatorState, viewpoint: int, config: EnvConfig,
                  boxes: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``num_lanes`` lanes with a point nearest the viewpoint, each from that point on (P points)."""
    c, s, e = config, state, viewpoint
    lanes, mask = s.scene.road.lanes, s.scene.road.lane_mask
    out = np.zeros((c.num_lanes, c.lane_points, 2), np.float32)
    out_mask = np.zeros((c.num_lanes, c.lane_points), np.int8)
    lo, hi = boxes
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


def ego_min_ttc(state: SimulatorState, agent: int, horizon_s: float) -> float:
    """Smallest constant-velocity time to collision (s) of ``agent`` with any other valid agent
    (3 discs per box, as tbsim: one bounding disc reads 0 for cars in adjacent lanes); inf if none
    within ``horizon_s``. Only that agent's row of the pairwise TTC is computed."""
    s = state
    row = ttc.time_to_collision(s.x, s.y, s.vx, s.vy, s.length, s.width, s.valid, horizon=horizon_s,
                                heading=s.heading, num_discs=3, rows=[agent])[0]
    return float(np.min(row)) if len(row) else float("inf")


def pick_scene(source: SceneSource, options: dict, rng: np.random.Generator, start_step) -> Scene:
    """The scene ``options`` names (``scene_id`` or ``scene_index``), else a random one with vehicles
    and enough steps to simulate after ``start_step(scene)``."""
    ids = list(source.scene_ids)
    if "scene_id" in options:
        if options["scene_id"] not in ids:
            raise KeyError(f"scene_id {options['scene_id']!r} not in this dataset; available: {ids}")
        return source.load(ids.index(options["scene_id"]))
    if "scene_index" in options:
        i = int(options["scene_index"])
        if not 0 <= i < len(ids):
            raise IndexError(f"scene_index {i} out of range: the dataset has {len(ids)} scenes")
        return source.load(i)
    for i in rng.permutation(len(ids)):
        scene = source.load(int(i))
        if scene.is_vehicle.any() and scene.num_steps > start_step(scene) + 1:
            return scene
        warnings.warn(f"skipping scene {scene.scene_id}: no vehicles or too short to simulate", stacklevel=3)
    raise RuntimeError("no scene in this dataset has vehicles and enough steps to simulate")


def start_step_of(scene: Scene, config: EnvConfig, agent: int | None = None) -> int:
    """The first simulated step: ``start_time_s`` into the scene, or ``agent``'s first valid step if later."""
    start = min(int(round(config.start_time_s / scene.dt)), scene.num_steps - 2)
    if agent is not None and not scene.traj.valid[agent, start]:
        valid_steps = np.flatnonzero(scene.traj.valid[agent])
        start = int(valid_steps[0]) if len(valid_steps) and valid_steps[0] < scene.num_steps - 1 else start
    return start


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
    ``info``: ``scene_id``, ``step``, ``collision``, ``offroad``, ``min_ttc`` (ego, s), and per agent
    slot, fixed size M = ``max_agents`` so vector envs can stack them: ``agent_slots`` (M,) scene
    indices (-1 = empty; the action slots in ``"all"`` mode, else the ego then the agents nearest
    it at reset), ``agent_mask``, ``agent_valid``, ``agent_collision``, ``agent_offroad``,
    ``agent_controlled`` (M,) bool. Every agent's checks are in ``env.unwrapped.state``.
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
        self.background = make_policy_from(background)
        self.action_space = action_box((config.max_agents,) if config.control == "all" else ())
        self.observation_space = observation_space(config)
        self.scene: Scene | None = None
        self.state: SimulatorState | None = None

    # ------------------------------------------------------------------ episode
    @property
    def ego_index(self) -> int:
        return self.scene.ego_index

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        scene = pick_scene(self.source, options or {}, self.np_random, lambda sc: start_step_of(sc, self.config))
        start = start_step_of(scene, self.config, scene.ego_index)
        self.scene = scene
        self._lane_boxes = lane_boxes(scene)
        self.state = SimulatorState.from_log(scene, start, self.config.membership)
        self._end = min(scene.num_steps - 1, start + int(round(self.config.horizon_s / scene.dt)))
        self._slots = self._agent_slots()
        self.controlled = np.zeros(scene.num_agents, bool)
        if self.config.control == "all":
            self.controlled[self._slots[self._slots >= 0]] = True
        else:
            self.controlled[scene.ego_index] = True
        self.background.reset(scene, start, ~self.controlled, self.np_random)
        return self._observe(), self._info()

    def _agent_slots(self) -> np.ndarray:
        """Scene index of each of the M agent slots (-1 = empty): in ``"all"`` mode the vehicles
        nearest the ego (the action rows), else the ego then the agents nearest it."""
        s, e, m = self.state, self.ego_index, self.config.max_agents
        keep = s.valid.copy()
        if self.config.control == "all":
            keep &= self.scene.agent_type == AgentType.VEHICLE
        else:
            keep[e] = True
        cand = np.flatnonzero(keep)
        d = np.hypot(s.x[cand] - s.x[e], s.y[cand] - s.y[e])
        chosen = cand[np.argsort(d, kind="stable")][:m]
        slots = np.full(m, -1)
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
        n = self.scene.num_agents
        driven = Action.zeros(n)
        if self.config.control == "all":
            used = self._slots >= 0
            driven.accel_yaw[self._slots[used]] = rows[used]
        else:
            driven.accel_yaw[self.ego_index] = rows[0]
        joint = merge_actions(n, (self.background.act(self.state), ~self.controlled), (driven, self.controlled))
        self.state = step(self.state, joint, entry_check_s=self.config.entry_check_s)
        info = self._info()
        ego_failed = (info["collision"] and self.config.terminate_on_collision) or (
            info["offroad"] and self.config.terminate_on_offroad)
        terminated = bool(ego_failed)
        ego_left = not self.state.valid[self.ego_index]  # the log ends the ego's track (e.g. map exit)
        truncated = bool((self.state.current_step >= self._end or ego_left) and not terminated)
        return self._observe(), 0.0, terminated, truncated, info

    def rollout(self, policy_name: str = "env"):
        """The episode so far as a one-sample :class:`~blm_gym.sim.record.Rollout` (the HDF5
        schema of ``blm-gym rollout``), so ``blm-gym metrics`` scores it like the runner's."""
        from blm_gym.rollout.runner import record_rollout

        if self.state is None:
            raise RuntimeError("call reset() and step() before rollout()")
        return record_rollout([self.state], policy_name, self.controlled.copy())

    # ------------------------------------------------------------------ info / observation
    def _info(self) -> dict[str, Any]:
        s, e, t = self.state, self.ego_index, self.state.current_step
        used = self._slots >= 0
        idx = np.maximum(self._slots, 0)
        return {"scene_id": self.scene.scene_id, "step": t, "collision": bool(s.collision[e, t]),
                "offroad": bool(s.offroad[e, t]), "min_ttc": ego_min_ttc(s, e, self.config.ttc_horizon_s),
                "agent_slots": self._slots.copy(), "agent_mask": used.copy(), "agent_valid": used & s.valid[idx],
                "agent_collision": used & s.collision[idx, t], "agent_offroad": used & s.offroad[idx, t],
                "agent_controlled": used & self.controlled[idx]}

    def _observe(self) -> dict[str, np.ndarray]:
        obs = observe(self.state, self.ego_index, self.config, self._lane_boxes)
        if self.config.control == "all":
            c, s = self.config, self.state
            used = self._slots >= 0
            agents = np.zeros((c.max_agents, AGENT_FEATURES), np.float32)
            agents[used] = agent_features(s, self.ego_index, self._slots[used])
            obs["agents"], obs["agents_mask"] = agents, (used & s.valid[np.maximum(self._slots, 0)]).astype(np.int8)
        return obs

    # ------------------------------------------------------------------ rendering
    def render(self):
        if self.render_mode is None or self.scene is None:
            return None
        from blm_gym.render import RenderConfig, Renderer

        if self._renderer is None:
            self._renderer = Renderer(self._render_config or RenderConfig())
        frame = self._renderer.render(self.state)
        if self.render_mode == "human":
            self._renderer.show(frame)
            return None
        return frame

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_policy_from(spec) -> Policy:
    """A policy from a name (``"log"``, ``"constant_velocity"``, ``"idm"``, ``"blm"``), a factory or an instance."""
    if isinstance(spec, str):
        from blm_gym.policies import make_policy

        return make_policy(spec)
    if isinstance(spec, Policy):
        return spec
    if callable(spec):
        return spec()
    raise TypeError(f"background must be a policy name, a Policy or a factory; got {type(spec).__name__}")
