"""Rule-based reward terms, shared by the env wrappers and the diffusion fine-tuning.

A term is any callable ``term(ctx: RewardContext) -> np.ndarray`` returning one score per sample,
shaped ``ctx.batch_shape`` (the leading dims of the state arrays). **Higher is better**: penalties
are returned as negative numbers, so weights in :func:`make_reward` are positive. Terms are plain
numpy and deliberately non-differentiable; PPO never needs their gradient.

A term may declare ``window`` (int, default 1): how many consecutive states it needs. The env
wrappers keep that many recent states and score the window each step (``progress`` needs 2,
``comfort`` 3), so per-step values add up to the score of the whole trajectory.

Every term scores the ``controlled`` agents (the ego in the env wrappers, the model-driven agents
in fine-tuning) against *all* valid agents, and averages over controlled agent-steps.

Write your own as a function (see ``examples/custom_reward.py``)::

    @register_term("slow")
    def slow(ctx, limit=5.0):
        return 0.0 - _masked_mean(np.maximum(ctx.speed - limit, 0), ctx.focus)
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from blm_gym.data.scene import AgentType, DrivableArea, Scene, Trajectories
from blm_gym.sim.geometry import boxes_overlap
from blm_gym.sim.record import Rollout
from blm_gym.sim.rss import rss_violations as _rss
from blm_gym.sim.state import SimulatorState, trajectory_checks
from blm_gym.sim.ttc import time_to_collision


@dataclass(frozen=True)
class RewardContext:
    """States of N agents over T steps, with leading sample dims ``...`` (T = 1 for one step).

    ``x, y`` [m], ``heading`` [rad], ``speed`` [m/s], ``valid``: ``(..., N, T)``.
    ``length, width`` [m]: ``(N,)`` or ``(..., N)``. ``agent_type``: int ``(N,)`` of
    :class:`AgentType`. ``controlled``: bool ``(N,)`` (or ``(..., N)``: :meth:`each_agent`), the
    agents being scored. ``ego_index``: the ego agent. ``dt`` [s]: step between states. ``drivable``: the scene's drivable area.
    ``collision``, ``offroad``: bool ``(..., N, T)``, the simulator's per-step checks of these
    states (:func:`blm_gym.sim.state.trajectory_checks`): read from the
    :class:`~blm_gym.sim.state.SimulatorState` in an env, computed once for decoded plans.
    """

    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    speed: np.ndarray
    valid: np.ndarray
    length: np.ndarray
    width: np.ndarray
    agent_type: np.ndarray
    controlled: np.ndarray
    ego_index: int
    dt: float
    drivable: DrivableArea
    collision: np.ndarray
    offroad: np.ndarray

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.x.shape[:-2]

    @property
    def focus(self) -> np.ndarray:
        """Bool ``(..., N, T)``: scored agent-steps (controlled and valid)."""
        return self.valid & self.controlled[..., None]

    def each_agent(self, agents) -> "RewardContext":
        """This context with a new leading dim over ``agents`` (indices ``(M,)``): row ``m`` scores
        agent ``agents[m]`` alone (``controlled`` one-hot), so a term returns ``(M, ...)``, each
        agent's own score (per-agent credit in fine-tuning). Arrays are broadcast views, not copies."""
        agents = np.asarray(agents, int)
        m, n = len(agents), len(self.agent_type)
        one_hot = np.zeros((m, n), bool)
        one_hot[np.arange(m), agents] = True
        lead = lambda a: np.broadcast_to(a, (m,) + np.shape(a))  # noqa: E731
        per_sample = {k: lead(getattr(self, k)) for k in ("x", "y", "heading", "speed", "valid", "collision", "offroad")}
        sizes = {k: getattr(self, k) if np.ndim(getattr(self, k)) == 1 else lead(getattr(self, k))
                 for k in ("length", "width")}
        controlled = one_hot.reshape((m,) + (1,) * len(self.batch_shape) + (n,))
        return dataclasses.replace(self, **per_sample, **sizes, controlled=controlled)

    @functools.cached_property
    def steps(self) -> dict[str, np.ndarray]:
        """Every per-agent array as ``(..., T, N)`` (the simulator geometry's layout).

        Keys: ``x, y, heading, speed, vx, vy, length, width, valid``.
        """
        shape = self.x.shape[:-2] + self.x.shape[-1:] + self.x.shape[-2:-1]
        out = {k: np.swapaxes(getattr(self, k), -1, -2) for k in ("x", "y", "heading", "speed", "valid")}
        out["vx"] = out["speed"] * np.cos(out["heading"])
        out["vy"] = out["speed"] * np.sin(out["heading"])
        for k in ("length", "width"):
            out[k] = np.broadcast_to(np.asarray(getattr(self, k))[..., None, :], shape)
        return out

    @staticmethod
    def from_scene(scene: Scene, x, y, heading, speed, valid, controlled=None,
                   agent_index=None) -> "RewardContext":
        """Context for states ``(..., N, T)`` of the scene's agents ``agent_index`` (default all),
        e.g. decoded plans; the per-step checks are computed here, once.

        ``controlled`` (bool ``(N,)``) defaults to every agent.
        """
        idx = np.arange(scene.num_agents) if agent_index is None else np.asarray(agent_index)
        if scene.ego_index not in idx:
            raise ValueError("RewardContext.from_scene: agent_index must include the scene's ego agent")
        n = len(idx)
        x = np.asarray(x, np.float32)
        if x.ndim < 2 or x.shape[-2] != n:
            raise ValueError(f"RewardContext.from_scene: states must be (..., N={n}, T), got {x.shape}")
        states = Trajectories.from_states(x, y, heading, speed, scene.traj.length[idx], scene.traj.width[idx],
                                          np.asarray(valid, bool))
        collision, offroad = trajectory_checks(states, scene.road.drivable, scene.is_vehicle[idx])
        return RewardContext._of(states, scene, idx, controlled, collision, offroad)

    @staticmethod
    def from_state(state: SimulatorState, controlled=None, window: int = 1) -> "RewardContext":
        """Context over the last ``window`` steps of a simulation, with the checks its steps wrote
        (the env wrappers' view)."""
        t0 = max(0, state.current_step - window + 1)
        steps = slice(t0, state.current_step + 1)
        return RewardContext._of(state.sim.select(steps=steps), state.scene, np.arange(state.scene.num_agents),
                                 controlled, state.collision[:, steps], state.offroad[:, steps])

    @staticmethod
    def from_rollout(rollout: Rollout, drivable: DrivableArea) -> "RewardContext":
        """Context over a recorded rollout's K samples (leading dim K: states ``(K, N, T)``), with the
        checks it recorded; scores the agents the policy drove (``rollout.controlled``)."""
        return RewardContext(
            x=rollout.x, y=rollout.y, heading=rollout.heading, speed=rollout.speed, valid=rollout.valid,
            length=rollout.log.length, width=rollout.log.width, agent_type=rollout.agent_type,
            controlled=rollout.controlled, ego_index=rollout.ego_index, dt=rollout.dt, drivable=drivable,
            collision=rollout.collision, offroad=rollout.offroad,
        )

    @staticmethod
    def _of(states: Trajectories, scene: Scene, idx: np.ndarray, controlled, collision, offroad) -> "RewardContext":
        controlled = np.ones(len(idx), bool) if controlled is None else np.asarray(controlled, bool)
        return RewardContext(
            x=states.x, y=states.y, heading=states.heading, speed=states.speed, valid=states.valid,
            length=states.length, width=states.width, agent_type=scene.agent_type[idx], controlled=controlled,
            ego_index=int(np.flatnonzero(idx == scene.ego_index)[0]), dt=scene.dt, drivable=scene.road.drivable,
            collision=collision, offroad=offroad,
        )


@runtime_checkable
class RewardTerm(Protocol):
    """Scores samples: ``(ctx) -> (...)`` floats, higher is better. Optional ``window`` attribute."""

    def __call__(self, ctx: RewardContext) -> np.ndarray: ...


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the last two axes where ``mask``; 0 where nothing is masked in."""
    values, mask = np.broadcast_arrays(np.asarray(values, np.float64), mask)
    count = mask.sum(axis=(-2, -1))
    return np.where(mask, values, 0.0).sum(axis=(-2, -1)) / np.maximum(count, 1)


# ---- terms -------------------------------------------------------------------------------------

def _agent_first(a: np.ndarray) -> np.ndarray:
    """``(..., T, N)`` -> ``(..., N, T)``."""
    return np.swapaxes(a, -1, -2)


def _agent_any_mean(hit: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Fraction of scored agents (``scored`` ``(..., N, T)`` true anywhere) with ``hit`` at a scored step.

    Per-agent "any step" counts match the closed-loop ``*_rate_any`` metrics; with one state
    (``T = 1``, the env wrappers) it is the fraction of scored agents hit at that step.
    """
    agents = scored.any(-1)
    return (hit & scored).any(-1).sum(-1) / np.maximum(agents.sum(-1), 1)


def _pair_overlaps(ctx: RewardContext) -> np.ndarray:
    """Bool ``(..., T, N, N)``: agents ``i`` and ``j``'s boxes overlap at a step (the simulator's test)."""
    st = ctx.steps
    return boxes_overlap(st["x"], st["y"], st["heading"], st["length"], st["width"], st["valid"])


def collision(ctx: RewardContext, ignore_ego: float = 0.0) -> np.ndarray:
    """Minus the fraction of scored agents whose box overlaps another valid agent's box at any step.

    ``ignore_ego=1``: contact with the ego does not count (traffic that should make an AV under
    test's situations critical without colliding among itself, with ``safety_critical``).
    """
    hit = ctx.collision
    if ignore_ego:
        pairs = _pair_overlaps(ctx)
        others = np.arange(pairs.shape[-1]) != ctx.ego_index
        hit = _agent_first((pairs & others & others[:, None]).any(-1))
    return 0.0 - _agent_any_mean(hit, ctx.focus)


def offroad(ctx: RewardContext, from_road: float = 0.0) -> np.ndarray:
    """Minus the fraction of scored *vehicles* whose centre is off the drivable area at any step.

    ``from_road=1`` scores only vehicles on the drivable area at their first valid state (the
    ``offroad_rate_any`` metric: leaving the road, not parking beside it; needs ``T > 1``).
    """
    off = ctx.offroad
    scored = ctx.focus & (ctx.agent_type == AgentType.VEHICLE)[:, None]
    if from_road:
        first = np.argmax(ctx.valid, axis=-1)[..., None]
        scored = scored & ~np.take_along_axis(off, first, -1)
    return 0.0 - _agent_any_mean(off, scored)


def _ttc(ctx: RewardContext, horizon: float, num_discs: int) -> np.ndarray:
    """Pairwise time to collision [s] ``(..., T, N, N)`` (:func:`blm_gym.sim.ttc.time_to_collision`)."""
    st = ctx.steps
    return time_to_collision(st["x"], st["y"], st["vx"], st["vy"], st["length"], st["width"], st["valid"],
                             horizon, heading=st["heading"], num_discs=num_discs)


def time_to_collision_penalty(ctx: RewardContext, threshold: float = 2.0, num_discs: int = 3) -> np.ndarray:
    """Minus the mean of ``max(0, 1 - ttc / threshold)`` over scored agent-steps (TTC in seconds).

    TTC is each agent's minimum constant-velocity time to collision with any other valid agent
    (:mod:`blm_gym.sim.ttc`, ``num_discs`` discs per box): 0 above the threshold, 1 when touching.
    """
    ttc = _ttc(ctx, threshold, int(num_discs)).min(-1)
    return 0.0 - _masked_mean(np.maximum(0.0, 1.0 - _agent_first(ttc) / threshold), ctx.focus)


def speed_limit(ctx: RewardContext, limit: float = 15.0) -> np.ndarray:
    """Minus the mean excess speed over ``limit`` [m/s] of scored agent-steps."""
    return 0.0 - _masked_mean(np.maximum(ctx.speed - limit, 0.0), ctx.focus)


def target_speed(ctx: RewardContext, target: float = 10.0) -> np.ndarray:
    """Minus the mean absolute deviation [m/s] of scored agents' speed from ``target``."""
    return 0.0 - _masked_mean(np.abs(ctx.speed - target), ctx.focus)


def progress(ctx: RewardContext) -> np.ndarray:
    """Mean over scored agents of the distance [m] travelled along their own heading.

    Sums ``(dx, dy) . (cos h, sin h)`` over consecutive valid state pairs, so per-step values
    (window 2) add up to the whole trajectory's; reversing counts negative.
    """
    h = ctx.heading[..., :-1]
    along = np.diff(ctx.x, axis=-1) * np.cos(h) + np.diff(ctx.y, axis=-1) * np.sin(h)
    pair = ctx.focus[..., 1:] & ctx.focus[..., :-1]
    agents = ctx.focus.any(-1)
    total = np.where(pair, along, 0.0).sum(-1)
    return np.where(agents, total, 0.0).sum(-1) / np.maximum(agents.sum(-1), 1)


progress.window = 2


def comfort(ctx: RewardContext) -> np.ndarray:
    """Minus the mean absolute longitudinal jerk [m/s^3] (second difference of speed / dt^2)."""
    jerk = np.diff(ctx.speed, n=2, axis=-1) / ctx.dt**2
    ok = ctx.focus[..., 2:] & ctx.focus[..., 1:-1] & ctx.focus[..., :-2]
    return 0.0 - _masked_mean(np.abs(jerk), ok)


comfort.window = 3


def rss_violations(ctx: RewardContext, lateral_weight: float = 1.0) -> np.ndarray:
    """Minus the fraction of scored vehicle-steps violating an RSS safe distance to another vehicle.

    Longitudinal violations count 1, lateral ones ``lateral_weight``; the definitions and
    parameters are :func:`blm_gym.metrics.safety.rss_violations` (Shalev-Shwartz et al. 2017).
    """
    st = ctx.steps
    vehicle = ctx.agent_type == AgentType.VEHICLE
    lon, lat = _rss(st["x"], st["y"], st["heading"], st["speed"], st["length"], st["width"], st["valid"] & vehicle)
    scored = ctx.focus & vehicle[:, None]
    return 0.0 - _masked_mean(_agent_first(lon), scored) - lateral_weight * _masked_mean(_agent_first(lat), scored)


ADVERSARY_MIN_SPEED = 1.0  # m/s


def safety_critical(ctx: RewardContext, adversary: int | None = None, distance_scale: float = 5.0,
                    ttc_scale: float = 2.0, collision_penalty: float = 2.0) -> np.ndarray:
    """Reward for an adversary that makes the ego's situation critical without wrecking the traffic.

    ``exp(-d_min / distance_scale) + exp(-ttc_min / ttc_scale) - collision_penalty * collided``:
    ``d_min`` [m] the closest ego-adversary centre distance over the steps, ``ttc_min`` [s] their
    smallest time to collision (3 discs per box; ``inf`` beyond 5 s, scoring 0; 0 in contact),
    ``collided`` whether the adversary's box overlaps an agent *other than the ego* at any step
    (contact with the ego under test is the point; crashing into bystanders is not). The
    adversary is agent ``adversary``
    or, by default, per sample the valid non-ego vehicle nearest the ego at the first step among
    those moving faster than ``ADVERSARY_MIN_SPEED`` (any vehicle if none moves); a sample with no
    valid non-ego vehicle at its first step scores 0 (closed-loop chains can start so).
    """
    ego = ctx.ego_index
    n = ctx.x.shape[-2]
    if adversary is None:
        d0 = np.hypot(ctx.x[..., 0] - ctx.x[..., ego, None, 0], ctx.y[..., 0] - ctx.y[..., ego, None, 0])
        ok = ctx.valid[..., 0] & (ctx.agent_type == AgentType.VEHICLE) & (np.arange(n) != ego)
        alone = ~ok.any(-1)  # no vehicle to make the ego's situation critical: those samples score 0
        # prefer a moving vehicle: a parked car next to the ego cannot make its scene critical
        moving = ok & (ctx.speed[..., 0] > ADVERSARY_MIN_SPEED)
        ok = np.where(moving.any(-1, keepdims=True), moving, ok)
        adv = np.argmin(np.where(ok, d0, np.inf), axis=-1)  # (...)
    else:
        if adversary != int(adversary) or not 0 <= adversary < n or adversary == ego:
            raise ValueError(f"safety_critical: adversary must index a non-ego agent in [0, {n}), got {adversary}")
        adv = np.full(ctx.batch_shape, int(adversary))
        alone = np.zeros(ctx.batch_shape, bool)
    pick = lambda a: np.take_along_axis(np.asarray(a), adv[..., None, None], axis=-2)[..., 0, :]  # noqa: E731
    both = ctx.valid[..., ego, :] & pick(ctx.valid)
    dist = np.hypot(pick(ctx.x) - ctx.x[..., ego, :], pick(ctx.y) - ctx.y[..., ego, :])
    d_min = np.where(both, dist, np.inf).min(-1)
    ttc_min = pick(_agent_first(_ttc(ctx, 5.0, 3)[..., ego, :])).min(-1)
    adversary_hits = np.take_along_axis(_pair_overlaps(ctx), adv[..., None, None, None], -2)[..., 0, :]  # (..., T, N)
    collided = (adversary_hits & (np.arange(n) != ego)).any((-2, -1))
    score = np.exp(-d_min / distance_scale) + np.exp(-ttc_min / ttc_scale) - collision_penalty * collided
    return np.where(alone, 0.0, score)


# ---- registry and weighted sums ----------------------------------------------------------------

REWARD_TERMS: dict[str, Callable[..., np.ndarray]] = {}


def register_term(name: str):
    """Decorator: make a term function ``f(ctx, **params)`` available to :func:`make_reward`."""
    def add(fn):
        REWARD_TERMS[name] = fn
        return fn
    return add


for _name, _fn in [("collision", collision), ("offroad", offroad), ("ttc", time_to_collision_penalty),
                   ("speed_limit", speed_limit), ("target_speed", target_speed), ("progress", progress),
                   ("comfort", comfort), ("rss", rss_violations), ("safety_critical", safety_critical)]:
    register_term(_name)(_fn)


@dataclass(frozen=True)
class BoundTerm:
    """A registered term with fixed parameters; keeps the function's ``window``."""

    fn: Callable[..., np.ndarray]
    params: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def window(self) -> int:
        return getattr(self.fn, "window", 1)

    def __call__(self, ctx: RewardContext) -> np.ndarray:
        return np.asarray(self.fn(ctx, **self.params), np.float64)


def get_term(name: str, **params) -> BoundTerm:
    """The registered term ``name`` with ``params``; unknown names list the known ones."""
    if name not in REWARD_TERMS:
        raise ValueError(f"unknown reward term {name!r}; known terms: {sorted(REWARD_TERMS)} "
                         "(add your own with blm_gym.rewards.register_term)")
    return BoundTerm(REWARD_TERMS[name], dict(params))


@dataclass(frozen=True)
class WeightedReward:
    """``sum_k weight_k * term_k(ctx)``; ``terms`` maps a label to ``(weight, term)``."""

    terms: Mapping[str, tuple[float, RewardTerm]]

    @property
    def window(self) -> int:
        return max((getattr(t, "window", 1) for _, t in self.terms.values()), default=1)

    def values(self, ctx: RewardContext) -> dict[str, np.ndarray]:
        """Unweighted value of every term, ``(...)`` each."""
        return {k: np.asarray(t(ctx), np.float64) for k, (_, t) in self.terms.items()}

    def __call__(self, ctx: RewardContext) -> np.ndarray:
        vals = self.values(ctx)
        return sum((w * vals[k] for k, (w, _) in self.terms.items()), np.zeros(ctx.batch_shape))


_ITEM = re.compile(r"^\s*(\w+)\s*(?:\((.*)\))?\s*(?:=\s*([^=]+))?\s*$")


def make_reward(spec: str) -> WeightedReward:
    """Parse ``"collision=1,offroad=0.5,target_speed(target=12)=0.2,progress"`` (weight defaults to 1).

    Parameters in parentheses are passed to the term as floats.
    """
    items = [s for s in re.split(r",(?![^()]*\))", spec) if s.strip()]
    if not items:
        raise ValueError(f"empty reward spec {spec!r}; e.g. 'collision=1,offroad=1'")
    terms: dict[str, tuple[float, RewardTerm]] = {}
    for item in items:
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"reward spec item {item!r} is not 'name=weight' or 'name(param=value)=weight'")
        name, params, weight = m.groups()
        kwargs = {}
        for p in filter(str.strip, (params or "").split(",")):
            key, sep, val = p.partition("=")
            try:
                kwargs[key.strip()] = float(val)
            except ValueError:
                raise ValueError(f"reward spec {item!r}: parameter {p!r} is not key=number") from None
        try:
            w = 1.0 if weight is None else float(weight)
        except ValueError:
            raise ValueError(f"reward spec {item!r}: weight {weight!r} is not a number") from None
        label = f"{name}({params})" if params else name
        terms[label if label not in terms else f"{label}#{len(terms)}"] = (w, get_term(name, **kwargs))
    return WeightedReward(terms)
