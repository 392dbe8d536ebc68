"""Bounding the disk the sweep's checkpoints take, on the driver (torch-free).

Ray Tune keeps the latest checkpoint folder of each trial (its layout: ``finetune/layout.py``). Once a trial
has ended for good its ``state.ckpt`` is deleted: only ``best/`` is needed after that. ``CheckpointKeeper``
bounds the disk further: it keeps the folders of the best ``cluster.keep_checkpoints`` finished search trials
(and of every trial still running) and deletes the others as soon as they can no longer win.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from finesweep.config import Mode
from finesweep.journal.records import TrialRecord, TrialStatus, ranked


def delete_checkpoint(checkpoint: str) -> None:
    """Delete a trial's checkpoint folder."""
    shutil.rmtree(checkpoint, ignore_errors=True)


def disk_use(checkpoints: Sequence[str]) -> int:
    """Bytes the given checkpoint folders take."""
    return sum(f.stat().st_size for c in checkpoints if Path(c).is_dir() for f in Path(c).rglob("*") if f.is_file())


class CheckpointKeeper:
    """A ``SweepListener`` that keeps the checkpoints that can still win and deletes the rest at once.

    A finished search trial keeps its folder while it ranks among the best ``keep``; when a better
    trial pushes it out, or when it fails, its folder is deleted (a failed trial never ranks). Running
    trials and re-training runs are never touched: they are continued, or model selection needs them.

    Args:
        keep: ``cluster.keep_checkpoints``.
        mode: whether larger objective values are better.
        past: trials of an earlier session (a resumed sweep), their folders counted as kept.
        deleted: called with each trial whose folder was deleted (the sweep's log records it).
        spare: values of a configuration whose trials keep their folders whatever they rank: the recipe's, when
            model selection may register it (``final.prefer: recipe_unless_better``).
        front: the numbers of the finished trials on a multi-objective sweep's Pareto front (``journal.front``): they
            keep their folders too (any of them may be registered: ``finesweep select``); None = one objective.
    """

    def __init__(self, keep: int, mode: Mode, past: Sequence[TrialRecord] = (),
                 deleted: Optional[Callable[[TrialRecord], object]] = None,
                 spare: Optional[Dict[str, Any]] = None,
                 front: Optional[Callable[[Sequence[TrialRecord]], set[int]]] = None) -> None:
        self.front = front
        self.keep = keep
        self.spare = spare
        self.mode = mode
        self.deleted = deleted or (lambda record: None)
        self.finished: Dict[int, TrialRecord] = {r.number: r for r in past
                                                 if r.phase == "search" and r.status is not TrialStatus.running}
        self.gone: set[int] = set()
        self._winners: List[TrialRecord] = ranked(list(self.finished.values()), self.mode)[:self.keep]
        """The best ``keep`` finished trials, best first: a trial's end is weighed against these alone."""
        self._swept = False  # the first end also clears past losers an interrupted session left on disk

    def trial_started(self, record: TrialRecord) -> None:
        self.finished.pop(record.number, None)
        self._winners = [r for r in self._winners if r.number != record.number]

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        """Results change nothing until the trial ends."""

    def trial_retrying(self, record: TrialRecord) -> None:
        """A retry continues from the checkpoint: it stays."""

    def trial_ended(self, record: TrialRecord) -> None:
        if record.phase != "search":
            return
        self.finished[record.number] = record
        contenders = ranked([*self._winners, record], self.mode)
        self._winners = contenders[:self.keep]
        winners = {r.number for r in self._winners}
        # The loser: the trial pushed out of the best ``keep``, or this one (worse than all of them, failed,
        # or without a value).
        losers = [*contenders[self.keep:], record]
        if not self._swept or self.front is not None:  # a new point may push any old one off the front
            losers, self._swept = list(self.finished.values()), True
        if self.front is not None:
            winners |= self.front(list(self.finished.values()))
        for trial in losers:
            spared = self.spare is not None and trial.params == self.spare
            if trial.number not in winners and trial.number not in self.gone and trial.checkpoint and not spared:
                delete_checkpoint(trial.checkpoint)
                self.gone.add(trial.number)
                self.deleted(trial)

    def kept(self) -> List[str]:
        """The finished search trials' checkpoint folders still on disk."""
        return [r.checkpoint for n, r in self.finished.items() if r.checkpoint and n not in self.gone]
