"""What the driver knows about each trial, and the listener interface that consumes it.

The tuner turns Ray Tune's callbacks into these events; the MLflow tracker and the terminal view
listen. Deciding (Optuna, ASHA), executing (Ray) and reporting (listeners) stay separate.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence

from finesweep.config import Mode, progress_of


class TrialStatus(str, enum.Enum):
    """Lifecycle of a trial as the user sees it (MLflow tag ``finesweep.trial_status``)."""

    running = "running"
    completed = "completed"
    early_stopped = "early_stopped"
    failed = "failed"


@dataclass
class TrialRecord:
    """One trial: its sampled values, its per-epoch history and how it ended."""

    trial_id: str
    number: int
    params: Dict[str, Any]
    status: TrialStatus = TrialStatus.running
    history: List[Dict[str, float]] = field(default_factory=list)
    best_value: Optional[float] = None
    best_epoch: Optional[int] = None
    checkpoint: Optional[str] = None
    """The trial's latest checkpoint folder: ``best/`` holds its best epoch's weights, ``state.ckpt``
    (while it runs) what a resumed trial continues from."""
    error: Optional[str] = None
    phase: str = "search"
    """search, or final (re-training the best configurations with fresh seeds)."""
    optuna_number: Optional[int] = None
    """The trial's number in the Optuna study (search trials only)."""
    attempts: int = 1
    """1, plus one per retry after a failure."""
    failure: str = ""
    """How it failed (error, nan, oom); empty unless it failed (or failed before a retry)."""
    seen_at: float = 0.0
    """When the scheduler saw the latest result (Unix time): the order ASHA decided in, for replaying it."""
    node: str = ""
    """Where the trial ran (host and IP, as Ray records them); the latest attempt's."""
    device: str = ""
    """What it computed on (cpu, cuda:0 (name)) and ``precision``, the precision it trained in."""
    precision: str = ""
    workers: int = 1
    """Processes the trial trained on (``cluster.workers_per_trial``), as its Train run reported."""
    worker_pids: str = ""
    """Process ids of a trial's workers (comma-separated), as its Train run reported; empty: one process."""
    effective_batch: int = 0
    """Examples per optimiser step of its current attempt (``ExperimentConfig.effective_batch``); 0: not known."""
    sampler_attrs: Dict[str, Any] = field(default_factory=dict)
    """What the sampler recorded on its Optuna trial when proposing it (NSGA-II's generation), for a rebuilt study."""

    @property
    def epochs_run(self) -> int:
        """Epochs (or steps, by ``scheduler.unit``) completed and reported: its last report's."""
        return progress_of(self.history[-1], len(self.history)) if self.history else 0

    @property
    def at_best(self) -> Dict[str, float]:
        """The report of its best epoch (by the primary objective): every metric the trial stands for; empty
        before one."""
        for index, metrics in enumerate(self.history):
            if progress_of(metrics, index + 1) == self.best_epoch:
                return metrics
        return {}

    def values(self, metrics: Sequence[str]) -> List[float]:
        """``metrics``' values at its best epoch (NaN where not reported)."""
        found = self.at_best
        return [float(found.get(metric, math.nan)) for metric in metrics]

    def add_result(self, metrics: Dict[str, float], metric: str, mode: Mode) -> None:
        """Record one epoch's metrics, tracking the best objective value (not the last)."""
        self.history.append(metrics)
        value = metrics.get(metric)
        if value is not None and mode.better(value, self.best_value):
            self.best_value = value
            self.best_epoch = progress_of(metrics, len(self.history))


def ranked(records: Sequence[TrialRecord], mode: Mode) -> List[TrialRecord]:
    """Trials that can win, best first by their best epoch; ties go to the earlier trial.

    The one place that decides who competes: a failed trial never does, whatever it reported before
    failing (a crash, a divergence or a lost node says nothing good about its configuration), and
    neither does a trial that reported no value. Every ranking (best trial, top-k, tables) uses this.
    """
    scored = [r for r in records if r.best_value is not None and r.status is not TrialStatus.failed]
    return sorted(scored, key=lambda r: (mode.rank_key(r.best_value or 0.0), r.number))


def best_trial(records: Sequence[TrialRecord], mode: Mode) -> Optional[TrialRecord]:
    """The first of ``ranked``, or None when no trial can win."""
    order = ranked(records, mode)
    return order[0] if order else None


class SweepListener(Protocol):
    """Receives the life of a sweep from the driver, in order, on the driver's thread.

    ``trial_started`` comes again when a trial goes on (resumed from the sweep's log, or retried
    after a failure: ``trial_retrying`` first); the record is the same trial, with its history.
    """

    def trial_started(self, record: TrialRecord) -> None: ...

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None: ...

    def trial_ended(self, record: TrialRecord) -> None: ...

    def trial_retrying(self, record: TrialRecord) -> None: ...


def format_params(params: Dict[str, Any]) -> str:
    """Compact one-line rendering of sampled values."""
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
