"""Runs a composed, validated sweep: Ray up, MLflow parent run, trials, winner, Ray down.

Whatever happens after the parent run exists (a failed trial, Ctrl-C, a crash), the runs already
logged are closed with an honest status and the best trial so far is still recorded.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List

from rich.console import Console

from finesweep.cli import Composed
from finesweep.cluster import ray_session
from finesweep.data import DataCache
from finesweep.errors import SweepFailedError
from finesweep.records import TrialRecord, TrialStatus, best_trial
from finesweep.search_space import planned_trials
from finesweep.tracking import SweepTracker
from finesweep.trial import run_trial
from finesweep.view import SweepView, results_table


def run(composed: Composed, cache: DataCache, console: Console, trainable: Callable[..., None] = run_trial) -> int:
    """Run the sweep; return 0 when at least one trial finished (completed or early-stopped).

    Args:
        composed: the validated sweep.
        cache: the tokenised data, shared with every trial through Ray's object store.
        console: where the live view and the results go.
        trainable: the trial function; the benchmark swaps in a synthetic one, the CLI never does.
    """
    from finesweep.tuner import run_sweep

    config = composed.config
    space = {p.key: _describe(p) for p in composed.params}
    tracker = SweepTracker(config, space, composed.sweep_file, composed.yaml_text)
    view = SweepView(config, planned_trials(config, composed.params), console)
    records: List[TrialRecord] = []
    interrupted = True
    with ThreadPoolExecutor(max_workers=1) as pool, contextlib.ExitStack() as stack:
        # A new MLflow store spends ~2 s on schema migrations: do them while Ray starts (~3 s).
        store_ready = pool.submit(tracker.prepare)
        log_file = stack.enter_context(ray_session(config.cluster, config.name))
        store_ready.result()
        parent_id = tracker.start()
        try:
            with view:
                records = run_sweep(config, composed.params, trainable, [tracker, view], base=config,
                                     cache=cache.without_test())
            interrupted = any(r.status is TrialStatus.running for r in records)
        finally:
            records = records or view.records
            tracker.finish(records, best_trial(records, config.objective.mode), interrupted)
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
    return 0


def _describe(param: object) -> dict:
    from dataclasses import asdict

    described = {k: (v.value if hasattr(v, "value") else list(v) if isinstance(v, tuple) else v)
                 for k, v in asdict(param).items() if v not in (None, (), False) and k not in ("key", "when")}
    if param.when:  # type: ignore[attr-defined]
        described["when"] = {k: list(v) for k, v in param.when}  # type: ignore[attr-defined]
    return described
