"""Lightning callbacks around the shared training loop."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from finesweep.config import Mode
from finesweep.metrics import REPORTED_METRICS

Reporter = Callable[[Dict[str, float], Optional[Path]], None]
"""Receives one epoch's metrics and, when the objective improved, a folder with the weights."""


class EpochReport(pl.Callback):
    """Reports every epoch's metrics once, and saves the weights whenever the objective improves.

    Reporting exactly once per epoch keeps ASHA's rungs in epochs. The weights are written as
    safetensors (``save_pretrained``) to a temporary folder handed to the reporter, which persists
    it (Ray Tune copies it into trial storage), so the kept checkpoint is always the best epoch.
    The folder holds a plain Hugging Face model (LoRA adapters merged in: ``export_model``), which
    loads with ``AutoModelForSequenceClassification.from_pretrained`` alone.

    Args:
        metric: the objective metric name.
        mode: whether larger or smaller is better.
        report: where metrics (and checkpoint folders) go.
    """

    def __init__(self, metric: str, mode: Mode, report: Reporter) -> None:
        self.metric = metric
        self.mode = mode
        self.report = report
        self.best: Optional[float] = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logged = trainer.callback_metrics
        metrics = {name: float(logged[name]) for name in REPORTED_METRICS if name in logged}
        metrics["epoch"] = float(trainer.current_epoch + 1)
        value = metrics.get(self.metric)
        if value is None or not self._improved(value):
            self.report(metrics, None)
            return
        self.best = value
        with tempfile.TemporaryDirectory(prefix="finesweep-ckpt-") as folder:
            # safe_serialization: safetensors on transformers 4.x too (5.x writes nothing else)
            pl_module.export_model().save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
            self.report(metrics, Path(folder))

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode is Mode.max else value < self.best


def early_stopping(metric: str, mode: Mode, patience: int) -> EarlyStopping:
    """Stop the fit after ``patience`` epochs without improving the objective; the trial then ends normally.

    The check runs at the end of the training epoch, after validation, so every reported metric
    (``train/loss`` included, which does not exist yet when validation ends) can be the objective.
    """
    return EarlyStopping(monitor=metric, mode=mode.value, patience=patience, check_on_train_epoch_end=True)
