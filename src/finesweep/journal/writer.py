"""The journal's writer: every event of the sweep goes through here, into the file first, then on (to MLflow)."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

from finesweep.journal.events import (
    Event,
    TrialEnded,
    TrialInterrupted,
    TrialResult,
    TrialRetrying,
    TrialStarted,
)
from finesweep.journal.file import EventFile
from finesweep.journal.records import TrialRecord, TrialStatus

E = TypeVar("E", bound=Event)


class Journal:
    """Writes the sweep's events: the sweep's own (``record``) and, as a ``SweepListener``, each trial's life.

    The journal is written before anything else learns of an event, so whatever MLflow or the terminal
    shows, the journal has. Every event is flushed to the OS at once; trial starts and ends are then synced
    to the disk in the background (``EventFile.sync_soon``), and what must wait for a trial's end to be on
    the disk (deleting its training state) runs only then.

    Args:
        file: the sweep's journal file.
        sweep_id: the sweep's identity (part of every MLflow run key).
        sink: receives each event once it is in the journal.
        known: values each known trial last ran with (resumed sweeps), by number.
        after_end: runs with an ended trial's checkpoint once its end is on the disk (the runner deletes the
            training state in it: from then on the trial is never continued).
    """

    def __init__(self, file: EventFile, sweep_id: str, sink: Callable[[Event], None],
                 known: Optional[Dict[int, Dict[str, Any]]] = None,
                 after_end: Callable[[Optional[str]], None] = lambda checkpoint: None) -> None:
        self.file = file
        self.sweep_id = sweep_id
        self.sink = sink
        self.after_end = after_end
        self._params: Dict[int, Dict[str, Any]] = dict(known or {})
        self._placed: Dict[int, Tuple[str, str, str, int, str]] = {}

    def record(self, event: E) -> E:
        """Append an event to the journal, then hand it on; returns it as appended (numbered, timed)."""
        appended = self.file.append(event)
        self.sink(appended)
        return appended

    def trial_started(self, record: TrialRecord) -> None:
        before = self._params.get(record.number)
        changed = {k: v for k, v in record.params.items() if before is not None and before.get(k) != v}
        self.record(TrialStarted(sweep_id=self.sweep_id, number=record.number, phase=record.phase,
                                 params=record.params, optuna_number=record.optuna_number, attempt=record.attempts,
                                 changed=changed, effective_batch=record.effective_batch,
                                 sampler_attrs=record.sampler_attrs))
        self.file.sync_soon()
        self._params[record.number] = dict(record.params)

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        placement = (record.node, record.device, record.precision, record.workers, record.worker_pids)
        new_place = bool(record.node) and self._placed.get(record.number) != placement  # once per attempt
        if new_place:
            self._placed[record.number] = placement
        node, device, precision, workers, pids = placement if new_place else ("", "", "", 0, "")
        self.record(TrialResult(number=record.number, metrics=metrics, at=int(time.time() * 1000),
                                checkpoint=record.checkpoint, seen_at=record.seen_at, node=node, device=device,
                                precision=precision, workers=workers, worker_pids=pids))

    def trial_retrying(self, record: TrialRecord) -> None:
        self.record(TrialRetrying(number=record.number, attempt=record.attempts, failure=record.failure,
                                  error=record.error or ""))

    def trial_ended(self, record: TrialRecord) -> None:
        self.record(TrialEnded(number=record.number, status=record.status,
                               failure=record.failure if record.status is TrialStatus.failed else "",
                               error=record.error or "", checkpoint=record.checkpoint, epochs_run=record.epochs_run,
                               best_epoch=record.best_epoch, attempts=record.attempts))
        checkpoint = record.checkpoint
        self.file.sync_soon(lambda: self.after_end(checkpoint))

    def trial_interrupted(self, record: TrialRecord) -> None:
        """The sweep stopped (Ctrl-C) while this trial ran; it is continued on resume."""
        self.record(TrialInterrupted(number=record.number))
