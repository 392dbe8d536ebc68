"""The LightningModule every trial trains: a Hugging Face sequence model + AdamW + warmup/decay.

One training loop for every fine-tuning strategy and both tasks: the strategy (strategies.py)
decides which weights train, the scoring object below (per task) decides the loss and the metrics.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from finesweep.config import ExperimentConfig, FinetuneConfig, OptimConfig, Schedule, Task
from finesweep.data import EncodedData
from finesweep.errors import ConfigError
from finesweep.finetune.strategies import NO_DECAY, make_strategy, param_groups, unwrap

__all__ = ["NO_DECAY", "SequenceClassifier", "check", "load_model", "make_schedule", "model_config"]

DROPOUT_FIELDS = ("hidden_dropout_prob", "classifier_dropout", "dropout", "seq_classif_dropout", "hidden_dropout")
"""Config fields ``model.dropout`` sets where a model has them (BERT/RoBERTa/MiniLM: the first two,
DistilBERT: dropout + seq_classif_dropout). Attention dropout keeps the pretrained value."""


class SequenceClassifier(pl.LightningModule):
    """Fine-tunes ``AutoModelForSequenceClassification`` under a strategy; logs the task's metrics.

    Classification trains on cross entropy (label-smoothed in training only, so ``val/loss`` stays
    comparable across trials) and logs accuracy and macro-F1; regression trains the single output on
    mean squared error and logs RMSE and Pearson's r. Every epoch it also logs how many parameters train.

    Args:
        model_path: local folder (or hub id) of the pretrained model.
        num_labels: number of classes, or 1 for regression.
        optim: optimiser settings.
        total_steps: optimiser steps in the trial's full budget; the warmup/decay schedule spans them,
            whether or not the scheduler stops the trial earlier.
        task: classification or regression (never auto).
        label_names: class names in label-id order, saved as the model's id2label.
        finetune: strategy and learning-rate layout; None = full fine-tuning at one lr.
        dropout: hidden and classifier dropout; None keeps the model's own.
        label_smoothing: cross-entropy label smoothing of the training loss (classification only).
        new_head: True creates the head afresh for ``num_labels`` (pretrained models); False loads a
            fine-tuned folder whose head must already fit (evaluating saved weights).
    """

    def __init__(self, model_path: str, num_labels: int, optim: OptimConfig, total_steps: int, *,
                 task: Task = Task.classification, label_names: Sequence[str] = (),
                 finetune: Optional[FinetuneConfig] = None, dropout: Optional[float] = None,
                 label_smoothing: float = 0.0, new_head: bool = True) -> None:
        super().__init__()
        self.finetune = finetune or FinetuneConfig()
        self.strategy = make_strategy(self.finetune)
        model = load_model(model_path, num_labels, task, label_names, dropout, new_head)
        self.model = self.strategy.apply(model)
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it finds
        self.scoring = _RegressionScoring() if task is Task.regression else _ClassificationScoring(num_labels)
        # torchmetrics accumulate over every batch of an epoch (a sub-module each, so they follow the device)
        self.val_metrics = self.scoring.metrics(prefix="val/")
        self.test_metrics = self.scoring.metrics(prefix="test/")
        self.num_labels = num_labels
        self.optim = optim
        self.total_steps = max(1, total_steps)
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, config: ExperimentConfig, data: EncodedData, total_steps: int) -> SequenceClassifier:
        """The module a trial of ``config`` trains on ``data`` (its task and classes)."""
        return cls(config.model.name_or_path, data.num_labels, config.optim, total_steps, task=data.task,
                   label_names=data.label_names, finetune=config.finetune, dropout=config.model.dropout,
                   label_smoothing=config.trainer.label_smoothing)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Model outputs (class logits, or one value per example) for a batch of token features."""
        return self.model(**features).logits

    def export_model(self) -> PreTrainedModel:
        """A plain Hugging Face model with the trained weights, for ``save_pretrained``.

        For LoRA it is a merged copy (loads with ``AutoModelForSequenceClassification``, no peft);
        otherwise it is the live model itself, so save it, do not modify it.
        """
        return self.strategy.export(self.model)  # type: ignore[return-value]

    def trainable_counts(self) -> Tuple[int, int]:
        """(trainable, total) parameter counts of the model as it trains now."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def configure_callbacks(self) -> List[pl.Callback]:
        return self.strategy.callbacks(unwrap(self.model))

    def on_train_epoch_start(self) -> None:
        # Runs after the callbacks' epoch start, so gradual unfreezing has already applied this epoch.
        trainable, total = self.trainable_counts()
        # float64 because Lightning stores Python numbers as float32, exact only up to 2^24 (16.7M).
        self.log("model/trainable_params", torch.tensor(trainable, dtype=torch.float64))
        self.log("model/trainable_fraction", torch.tensor(trainable / total, dtype=torch.float64))

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.scoring.loss(self(batch["features"]), batch["labels"], self.label_smoothing)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test", self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(param_groups(unwrap(self.model), self.optim, self.finetune), lr=self.optim.lr)
        schedule = make_schedule(optimizer, self.optim, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _evaluation_step(self, batch: Dict[str, Any], stage: str, metrics: MetricCollection) -> None:
        outputs, labels = self(batch["features"]), batch["labels"]
        self.log(f"{stage}/loss", self.scoring.loss(outputs, labels), on_step=False, on_epoch=True,
                 batch_size=len(labels))
        metrics.update(self.scoring.predict(outputs), labels)

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        # compute() over the whole epoch, then reset: logging the collection itself would let Lightning
        # average per-batch values, which is wrong for F1 and Pearson's r.
        values = metrics.compute()
        metrics.reset()
        for name, value in values.items():
            self.log(name, value.float())


class _ClassificationScoring:
    """Cross entropy over ``num_labels`` logits; accuracy and macro-F1 of the argmax."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=smoothing)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def metrics(self, prefix: str) -> MetricCollection:
        # Macro-F1 averages the classes present in the labels or the predictions (as scikit-learn does).
        return MetricCollection({"accuracy": MulticlassAccuracy(self.num_labels, average="micro"),
                                 "f1_macro": MulticlassF1Score(self.num_labels, average="macro")}, prefix=prefix)


class _RegressionScoring:
    """Mean squared error of the single output; RMSE and Pearson's r. Label smoothing does not apply."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        return nn.functional.mse_loss(outputs.float().squeeze(-1), targets.float())

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().squeeze(-1)

    def metrics(self, prefix: str) -> MetricCollection:
        return MetricCollection({"rmse": MeanSquaredError(squared=False), "pearson": _Pearson()}, prefix=prefix)


class _Pearson(PearsonCorrCoef):
    """Pearson's r, defined as 0 when the predictions (or targets) are constant.

    A model that predicts one value for everything has no correlation to speak of; torchmetrics
    returns NaN with a warning there, which would read as a diverged trial. Non-finite predictions
    still give NaN.
    """

    def compute(self) -> torch.Tensor:
        if bool((self.var_x == 0).any() or (self.var_y == 0).any()):
            return torch.zeros((), device=self.var_x.device)
        return super().compute()


def load_model(model_path: str, num_labels: int, task: Task, label_names: Sequence[str] = (),
               dropout: Optional[float] = None, new_head: bool = True) -> PreTrainedModel:
    """Load a sequence model with the head, problem type, class names and dropout of this trial.

    Raises:
        ConfigError: ``dropout`` set for a model whose config has none of ``DROPOUT_FIELDS``.
    """
    config = model_config(model_path, num_labels, task, label_names, dropout)
    # A pretrained checkpoint may carry a head for other labels (a fine-tuned model); it is replaced.
    return AutoModelForSequenceClassification.from_pretrained(model_path, config=config,
                                                              ignore_mismatched_sizes=new_head)


def model_config(model_path: str, num_labels: int, task: Task, label_names: Sequence[str] = (),
                 dropout: Optional[float] = None) -> PretrainedConfig:
    """The pretrained model's config with this trial's head size, problem type, class names and dropout."""
    config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    config.problem_type = "regression" if task is Task.regression else "single_label_classification"
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: index for index, name in enumerate(label_names)}
    if dropout is not None:
        _set_dropout(config, dropout)
    return config


def check(config: ExperimentConfig) -> None:
    """Validate the model and fine-tuning settings against the model's architecture, loading no weights.

    Builds the model on PyTorch's meta device (shapes only, no memory, ~no time) and applies the
    strategy and the LLRD layout to it, so a bad ``finetune.freeze_layers``, LoRA target or
    ``model.dropout`` fails on the driver before Ray starts rather than in every trial.

    Raises:
        ConfigError: the first rule the model breaks.
    """
    architecture = AutoConfig.from_pretrained(config.model.name_or_path)  # its own head size: no warnings
    if config.model.dropout is not None:
        _set_dropout(architecture, config.model.dropout)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(architecture)
        trained = make_strategy(config.finetune).apply(model)
        param_groups(unwrap(trained), config.optim, config.finetune)


def _set_dropout(config: PretrainedConfig, dropout: float) -> None:
    fields = [name for name in DROPOUT_FIELDS if hasattr(config, name)]
    if not fields:
        raise ConfigError(f"model.dropout needs a model config with one of {', '.join(DROPOUT_FIELDS)}, "
                          f"got {type(config).__name__} with none of them. Use model.dropout=null.")
    for name in fields:
        setattr(config, name, dropout)


def make_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> Any:
    """``transformers.get_scheduler`` for ``optim.schedule``, spanning ``total_steps`` optimiser steps.

    Warmup is ``optim.warmup_ratio`` of the steps; the schedule-specific settings come from
    ``optim.min_lr_ratio``, ``optim.num_cycles`` and ``optim.decay_ratio``. The multiplier applies to
    every parameter group alike, so layer-wise learning rates keep their ratios throughout.
    """
    from transformers import get_scheduler

    warmup = int(optim.warmup_ratio * total_steps)
    specific: Dict[Schedule, Dict[str, Any]] = {
        Schedule.cosine_with_restarts: {"num_cycles": optim.num_cycles},
        Schedule.polynomial: {"lr_end": optim.lr * optim.min_lr_ratio},
        Schedule.cosine_with_min_lr: {"min_lr_rate": optim.min_lr_ratio},
        Schedule.cosine_warmup_with_min_lr: {"min_lr_rate": optim.min_lr_ratio},
        Schedule.warmup_stable_decay: {"num_decay_steps": max(1, int(optim.decay_ratio * total_steps)),
                                       "min_lr_ratio": optim.min_lr_ratio},
    }
    return get_scheduler(optim.schedule.value, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=specific.get(optim.schedule))
