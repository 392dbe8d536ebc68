"""The metrics every trial reports, and how the classification ones are computed.

Kept free of torch so validating a sweep (``finesweep show``) stays fast.
"""

from __future__ import annotations

import numpy as np

REPORTED_METRICS = ("train/loss", "val/loss", "val/accuracy", "val/f1_macro")
"""Names reported to Ray Tune and logged to MLflow once per epoch; the objective must be one."""


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
