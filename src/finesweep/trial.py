"""The trainable: plain resolved config + sampled values in -> data, module, Trainer -> fit -> report.

Runs inside a Ray worker. It never sees Hydra, never reads the data file and never tokenises:
the driver hands it the typed ``ExperimentConfig`` and the ``DataCache`` through Ray's object store.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

from finesweep.config import ExperimentConfig, with_overrides
from finesweep.data import DataCache


def run_trial(sampled: Dict[str, Any], *, base: ExperimentConfig, cache: DataCache) -> None:
    """Ray Tune trainable: fine-tune one configuration, reporting once per epoch."""
    fit(with_overrides(base, sampled), cache, report=_tune_report)


def fit(config: ExperimentConfig, cache: DataCache, report: Any) -> None:
    """Fine-tune the model of ``config`` for ``scheduler.max_epochs`` epochs (unless stopped)."""
    import lightning.pytorch as pl
    import torch

    from finesweep.finetune.callbacks import EpochReport
    from finesweep.finetune.datamodule import EncodedDataModule
    from finesweep.finetune.module import SequenceClassifier

    _quiet()
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_trial)))
    pl.seed_everything(config.trainer.seed, verbose=False)
    data = cache.for_config(config)
    steps_per_epoch = math.ceil(len(data.train) / config.data.batch_size)
    module = SequenceClassifier(config.model.name_or_path, data.num_labels, config.optim,
                                total_steps=steps_per_epoch * config.scheduler.max_epochs)
    trainer = pl.Trainer(
        max_epochs=config.scheduler.max_epochs,
        accelerator=config.trainer.accelerator,
        devices=1,
        precision=config.trainer.precision,  # type: ignore[arg-type]
        gradient_clip_val=config.trainer.gradient_clip_val,
        callbacks=[EpochReport(config.objective.metric, config.objective.mode, report)],
        logger=False,  # the driver logs to MLflow; see tracking.py
        enable_checkpointing=False,  # EpochReport keeps the best epoch's weights
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=EncodedDataModule(data, config.data.batch_size, config.trainer.seed))


def _tune_report(metrics: Dict[str, float], checkpoint_dir: Optional[Path]) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in (".*does not have many workers.*", ".*LightningModule.*", ".*TPU available.*"):
        warnings.filterwarnings("ignore", message=pattern)
