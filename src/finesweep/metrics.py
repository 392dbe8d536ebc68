"""The metrics every trial reports, and how they are computed.

Kept free of torch so validating a sweep (``finesweep show``) stays fast.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

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


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of predictions equal to the label."""
    return float(np.mean(labels == predictions)) if len(labels) else 0.0


def f1_macro(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in labels or predictions."""
    scores = []
    for cls in range(num_classes):
        true_pos = np.sum((predictions == cls) & (labels == cls))
        predicted = np.sum(predictions == cls)
        actual = np.sum(labels == cls)
        if predicted + actual == 0:
            continue
        scores.append(2.0 * true_pos / (predicted + actual))
    return float(np.mean(scores)) if scores else 0.0


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((targets - predictions) ** 2))) if len(targets) else 0.0


def pearson(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (undefined)."""
    if len(targets) < 2 or np.std(targets) == 0 or np.std(predictions) == 0:
        return 0.0
    return float(np.corrcoef(targets, predictions)[0, 1])
