"""What a sweep gave, as one typed object: read from its journal and the MLflow ids beside it, never from MLflow.

``finesweep.run`` and ``finesweep.resume`` return one when the sweep ends; ``finesweep.load`` reads one for any
sweep, finished or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.compose import stored
from finesweep.config.overrides import with_overrides
from finesweep.journal.events import LOG_NAME, BaselineScored, BestChosen, ReportWritten, SelectionMade
from finesweep.journal.file import read_events
from finesweep.journal.records import TrialStatus
from finesweep.journal.replay import load_state
from finesweep.tracking.cursor import Cursor


@dataclass(frozen=True)
class TrialSummary:
    """One trial of the sweep."""

    number: int
    phase: str
    """search, final (re-training with a fresh seed) or baseline."""
    params: Dict[str, Any]
    status: TrialStatus
    best_value: Optional[float]
    """Its best epoch's objective value (None before one)."""
    best_epoch: Optional[int]
    epochs_run: int
    run_id: str
    """Its MLflow child run ("" until MLflow has it)."""


@dataclass(frozen=True)
class SweepResult:
    """A sweep as its journal tells it: the winner, its metrics, where everything is."""

    sweep_id: str
    name: str
    status: str
    """RUNNING (or killed), KILLED (interrupted), FINISHED, or FAILED (no trial finished)."""
    metric: str
    mode: Mode
    config: ExperimentConfig
    """The config the sweep ran with."""
    best_params: Dict[str, Any]
    """The registered configuration's searched values (dotted keys); empty before any trial finished."""
    best_value: Optional[float]
    """Its validation objective: its mean over folds or seeds when re-trained, else its best epoch's."""
    best_trial: Optional[int]
    metrics: Dict[str, float]
    """The winner's final metrics: ``test/*`` (its one test evaluation), ``final/*``, ``inference/*``, and
    ``baseline/*``, ``gain/*`` with ``final.baseline``."""
    trials: Tuple[TrialSummary, ...]
    folder: Path
    """The sweep's folder (its journal, under ``cluster.storage_path``)."""
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    """The sweep's MLflow parent run ("" until MLflow has it)."""
    registered_model: str
    """``name/version`` of the winner in the Model Registry ("" until MLflow has registered it)."""
    report: Optional[Path]
    """The report's HTML file, once one was built."""
    verdict: str = ""
    """Whether the winner beats the recipe beyond noise, in one line (``finesweep.verdict``); "" before a selection."""

    @property
    def model_uri(self) -> str:
        """``models:/name/version`` of the registered winner ("" before one): ``mlflow.pyfunc.load_model`` it."""
        return f"models:/{self.registered_model}" if self.registered_model else ""

    @property
    def best_config(self) -> ExperimentConfig:
        """The config with the winner's values in: what to fine-tune with from here on."""
        return with_overrides(self.config, self.best_params)

    @property
    def child_run_ids(self) -> Dict[int, str]:
        """Each trial's MLflow run id, by trial number (those MLflow has)."""
        return {t.number: t.run_id for t in self.trials if t.run_id}


def read_result(folder: Path) -> SweepResult:
    """The result of the sweep whose journal is in ``folder``.

    Raises:
        UserError: no journal in ``folder``.
    """
    state = load_state(folder)
    header = state.header
    config = stored(header.config_yaml, Path(header.tags["finesweep.sweep_file"]), []).config
    metric, mode = config.objective.metric, config.objective.mode
    best: Optional[BestChosen] = None
    selection: Optional[SelectionMade] = None
    metrics: Dict[str, float] = {}
    report: Optional[Path] = None
    for event in read_events(folder / LOG_NAME):
        if isinstance(event, BestChosen):
            best = event
        elif isinstance(event, SelectionMade) and event.selected_trial is None:  # a user's pick changes no score
            selection, metrics = event, dict(event.metrics)
        elif isinstance(event, BaselineScored):
            metrics.update(event.metrics)
        elif isinstance(event, ReportWritten):
            report = event.html
    cursor = Cursor.load(folder)
    trials = tuple(_summary(t.record(metric, mode), t.phase, cursor) for _, t in sorted(state.trials.items()))
    winner_mean = selection.metrics.get(f"final/val/{metric}/mean") if selection else None
    params = {k: v for k, v in (best.params if best else {}).items() if k in config.space}
    return SweepResult(
        sweep_id=state.sweep_id, name=state.name, status=state.status, metric=metric, mode=mode, config=config,
        best_params=params, best_value=winner_mean if winner_mean is not None else (best.value if best else None),
        best_trial=best.number if best else None, metrics=metrics, trials=trials, folder=folder,
        tracking_uri=config.tracking.uri, experiment_id=cursor.experiment_id, parent_run_id=cursor.parent_id,
        registered_model=cursor.latest_registered(), report=report if report and report.is_file() else None,
        verdict=str(selection.tags.get("finesweep.verdict", "")) if selection else "")


def _summary(record: Any, phase: str, cursor: Cursor) -> TrialSummary:
    return TrialSummary(number=record.number, phase=phase, params=dict(record.params), status=record.status,
                        best_value=record.best_value, best_epoch=record.best_epoch, epochs_run=record.epochs_run,
                        run_id=cursor.runs.get(f"trial/{record.number}", ""))
