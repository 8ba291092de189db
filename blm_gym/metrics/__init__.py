"""Metrics over recorded rollouts: safety (collision, off-road, TTC, RSS) and realism (JSD, FDD, ADE/FDE).

Every number carries its definition; the same metrics run on the logged ground truth next to the
simulation. Start with :func:`compute_report`, :func:`write_report` and :func:`format_table`.
"""
from blm_gym.metrics.common import Metric, evaluated_agents, evaluated_steps
from blm_gym.metrics.realism import (HIST_BINS, jensen_shannon, jsd_metrics, kinematic_histograms,
                                     kinematic_values, realism_metrics)
from blm_gym.metrics.report import MetricsConfig, compute_report, format_table, rollout_metrics, write_report
from blm_gym.metrics.safety import (collision_steps, min_ttc_per_sample, offroad_steps, rss_violation_steps,
                                    safety_metrics, starts_on_road)
from blm_gym.sim.rss import RSSParams, rss_lateral_safe_distance, rss_longitudinal_safe_distance, rss_violations

__all__ = [
    "HIST_BINS", "Metric", "MetricsConfig", "RSSParams", "collision_steps", "compute_report", "evaluated_agents",
    "evaluated_steps", "format_table", "jensen_shannon", "jsd_metrics", "kinematic_histograms", "kinematic_values",
    "min_ttc_per_sample", "offroad_steps", "realism_metrics", "rollout_metrics", "rss_lateral_safe_distance",
    "rss_longitudinal_safe_distance", "rss_violation_steps", "rss_violations", "safety_metrics", "starts_on_road",
    "write_report",
]
