"""The registered model's scores per class on the test split: the table a task's ``breakdown`` gives (numpy only,
so the driver imports it without torch)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np


def class_breakdown(batches: Sequence[Tuple[np.ndarray, np.ndarray]], names: Sequence[str]) -> List[Dict[str, Any]]:
    """Per-class accuracy (the class's recall), precision, F1 and support over a split, one row per class.

    Args:
        batches: ``(predictions, labels)`` per batch; predictions are class ids, or scores per class (argmax).
        names: class names in label-id order.
    """
    if not batches:
        return []
    predicted = np.concatenate([p.argmax(-1) if p.ndim == 2 else p for p, _ in batches]).astype(np.int64)
    labels = np.concatenate([labels for _, labels in batches]).astype(np.int64)
    rows = []
    for index, name in enumerate(names):
        true_positive = int(np.sum((predicted == index) & (labels == index)))
        support, claimed = int(np.sum(labels == index)), int(np.sum(predicted == index))
        recall = true_positive / support if support else 0.0
        precision = true_positive / claimed if claimed else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "accuracy": recall, "precision": precision, "f1": f1, "support": support})
    return rows
