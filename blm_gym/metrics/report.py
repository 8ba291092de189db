"""The metric report: every metric on the simulation and on the log, per scene and overall.

Overall values pool the scenes (sum counts and totals, then divide; JSD from the summed
histograms), so a scene weighs by its number of agents / steps / samples.
"""
from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from blm_gym.data.scene import DrivableArea
from blm_gym.atomic_files import atomic_path
from blm_gym.metrics.blm_suite import blm_suite_metrics
from blm_gym.metrics.common import Metric, evaluated_agents
from blm_gym.metrics.realism import (HIST_BINS, KINEMATICS_INTERVAL_S, jsd_metrics, kinematic_histograms,
                                     realism_metrics)
from blm_gym.metrics.safety import safety_metrics
from blm_gym.sim.rss import RSSParams
from blm_gym.sim.record import Rollout
from blm_gym.sim.ttc import DEFAULT_HORIZON

REPORT_FORMAT = 1
_LOG_IS_REFERENCE = "the log is the reference distribution of this metric"


@dataclass(frozen=True)
class MetricsConfig:
    """Parameters of every metric (their defaults are the documented definitions)."""

    rss: RSSParams = RSSParams()
    ttc_horizon_s: float = DEFAULT_HORIZON  # constant-velocity projection horizon, s
    ttc_num_discs: int = 3  # disc cover of a vehicle box for TTC (tbsim's choice)
    kinematics_interval_s: float = KINEMATICS_INTERVAL_S  # finite-difference step of accel/jerk, s


def _drivable(drivable_by_scene: Mapping, scene_id: str) -> DrivableArea:
    """The drivable area of ``scene_id``; values may be DrivableArea, RoadMap or Scene."""
    if scene_id not in drivable_by_scene:
        raise KeyError(f"No drivable area for scene {scene_id!r}: pass drivable_by_scene={{scene_id: "
                       "scene.road.drivable}} for every rollout's scene (load scenes with blm_gym.rollout.load_scene)")
    value = drivable_by_scene[scene_id]
    value = getattr(getattr(value, "road", value), "drivable", value)
    if not isinstance(value, DrivableArea):
        raise TypeError(f"drivable_by_scene[{scene_id!r}] is {type(value).__name__}; give a DrivableArea, RoadMap "
                        "or Scene")
    return value


def rollout_metrics(r: Rollout, drivable: DrivableArea, config: MetricsConfig = MetricsConfig()
                    ) -> tuple[dict[str, Metric], dict[str, np.ndarray]]:
    """All per-rollout metrics of ``r`` and its kinematic histograms (JSD needs a second rollout)."""
    metrics = {**safety_metrics(r, drivable, config.rss, config.ttc_horizon_s, config.ttc_num_discs),
               **realism_metrics(r)}
    return metrics, kinematic_histograms(r, config.kinematics_interval_s)


def _with_jsd(metrics: dict[str, dict[str, Metric]], hists: dict[str, dict], config: MetricsConfig):
    jsd = jsd_metrics(hists["sim"], hists["log"], config.kinematics_interval_s)
    metrics["sim"].update(jsd)
    metrics["log"].update({k: Metric(None, m.definition, reason=_LOG_IS_REFERENCE) for k, m in jsd.items()})


class Suite(str, enum.Enum):
    """Which definitions a report uses. ``default``: this package's metrics (the README's table);
    ``blm``: the BLM paper's (:mod:`blm_gym.metrics.blm_suite`); ``wosac``: the Waymo Sim Agents
    realism meta-metric (:mod:`blm_gym.metrics.wosac`, :func:`wosac_report`)."""

    DEFAULT = "default"
    BLM = "blm"
    WOSAC = "wosac"


def compute_report(rollouts: Sequence[Rollout], drivable_by_scene: Mapping,
                   config: MetricsConfig = MetricsConfig(), suite: Suite | str = Suite.DEFAULT) -> dict:
    """Every metric of every rollout, on the simulation and on the log (as a 1-sample rollout).

    Returns a JSON-ready dict: ``overall`` and ``per_scene`` (each with ``sim`` and ``log``
    blocks of ``{name: {"value", "count", "total", "reason"?}}``), ``definitions`` (name ->
    text), ``config`` and, for the default suite, the pooled kinematic ``histograms``. Undefined
    values are None with a reason. ``suite``: ``default`` or ``blm`` (WOSAC has its own protocol:
    :func:`wosac_report`).
    """
    suite = Suite(suite)
    if suite is Suite.WOSAC:
        raise ValueError("compute_report: the wosac suite needs WOSAC rollouts and scenes; use "
                         "wosac_report (blm-gym metrics --suite wosac)")
    if not rollouts:
        raise ValueError("compute_report: no rollouts given")
    per_scene = []
    pooled: dict[str, dict[str, Metric]] = {"sim": {}, "log": {}}
    pooled_hist = {side: {k: np.zeros(len(e) - 1, np.int64) for k, e in HIST_BINS.items()} for side in pooled}
    for r in rollouts:
        drivable = _drivable(drivable_by_scene, r.scene_id)
        metrics, hists = {}, {}
        for side, rr in (("sim", r), ("log", r.log_as_rollout(drivable))):
            if suite is Suite.BLM:
                metrics[side], hists[side] = blm_suite_metrics(rr, drivable), {}
            else:
                metrics[side], hists[side] = rollout_metrics(rr, drivable, config)
            for name, m in metrics[side].items():
                pooled[side][name] = pooled[side][name].pooled(m) if name in pooled[side] else m
            for name, h in hists[side].items():
                pooled_hist[side][name] += h
        if suite is Suite.DEFAULT:
            _with_jsd(metrics, hists, config)
        per_scene.append({
            "scene_id": r.scene_id, "source": r.source, "policy": r.policy, "num_samples": r.num_samples,
            "num_agents": r.num_agents, "num_controlled_vehicles": int(evaluated_agents(r).sum()),
            "num_steps": r.num_steps, "start_step": r.start_step,
            **{side: {k: m.to_dict(with_definition=False) for k, m in metrics[side].items()} for side in metrics},
        })
    report = {
        "report_format": REPORT_FORMAT,
        "suite": suite.value,
        "num_rollouts": len(rollouts),
        "policies": sorted({r.policy for r in rollouts}),
        "evaluated": "controlled vehicles at simulated steps (t >= 1); 'log' = the same metrics on the logged "
                     "ground truth of the same agents and steps",
        "config": dataclasses.asdict(config),
        "definitions": {k: m.definition for k, m in pooled["sim"].items()},
        "overall": {side: {k: m.to_dict() for k, m in pooled[side].items()} for side in pooled},
        "per_scene": per_scene,
    }
    if suite is Suite.DEFAULT:
        _with_jsd(pooled, pooled_hist, config)
        report["definitions"] = {k: m.definition for k, m in pooled["sim"].items()}
        report["overall"] = {side: {k: m.to_dict() for k, m in pooled[side].items()} for side in pooled}
        report["histograms"] = {"edges": {k: e.tolist() for k, e in HIST_BINS.items()},
                                **{side: {k: h.tolist() for k, h in pooled_hist[side].items()} for side in pooled_hist}}
    return report


def wosac_report(rollouts: Sequence[Rollout], scenes: Mapping, config: str = "2025") -> dict:
    """The WOSAC realism report of rollouts made under the WOSAC protocol (``blm-gym rollout
    --protocol wosac``: 32 samples of 80 steps from the current step, every agent valid there
    simulated throughout), next to the logged futures scored as their own 32 rollouts.

    ``scenes``: scene id -> :class:`~blm_gym.data.scene.Scene`. Simulated z is each agent's
    logged z at the current step (the simulator is planar). Scenes without road edges or
    altitude (nuScenes) are scored on edges derived from the drivable area
    (:meth:`~blm_gym.metrics.wosac.WosacScenario.from_scene` with ``derive_map``): the report
    then lists the map-based scores, and the meta-metric that sums them, under
    ``not_comparable``. Returns the report dict of :func:`compute_report`'s shape: ``overall``
    (mean over scenes) and ``per_scene``, ``sim`` and ``log`` blocks of the per-feature
    likelihoods, the meta-metric, the bucket scores and the side figures.
    """
    from blm_gym.metrics import wosac

    cfg = wosac.wosac_config(config)
    per_scene, sim_scores, log_scores, derived = [], [], [], []
    for r in rollouts:
        if r.scene_id not in scenes:
            raise KeyError(f"wosac_report: no scene for rollout {r.scene_id!r}; pass scenes={{id: scene}}")
        if r.start_step != wosac.CURRENT_INDEX:
            raise ValueError(f"wosac_report: rollout {r.scene_id!r} starts at step {r.start_step}; WOSAC simulates from "
                             f"the current step {wosac.CURRENT_INDEX}: run blm-gym rollout --protocol wosac")
        scenario = wosac.WosacScenario.from_scene(scenes[r.scene_id], current_index=r.start_step, derive_map=True)
        if scenario.derived_map:
            derived.append(r.scene_id)
        agents = scenario.sim_agent_mask
        expected = (cfg.num_rollouts, int(agents.sum()), wosac.NUM_SIM_STEPS + 1)
        if (r.num_samples, int(r.valid[0, :, 0].sum()), r.num_steps) != expected or not (r.valid[:, agents].all()):
            raise ValueError(
                f"wosac_report: rollout {r.scene_id!r} has {r.num_samples} samples x {r.num_steps} steps with "
                f"{int(r.valid[0, :, 0].sum())} agents at its start; WOSAC wants {expected[0]} samples of the "
                f"current state + {wosac.NUM_SIM_STEPS} steps for the {expected[1]} agents valid at step "
                f"{r.start_step}, valid throughout: run blm-gym rollout --protocol wosac")
        z = np.broadcast_to(scenario.z[agents, r.start_step][None, :, None], (r.num_samples, expected[1], expected[2] - 1))
        sim = wosac.score_scenario(scenario, r.x[:, agents, 1:], r.y[:, agents, 1:], z, r.heading[:, agents, 1:], cfg)
        log = wosac.score_scenario(scenario, *wosac.log_as_rollouts(scenario, cfg.num_rollouts), cfg)
        sim_scores.append(sim)
        log_scores.append(log)
        per_scene.append({"scene_id": r.scene_id, "source": r.source, "policy": r.policy,
                          "num_samples": r.num_samples, "num_agents": r.num_agents,
                          "num_controlled_vehicles": int(evaluated_agents(r).sum()), "num_steps": r.num_steps,
                          "sim": _values(sim.to_dict()), "log": _values(log.to_dict())})
    overall = {side: {k: v for k, v in _values(wosac.aggregate(scores)).items() if k != "num_scenarios"}
               for side, scores in (("sim", sim_scores), ("log", log_scores))}
    not_comparable = {}
    if derived:
        names = ("distance_to_road_edge_likelihood", "offroad_indication_likelihood",
                 "traffic_light_violation_likelihood", "map_based", "metametric")
        not_comparable = {"metrics": list(names), "scenes": derived,
                          "reason": "no road edges in the data: derived from the drivable area's boundary"}
    return {
        "report_format": REPORT_FORMAT, "suite": Suite.WOSAC.value, "num_rollouts": len(rollouts),
        "policies": sorted({r.policy for r in rollouts}),
        "evaluated": "WOSAC: the SDC and the tracks to predict; features over the 80 simulated steps; 'log' = the "
                     "logged futures scored as their own 32 rollouts",
        "config": {"wosac_config": cfg.name},
        "definitions": {k: _wosac_definition(k, cfg.name) for k in overall["sim"]},
        "overall": overall, "per_scene": per_scene, **({"not_comparable": not_comparable} if derived else {}),
    }


def _wosac_definition(name: str, config: str) -> str:
    """What a WOSAC report entry means (waymo-open-dataset 1.6.7 sim_agents_metrics, config ``config``)."""
    where = f"WOSAC {config} config (waymo-open-dataset 1.6.7 definitions), mean over scenarios"
    if name.endswith("_likelihood"):
        feature = name[: -len("_likelihood")].replace("_", " ")
        return (f"likelihood of the logged {feature} of each evaluated object under a histogram of the simulated "
                f"values over the 32 rollouts (and steps), exp(mean log-likelihood); {where}")
    text = {"metametric": "realism meta-metric: the config-weighted sum of the ten likelihoods",
            "kinematic": "weighted mean of the speed, acceleration and angular likelihoods",
            "interactive": "weighted mean of the collision, nearest-object and time-to-collision likelihoods",
            "map_based": "weighted mean of the road-edge, off-road and traffic-light likelihoods"}
    return f"{text.get(name, name.replace('_', ' '))}; {where}"


def _values(scores: dict) -> dict:
    """Report blocks ``{name: {"value": v}}`` of the numeric entries of a WOSAC score dict."""
    return {k: {"value": float(v)} for k, v in scores.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def format_table(report: dict) -> str:
    """Compact console table of the overall metrics, sim next to log."""
    sim, log = report["overall"]["sim"], report["overall"]["log"]
    width = max(map(len, sim))
    lines = [f"{report['num_rollouts']} rollouts, policies: {', '.join(report['policies'])}",
             f"{'metric':<{width}}  {'sim':>10}  {'log':>10}"]
    lines += [f"{k:<{width}}  {_fmt(sim[k]['value']):>10}  {_fmt(log[k]['value']):>10}" for k in sim]
    if "not_comparable" in report:
        nc = report["not_comparable"]
        lines.append(f"not comparable with published WOSAC figures ({nc['reason']}): {', '.join(nc['metrics'])}")
    return "\n".join(lines)


def _per_scene_csv(report: dict) -> str:
    names = list(report["definitions"])
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ["scene_id", "source", "policy", "num_samples", "num_agents", "num_controlled_vehicles", "num_steps"]
    w.writerow(keys + [f"{side}_{n}" for n in names for side in ("sim", "log")])
    for s in report["per_scene"]:
        w.writerow([s[k] for k in keys] + ["" if s[side][n]["value"] is None else s[side][n]["value"]
                                           for n in names for side in ("sim", "log")])
    return buf.getvalue()


def _plot_kinematics(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend state

    h = report["histograms"]
    fig = Figure(figsize=(12, 3.5), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(h["edges"])), h["edges"]):
        edges = np.asarray(h["edges"][name])
        for side in ("log", "sim"):
            counts = np.asarray(h[side][name], float)
            if counts.sum() > 0:
                log = side == "log"
                ax.stairs(counts / counts.sum(), edges, label=side, fill=log, alpha=0.5 if log else 1.0)
        jsd = report["overall"]["sim"][f"jsd_{name}"]["value"]
        ax.set_title(f"{name} (JSD {_fmt(jsd)})")
        ax.set_ylabel("fraction")
        ax.legend()
    fig.savefig(path, dpi=100, format="png")


def _plot_per_scene(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    scenes = report["per_scene"]
    rates = [n for n in ("collision_rate_any", "offroad_rate_any", "blm_collision_rate", "blm_offroad_rate",
                         "simulated_collision_rate", "simulated_offroad_rate")
             if n in report["definitions"]]
    labels = [s["scene_id"] if len(report["policies"]) == 1 else f"{s['scene_id']}\n{s['policy']}" for s in scenes]
    pos = np.arange(len(scenes))
    fig = Figure(figsize=(max(6, 0.6 * len(scenes) + 2), 6), layout="constrained")
    for ax, name in zip(fig.subplots(len(rates), 1, sharex=True, squeeze=False)[:, 0], rates):
        for shift, side in ((-0.2, "sim"), (0.2, "log")):
            values = [np.nan if s[side][name]["value"] is None else s[side][name]["value"] for s in scenes]
            ax.bar(pos + shift, values, width=0.4, label=side)
        ax.set_ylabel(name)
        ax.legend()
    ax.set_xticks(pos, labels, rotation=60, ha="right", fontsize=7)
    fig.savefig(path, dpi=100, format="png")


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_scene.csv``, ``kinematics.png`` and ``per_scene_rates.png``
    into ``out_dir``, each atomically. Returns their paths by name."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in ("metrics.json", "per_scene.csv", "kinematics.png",
                                               "per_scene_rates.png")}
    if "histograms" not in report:
        del paths["kinematics.png"]
    writers = {
        "metrics.json": lambda p: p.write_text(json.dumps(report, indent=2, allow_nan=False)),
        "per_scene.csv": lambda p: p.write_text(_per_scene_csv(report), newline=""),
        "kinematics.png": lambda p: _plot_kinematics(report, p),
        "per_scene_rates.png": lambda p: _plot_per_scene(report, p),
    }
    for name, path in paths.items():
        with atomic_path(path) as tmp:
            writers[name](tmp)
    return paths
