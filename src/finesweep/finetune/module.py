"""The LightningModule every trial trains: a task's model + AdamW + a warmup/decay schedule.

One training loop for every kind of fine-tuning and every strategy: the task (``finesweep.tasks``) decides the
model, its head, the loss and the metrics; the strategy (``strategies.py``) decides which weights train and at
which learning rate.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics import MetricCollection

from finesweep.config import ExperimentConfig, FinetuneConfig, OptimConfig, Schedule, Unit
from finesweep.finetune.regularisers import L2SP, l1_penalty
from finesweep.finetune.strategies import make_strategy, param_groups, unwrap
from finesweep.tasks import PreparedData, Task

MODEL_METRICS = ("model/trainable_params", "model/trainable_fraction")
"""Logged every epoch (gradual unfreezing changes them), never an objective."""


class FinetuneModule(pl.LightningModule):
    """Fine-tunes a task's model under a strategy; logs the task's metrics and how many weights train.

    The training loss is label-smoothed when the task supports it (``trainer.label_smoothing``); ``val/loss`` is
    not, so it stays comparable across trials.

    Args:
        task: the kind of fine-tuning (the one that prepared ``data``).
        model: the model to train: ``task.build_model`` (pretrained, new head) or ``task.load_trained``.
        data: the prepared data (its classes size the metrics).
        optim: optimiser settings.
        total_steps: optimiser steps in the trial's full budget; the warmup/decay schedule spans them,
            whether or not the scheduler stops the trial earlier.
        finetune: strategy and learning-rate layout; None = full fine-tuning at one lr.
        label_smoothing: label smoothing of the training loss.
        config: the trial's config, for tasks that generate text at each report (``Task.generates_each_report``);
            None = they do not.
        windowed_loss: ``scheduler.unit: steps``: ``train/loss`` is the mean since the last report, which
            ``StepReport`` takes (``take_window_loss``), not the epoch's, logged at its end.
    """

    def __init__(self, task: Task, model: nn.Module, data: PreparedData, optim: OptimConfig, total_steps: int, *,
                 finetune: Optional[FinetuneConfig] = None, label_smoothing: float = 0.0,
                 config: Optional[ExperimentConfig] = None, windowed_loss: bool = False) -> None:
        super().__init__()
        self.task = task
        self.data = data
        self.config = config
        self.windowed_loss = windowed_loss
        self.finetune = finetune or FinetuneConfig()
        self.strategy = make_strategy(self.finetune, task)
        self.model = self.strategy.apply(model)
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it finds
        # L2-SP snapshots the pretrained weights now, before any step or restored checkpoint (its contract)
        self.l2sp = (L2SP(self.model, task.layer_map(unwrap(self.model)), self.finetune.l2sp, new_head=task.new_head)
                     if self.finetune.l2sp > 0 else None)
        # torchmetrics accumulate over every batch of an epoch (a sub-module each, so they follow the device)
        self.val_metrics = task.metrics(data, prefix="val/")
        self.test_metrics = task.metrics(data, prefix="test/")
        self.optim = optim
        self.total_steps = max(1, total_steps)
        self.label_smoothing = label_smoothing
        self._loss_sum: Optional[torch.Tensor] = None  # this epoch's training loss, summed over its examples
        self._loss_count = 0
        self.kept: Optional[List[Tuple[Any, Any]]] = None
        """Set to a list to keep every test batch's (predictions, labels) as numpy arrays (``Task.breakdown``)."""
        self.generated: List[Dict[str, str]] = []
        """The rows (prompt, reference, generation) the last validation generated; empty when it generated none."""

    @classmethod
    def for_trial(cls, config: ExperimentConfig, data: PreparedData, total_steps: int) -> FinetuneModule:
        """The module a trial of ``config`` trains on ``data``: the pretrained model with a new head."""
        task = data.task
        return cls(task, task.build_model(config, data), data, config.optim, total_steps, finetune=config.finetune,
                   label_smoothing=config.trainer.label_smoothing, config=config,
                   windowed_loss=config.scheduler.unit is Unit.steps)

    @classmethod
    def for_evaluation(cls, config: ExperimentConfig, data: PreparedData, weights: Any) -> FinetuneModule:
        """Saved weights (``task.save_trained``'s folder) as a module that evaluates; strategy full, whatever
        trained them: the folder holds plain weights (LoRA merged in)."""
        task = data.task
        return cls(task, task.load_trained(weights, data), data, config.optim, total_steps=1)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's outputs for a batch's features."""
        return self.task.forward(self.model, features)

    def export_model(self) -> nn.Module:
        """The trained model with plain weights, for ``task.save_trained``.

        For LoRA it is a merged copy (loads without peft); otherwise it is the live model itself, so save it,
        do not modify it.
        """
        return self.strategy.export(self.model)

    def trainable_counts(self) -> Tuple[int, int]:
        """(trainable, total) parameter counts of the model as it trains now."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def configure_callbacks(self) -> List[pl.Callback]:
        return self.strategy.callbacks(unwrap(self.model))

    def on_train_epoch_start(self) -> None:
        # Runs after the callbacks' epoch start, so gradual unfreezing has already applied this epoch.
        if self.windowed_loss:
            return  # StepReport reports the weight counts and the loss windows between reports
        trainable, total = self.trainable_counts()
        # float64 because Lightning stores Python numbers as float32, exact only up to 2^24 (16.7M).
        self.log(MODEL_METRICS[0], torch.tensor(trainable, dtype=torch.float64))
        self.log(MODEL_METRICS[1], torch.tensor(trainable / total, dtype=torch.float64))
        self._loss_sum = None
        self._loss_count = 0

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self(batch["features"]), batch["labels"], self.label_smoothing)
        penalty = self.penalty()
        # train/loss is the epoch's mean over examples, logged once on its last batch: a self.log per step costs
        # Lightning ~1 ms of bookkeeping, which is 15% of a small model's step (benchmarks/image_throughput.py).
        size = len(batch["labels"])
        weighted = loss.detach().float() * size
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += size
        if not self.windowed_loss and (self._trainer is None or batch_idx + 1 >= self.trainer.num_training_batches):
            # sync_dist: the workers of a trial train on equal shares, so the mean of theirs is the epoch's
            self.log("train/loss", self._loss_sum / self._loss_count, on_step=False, on_epoch=True, sync_dist=True)
        return loss if penalty is None else loss + penalty  # train/loss stays the task's loss, comparable

    def penalty(self) -> Optional[torch.Tensor]:
        """The regularisers added to the training loss: ``finetune.l2sp`` (towards the pretrained weights) and
        ``optim.l1``; None = neither is on."""
        terms = [self.l2sp.penalty(self.model)] if self.l2sp is not None else []
        if self.optim.l1 > 0:
            terms.append(l1_penalty(self.model, self.optim.l1))
        return torch.stack(terms).sum() if terms else None

    def take_window_loss(self) -> Optional[float]:
        """The mean training loss over the examples since the last call (``StepReport``'s window); None = none."""
        if self._trainer is not None and self.trainer.world_size > 1:  # all workers' examples (a collective)
            pair = torch.stack([self._loss_sum if self._loss_sum is not None else torch.zeros((), device=self.device),
                                torch.tensor(float(self._loss_count), device=self.device)])
            self._loss_sum, count = self.trainer.strategy.reduce(pair, reduce_op="sum").unbind()
            self._loss_count = int(count.item())
        if self._loss_sum is None or not self._loss_count:
            return None
        mean = float(self._loss_sum / self._loss_count)
        self._loss_sum, self._loss_count = None, 0
        return mean

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test", self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)
        self.generated = []
        if self.config is not None and self.task.generates_each_report(self.config):
            generated = self.task.generate(self.model, self.data.val, self.data, self.config,
                                           self.config.final.generate_samples)
            if generated is not None:
                self.generated = generated.rows
                for name, value in generated.metrics.items():
                    self.log(f"val/{name}", float(value))

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[Any] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.model if self._trainer is not None else None
        if isinstance(model, FullyShardedDataParallel) and gradient_clip_val:
            model.clip_grad_norm_(float(gradient_clip_val))  # Lightning cannot clip shards; FSDP's norm spans them all
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        layers = self.task.layer_map(unwrap(self.model))
        optimizer = torch.optim.AdamW(param_groups(unwrap(self.model), layers, self.optim, self.finetune),
                                      lr=self.optim.lr)
        schedule = make_schedule(optimizer, self.optim, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _evaluation_step(self, batch: Dict[str, Any], stage: str, metrics: MetricCollection) -> None:
        outputs, labels = self(batch["features"]), batch["labels"]
        # weighted by what the task's loss averages over (examples, or target tokens): the split's exact mean
        self.log(f"{stage}/loss", self.task.loss(outputs, labels), on_step=False, on_epoch=True,
                 batch_size=self.task.loss_weight(labels))
        predictions = self.task.predictions(outputs)
        metrics.update(predictions, labels)
        if stage == "test" and self.kept is not None:
            self.kept.append((predictions.detach().float().cpu().numpy(), labels.detach().cpu().numpy()))

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        # compute() over the whole epoch, then reset: logging the collection itself would let Lightning
        # average per-batch values, which is wrong for F1 and Pearson's r.
        values = metrics.compute()
        metrics.reset()
        for name, value in values.items():
            self.log(name, value.float())


def check(config: ExperimentConfig, task: Task) -> None:
    """Validate the model and fine-tuning settings against the model's architecture, loading no weights.

    Builds the model on PyTorch's meta device (shapes only, no memory, ~no time) and applies the
    strategy and the LLRD layout to it, so a bad ``finetune.freeze_layers``, LoRA target or
    ``model.dropout`` fails on the driver before Ray starts rather than in every trial.

    Raises:
        ConfigError: the first rule the model breaks.
    """
    with torch.device("meta"):
        model = task.architecture(config)
        trained = make_strategy(config.finetune, task).apply(model)
        param_groups(unwrap(trained), task.layer_map(unwrap(trained)), config.optim, config.finetune)


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
