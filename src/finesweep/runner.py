"""Runs a composed, validated sweep: Ray up, MLflow parent run, trials, winner, Ray down.

Whatever happens after the parent run exists (a failed trial, Ctrl-C, a crash), the runs already
logged are closed with an honest status and the best trial so far is still recorded.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from rich.console import Console

from finesweep.cli import Composed
from finesweep.cluster import ray_session
from finesweep.config import ExperimentConfig, with_overrides
from finesweep.data import DataCache, EncodedData
from finesweep.errors import SweepFailedError
from finesweep.records import SweepListener, TrialRecord, TrialStatus, best_trial, format_params
from finesweep.search_space import planned_trials
from finesweep.selection import Selection, leaderboard, select
from finesweep.tracking import SweepTracker
from finesweep.trial import run_trial
from finesweep.view import SweepView, results_table


def run(composed: Composed, cache: DataCache, console: Console, trainable: Callable[..., None] = run_trial) -> int:
    """Run the sweep and model selection; return 0 when at least one trial finished.

    Args:
        composed: the validated sweep.
        cache: the tokenised data; trials get it without the test split, through Ray's object store.
        console: where the live view and the results go.
        trainable: the trial function; the benchmark swaps in a synthetic one, the CLI never does.
    """
    from finesweep.tuner import run_sweep

    config = composed.config
    space = {p.key: _describe(p) for p in composed.params}
    tracker = SweepTracker(config, space, composed.sweep_file, composed.yaml_text)
    view = SweepView(config, planned_trials(config, composed.params), console)
    records: List[TrialRecord] = []
    chosen: Optional[Selection] = None
    interrupted = True
    with ThreadPoolExecutor(max_workers=1) as pool, contextlib.ExitStack() as stack:
        # A new MLflow store spends ~2 s on schema migrations: do them while Ray starts (~3 s).
        store_ready = pool.submit(tracker.prepare)
        log_file = stack.enter_context(ray_session(config.cluster, config.name))
        store_ready.result()
        parent_id = tracker.start()
        selection_error = ""
        try:
            with view:
                records = run_sweep(config, composed.params, trainable, [tracker, view], base=config,
                                     cache=cache.without_test())
                if not any(r.status is TrialStatus.running for r in records):
                    try:
                        chosen = _select(config, records, cache, trainable, [tracker, view], console)
                        if chosen is not None:
                            _record_selection(tracker, config, chosen, cache, console)
                    except Exception as exc:  # the search's results stand; say what failed after it
                        logging.getLogger("finesweep").exception("model selection failed")
                        selection_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                        tracker.note("finesweep.selection_error", selection_error)
                interrupted = any(r.status is TrialStatus.running for r in view.records)
        finally:
            best = chosen.chosen if chosen else best_trial(records, config.objective.mode)
            tracker.finish(view.records, best, interrupted)
    console.print(results_table(config, records))
    finished = [r for r in records if r.status in (TrialStatus.completed, TrialStatus.early_stopped)]
    console.print(f"MLflow: experiment {config.experiment_name!r}, parent run {parent_id}. "
                  f"Browse it with: finesweep ui   (Ray's log: {log_file})")
    if interrupted:
        console.print(f"interrupted: {len(finished)} finished trial(s) kept; the parent run is marked KILLED.")
        return 130
    if not finished:
        failed = [r for r in records if r.error]
        reason = failed[0].error if failed else "no trial reported a result"
        raise SweepFailedError(f"no trial finished ({len(records)} started). First error: {reason}")
    if selection_error:
        raise SweepFailedError(f"the search finished and is logged, but model selection failed: {selection_error} "
                               f"(details in {log_file})")
    return 0


def _select(config: ExperimentConfig, records: List[TrialRecord], cache: DataCache, trainable: Callable[..., None],
            listeners: List[SweepListener], console: Console) -> Optional[Selection]:
    from finesweep.tuner import run_points

    if config.final.seeds > 0:
        console.print(f"re-training the top {config.final.top_k} configuration(s) with {config.final.seeds} "
                      "fresh seed(s) each")

    def retrain(points: List[Dict[str, Any]], first_number: int) -> List[TrialRecord]:
        return run_points(config, points, trainable, listeners, first_number, base=config, cache=cache.without_test())

    return select(config, records, cache, retrain, _evaluate)


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
    metric = config.objective.metric
    tracker.log_selection(chosen, leaderboard(chosen, metric))
    winner_config = with_overrides(config, chosen.winner.params)
    data = winner_config.data
    encoded = cache.for_config(winner_config)
    meta = {"task": encoded.task.value, "label_names": list(encoded.label_names),
            "text_column": data.text_column, "text_pair_column": data.text_pair_column,
            "max_length": data.max_length, "objective": metric}
    version = tracker.register(Path(str(chosen.chosen.checkpoint)), winner_config.model.name_or_path, meta)
    spread = f" ± {chosen.winner.std:.4f} over {len(chosen.winner.runs)} runs" if len(chosen.winner.runs) > 1 else ""
    tests = ", ".join(f"{k} {v:.4f}" for k, v in chosen.test_metrics.items())
    console.print(f"winner: {format_params(chosen.winner.params)}; val {metric} {chosen.winner.mean:.4f}{spread}; "
                  f"{tests}; {chosen.latency_ms:.2f} ms/example on {chosen.device}")
    console.print(f"registered as models:/{version}: mlflow.pyfunc.load_model('models:/{version}')")


def _describe(param: object) -> dict:
    from dataclasses import asdict

    described = {k: (v.value if hasattr(v, "value") else list(v) if isinstance(v, tuple) else v)
                 for k, v in asdict(param).items() if v not in (None, (), False) and k not in ("key", "when")}
    if param.when:  # type: ignore[attr-defined]
        described["when"] = {k: list(v) for k, v in param.when}  # type: ignore[attr-defined]
    return described
