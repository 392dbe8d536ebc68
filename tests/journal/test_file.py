"""The sweep's journal file: trial starts and ends reach the disk off the driver's thread, and a finished
trial's training state is deleted only after its end is on the disk."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import List

import pytest

import finesweep.journal.file as journal_file
from finesweep.finetune.layout import BEST, STATE, drop_training_state
from finesweep.journal.events import TrialEnded, TrialStarted
from finesweep.journal.file import EventFile, read_events
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.journal.writer import Journal


def _trial(tmp_path: Path, number: int) -> TrialRecord:
    checkpoint = tmp_path / f"ckpt{number}"
    (checkpoint / BEST).mkdir(parents=True)
    (checkpoint / STATE).write_bytes(b"optimiser moments")
    record = TrialRecord(f"id{number}", number, {"optim.lr": 1e-3}, optuna_number=number)
    record.checkpoint = str(checkpoint)
    return record


def test_an_ended_trial_loses_its_training_state_only_after_the_disk_has_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: List[str] = []
    gate = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fileno: int) -> None:
        gate.wait(timeout=30)  # the disk is busy until the test lets it go
        real_fsync(fileno)
        ended = sum(isinstance(e, TrialEnded) for e in read_events(log.path))
        order.append(f"fsync with {ended} ended")

    monkeypatch.setattr(journal_file.os, "fsync", slow_fsync)
    log = EventFile(tmp_path / "sweep")
    journal = Journal(log, "sweep", lambda event: None, after_end=drop_training_state)
    record = _trial(tmp_path, 0)
    journal.trial_started(record)
    record.status = TrialStatus.completed
    journal.trial_ended(record)  # returns at once: the driver does not wait for the disk

    state_file = Path(record.checkpoint or "") / STATE
    assert state_file.is_file(), "deleted before the end of the trial was on the disk"
    assert [type(e) for e in read_events(log.path)] == [TrialStarted, TrialEnded], \
        "every event is in the OS's hands at once (a killed driver loses nothing)"
    gate.set()
    log.close()  # waits for what is pending
    assert not state_file.exists() and (Path(record.checkpoint or "") / BEST).is_dir()
    assert order and order[-1] == "fsync with 1 ended"


def test_many_ends_share_syncs_and_every_training_state_goes(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: List[int] = []
    gate = threading.Event()
    real_fsync = os.fsync

    def counted(fileno: int) -> None:
        gate.wait(timeout=30)
        syncs.append(fileno)
        real_fsync(fileno)

    monkeypatch.setattr(journal_file.os, "fsync", counted)
    log = EventFile(tmp_path / "sweep")
    journal = Journal(log, "sweep", lambda event: None, after_end=drop_training_state)
    records = [_trial(tmp_path, n) for n in range(20)]
    for record in records:
        journal.trial_started(record)
        record.status = TrialStatus.early_stopped
        journal.trial_ended(record)
    gate.set()
    log.close()
    assert all(not (Path(r.checkpoint or "") / STATE).exists() for r in records)
    assert len(syncs) < 40, f"{len(syncs)} fsyncs for 40 events: requests made while the disk was busy are grouped"
    assert [e.number for e in read_events(log.path) if isinstance(e, TrialEnded)] == list(range(20))


def test_a_failing_cleanup_does_not_stop_the_journal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = EventFile(tmp_path / "sweep")
    ran: List[str] = []

    def broken() -> None:
        raise OSError("read-only file system")

    log.sync_soon(broken)
    log.sync_soon(lambda: ran.append("after"))
    log.close()
    assert ran == ["after"]
    assert "read-only file system" in caplog.text
