"""Gymnasium wrappers that add rule-based reward terms to any blm_gym env.

Each wrapper scores the ego agent (``env.unwrapped.ego_index``) after every step with one term
from :mod:`blm_gym.rewards.terms`, over the last ``term.window`` steps of the env's simulator
state (``env.unwrapped.state``, with the per-step checks its step wrote), adds ``weight * value``
to the reward and records the unweighted value in ``info["reward_terms"][name]``. Wrappers
inherit :class:`gymnasium.utils.RecordConstructorArgs`, so ``gym.make(env.spec)`` rebuilds a
wrapped env. Wrappers compose by nesting::

    env = ProgressReward(CollisionPenalty(OffroadPenalty(env)), weight=0.1)
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from blm_gym.rewards.terms import RewardContext, RewardTerm, get_term
from blm_gym.sim.state import SimulatorState


class RewardTermWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds ``weight * term(ctx)`` for the ego to every step's reward.

    ``name`` keys the value in ``info["reward_terms"]`` (default: the term's function name).
    The underlying env must expose ``unwrapped.state`` (a :class:`~blm_gym.sim.state.SimulatorState`)
    and ``unwrapped.ego_index``.
    """

    def __init__(self, env: gym.Env, term: RewardTerm, weight: float = 1.0, name: str | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, term=term, weight=weight, name=name)
        gym.Wrapper.__init__(self, env)
        self.term, self.weight = term, float(weight)
        self.name = name or getattr(term, "__name__", None) or getattr(getattr(term, "fn", None), "__name__", "term")
        self.window = max(1, int(getattr(term, "window", 1)))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        base = self.env.unwrapped
        if not isinstance(getattr(base, "state", None), SimulatorState) or not hasattr(base, "ego_index"):
            raise TypeError(f"{type(self).__name__}: the env must expose unwrapped.state (a SimulatorState) and "
                            f"unwrapped.ego_index after reset (blm_gym envs do); {type(base).__name__} does not")
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        base = self.env.unwrapped
        state = base.state
        # the episode's own steps only: the log before the start is not the ego's doing
        window = min(self.window, state.current_step - state.start_step + 1)
        controlled = np.arange(state.scene.num_agents) == base.ego_index
        value = float(self.term(RewardContext.from_state(state, controlled, window)))
        info = dict(info)
        info["reward_terms"] = {**info.get("reward_terms", {}), self.name: value}
        return obs, float(reward) + self.weight * value, terminated, truncated, info


class _NamedTermWrapper(RewardTermWrapper):
    """A wrapper bound to the registered term ``term_name``; extra keywords are its parameters."""

    term_name: str

    def __init__(self, env: gym.Env, weight: float = 1.0, **params):
        self._saved_kwargs = {"weight": weight, **params}  # what gym.make(env.spec) passes back
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
