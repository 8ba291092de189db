"""Gymnasium wrappers that add rule-based reward terms to any blm_gym env.

Each wrapper scores the ego agent (``env.unwrapped.ego_index``) after every step with one term
from :mod:`blm_gym.rewards.terms`, over the last ``term.window`` simulator states it has seen
(``env.unwrapped.sim_state``), adds ``weight * value`` to the reward and records the unweighted
value in ``info["reward_terms"][name]``. Wrappers compose by nesting::

    env = ProgressReward(CollisionPenalty(OffroadPenalty(env)), weight=0.1)
"""
from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

from blm_gym.rewards.terms import RewardContext, RewardTerm, get_term


class RewardTermWrapper(gym.Wrapper):
    """Adds ``weight * term(ctx)`` for the ego to every step's reward.

    ``name`` keys the value in ``info["reward_terms"]`` (default: the term's function name).
    The underlying env must expose ``unwrapped.scene``, ``unwrapped.sim_state`` and
    ``unwrapped.ego_index``.
    """

    def __init__(self, env: gym.Env, term: RewardTerm, weight: float = 1.0, name: str | None = None):
        super().__init__(env)
        self.term, self.weight = term, float(weight)
        self.name = name or getattr(term, "__name__", None) or getattr(getattr(term, "fn", None), "__name__", "term")
        self._states: deque = deque(maxlen=max(1, int(getattr(term, "window", 1))))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for attr in ("scene", "sim_state", "ego_index"):
            if not hasattr(self.env.unwrapped, attr):
                raise TypeError(f"{type(self).__name__}: the env must expose unwrapped.{attr} after reset "
                                f"(blm_gym envs do); {type(self.env.unwrapped).__name__} does not")
        self._states.clear()
        self._states.append(self.env.unwrapped.sim_state)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        base = self.env.unwrapped
        self._states.append(base.sim_state)
        controlled = np.arange(base.scene.num_agents) == base.ego_index
        ctx = RewardContext.from_sim_states(base.scene, list(self._states), controlled)
        value = float(self.term(ctx))
        info = dict(info)
        info["reward_terms"] = {**info.get("reward_terms", {}), self.name: value}
        return obs, float(reward) + self.weight * value, terminated, truncated, info


class _NamedTermWrapper(RewardTermWrapper):
    """A wrapper bound to the registered term ``term_name``; extra keywords are its parameters."""

    term_name: str

    def __init__(self, env: gym.Env, weight: float = 1.0, **params):
        super().__init__(env, get_term(self.term_name, **params), weight, name=self.term_name)


class CollisionPenalty(_NamedTermWrapper):
    """-1 per step while the ego's box overlaps another agent's (term ``collision``)."""

    term_name = "collision"


class OffroadPenalty(_NamedTermWrapper):
    """-1 per step while the ego's centre is off the drivable area (term ``offroad``)."""

    term_name = "offroad"


class TTCPenalty(_NamedTermWrapper):
    """``-max(0, 1 - ttc / threshold)`` per step for the ego (term ``ttc``, ``threshold=2`` s)."""

    term_name = "ttc"


class SpeedLimitPenalty(_NamedTermWrapper):
    """Minus the ego's speed above ``limit`` (m/s, default 15) per step (term ``speed_limit``)."""

    term_name = "speed_limit"


class ComfortPenalty(_NamedTermWrapper):
    """Minus the ego's absolute longitudinal jerk (m/s^3) per step (term ``comfort``)."""

    term_name = "comfort"


class ProgressReward(_NamedTermWrapper):
    """The ego's distance travelled along its heading (m) per step (term ``progress``)."""

    term_name = "progress"
