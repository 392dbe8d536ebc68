"""The LightningModule every trial trains: a Hugging Face sequence classifier + AdamW + warmup."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import lightning.pytorch as pl
import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModelForSequenceClassification

from finesweep.config import OptimConfig, Schedule
from finesweep.metrics import accuracy, f1_macro

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
"""Parameters AdamW does not decay: biases and normalisation gains, as in BERT's recipe."""


class SequenceClassifier(pl.LightningModule):
    """Fine-tunes ``AutoModelForSequenceClassification`` and logs loss, accuracy and macro-F1.

    Args:
        model_path: local folder (or hub id) of the pretrained model.
        num_labels: number of classes; the classification head is created fresh for them.
        optim: optimiser settings.
        total_steps: optimiser steps in the trial's full budget; the warmup/decay schedule spans them,
            whether or not the scheduler stops the trial earlier.
    """

    def __init__(self, model_path: str, num_labels: int, optim: OptimConfig, total_steps: int) -> None:
        super().__init__()
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it finds
        self.num_labels = num_labels
        self.optim = optim
        self.total_steps = max(1, total_steps)
        self._val_outputs: List[np.ndarray] = []

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits for a batch of token features."""
        return self.model(**features).logits

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(self(batch["features"]), batch["labels"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["features"])
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["labels"]))
        pairs = torch.stack([batch["labels"], logits.argmax(dim=-1)], dim=1)
        self._val_outputs.append(pairs.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        pairs = np.concatenate(self._val_outputs) if self._val_outputs else np.zeros((0, 2), dtype=np.int64)
        self._val_outputs.clear()
        labels, predictions = pairs[:, 0], pairs[:, 1]
        self.log("val/accuracy", accuracy(labels, predictions))
        self.log("val/f1_macro", f1_macro(labels, predictions, self.num_labels))

    def configure_optimizers(self) -> Dict[str, Any]:
        decay = [p for n, p in self.named_parameters() if p.requires_grad and not n.endswith(NO_DECAY)]
        no_decay = [p for n, p in self.named_parameters() if p.requires_grad and n.endswith(NO_DECAY)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.optim.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.optim.lr)
        warmup = int(self.optim.warmup_ratio * self.total_steps)
        schedule = LambdaLR(optimizer, lr_lambda(self.optim.schedule, warmup, self.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lr_lambda(schedule: Schedule, warmup_steps: int, total_steps: int) -> Any:
    """Learning-rate multiplier per optimiser step: linear warmup, then the chosen decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule is Schedule.constant:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule is Schedule.cosine:
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor
