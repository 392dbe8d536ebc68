"""The journal's file: events appended as checksummed JSON lines, synced to the disk, read back.

A sweep's journal is ``<cluster.storage_path>/finesweep/<sweep id>/events.jsonl``. One writer appends whole
lines and flushes each to the OS, so a killed driver leaves a consistent prefix: a torn last line is
ignored when the journal is read back (``read_events``).

Trial starts and ends are made durable off the driver's thread (``EventFile.sync_soon``): a driver
killed at any moment still leaves them in the OS's page cache, and only a power loss in the few
milliseconds before the disk has them can lose one (the trial then runs again on resume). What must
not happen before the disk has an event (a finished trial's training state deleted) waits for it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

from finesweep.errors import UserError
from finesweep.journal.events import LOG_NAME, Event, decode, to_json

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class EventFile:
    """Appends events to a sweep's journal file; one process at a time (an exclusive lock on the file).

    Args:
        folder: the sweep's folder (``sweep_dir``); created if missing.

    Raises:
        UserError: another finesweep process is running this sweep.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOG_NAME
        self._handle = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            raise UserError(f"sweep {folder.name} is being run by another finesweep process (its log "
                            f"{self.path} is locked). Wait for that process to end, or stop it first.") from None
        self.count = sum(1 for _ in read_records(self.path))
        self._syncer: Optional[_Syncer] = None

    def append(self, event: E) -> E:
        """Append one event, numbered and timed, and flush it to the OS; a ``DURABLE`` kind also waits for the
        disk (the sweep's own milestones). Returns the event as appended."""
        event = dataclasses.replace(event, seq=self.count, time=time.time())
        body = to_json(event)
        self._handle.write(f"{_digest(body)} {body}\n")
        self._handle.flush()
        if event.DURABLE:
            os.fsync(self._handle.fileno())
        self.count += 1
        return event

    def sync_soon(self, then: Optional[Callable[[], None]] = None) -> None:
        """Have the disk take everything appended so far, on a background thread; then call ``then`` there.

        Requests that arrive while the disk is busy share the next fsync (group commit), so the driver
        never waits for the disk per trial, however many trials end at once.
        """
        if self._syncer is None:
            self._syncer = _Syncer(self._handle.fileno())
        self._syncer.request(then)

    def close(self) -> None:
        """Wait for pending syncs, flush and close the file (releasing the lock)."""
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


class _Syncer:
    """A thread that fsyncs a file when asked, then runs what waited for it, in the order asked."""

    def __init__(self, fileno: int) -> None:
        self._fileno = fileno
        self._cond = threading.Condition()
        self._waiting: List[Optional[Callable[[], None]]] = []
        self._requested = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="finesweep-event-log-sync", daemon=True)
        self._thread.start()

    def request(self, then: Optional[Callable[[], None]]) -> None:
        with self._cond:
            self._waiting.append(then)
            self._requested = True
            self._cond.notify()

    def close(self) -> None:
        """Finish every pending request, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._requested and not self._closing:
                    self._cond.wait()
                if not self._requested:
                    return
                waiting, self._waiting, self._requested = self._waiting, [], False
            os.fsync(self._fileno)
            for then in waiting:
                if then is None:
                    continue
                try:
                    then()
                except Exception:  # noqa: BLE001 - what waits for the disk is cleanup; the sweep goes on
                    logger.warning("after the event log's sync: %s failed", getattr(then, "__name__", then),
                                exc_info=True)


def read_events(path: Path) -> Iterator[Event]:
    """The events of a journal file in order, stopping at the first torn or corrupt line."""
    for record in read_records(path):
        yield decode(record)


def read_records(path: Path) -> Iterator[Dict[str, Any]]:
    """The journal's lines as plain JSON objects (what is on disk), stopping at the first torn or corrupt line."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            digest, _, body = line.rstrip("\n").partition(" ")
            if not line.endswith("\n") or _digest(body) != digest:
                return  # the driver was killed mid-write: what came before is whole
            yield json.loads(body)


def _digest(body: str) -> str:
    return hashlib.blake2b(body.encode("utf-8"), digest_size=6).hexdigest()
