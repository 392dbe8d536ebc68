"""Runs a composed, validated sweep: Ray up, MLflow parent run, trials, winner, Ray down.

``run`` reads top to bottom as the steps of a sweep: connect, search, select and register the
winner, close the books, report. Whatever happens after the parent run exists (a failed trial,
Ctrl-C, a crash), the runs already logged are closed with an honest status and the best trial so
far is still recorded.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from rich.console import Console

from finesweep.cluster import ray_session
from finesweep.config import ExperimentConfig
from finesweep.data import DataCache, EncodedData
from finesweep.errors import SweepFailedError, one_line
from finesweep.overrides import with_overrides
from finesweep.records import SweepListener, TrialRecord, TrialStatus, best_trial, format_params
from finesweep.search_space import planned_trials
from finesweep.selection import Selection, leaderboard, select
from finesweep.sweep import Sweep
from finesweep.tracking import SweepTracker
from finesweep.trial import run_trial
from finesweep.view import SweepView, results_table

Trainable = Callable[..., None]
log = logging.getLogger("finesweep")


@dataclass
class _Outcome:
    """What the sweep has produced so far; whatever is here gets logged, even after a crash."""

    records: List[TrialRecord] = field(default_factory=list)
    selection: Optional[Selection] = None
    selection_error: str = ""
    finished: bool = False
    """The search (and selection) ran to the end: no trial was left running."""


def run(sweep: Sweep, cache: DataCache, console: Console, trainable: Trainable = run_trial) -> int:
    """Run the sweep and model selection; return 0 when at least one trial finished.

    Args:
        sweep: the validated sweep.
        cache: the tokenised data; trials get it without the test split, through Ray's object store.
        console: where the live view and the results go.
        trainable: the trial function; the benchmark swaps in a synthetic one, the CLI never does.

    Raises:
        SweepFailedError: no trial finished, or model selection failed (the search stays logged).
    """
    config = sweep.config
    tracker = SweepTracker(config, sweep.space_description(), sweep.sweep_file, sweep.yaml_text)
    view = SweepView(config, planned_trials(config, sweep.params), console)
    listeners: List[SweepListener] = [tracker, view]
    outcome = _Outcome()
    with _connected(config, tracker) as log_file:
        try:
            with view:
                outcome.records = _search(sweep, cache, trainable, listeners)
                if not _running(view.records):
                    _select_and_register(config, outcome, cache, trainable, listeners, tracker, console)
                    outcome.finished = not _running(view.records)
        finally:
            tracker.finish(view.records, _best(config, outcome, view.records), interrupted=not outcome.finished)
    return _conclude(config, outcome, tracker.parent_id, log_file, console)


@contextlib.contextmanager
def _connected(config: ExperimentConfig, tracker: SweepTracker) -> Iterator[Path]:
    """Ray up and the sweep's parent run created; yields the path of the sweep's log file."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        # A new MLflow store spends ~2 s on schema migrations: do them while Ray starts (~3 s).
        store_ready = pool.submit(tracker.prepare)
        with ray_session(config.cluster, config.name) as log_file:
            store_ready.result()
            tracker.start()
            yield log_file


def _search(sweep: Sweep, cache: DataCache, trainable: Trainable,
            listeners: Sequence[SweepListener]) -> List[TrialRecord]:
    from finesweep.tuner import run_sweep

    return run_sweep(sweep.config, sweep.params, trainable, listeners, base=sweep.config, cache=cache.without_test())


def _select_and_register(config: ExperimentConfig, outcome: _Outcome, cache: DataCache, trainable: Trainable,
                         listeners: Sequence[SweepListener], tracker: SweepTracker, console: Console) -> None:
    """Model selection and registration; a failure here is recorded, and the search's results stand."""
    from finesweep.tuner import run_points

    def retrain(points: List[Dict[str, Any]], first_number: int) -> List[TrialRecord]:
        return run_points(config, points, trainable, listeners, first_number, base=config, cache=cache.without_test())

    if config.final.seeds > 0:
        console.print(f"re-training the top {config.final.top_k} configuration(s) with {config.final.seeds} "
                      "fresh seed(s) each")
    try:
        outcome.selection = select(config, outcome.records, cache, retrain, _evaluate)
        if outcome.selection is not None:
            _record_selection(tracker, config, outcome.selection, cache, console)
    except Exception as exc:  # noqa: BLE001 - the search's results stand; say what failed after it
        log.exception("model selection failed")
        outcome.selection_error = one_line(exc, kind=True)
        tracker.note("finesweep.selection_error", outcome.selection_error)


def _evaluate(config: ExperimentConfig, data: EncodedData, weights: Path, split: str) -> Dict[str, float]:
    # Lightning is imported on the driver only when a winner is evaluated (~4 s), and its terminal
    # log handler is rerouted to the sweep's log file before it says anything.
    import lightning.pytorch  # noqa: F401

    from finesweep.cluster import route_library_logs
    from finesweep.trial import evaluate

    route_library_logs()
    return evaluate(config, data, weights, split)


def _record_selection(tracker: SweepTracker, config: ExperimentConfig, chosen: Selection, cache: DataCache,
                      console: Console) -> None:
    from finesweep.serving import ServingMeta

    metric = config.objective.metric
    if chosen.fallback:
        log.warning("model selection: %s", chosen.fallback)
        tracker.note("finesweep.selection_fallback", chosen.fallback)
        console.print(f"note: {chosen.fallback}", style="yellow", markup=False)
    tracker.log_selection(chosen, leaderboard(chosen, metric))
    winner_config = with_overrides(config, chosen.winner.params)
    meta = ServingMeta.of(winner_config, cache.for_config(winner_config))
    version = tracker.register(Path(str(chosen.chosen.checkpoint)), winner_config.model.name_or_path, meta)
    spread = f" ± {chosen.winner.std:.4f} over {len(chosen.winner.runs)} runs" if len(chosen.winner.runs) > 1 else ""
    tests = ", ".join(f"{k} {v:.4f}" for k, v in chosen.test_metrics.items())
    console.print(f"winner: {format_params(chosen.winner.params)}; val {metric} {chosen.winner.mean:.4f}{spread}; "
                  f"{tests}; {chosen.latency_ms:.2f} ms/example on {chosen.device}", markup=False)
    console.print(f"registered as models:/{version}: mlflow.pyfunc.load_model('models:/{version}')", markup=False)


def _conclude(config: ExperimentConfig, outcome: _Outcome, parent_id: str, log_file: Path, console: Console) -> int:
    """Print the results and turn the outcome into the exit code."""
    records = outcome.records
    console.print(results_table(config, records))
    finished = [r for r in records if r.status in (TrialStatus.completed, TrialStatus.early_stopped)]
    console.print(f"MLflow: experiment {config.experiment_name!r}, parent run {parent_id}. "
                  f"Browse it with: finesweep ui   (Ray's log: {log_file})")
    if not outcome.finished:
        console.print(f"interrupted: {len(finished)} finished trial(s) kept; the parent run is marked KILLED.")
        return 130
    if not finished:
        failed = [r for r in records if r.error]
        reason = failed[0].error if failed else "no trial reported a result"
        raise SweepFailedError(f"no trial finished ({len(records)} started). First error: {reason}")
    if outcome.selection_error:
        raise SweepFailedError(f"the search finished and is logged, but model selection failed: "
                               f"{outcome.selection_error} (details in {log_file})")
    return 0


def _best(config: ExperimentConfig, outcome: _Outcome, seen: Sequence[TrialRecord]) -> Optional[TrialRecord]:
    """The selected winner, else the best search trial seen so far (the view has them even after a crash)."""
    if outcome.selection is not None:
        return outcome.selection.chosen
    return best_trial([r for r in seen if r.phase == "search"], config.objective.mode)


def _running(records: Sequence[TrialRecord]) -> bool:
    return any(r.status is TrialStatus.running for r in records)
