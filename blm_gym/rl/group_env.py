"""K lockstep copies of each scene, and the terms that need all K rollouts of a scene.

:class:`SceneGroupVectorEnv` is a Tianshou ``DummyVectorEnv`` whose envs come in groups of
``group_size`` copies of one :class:`~blm_gym.rl.denoising_mdp.DenoisingMDP` problem, stepping
in lockstep (every episode has the same length), so each chain's end arrives for the whole group
at once. There it adds, per copy ``k`` of a group:

- the **leave-one-out realism term** (RLFTSim's MLOO): ``M(all K) - M(all but k)``, where ``M``
  is a WOSAC-style realism score of the executed chunk (:func:`chunk_realism`): how much rollout
  ``k`` raises the likelihood of the logged future under the group's rollouts;
- a **leave-one-out baseline** (RLOO): the mean task reward of the other ``K - 1`` copies is
  subtracted from copy ``k``'s, so the advantage compares plans of the same scene and time.
"""
from __future__ import annotations

from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
from tianshou.env import DummyVectorEnv

from blm_gym.data.scene import Scene
from blm_gym.metrics import wosac_features as wf
from blm_gym.metrics.wosac import WOSAC_2025, WosacConfig, log_likelihood_scenario_level, log_likelihood_timeseries
from blm_gym.rollout.runner import controlled_mask
from blm_gym.sim.state import trajectory_checks

TIMESERIES = ("linear_speed", "linear_acceleration", "angular_speed", "angular_acceleration",
              "distance_to_nearest_object")
PER_OBJECT = ("collision_indication", "offroad_indication")  # any step of the chunk, Bernoulli per object


def _features(scene: Scene, x, y, heading, valid, collision, offroad, evaluated: np.ndarray,
              dt: float) -> dict[str, np.ndarray]:
    """Realism features of states ``(B, N, T)`` and their per-step checks (bool, same shape):
    time series ``(B, E, T)`` and any-step flags ``(B, E)`` of the ``evaluated`` rows ``(E,)``."""
    zeros = np.zeros_like(x)
    speed, accel, dh, d2h = wf.kinematic_features(x[:, evaluated], y[:, evaluated], zeros[:, evaluated],
                                                  heading[:, evaluated], dt)
    traj = scene.traj
    dist = wf.distance_to_nearest_object(x, y, traj.length, traj.width, heading, valid, evaluated)
    return dict(linear_speed=speed, linear_acceleration=accel, angular_speed=dh, angular_acceleration=d2h,
                distance_to_nearest_object=dist, collision_indication=collision[:, evaluated].any(-1),
                offroad_indication=offroad[:, evaluated].any(-1))


def chunk_realism(scene: Scene, start: int, chunks: Sequence[dict], evaluated: np.ndarray,
                  config: WosacConfig = WOSAC_2025) -> np.ndarray:
    """Leave-one-out realism ``(K,)`` of K simulated chunks of one scene from log step ``start``.

    ``chunks``: dicts with ``x, y, heading, valid`` and the simulator's checks ``collision,
    offroad`` ``(N, T)`` (steps ``start .. start + T - 1``; the log's checks come from
    :func:`~blm_gym.sim.state.trajectory_checks`, as the simulator's do); ``evaluated``: bool ``(N,)``, the agents scored (those valid in the log at
    ``start``). ``M(S)`` for a set of chunks is the WOSAC meta-metric restricted to the features
    a chunk defines (:data:`TIMESERIES` histograms over the set's values per object,
    :data:`PER_OBJECT` Bernoulli), weighted as ``config`` weights them; entry ``k`` is
    ``M(all) - M(all but k)``. Needs K >= 2.
    """
    k = len(chunks)
    if k < 2:
        raise ValueError(f"chunk_realism: the leave-one-out term needs >= 2 rollouts of the scene, got {k}")
    t = chunks[0]["x"].shape[-1]
    log = scene.traj.select(steps=slice(start, start + t))
    ev = np.flatnonzero(np.asarray(evaluated, bool) & log.valid[:, 0])
    if len(ev) == 0:
        return np.zeros(k)
    stack = lambda name: np.stack([c[name] for c in chunks])  # noqa: E731
    sim = _features(scene, *(stack(k).astype(np.float32) for k in ("x", "y", "heading")),
                    *(stack(k).astype(bool) for k in ("valid", "collision", "offroad")), ev, scene.dt)
    log_checks = trajectory_checks(log, scene.road.drivable, scene.is_vehicle)
    logf = _features(scene, log.x[None], log.y[None], log.heading[None], log.valid[None],
                     *(c[None] for c in log_checks), ev, scene.dt)
    weights = {n: config.feature(n).metametric_weight for n in TIMESERIES + PER_OBJECT}
    log_valid = log.valid[ev]

    def score(rows: np.ndarray) -> float:
        total = 0.0
        for n in TIMESERIES:
            ll = log_likelihood_timeseries(config.feature(n), logf[n][0], sim[n][rows])
            ok = log_valid & np.isfinite(logf[n][0])
            total += weights[n] * (np.exp(ll[ok].mean()) if ok.any() else 1.0)
        for n in PER_OBJECT:
            ll = log_likelihood_scenario_level(config.feature(n), logf[n][0], sim[n][rows])
            total += weights[n] * np.exp(ll.mean())
        return total / sum(weights.values())

    everyone = score(np.arange(k))
    return np.array([everyone - score(np.delete(np.arange(k), j)) for j in range(k)])


class SceneGroupVectorEnv(DummyVectorEnv):
    """Groups of ``group_size`` lockstep env copies (env ``j`` in group ``j // group_size``); see the
    module docstring. ``problems`` are the envs' ``(scene, start step)`` list; ``controlled``
    says whose realism is scored; ``realism_weight`` 0 turns the realism term off and
    ``baseline`` False the leave-one-out baseline."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], group_size: int,
                 problems: Sequence[tuple[Scene, int]], controlled: str = "all_vehicles",
                 realism_weight: float = 0.0, baseline: bool = True):
        if group_size < 2 or len(env_fns) % group_size:
            raise ValueError(f"SceneGroupVectorEnv: groups of >= 2 copies that divide the {len(env_fns)} envs, "
                             f"got group_size={group_size}")
        super().__init__(list(env_fns))
        self.group_size, self.problems, self.controlled = group_size, list(problems), controlled
        self.realism_weight, self.baseline = float(realism_weight), baseline

    def step(self, action, id=None):
        obs, rew, term, trunc, info = super().step(action, id)
        ids = np.arange(self.env_num) if id is None else np.atleast_1d(np.asarray(id))
        groups: dict[int, list[int]] = {}
        chunks = {}
        for j, inf in enumerate(info):
            inf["realism"] = 0.0  # every step's info has the same keys (the replay buffer stacks them)
            if "chunk" in inf:
                chunks[j] = inf.pop("chunk")
                groups.setdefault(int(ids[j]) // self.group_size, []).append(j)
        rew = np.asarray(rew, np.float64).copy()
        for members in groups.values():
            if len(members) < 2:
                continue
            task = np.array([info[j]["task_reward"] for j in members])
            if self.baseline:
                rew[members] -= (task.sum() - task) / (len(members) - 1)
            if self.realism_weight:
                problem = {info[j]["problem"] for j in members}
                if len(problem) != 1:
                    raise RuntimeError(f"SceneGroupVectorEnv: copies of one group play different problems {problem}")
                scene, _ = self.problems[problem.pop()]
                group = [chunks[j] for j in members]
                realism = chunk_realism(scene, int(group[0]["start"]), group,
                                        controlled_mask(scene, self.controlled))
                rew[members] += self.realism_weight * realism
                for j, r in zip(members, realism):
                    info[j]["realism"] = float(r)
        return obs, rew, term, trunc, info
