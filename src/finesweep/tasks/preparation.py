"""Checking and preparing a sweep's data through its task: every data variant once, on the driver."""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence

from finesweep.config import ExperimentConfig
from finesweep.config.overrides import with_overrides
from finesweep.config.space import Distribution, Param, affects_tokenisation
from finesweep.errors import ConfigError
from finesweep.tasks.data import DataCache, variant_key
from finesweep.tasks.registry import get, reporting
from finesweep.tasks.task import COST_METRICS, PROBE_METRIC, Inspection, PreparedData, Task


def prepare_all(config: ExperimentConfig, params: Sequence[Param]) -> DataCache:
    """Prepare one ``PreparedData`` per combination of searched values that change the prepared data.

    Raises:
        UserError: ``data.task`` names no task, or the data does not fit it.
    """
    variants: Dict[str, PreparedData] = {}
    for override in data_variants(params):
        variant = with_overrides(config, override)
        key = variant_key(variant)
        if key not in variants:
            variants[key] = get(variant.data.task, variant.data).prepare(variant)
    return DataCache(variants)


def inspect_all(config: ExperimentConfig, params: Sequence[Param]) -> Inspection:
    """Read and check the data file of every variant without preparing it; the objective must be a metric the
    task reports. Returns what the (first) variant's inspection found.

    Raises:
        UserError: the data or the objective does not fit.
    """
    variants = [with_overrides(config, v).data for v in data_variants(params)]
    found = [get(data.task, data).inspect(data) for data in variants]
    for inspection in found:
        check_objectives(inspection.task, config)
    return found[0]


def data_variants(params: Sequence[Param]) -> List[Dict[str, object]]:
    """Every combination of the categorical choices of parameters that change the prepared data."""
    keyed = [p for p in params if affects_tokenisation(p.key) and p.distribution is Distribution.categorical]
    combos = itertools.product(*(p.choices for p in keyed))
    return [dict(zip([p.key for p in keyed], combo, strict=True)) for combo in combos]


def check_objectives(task: Task, config: ExperimentConfig) -> None:
    """Every objective and every constrained metric must be one trials of this task report with ``config``.

    Raises:
        ConfigError: e.g. a constraint on val/entity_f1 in a text classification sweep.
    """
    for metric in config.objective.metrics:
        check_objective(metric, task, config)
    for metric in config.objective.constraints:
        check_objective(metric, task, config, key=f"objective.constraints.{metric}")


def check_objective(metric: str, task: Task, config: Optional[ExperimentConfig] = None,
                    key: str = "objective.metric") -> None:
    """The objective must be a metric trials of this task report (with ``config``'s settings, when given); the
    deployment costs (``COST_METRICS``) every trial reports, the forgetting probe's where it runs.

    Raises:
        ConfigError: e.g. val/accuracy on a regression data set, val/bleu without data.metric=bleu.
    """
    if metric in COST_METRICS:
        return
    if metric == PROBE_METRIC:
        if config is not None and config.probe.forgetting:
            return
        raise ConfigError(f"{key}: {metric} is measured only by the forgetting probe, got {metric} without it. "
                          "Set probe.forgetting to a plain-text file of general text, or drop this metric.")
    if config is not None and metric in task.objective_metrics and metric not in task.reported_metrics(config):
        setting = "data.metric=bleu" if metric == "val/bleu" else "data.generate_every_epoch=true"
        raise ConfigError(f"{key}: {metric} is reported by {task.name} trials only with {setting}, "
                          f"got {metric} without it. Set {setting}, or use one of "
                          f"{', '.join(task.reported_metrics(config))}.")
    if metric in task.objective_metrics:
        return
    others = [name for name in reporting(metric) if name != task.name]
    hint = f", or set data.task={others[0]}" if others else ""
    raise ConfigError(f"{key}: {metric} is not reported for a {task.name} task, got {metric}. "
                      f"Use one of {', '.join(task.objective_metrics)}{hint}.")
