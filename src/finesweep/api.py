"""The Python API: what the ``finesweep`` command does, for notebooks and scripts.

Each call prints nothing unless given a ``rich.console.Console`` to print on, and raises ``finesweep.errors``
types: ``UserError`` (and its kinds) for input to fix, before anything starts; ``SweepFailedError`` when no
trial finished or model selection failed; ``SweepInterrupted`` on Ctrl-C (``resume`` continues it).

    import finesweep

    result = finesweep.run("demo", overrides=["search.num_trials=8"])
    result.best_params, result.metrics["test/accuracy"], result.model_uri
    finesweep.resume(result.sweep_id, overrides=["search.num_trials=16"])   # extend it
    finesweep.load("demo")                                                   # any sweep, from its journal

Heavy libraries (Ray, torch, Lightning) load only when a call needs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

from rich.console import Console

from finesweep.config import ExperimentConfig, preflight
from finesweep.config.compose import blame, compose, location_overrides, locations, stored
from finesweep.config.sweep import Sweep
from finesweep.errors import ConfigError
from finesweep.journal.replay import find_sweeps, load_state, locate
from finesweep.result import SweepResult, read_result
from finesweep.tracking.cursor import parent_run
from finesweep.verdict import resolution

if TYPE_CHECKING:
    from finesweep.tasks import DataCache

SweepRef = Union[str, Path, None]
"""A sweep: its id, its parent run's id (or a unique prefix of either), its name (its latest run), or its folder;
None = the latest unfinished sweep (``resume``) or the latest sweep (``load``)."""


def show(sweep: Union[str, Path], overrides: Sequence[str] = (), *, console: Optional[Console] = None) -> Sweep:
    """Compose and validate a sweep completely (config, search space, recipe, data file, model), starting nothing.

    Args:
        sweep: a name from ``sweeps/`` or a path to a sweep YAML.
        overrides: Hydra overrides (``optim.lr=3e-5``, ``data=csv``), applied last.
        console: where to say how much the validation split can resolve (``verdict.resolution``); None: nowhere.

    Raises:
        UserError: the first rule broken, naming the file, the key, the value and the fix.
    """
    composed = compose(str(sweep), overrides)
    with blame(composed.sweep_file):
        found = preflight.check_data(composed.config, composed.params)
        preflight.check_model(composed.config, composed.params)
    if console is not None:
        points = composed.config.objective.metric in found.task.points_metrics
        console.print(resolution(composed.config, found.rows, points), markup=False)
    return composed


def run(sweep: Union[str, Path], overrides: Sequence[str] = (), *, console: Optional[Console] = None) -> SweepResult:
    """Run a sweep to its end: validate everything, prepare the data once, search, select and register the winner.

    Args:
        sweep: a name from ``sweeps/`` or a path to a sweep YAML.
        overrides: Hydra overrides, applied last (``search.num_trials=20``, ``data=csv data.path=...``).
        console: where to show the live view and the results; None prints nothing.

    Raises:
        UserError: bad input (nothing was started).
        SweepFailedError: no trial finished, or model selection failed (the search stays logged).
        SweepInterrupted: Ctrl-C; ``resume`` continues the sweep.
    """
    from finesweep import runner
    from finesweep.tasks.preparation import check_objectives, prepare_all

    out = console or _silent()
    composed = compose(str(sweep), overrides)
    started = time.monotonic()
    with blame(composed.sweep_file):
        preflight.check_model(composed.config, composed.params)
        with out.status("reading, splitting and tokenising the data once"):
            cache = prepare_all(composed.config, composed.params)
            check_objectives(cache.task, composed.config)
            cache = _with_probe(cache, composed.config)
        data = next(iter(cache.variants.values()))
        rows = (len(data.train), len(data.val), len(data.test or ()))
        preflight.check_folds(composed.config.final.folds(rows[1]), rows[0] + rows[1])
    out.print(f"data ready in {time.monotonic() - started:.1f}s: "
              + "; ".join(v.describe() for v in cache.variants.values()), markup=False)
    out.print(resolution(composed.config, rows, composed.config.objective.metric in cache.task.points_metrics),
              markup=False)
    out.print(f"MLflow store: {_store(composed.config.tracking.uri)}", markup=False)
    with _logging_kept():
        folder = runner.run(composed, cache, out, resume_overrides=location_overrides(overrides))
    return read_result(folder)


def resume(sweep: SweepRef = None, overrides: Sequence[str] = (), *,
           console: Optional[Console] = None) -> SweepResult:
    """Continue an interrupted sweep from its journal, or extend a finished one (``search.num_trials=N``).

    Finished trials stay, running ones go on from their last checkpoint, the same MLflow runs go on.

    Args:
        sweep: which sweep (see ``SweepRef``); None = the latest unfinished one.
        overrides: where things are (``tracking.*``, ``cluster.*``) and ``search.num_trials``,
            ``search.max_concurrent``, ``search.max_retries``; a value equal to the sweep's own is no change.
        console: where to show the live view and the results; None prints nothing.

    Raises:
        UserError: no such sweep, or an override that changes the sweep itself.
        SweepFailedError, SweepInterrupted: as ``run``.
    """
    from finesweep import runner
    from finesweep.tasks.preparation import prepare_all

    out = console or _silent()
    folder = _folder(sweep, overrides, unfinished=True)
    state = load_state(folder)
    composed = stored(state.header.config_yaml, Path(state.header.tags["finesweep.sweep_file"]), overrides)
    started = len(state.search_trials())
    if composed.planned_trials < started:
        raise ConfigError(f"search.num_trials: the sweep has started {started} trials, got "
                          f"num_trials={composed.config.search.num_trials}. A resume can extend a sweep, "
                          "not shrink it.")
    with out.status("reading, splitting and tokenising the data once"), blame(composed.sweep_file):
        cache = _with_probe(prepare_all(composed.config, composed.params), composed.config)
    out.print(f"resuming {composed.config.name} ({folder.name}); MLflow store: "
              f"{_store(composed.config.tracking.uri)}", markup=False)
    with _logging_kept():
        runner.resume(composed, folder, cache, out, resume_overrides=location_overrides(overrides))
    return read_result(folder)


def _with_probe(cache: DataCache, config: ExperimentConfig) -> DataCache:
    """The data with the forgetting probe (``probe.forgetting``) prepared once, on the driver; unchanged without."""
    if config.probe.forgetting is None:
        return cache
    from finesweep.finetune.forgetting import ForgettingProbe

    return dataclasses.replace(cache, probe=ForgettingProbe.prepare(config, cache.task))


def load(sweep: SweepRef = None, overrides: Sequence[str] = ()) -> SweepResult:
    """A sweep's result, from its journal (finished or not): the winner, its metrics, its MLflow runs.

    Args:
        sweep: which sweep (see ``SweepRef``); None = the latest one.
        overrides: ``cluster.storage_path=...`` when the sweep ran elsewhere than ``mlruns/ray``.

    Raises:
        UserError: no such sweep.
    """
    return read_result(_folder(sweep, overrides, unfinished=False))


def _folder(sweep: SweepRef, overrides: Sequence[str], unfinished: bool) -> Path:
    if isinstance(sweep, Path) or (isinstance(sweep, str) and os.sep in sweep and Path(sweep).is_dir()):
        return Path(sweep)
    storage = locations(overrides).storage_path
    if sweep is None and not unfinished:
        found = find_sweeps(storage)
        if found:
            return found[0]
    return locate(storage, sweep, parent_run)


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """A sweep sends the libraries' logs to its log file (``execution/cluster.py``); a script or a notebook gets
    its own logging back when the call returns."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with warnings.catch_warnings():
        try:
            yield
        finally:
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
            logging.captureWarnings(False)


def _store(uri: str) -> str:
    return f"{uri} (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else uri


def _silent() -> Console:
    return Console(file=io.StringIO(), width=120)
