"""The names of the metrics every trial reports (their computation is torchmetrics', in finetune/module.py).

Kept free of torch so validating a sweep (``finesweep show``) stays fast.
"""

from __future__ import annotations

from typing import Tuple

CLASSIFICATION_METRICS = ("train/loss", "val/loss", "val/accuracy", "val/f1_macro")
REGRESSION_METRICS = ("train/loss", "val/loss", "val/rmse", "val/pearson")
MODEL_METRICS = ("model/trainable_params", "model/trainable_fraction")
"""Logged every epoch (gradual unfreezing changes them), never an objective."""

OBJECTIVE_METRICS = tuple(dict.fromkeys(CLASSIFICATION_METRICS + REGRESSION_METRICS))
"""Names a sweep may optimise; which of them a trial reports depends on the task."""

REPORTED_METRICS = OBJECTIVE_METRICS + MODEL_METRICS
"""Everything a trial may report to Ray Tune and the driver logs to MLflow, once per epoch."""


def task_metrics(task: str) -> Tuple[str, ...]:
    """The objective-eligible metrics a trial of this task (classification | regression) reports."""
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
