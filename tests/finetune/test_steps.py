"""Step-wise trials (``scheduler.unit: steps``): reports every ``report_every`` optimiser steps, mid-epoch too, and a
trial resumed from a mid-epoch report goes on with the next batch of the same shuffle."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from finesweep.config import ExperimentConfig
from finesweep.execution.trial import StepPlan, fit, position_in_epoch, report_val_rows
from finesweep.finetune import datamodule
from finesweep.finetune.layout import STATE
from finesweep.tasks import Split
from finesweep.tasks.preparation import prepare_all

from .conftest import MakeConfig

# tiny.csv: 240 rows -> 192 training rows = 12 batches of 16 per epoch
STEPS = ("scheduler.unit=steps", "scheduler.report_every=5", "scheduler.max_steps=30", "scheduler.grace_period=5")


class Stop(Exception):
    """What the test's reporter raises to end a trial the way a killed worker does: mid-run."""


def _train_batches(monkeypatch: pytest.MonkeyPatch, train: Split) -> List[Tuple[int, ...]]:
    """Every training batch's example ids, in the order the trial trains on them."""
    seen: List[Tuple[int, ...]] = []
    real = datamodule._Collate.__call__

    def recording(self: Any, indices: List[int]) -> Dict[str, Any]:
        if self.split is train:
            seen.append(tuple(indices))
        return real(self, indices)

    monkeypatch.setattr(datamodule._Collate, "__call__", recording)
    return seen


def _run(config: ExperimentConfig, resume: Optional[Path] = None, stop_at: Optional[int] = None,
         keep: Optional[Path] = None) -> List[Dict[str, float]]:
    reports: List[Dict[str, float]] = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        reports.append(metrics)
        if stop_at is not None and int(metrics["step"]) == stop_at:
            assert folder is not None and keep is not None
            shutil.copytree(folder, keep)
            raise Stop

    try:
        fit(config, prepare_all(config, ()), report, resume=resume)
    except Stop:
        pass
    return reports


def test_a_stepwise_trial_reports_every_n_steps_across_epochs(make_config: MakeConfig) -> None:
    config = make_config(*STEPS, "optim.schedule=linear")
    reports = _run(config)
    assert [m["step"] for m in reports] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0], "12 steps an epoch: reports ignore it"
    assert [round(m["train/epoch"], 3) for m in reports] == [round(s / 12, 3) for s in (5, 10, 15, 20, 25, 30)]
    assert all("val/accuracy" in m and "train/loss" in m and "model/trainable_params" in m for m in reports)
    assert len({m["train/loss"] for m in reports}) == len(reports), "train/loss is each window's own mean"


def test_the_schedule_spans_max_steps_and_accumulation_keeps_reports_on_steps(make_config: MakeConfig) -> None:
    # 12 batches, accumulating 5: 2 whole steps an epoch (10 batches; the 2 left over differ each epoch)
    config = make_config(*STEPS[:1], "scheduler.report_every=3", "scheduler.max_steps=9", "scheduler.grace_period=3",
                         "trainer.accumulate_grad_batches=5", "optim.schedule=linear")
    plan = StepPlan.of(config, 192)
    assert (plan.steps_per_epoch, plan.total_steps, plan.train_batches) == (2, 9, 10)
    reports: List[Dict[str, float]] = []
    module = fit(config, prepare_all(config, ()), lambda metrics, folder: reports.append(metrics))
    assert [m["step"] for m in reports] == [3.0, 6.0, 9.0]
    assert module.total_steps == module.trainer.global_step == 9
    assert [g["lr"] for g in module.trainer.optimizers[0].param_groups] == [0.0] * 2, "decay ends with the budget"


def test_a_trial_resumed_mid_epoch_sees_each_batch_once_in_the_same_order(make_config: MakeConfig, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(*STEPS)
    data = prepare_all(config, ()).for_config(config)
    seen = _train_batches(monkeypatch, data.train)
    whole = _run(config)
    uninterrupted = list(seen)
    seen.clear()
    # stopped at step 15: 3 batches into the second epoch
    first = _run(config, stop_at=15, keep=tmp_path / "ckpt")
    assert position_in_epoch(tmp_path / "ckpt" / STATE) == (1, 3 * 16), "3 batches of 16 into the second epoch"
    before = list(seen)
    seen.clear()
    rest = _run(config, resume=tmp_path / "ckpt")
    assert before + seen == uninterrupted, "no batch skipped, none seen twice, the same order"
    assert [m["step"] for m in first + rest] == [m["step"] for m in whole], "each step reported exactly once"
    for resumed, straight in zip(first + rest, whole, strict=True):
        assert {k: round(v, 5) for k, v in resumed.items()} == {k: round(v, 5) for k, v in straight.items()}


@pytest.mark.parametrize("fraction,max_rows,expected", [(1.0, None, None), (0.5, None, 24), (0.01, None, 1),
                                                        (1.0, 20, 20), (0.5, 40, 20), (1.0, 1000, None)])
def test_each_report_scores_a_share_of_the_validation_split(make_config: MakeConfig, fraction: float,
                                                            max_rows: Optional[int], expected: Optional[int]) -> None:
    # 48 validation rows
    config = make_config(f"trainer.val_fraction_per_report={fraction}", f"data.val_max_rows={max_rows or 'null'}")
    assert report_val_rows(config, 48) == expected


def test_reports_score_the_first_validation_rows_only(make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(*STEPS[:1], "scheduler.report_every=12", "scheduler.max_steps=12", "scheduler.grace_period=12",
                         "data.val_max_rows=10")
    scored: List[int] = []
    real = datamodule._Collate.__call__

    def counting(self: Any, indices: List[int]) -> Dict[str, Any]:
        if len(self.split) == 24:  # the validation split (10% of 240 rows)
            scored.extend(indices)
        return real(self, indices)

    monkeypatch.setattr(datamodule._Collate, "__call__", counting)
    _run(config)
    assert scored == list(range(10))
