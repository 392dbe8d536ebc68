"""Trial records: the best epoch wins, not the last one."""

from __future__ import annotations

from finesweep.config import Mode
from finesweep.journal.records import TrialRecord, TrialStatus, best_trial, ranked


def record(number: int, values: list, status: TrialStatus = TrialStatus.completed) -> TrialRecord:
    rec = TrialRecord(f"t{number}", number, {"optim.lr": number})
    for epoch, value in enumerate(values, start=1):
        rec.add_result({"val/accuracy": value, "epoch": float(epoch)}, "val/accuracy", Mode.max)
    rec.status = status
    return rec


def test_best_value_is_best_epoch_not_last() -> None:
    rec = record(0, [0.5, 0.9, 0.6])
    assert rec.best_value == 0.9 and rec.best_epoch == 2 and rec.epochs_run == 3


def test_best_trial_uses_best_epoch_and_skips_failed() -> None:
    late_peak = record(0, [0.5, 0.95, 0.4])
    steady = record(1, [0.8, 0.85, 0.9])
    failed = record(2, [0.99], TrialStatus.failed)
    assert best_trial([late_peak, steady, failed], Mode.max) is late_peak
    assert [r.number for r in ranked([steady, late_peak], Mode.max)] == [0, 1]


def test_min_mode_and_nan() -> None:
    rec = TrialRecord("t", 0, {})
    for epoch, value in enumerate([0.7, float("nan"), 0.3], start=1):
        rec.add_result({"val/loss": value, "epoch": float(epoch)}, "val/loss", Mode.min)
    assert rec.best_value == 0.3 and rec.best_epoch == 3
    assert best_trial([], Mode.min) is None


def test_failed_trials_never_rank_whatever_they_reported() -> None:
    crashed = record(0, [0.99], TrialStatus.failed)  # its best epoch beats everyone, then it crashed
    stopped = record(1, [0.6], TrialStatus.early_stopped)
    done = record(2, [0.7, 0.8])
    silent = TrialRecord("t3", 3, {})  # reported nothing
    silent.status = TrialStatus.completed
    assert [r.number for r in ranked([crashed, stopped, done, silent], Mode.max)] == [2, 1]
    assert best_trial([crashed, stopped, done, silent], Mode.max) is done
    assert best_trial([crashed], Mode.max) is None


def test_ties_go_to_the_earlier_trial() -> None:
    later, earlier = record(5, [0.8]), record(2, [0.8])
    assert [r.number for r in ranked([later, earlier], Mode.max)] == [2, 5]
