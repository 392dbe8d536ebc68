"""The task metrics the LightningModule logs, accumulated over batches, against values computed by hand.

A stub stands in for the transformer so the predictions are exactly those of the table below; the
module, its metric accumulation and Lightning's validation loop are the real ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error
from torch import nn

from finesweep.config import OptimConfig
from finesweep.finetune.datamodule import PreparedDataModule
from finesweep.finetune.module import FinetuneModule
from finesweep.tasks import PreparedData, Split, Task
from finesweep.tasks.text_classification import TextClassification, TextRegression


class _Outputs:
    """Stands in for a Hugging Face output: ``.logits``."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class _TableModel(nn.Module):
    """Returns row i's preset output for the example whose first token id is i."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> _Outputs:
        return _Outputs(self.table[input_ids[:, 0]] + 0 * self.weight)


def _validate(tiny_model: Path, task: Task, outputs: List, labels: List, num_labels: int) -> Dict[str, float]:
    rows = len(labels)
    ids = np.zeros((rows, 4), dtype=np.int32)
    ids[:, 0] = np.arange(rows)
    features = {"input_ids": ids, "attention_mask": np.ones((rows, 4), dtype=np.int32)}
    regression = isinstance(task, TextRegression)
    split = Split(features, np.asarray(labels, dtype=np.float32 if regression else np.int64))
    names = () if regression else tuple(str(i) for i in range(num_labels))
    data = PreparedData(train=split, val=split, test=None, task=task, label_names=names)
    assert data.num_labels == num_labels
    module = FinetuneModule(task, _TableModel(torch.tensor(outputs, dtype=torch.float32)), data, OptimConfig(),
                            total_steps=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    # batch_size 2 over 5 rows: 3 batches, so the metrics must accumulate across batches, not average them
    results = trainer.validate(module, datamodule=PreparedDataModule(data, batch_size=2, seed=0), verbose=False)
    return {name: float(value) for name, value in results[0].items()}


ONE_HOT = {0: [4.0, 0.0, 0.0], 1: [0.0, 4.0, 0.0], 2: [0.0, 0.0, 4.0]}


def test_classification_accuracy_and_macro_f1_by_hand(tiny_model: Path) -> None:
    labels, predicted = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    scores = _validate(tiny_model, TextClassification(), [ONE_HOT[p] for p in predicted], labels, 3)
    # accuracy: 3 of 5. F1 per class: 0 -> 2*1/(2+2) = 0.5, 1 -> 2*2/(3+2) = 0.8, 2 -> 0 (never predicted)
    assert scores["val/accuracy"] == pytest.approx(0.6)
    assert scores["val/f1_macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert scores["val/accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert scores["val/f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_macro_f1_ignores_classes_absent_from_labels_and_predictions(tiny_model: Path) -> None:
    labels, predicted = [0, 0, 1, 1], [0, 1, 1, 1]  # class 2 exists in the head but nowhere here
    scores = _validate(tiny_model, TextClassification(), [ONE_HOT[p] for p in predicted], labels, 3)
    assert scores["val/f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert scores["val/f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_regression_rmse_and_pearson_by_hand(tiny_model: Path) -> None:
    targets, predicted = [1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.0, 2.5, 5.0, 4.0]
    scores = _validate(tiny_model, TextRegression(), [[p] for p in predicted], targets, 1)
    # squared errors 0.25, 0, 0.25, 1, 1 -> mean 0.5
    assert scores["val/rmse"] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert scores["val/loss"] == pytest.approx(0.5, rel=1e-6)
    # centred: t = -2..2, p = -1.5, -1, -0.5, 2, 1; sum(tp) = 3+1+0+2+2 = 8, sum(t^2) = 10, sum(p^2) = 8.5
    assert scores["val/pearson"] == pytest.approx(8 / math.sqrt(10 * 8.5), rel=1e-5)
    assert scores["val/rmse"] == pytest.approx(mean_squared_error(targets, predicted) ** 0.5, rel=1e-6)


def test_constant_prediction_has_pearson_zero_not_nan(tiny_model: Path) -> None:
    scores = _validate(tiny_model, TextRegression(), [[2.0]] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], 1)
    assert scores["val/pearson"] == 0.0, "undefined correlation is reported as 0, never a silent NaN"
    assert scores["val/rmse"] == pytest.approx(math.sqrt((1 + 0 + 1 + 4 + 9) / 5), rel=1e-6)


def test_a_diverged_model_reports_nan_not_zero(tiny_model: Path) -> None:
    scores = _validate(tiny_model, TextRegression(), [[float("nan")]] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], 1)
    assert math.isnan(scores["val/rmse"]) and math.isnan(scores["val/pearson"])
