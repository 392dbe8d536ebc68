"""The shared training loop on a tiny BERT: schedule, once-per-epoch reports, best-epoch weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from safetensors.torch import load_file

from finesweep import data
from finesweep.cli import compose
from finesweep.config import ExperimentConfig, Mode, Schedule
from finesweep.finetune.callbacks import EpochReport
from finesweep.finetune.datamodule import EncodedDataModule
from finesweep.finetune.module import lr_lambda
from finesweep.metrics import f1_macro
from finesweep.trial import fit


@pytest.fixture()
def config(tiny_model: Path, tiny_csv: Path) -> ExperimentConfig:
    return compose("demo", [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
                            "data.max_samples=null", "data.max_length=32", "data.batch_size=16", "optim.lr=1e-2",
                            "scheduler.max_epochs=3"]).config


@pytest.mark.parametrize("schedule,expected", [
    (Schedule.linear, [0.5, 1.0, 0.5, 0.0]),
    (Schedule.cosine, [0.5, 1.0, 0.5, 0.0]),
    (Schedule.constant, [0.5, 1.0, 1.0, 1.0]),
])
def test_warmup_then_decay_spans_the_full_budget(schedule: Schedule, expected: List[float]) -> None:
    factor = lr_lambda(schedule, warmup_steps=1, total_steps=5)
    assert [round(factor(s), 6) for s in (0, 1, 3, 5)] == expected


def test_f1_macro() -> None:
    import numpy as np

    labels, preds = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert math.isclose(f1_macro(labels, preds, 3), (0.5 + 0.8 + 0.0) / 3)


def test_batches_are_trimmed_to_their_longest_example(config: ExperimentConfig) -> None:
    encoded = data.prepare(config)
    module = EncodedDataModule(encoded, batch_size=8, seed=0)
    batch = next(iter(module.val_dataloader()))
    lengths = batch["features"]["attention_mask"].sum(dim=1)
    assert batch["features"]["input_ids"].shape[1] == int(lengths.max()) < 32
    assert module.test_loads == 0


def test_fit_reports_every_epoch_and_saves_only_improvements(config: ExperimentConfig) -> None:
    cache = data.prepare_all(config, ())
    reports: List[Tuple[Dict[str, float], Optional[Dict[str, torch.Tensor]]]] = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        weights = load_file(str(folder / "model.safetensors")) if folder else None
        assert folder is None or (folder / "config.json").is_file()
        reports.append((metrics, weights))

    fit(config, cache, report)
    assert [m["epoch"] for m, _ in reports] == [1.0, 2.0, 3.0]
    assert all(set(m) == {"train/loss", "val/loss", "val/accuracy", "val/f1_macro", "epoch"} for m, _ in reports)
    assert all(isinstance(v, float) for m, _ in reports for v in m.values())
    best = -1.0
    for metrics, weights in reports:
        improved = metrics["val/accuracy"] > best
        assert (weights is not None) == improved, "weights are saved exactly when the objective improves"
        best = max(best, metrics["val/accuracy"])
    assert reports[-1][0]["train/loss"] < reports[0][0]["train/loss"] + 0.05


def test_epoch_report_minimises_in_min_mode() -> None:
    seen: List[bool] = []
    callback = EpochReport("val/loss", Mode.min, lambda m, f: seen.append(f is not None))
    assert callback._improved(0.5) and not math.isnan(0.5)
    callback.best = 0.5
    assert callback._improved(0.4) and not callback._improved(0.6) and not callback._improved(float("nan"))


def test_module_starts_in_train_mode(config: ExperimentConfig) -> None:
    from finesweep.finetune.module import SequenceClassifier

    module = SequenceClassifier(config.model.name_or_path, 3, config.optim, total_steps=10)
    assert module.model.training, "from_pretrained's eval mode would silently disable dropout"
