"""Lightning callbacks around the shared training loop."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping

from finesweep.config import Mode
from finesweep.errors import DivergedError
from finesweep.finetune.layout import BEST, STATE, link_tree
from finesweep.finetune.module import FinetuneModule
from finesweep.tasks.task import REPORTED_PREFIXES

Reporter = Callable[[Dict[str, float], Optional[Path]], None]
"""Receives one epoch's metrics and the folder of that epoch's checkpoint (see execution/checkpoints.py)."""


class EpochReport(pl.Callback):
    """Reports every epoch's metrics once, each with a checkpoint the trial can continue from.

    Reporting exactly once per epoch keeps ASHA's rungs in epochs. The checkpoint folder handed to
    the reporter (which persists it: Ray Tune copies it into trial storage) holds ``best/``, the best
    epoch's weights in the task's format (a plain Hugging Face model, LoRA merged in, safetensors), and ``state.ckpt``,
    Lightning's full training state after this epoch. ``best/`` is written only when the objective
    improves, and otherwise linked from the trial's own copy.

    Its own state (the best value, and torch's RNG, so a resumed trial draws the same dropout masks as
    one that never stopped) is saved in ``state.ckpt`` and restored with it.

    Args:
        metric: the objective metric name.
        mode: whether larger or smaller is better.
        report: where metrics and checkpoint folders go.
        best_dir: the trial's working copy of its best weights (a resumed trial starts with its old one).
    """

    def __init__(self, metric: str, mode: Mode, report: Reporter, best_dir: Path) -> None:
        self.metric = metric
        self.mode = mode
        self.report = report
        self.best_dir = best_dir
        self.best: Optional[float] = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith(REPORTED_PREFIXES)}
        metrics["epoch"] = float(trainer.current_epoch + 1)
        value = metrics.get(self.metric)
        if value is not None and self._improved(value):
            self.best = value
            shutil.rmtree(self.best_dir, ignore_errors=True)
            module = cast(FinetuneModule, pl_module)  # the one module finesweep trains
            module.task.save_trained(module.export_model(), self.best_dir)
        with tempfile.TemporaryDirectory(prefix="finesweep-ckpt-") as folder:
            if self.best_dir.is_dir():
                link_tree(self.best_dir, Path(folder) / BEST)
            trainer.save_checkpoint(Path(folder) / STATE)
            self.report(metrics, Path(folder))

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "rng": torch.get_rng_state()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best = state_dict["best"]
        torch.set_rng_state(state_dict["rng"])

    def _improved(self, value: float) -> bool:
        return self.mode.better(value, self.best)


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


def early_stopping(metric: str, mode: Mode, patience: int) -> EarlyStopping:
    """Stop the fit after ``patience`` epochs without improving the objective; the trial then ends normally.

    The check runs at the end of the training epoch, after validation, so every reported metric
    (``train/loss`` included, which does not exist yet when validation ends) can be the objective.
    """
    return EarlyStopping(monitor=metric, mode=mode.value, patience=patience, check_on_train_epoch_end=True)
