"""What every metric shares: a labelled result, and which agents and steps are evaluated.

Evaluated agents: the *controlled vehicles* of a rollout (the others replay the log and would
dilute every rate). Evaluated steps: the simulated steps ``t = 1 .. T - 1`` (``t = 0`` is the
logged initial state). A metric with nothing to evaluate is undefined (``value=None`` with a
``reason``), never 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blm_gym.sim.record import Rollout

NO_AGENTS = "no valid controlled vehicle at a simulated step"


@dataclass(frozen=True)
class Metric:
    """One labelled number, or None with a ``reason`` when it is undefined.

    Rates and means carry ``value = count / total``; keeping both lets scenes be pooled exactly
    (sum both, then divide). Divergences (JSD) have no count/total.
    """

    value: float | None
    definition: str
    count: float | None = None
    total: float | None = None
    reason: str | None = None

    @staticmethod
    def ratio(count: float, total: float, definition: str, reason: str = NO_AGENTS) -> "Metric":
        if total <= 0:
            return Metric(None, definition, float(count), float(total), reason)
        return Metric(float(count) / float(total), definition, float(count), float(total))

    def pooled(self, other: "Metric") -> "Metric":
        """This metric over the union of both sets of scenes (first undefined reason kept)."""
        return Metric.ratio(self.count + other.count, self.total + other.total, self.definition,
                            self.reason or other.reason or NO_AGENTS)

    def to_dict(self, with_definition: bool = True) -> dict:
        d = {"value": self.value}
        if self.total is not None:
            d.update(count=self.count, total=self.total)
        if self.value is None:
            d["reason"] = self.reason
        if with_definition:
            d["definition"] = self.definition
        return d


def evaluated_agents(r: Rollout) -> np.ndarray:
    """Bool ``(N,)``: the controlled vehicles, the agents every metric is about."""
    return r.controlled & r.is_vehicle


def evaluated_steps(r: Rollout) -> np.ndarray:
    """Bool ``(K, N, T - 1)``: evaluated agents at valid simulated steps (``t >= 1``)."""
    return r.valid[:, :, 1:] & evaluated_agents(r)[None, :, None]
