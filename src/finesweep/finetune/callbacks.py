"""Lightning callbacks around the shared training loop."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn

from finesweep.config import Mode
from finesweep.errors import DivergedError
from finesweep.finetune.layout import BEST, GENERATIONS, STATE, link_tree
from finesweep.finetune.module import FinetuneModule
from finesweep.finetune.parallel import whole_model
from finesweep.tasks.task import REPORTED_PREFIXES

Reporter = Callable[[Dict[str, float], Optional[Path]], None]
"""Receives one epoch's metrics and the folder of that epoch's checkpoint (see execution/checkpoints.py); in a
trial of several workers every worker calls it, and rank 0's folder is the checkpoint."""


class EpochReport(pl.Callback):
    """Reports every epoch's metrics once, each with a checkpoint the trial can continue from.

    Reporting exactly once per epoch keeps ASHA's rungs in epochs. The checkpoint folder handed to
    the reporter (which persists it: Ray Tune copies it into trial storage) holds ``best/``, the best
    epoch's weights in the task's format (a plain Hugging Face model, LoRA merged in, safetensors), and ``state.ckpt``,
    Lightning's full training state after this epoch. ``best/`` is written only when the objective
    improves, and otherwise linked from the trial's own copy.

    Its own state (the best value and what the probe measured at it, and torch's RNG, so a resumed trial draws
    the same dropout masks as one that never stopped) is saved in ``state.ckpt`` and restored with it.

    Args:
        metric: the objective metric name.
        mode: whether larger or smaller is better.
        report: where metrics and checkpoint folders go.
        best_dir: the trial's working copy of its best weights (a resumed trial starts with its old one).
        probe: measures the model each time the objective improves (the forgetting probe: ``probe/...``
            metrics of the best weights, carried by every later report); None = nothing to measure.
    """

    def __init__(self, metric: str, mode: Mode, report: Reporter, best_dir: Path,
                 probe: Optional[Callable[[FinetuneModule], Dict[str, float]]] = None) -> None:
        self.metric = metric
        self.mode = mode
        self.report = report
        self.best_dir = best_dir
        self.probe = probe
        self.best: Optional[float] = None
        self.probed: Dict[str, float] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith(REPORTED_PREFIXES)}
        metrics["epoch"] = float(trainer.current_epoch + 1)
        self.emit(trainer, cast(FinetuneModule, pl_module), metrics)

    def emit(self, trainer: pl.Trainer, module: FinetuneModule, metrics: Dict[str, float]) -> None:
        """Report ``metrics`` with a checkpoint folder: the best weights (saved first when they improved) and
        Lightning's state now."""
        value = metrics.get(self.metric)
        if value is not None and self._improved(value):  # every worker of a trial sees the same metrics
            self.best = value
            with whole_model(trainer):
                if trainer.is_global_zero:  # the one writer of a trial of several workers
                    shutil.rmtree(self.best_dir, ignore_errors=True)
                    module.task.save_trained(module.export_model(), self.best_dir)
                    if self.probe is not None:
                        self.probed = self.probe(module)
        metrics.update(self.probed)
        with tempfile.TemporaryDirectory(prefix="finesweep-ckpt-") as folder:
            if self.best_dir.is_dir():
                link_tree(self.best_dir, Path(folder) / BEST)
            if module.generated and trainer.is_global_zero:  # this report's generated texts: the child run's table
                (Path(folder) / GENERATIONS).write_text(json.dumps(module.generated))
            trainer.save_checkpoint(Path(folder) / STATE)  # collective; rank 0 writes
            self.report(metrics, Path(folder))

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "rng": torch.get_rng_state(), "probed": self.probed}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.probed = dict(state_dict.get("probed", {}))
        torch.set_rng_state(state_dict["rng"])

    def _improved(self, value: float) -> bool:
        return self.mode.better(value, self.best)


class StepReport(EpochReport):
    """``EpochReport`` for ``scheduler.unit: steps``: reports after every validation, which the Trainer runs every
    ``scheduler.report_every`` optimiser steps, mid-epoch too (``val_check_interval``).

    A report carries ``step`` (optimiser steps so far: ASHA's time), ``train/epoch`` (epochs so far, fractional),
    ``train/loss`` over the batches since the previous report, and the model's trainable-weight counts.
    The checkpoint is Lightning's state at the end of that validation: a resumed trial goes on with the next
    batch of the same epoch (``EpochShuffle.resume``).

    Args:
        steps_per_epoch: optimiser steps in one epoch (``train/epoch``'s denominator).
    """

    def __init__(self, metric: str, mode: Mode, report: Reporter, best_dir: Path, steps_per_epoch: int,
                 probe: Optional[Callable[[FinetuneModule], Dict[str, float]]] = None) -> None:
        super().__init__(metric, mode, report, best_dir, probe)
        self.steps_per_epoch = max(1, steps_per_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # reports follow validations, not epochs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # only the validations fit() runs between training steps
        module = cast(FinetuneModule, pl_module)
        train_loss = module.take_window_loss()
        if train_loss is not None:  # early stopping (next in the callback list) may watch it
            trainer.callback_metrics["train/loss"] = torch.tensor(train_loss)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith(("val/", "train/loss"))}
        trainable, total = module.trainable_counts()
        metrics.update({"model/trainable_params": float(trainable), "model/trainable_fraction": trainable / total,
                        "step": float(trainer.global_step),
                        "train/epoch": trainer.global_step / self.steps_per_epoch})
        self.emit(trainer, module, metrics)


class FiniteLoss(pl.Callback):
    """Stops a trial at the first batch whose training loss is NaN or infinite (``DivergedError``).

    A diverged trial never recovers; stopping at once saves the rest of its budget.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise DivergedError(f"training loss became {float(loss.detach().float().mean())} at epoch "
                                f"{trainer.current_epoch + 1}, batch {batch_idx + 1}")


def early_stopping(metric: str, mode: Mode, patience: int, each_epoch: bool = True) -> EarlyStopping:
    """Stop the fit after ``patience`` reports without improving the objective; the trial then ends normally.

    By epochs, the check runs at the end of the training epoch, after validation, so every reported metric
    (``train/loss`` included, which does not exist yet when validation ends) can be the objective. By steps
    (``each_epoch=False``) it runs after each validation, once ``StepReport`` has put that window's ``train/loss``
    beside the validation metrics (it must come before this callback).
    """
    return EarlyStopping(monitor=metric, mode=mode.value, patience=patience, check_on_train_epoch_end=each_epoch)
