"""Runs a sweep, new (``run``) or continued (``resume``), through the same steps.

``_drive`` reads top to bottom as the steps of a sweep: connect, search (continuing the trials that
were running), select and register the winner, close the books, report. Every step writes to the
sweep's journal first (``finesweep.journal``); MLflow follows from the journal (``finesweep.tracking``), so a
killed driver loses nothing a resume cannot continue, and a tracking outage loses nothing a sync cannot send.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from rich.console import Console

from finesweep.config import ExperimentConfig, Prefer
from finesweep.config.overrides import with_overrides
from finesweep.config.recipe import recipe
from finesweep.config.sweep import Sweep
from finesweep.errors import SweepFailedError, SweepInterrupted, UserError, one_line
from finesweep.execution.checkpoints import CheckpointKeeper, disk_use
from finesweep.execution.cluster import ray_session
from finesweep.execution.failures import KINDS
from finesweep.execution.trial import run_trial
from finesweep.finetune.layout import best_weights, drop_training_state
from finesweep.journal.continuation import rebuilt_study, retraining, settle_search
from finesweep.journal.events import (
    BaselineScored,
    BestChosen,
    CheckpointDeleted,
    Note,
    RegisterRequested,
    ReportWritten,
    SelectionMade,
    SessionStarted,
    SweepEnded,
    SweepExtended,
    sweep_started,
)
from finesweep.journal.file import EventFile, read_events
from finesweep.journal.front import front_numbers, pareto_front
from finesweep.journal.records import SweepListener, TrialRecord, TrialStatus, best_trial, format_params
from finesweep.journal.replay import SweepState, load_state, new_sweep_id, sweep_dir
from finesweep.journal.writer import Journal
from finesweep.report.terminal import SweepView, results_table
from finesweep.search.searcher import Numbering, Rerun
from finesweep.selection import (
    Selection,
    baseline_metrics,
    leaderboard,
    ranked_by,
    scored_by,
    select,
    test_summary,
)
from finesweep.tasks import DataCache, PreparedData
from finesweep.tasks.task import Generated
from finesweep.tracking import UI_VIEW, Projector, sync_log

Trainable = Callable[..., None]
logger = logging.getLogger("finesweep")


@dataclass
class Session:
    """One run of the driver over a sweep: its config, its journal, where its events go."""

    sweep: Sweep
    state: SweepState
    events: EventFile
    journal: Journal
    projector: Projector
    numbering: Numbering
    resume_command: str

    @property
    def config(self) -> ExperimentConfig:
        """The sweep's config."""
        return self.sweep.config

    @functools.cached_property
    def recipe(self) -> Dict[str, Any]:
        """The composed config's own values of the searched keys: the recipe, the search's first trial (computed
        once: the baseline compares it with every search trial)."""
        return recipe(self.config, self.sweep.params, strict=False)


@dataclass
class _Outcome:
    """What the session has produced so far; whatever is here gets logged, even after a crash."""

    records: List[TrialRecord] = field(default_factory=list)
    selection: Optional[Selection] = None
    selection_error: str = ""
    finished: bool = False
    """The search (and selection) ran to the end: no trial was left running."""
    report: Optional[Path] = None
    """The sweep report's HTML file, once written."""


def run(sweep: Sweep, cache: DataCache, console: Console, trainable: Trainable = run_trial,
        resume_overrides: Sequence[str] = ()) -> Path:
    """Run a new sweep and its model selection; return the sweep's folder (its journal).

    Args:
        sweep: the validated sweep.
        cache: the prepared data; trials get it without the test split, through Ray's object store.
        console: where the live view and the results go.
        trainable: the trial function; tests and benchmarks swap in their own, the CLI never does.
        resume_overrides: the overrides ``finesweep resume`` needs to find this sweep again.

    Raises:
        SweepFailedError: no trial finished, or model selection failed (the search stays logged).
        SweepInterrupted: Ctrl-C; the sweep's journal holds everything a resume needs.
    """
    sweep_id = new_sweep_id()
    folder = sweep_dir(sweep.config.cluster.storage_path, sweep_id)
    try:
        events = EventFile(folder)
    except OSError as exc:
        raise UserError(f"cluster.storage_path: cannot write {sweep.config.cluster.storage_path} "
                        f"({one_line(exc, kind=True)}). Use a folder you can write (on a cluster, one every node "
                        "can: NFS).") from None
    events.append(sweep_started(sweep, cache.content_hash(), sweep_id, folder))
    command = " ".join(["finesweep resume", sweep_id, *resume_overrides])
    _drive(_session(sweep, load_state(folder), events, command), cache, console, trainable)
    return folder


def resume(sweep: Sweep, folder: Path, cache: DataCache, console: Console, trainable: Trainable = run_trial,
           resume_overrides: Sequence[str] = ()) -> Path:
    """Continue a sweep from its journal: finished trials stay, running ones go on from their checkpoints.

    ``sweep`` is the config the sweep ran with (its journal's), with the resume's own overrides applied;
    a larger ``search.num_trials`` extends it. Returns the sweep's folder.

    Raises:
        UserError: the data changed since the sweep started.
        SweepFailedError, SweepInterrupted: as ``run``.
    """
    events = EventFile(folder)
    state = load_state(folder)
    try:
        check_same_data(state, cache.content_hash())
    except UserError:
        events.close()
        raise
    if state.complete and sweep.planned_trials <= state.budget and not state.unfinished():
        events.close()
        console.print(f"sweep {state.name} ({state.sweep_id}) is finished: {len(state.search_trials())} trials, "
                      f"nothing to resume. To run more trials: finesweep resume {state.sweep_id} "
                      f"search.num_trials=N (N > {state.budget}).", markup=False)
        deadline = time.monotonic() + sweep.config.tracking.flush_timeout
        message, _ = sync_log(folder, sweep.config.tracking.uri, deadline)
        if message:  # what MLflow had not taken yet (the spool) goes first, even with nothing to run
            console.print(message, markup=False)
        return folder
    if sweep.planned_trials > state.budget:
        events.append(SweepExtended(budget=sweep.planned_trials))
    events.append(SessionStarted(session=state.sessions + 1))
    command = " ".join(["finesweep resume", state.sweep_id, *resume_overrides])
    _drive(_session(sweep, load_state(folder), events, command), cache, console, trainable)
    return folder


def check_same_data(state: SweepState, fingerprint_now: str) -> None:
    """A resume must train on the very data the sweep started with.

    Raises:
        UserError: the data (or its tokenisation) changed.
    """
    if state.header.data_fingerprint not in (None, fingerprint_now):
        raise UserError(f"sweep {state.name} ({state.sweep_id}) trained on other data: "
                        f"{state.header.params['data.path']} (or its tokenisation) changed since the sweep started. "
                        "A resume must see the same data; "
                        "restore the file, or start a new sweep with finesweep run.")


def _session(sweep: Sweep, state: SweepState, events: EventFile, command: str) -> Session:
    projector = Projector(state.folder, sweep.config.tracking.uri)
    known = {t.number: t.params for t in state.trials.values()}
    journal = Journal(events, state.sweep_id, projector.submit, known, after_end=drop_training_state)
    return Session(sweep, state, events, journal, projector, Numbering(state.next_number), command)


def _drive(session: Session, cache: DataCache, console: Console, trainable: Trainable) -> None:
    config = session.config
    past = [t.record(config.objective.metric, config.objective.mode) for t in session.state.search_trials()]
    view = SweepView(config, session.state.budget, console, past)
    # the recipe's trial may be registered (prefer: recipe_unless_better) or be the baseline: its weights stay
    spare = session.recipe if config.final.prefer is Prefer.recipe_unless_better or config.final.baseline else None
    front = (lambda records: front_numbers(records, config.objective)) if config.objective.multi else None
    keeper = CheckpointKeeper(config.cluster.keep_checkpoints, config.objective.mode, past,
                              lambda record: session.journal.record(CheckpointDeleted(number=record.number)), spare,
                              front)
    keeper.gone = {t.number for t in session.state.search_trials() if t.checkpoint_deleted}
    listeners: List[SweepListener] = [session.journal, view, keeper]
    outcome = _Outcome(records=list(past))
    interrupted_hard = False
    try:
        with _connected(session) as log_file:
            with view:
                outcome.records = _search(session, cache, trainable, listeners, past)
                if not _running(view.records):
                    _select_and_register(session, outcome, cache, trainable, listeners, console)
                    outcome.finished = not _running(view.records)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Ray Tune: exit now, the journal has everything
        interrupted_hard = True
        raise
    finally:
        _close_books(session, outcome, view.records, drain=1.0 if interrupted_hard else config.tracking.flush_timeout)
    _print_results(session, outcome, log_file, console, keeper)
    _verdict(session, outcome, log_file)


@contextlib.contextmanager
def _connected(session: Session) -> Iterator[Path]:
    """Ray up and MLflow's store open; yields the path of Ray's log file."""
    config = session.config
    with ThreadPoolExecutor(max_workers=1) as pool:
        # A new MLflow store spends ~2 s on schema migrations: do them while Ray starts (~3 s).
        store_ready = pool.submit(session.projector.prepare, config.experiment_name, config.tracking.artifact_root)
        with ray_session(config) as log_file:
            store_ready.result()
            backlog = [e for e in read_events(session.events.path) if e.seq >= session.projector.cursor.sent]
            session.projector.start(backlog)  # the journal's unsent events first (a resume sends its spool first)
            yield log_file


# --- the search ------------------------------------------------------------------------------------

def _search(session: Session, cache: DataCache, trainable: Trainable, listeners: Sequence[SweepListener],
            past: List[TrialRecord]) -> List[TrialRecord]:
    """Run (or continue) the search; return every search trial, past ones included."""
    from finesweep.execution.tuner import make_scheduler, run_plan, search_plan

    config, state = session.config, session.state
    scheduler = make_scheduler(config)
    by_number = {r.number: r for r in past}
    reruns = settle_search(state, config, scheduler, by_number, session.journal.trial_ended)
    study = rebuilt_study(config, session.sweep.params, list(by_number.values()))
    if not reruns and len(study.trials) >= state.budget:
        return past
    plan = search_plan(config, session.sweep.params, session.numbering, study, reruns,
                       known={r.number: by_number[r.number] for r in reruns}, scheduler=scheduler)
    ran = run_plan(config, plan, trainable, listeners, _train_root(session), base=config,
                   cache=cache.without_test())
    return past + [r for r in ran if r.number not in by_number]


# --- model selection ---------------------------------------------------------------------------------

def _select_and_register(session: Session, outcome: _Outcome, cache: DataCache, trainable: Trainable,
                         listeners: Sequence[SweepListener], console: Console) -> None:
    """Model selection and registration; a failure here is recorded, and the search's results stand."""
    config = session.config
    folds = config.final.folds(len(next(iter(cache.variants.values())).val))
    final_cache = cache.without_test().with_folds(folds, config.data.seed) if folds else cache.without_test()
    if folds:
        console.print(f"cross-validating the top {config.final.top_k} configuration(s) and the recipe on {folds} "
                      f"folds of train + validation{_seeds(config)}", markup=False)
    elif config.final.seeds > 0:
        console.print(f"re-training the top {config.final.top_k} configuration(s) and the recipe with "
                      f"{config.final.seeds} fresh seed(s) each", markup=False)
    try:
        outcome.selection = select(config, outcome.records, cache,
                                   lambda points: _retrain(session, points, final_cache, trainable, listeners),
                                   _evaluate, session.recipe, folds)
        if outcome.selection is not None:
            front = front_rows(config, outcome.records, cache) if config.objective.multi else []
            _record_selection(session, outcome.selection, cache, console, front)
    except Exception as exc:  # noqa: BLE001 - the search's results stand; say what failed after it
        logger.exception("model selection failed")
        outcome.selection_error = one_line(exc, kind=True)
        session.journal.record(Note(tag="finesweep.selection_error", text=outcome.selection_error))
    if outcome.selection is not None and config.final.baseline:
        try:
            _baseline(session, outcome.selection, outcome.records, cache, trainable, listeners, console)
        except Exception as exc:  # noqa: BLE001 - the winner stands without its comparison
            logger.exception("the baseline run failed")
            session.journal.record(Note(tag="finesweep.baseline_error", text=one_line(exc, kind=True)))
            console.print(f"note: no baseline comparison ({one_line(exc)})", style="yellow", markup=False)


def _baseline(session: Session, chosen: Selection, records: Sequence[TrialRecord], cache: DataCache,
              trainable: Trainable, listeners: Sequence[SweepListener], console: Console) -> None:
    """Train the config without searched values once (a resumed sweep reuses a finished one); log the gain.

    The recipe's search trial is that very config with the same seed: when it ran its full budget (ASHA did not
    stop it) and its weights are kept, it is the baseline, and nothing is trained again.
    """
    from finesweep.execution.tuner import points_plan, run_plan

    config, metric = session.config, chosen.metric or session.config.objective.metric
    done = [t for t in session.state.trials.values() if t.phase == "baseline" and t.finished]
    recipe_run = next((r for r in records if r.phase == "search" and r.params == session.recipe
                       and r.status is TrialStatus.completed and r.checkpoint and Path(r.checkpoint).is_dir()), None)
    if done:
        record: Optional[TrialRecord] = done[-1].record(metric, config.objective.mode)
    elif recipe_run is not None:
        console.print(f"the baseline is trial {recipe_run.number}: the recipe, the same config and seed, run to its "
                      "full budget in the search", markup=False)
        record = recipe_run
    else:
        console.print("training the baseline: the config without any searched value", markup=False)
        plan = points_plan(config, [Rerun(session.numbering.take(), {})], phase="baseline")
        ran = run_plan(config, plan, trainable, listeners, _train_root(session), base=config,
                   cache=cache.without_test())
        record = ran[0] if ran else None
    if metric != config.objective.metric and record is not None:  # ranked by another objective (final.select)
        record = scored_by([record], metric)[0]
        config = dataclasses.replace(config, objective=ranked_by(config.objective, metric))
    metrics = baseline_metrics(config, chosen, record, cache, _evaluate)
    session.journal.record(BaselineScored(metrics=metrics))
    console.print(f"the search bought {metrics[f'gain/{metric}']:+.4f} val {metric} over the baseline "
                  f"({metrics[f'baseline/{metric}']:.4f}; the winner's spread over seeds "
                  f"{metrics[f'gain/{metric}/winner_std']:.4f})", markup=False)


def _retrain(session: Session, points: List[Dict[str, Any]], cache: DataCache, trainable: Trainable,
             listeners: Sequence[SweepListener]) -> List[TrialRecord]:
    """Run the re-training points on ``cache`` (no test split; with folds when cross-validating); a resumed sweep
    reuses the runs it has and continues the unfinished ones."""
    from finesweep.execution.tuner import points_plan, run_plan

    config = session.config
    done, reruns, fresh, known = retraining(session.state, points, config, session.numbering)
    if not fresh and not reruns:
        return done
    plan = points_plan(config, fresh, reruns, known)
    return done + run_plan(config, plan, trainable, listeners, _train_root(session), base=config, cache=cache)


def _train_root(session: Session) -> Path:
    """Where the Ray Train runs of the sweep's trials of several workers live: in its own folder."""
    return session.state.folder / "train"


def _seeds(config: ExperimentConfig) -> str:
    return f", {config.final.seeds} fresh seed(s) per fold" if config.final.seeds > 0 else ""


def _evaluate(config: ExperimentConfig, data: PreparedData, weights: Path, split: str) -> Dict[str, float]:
    # Lightning is imported on the driver only when a winner is evaluated (~4 s), and its terminal
    # log handler is rerouted to Ray's log file before it says anything.
    import lightning.pytorch  # noqa: F401

    from finesweep.execution.cluster import route_library_logs
    from finesweep.execution.trial import evaluate

    route_library_logs()
    return evaluate(config, data, weights, split)


def _breakdown(config: ExperimentConfig, data: PreparedData, weights: Path) -> List[Dict[str, Any]]:
    """The registered model's per-class table on the test split (one more pass over it, no choice made on it)."""
    from finesweep.execution.trial import breakdown

    if not data.task.breakdown_name:
        return []  # the task has no per-class table (and its predictions may be whole logits: never kept)
    try:
        return breakdown(config, data, weights)
    except Exception as exc:  # noqa: BLE001 - the table is extra: the selection and registration stand without it
        logger.warning("the per-class table of the registered model failed: %s", one_line(exc), exc_info=True)
        return []


def _generations(config: ExperimentConfig, data: PreparedData, weights: Path) -> Optional[Generated]:
    """The registered model's generated text for the fixed validation sample, scored (generative tasks only)."""
    from finesweep.execution.trial import generations

    try:
        return generations(config, data, weights)
    except Exception as exc:  # noqa: BLE001 - the samples are extra: the selection and registration stand without them
        logger.warning("generating the registered model's samples failed: %s", one_line(exc), exc_info=True)
        return None


def front_rows(config: ExperimentConfig, records: Sequence[TrialRecord], cache: DataCache) -> List[Dict[str, Any]]:
    """The feasible Pareto front of the search as ``SelectionMade.front`` rows: each point's values, checkpoint, and
    what registering it needs (``finesweep select`` registers one later without preparing the data again)."""
    rows = []
    for record in pareto_front([r for r in records if r.phase == "search"], config.objective):
        run_config = with_overrides(config, record.params)
        data = cache.for_config(run_config)
        rows.append({"trial": record.number, "params": dict(record.params),
                     "values": dict(zip(config.objective.metrics, record.values(config.objective.metrics),
                                        strict=True)),
                     "epoch": record.best_epoch, "checkpoint": record.checkpoint,
                     "preprocessor": run_config.model.name_or_path,
                     "meta": data.task.serving_meta(run_config, data), "task": data.task.name})
    return rows


def _record_selection(session: Session, chosen: Selection, cache: DataCache, console: Console,
                      front: Sequence[Dict[str, Any]] = ()) -> None:
    """Log the selection and the registration (MLflow gives the version when the projector sends it)."""
    import pandas as pd

    config, journal = session.config, session.journal
    metric = chosen.metric or config.objective.metric
    round_ = session.state.selections  # selections before this session: 0 for a new sweep
    if chosen.fallback:
        logger.warning("model selection: %s", chosen.fallback)
        journal.record(Note(tag="finesweep.selection_fallback", text=chosen.fallback))
        console.print(f"note: {chosen.fallback}", style="yellow", markup=False)
    registered = chosen.registered
    metrics = dict(chosen.test_metrics)
    metrics[f"final/val/{metric}/mean"], metrics[f"final/val/{metric}/std"] = registered.mean, registered.std
    for name, (mean, std) in test_summary(registered).items():
        metrics[f"final/{name}/mean"], metrics[f"final/{name}/std"] = mean, std
    metrics["inference/latency_ms_per_example"] = chosen.latency_ms
    tags: Dict[str, Any] = {"finesweep.inference_device": chosen.device, "finesweep.final_runs": len(registered.runs),
                            "finesweep.registered_config": "recipe" if registered is not chosen.winner else "winner",
                            "finesweep.cv_folds": chosen.folds}
    if chosen.verdict is not None:
        metrics.update(chosen.verdict.metrics())
        tags["finesweep.verdict"] = chosen.verdict.line()
    board = pd.DataFrame(leaderboard(chosen, metric))
    registered_config = with_overrides(config, registered.params)
    data = cache.for_config(registered_config)
    weights = best_weights(str(chosen.chosen.checkpoint))
    table = pd.DataFrame(_breakdown(registered_config, data, weights))
    generated = _generations(registered_config, data, weights)
    if generated is not None:
        metrics.update({f"final/val/{name}": value for name, value in generated.metrics.items()})
    journal.record(SelectionMade(round=round_, metrics=metrics, tags=tags, leaderboard_csv=board.to_csv(index=False),
                                 leaderboard_md=_markdown(board), recipe=chosen.recipe,
                                 breakdown_name=data.task.breakdown_name if len(table) else "",
                                 breakdown_csv=table.to_csv(index=False) if len(table) else "",
                                 breakdown_md=_markdown(table) if len(table) else "",
                                 generations=generated.rows if generated is not None else [],
                                 generated_by=chosen.chosen.number, front=list(front)))
    journal.record(RegisterRequested(round=round_, name=config.registered_model_name,
                                     checkpoint=chosen.chosen.checkpoint,
                                     preprocessor=registered_config.model.name_or_path,
                                     meta=data.task.serving_meta(registered_config, data), task=data.task.name))
    unit = "folds" if chosen.folds else "runs"
    spread = f" ± {registered.std:.4f} over {len(registered.runs)} {unit}" if len(registered.runs) > 1 else ""
    tests = ", ".join(f"{k} {v:.4f}" for k, v in chosen.test_metrics.items())
    no_verdict = ("winner vs recipe: the recipe breaks objective.constraints, so it is not compared"
                  if chosen.recipe_infeasible else "winner vs recipe: no score for the recipe (it never ran)")
    console.print(chosen.verdict.line() if chosen.verdict is not None else no_verdict, markup=False)
    if front:
        console.print(f"Pareto front ({', '.join(config.objective.metrics)}): " + "; ".join(
            f"trial {row['trial']} " + ", ".join(f"{v:.4g}" for v in row["values"].values()) for row in front),
            markup=False)
    label = "registered: the recipe" if registered is not chosen.winner else "winner"
    console.print(f"{label}: {format_params(registered.params)}; val {metric} {registered.mean:.4f}{spread}; "
                  f"{tests}; {chosen.latency_ms:.2f} ms/example on {chosen.device}", markup=False)


# --- closing the books ---------------------------------------------------------------------------------

def _close_books(session: Session, outcome: _Outcome, seen: Sequence[TrialRecord], drain: float) -> None:
    """Record how the session ended: interrupted trials, the best trial, the sweep's status; then send it all."""
    config, journal = session.config, session.journal
    for record in seen:
        if record.status is TrialStatus.running:
            journal.trial_interrupted(record)
    best = outcome.selection.chosen if outcome.selection else best_trial(
        [r for r in seen if r.phase == "search"], config.objective.mode)
    if best is not None and best.best_value is not None:
        journal.record(BestChosen(round=session.state.selections, number=best.number, params=best.params,
                                  value=best.best_value, epoch=best.best_epoch, metric=config.objective.metric,
                                  checkpoint=best.checkpoint))
    finished = [r for r in seen if r.status in (TrialStatus.completed, TrialStatus.early_stopped)]
    status = "FINISHED" if outcome.finished and finished else "KILLED" if not outcome.finished else "FAILED"
    journal.record(SweepEnded(status=status))
    if outcome.finished:
        outcome.report = _write_report(session)
    session.events.close()
    if not session.projector.drain(drain):
        logger.warning("MLflow did not take every event in %.0f s (%s)", drain, session.projector.waiting)
    session.projector.close()


def _write_report(session: Session) -> Optional[Path]:
    """The sweep report, logged to the parent run; a report that fails is a note, never a failed sweep."""
    from finesweep.report import build

    def registered() -> None:  # the page shows the version MLflow gives; not worth a wait in an outage
        if session.projector.waiting is None:
            session.projector.drain(session.config.tracking.flush_timeout)

    try:
        built = build(session.events.path.parent, before_page=registered)  # the figures are drawn meanwhile
    except Exception as exc:  # noqa: BLE001 - the sweep and its results stand without the report
        logger.warning("the sweep report failed: %s", exc, exc_info=True)
        session.journal.record(Note(tag="finesweep.report_error", text=one_line(exc)))
        return None
    logger.info("report built in %.1f s%s", built.seconds,
                f" (no PNGs: {built.png_problem})" if built.png_problem else "")
    session.journal.record(ReportWritten(folder=str(built.folder)))
    return built.html


def _print_results(session: Session, outcome: _Outcome, log_file: Path, console: Console,
                   keeper: CheckpointKeeper) -> None:
    """The end of a session on the terminal: top trials, failures, what is kept, where everything is."""
    config, projector = session.config, session.projector
    records = outcome.records
    console.print(results_table(config, records, console.width))
    _print_failures(records, console)
    kept = keeper.kept() + [r.checkpoint for r in (outcome.selection.final_records if outcome.selection else [])
                            if r.checkpoint]
    console.print(f"checkpoints: {len(kept)} kept (cluster.keep_checkpoints={config.cluster.keep_checkpoints}), "
                  f"{disk_use(kept) / 1e6:.3g} MB in {config.cluster.storage_path}", markup=False)
    version = projector.cursor.registered.get(str(session.state.selections))
    if version:
        console.print(f"registered as models:/{version}: mlflow.pyfunc.load_model('models:/{version}')",
                      markup=False)
    if outcome.report:
        console.print(f"report: {outcome.report}", markup=False)
    if projector.cursor.sent < session.events.count:
        unsent = session.events.count - projector.cursor.sent
        console.print(f"warning: MLflow at {config.tracking.uri} did not take {unsent} event(s) "
                      f"({projector.waiting or 'still sending'}); they are kept in {session.events.path}. "
                      f"Send them with: finesweep sync {session.state.sweep_id}", style="yellow", markup=False)
    else:
        where = (f"{config.tracking.uri.rstrip('/')}/#/experiments/{projector.cursor.experiment_id}/{UI_VIEW}"
                 if config.tracking.uri.startswith(("http://", "https://")) else "finesweep ui")
        console.print(f"MLflow: experiment {config.experiment_name!r}, parent run {projector.parent_id}. "
                      f"Browse it with: {where}   (Ray's log: {log_file})", markup=False)
    if not outcome.finished:
        finished = [r for r in records if r.status in (TrialStatus.completed, TrialStatus.early_stopped)]
        console.print(f"interrupted: {len(finished)} finished trial(s) kept, the running ones are checkpointed. "
                      f"Continue with: {session.resume_command}", markup=False)


def _verdict(session: Session, outcome: _Outcome, log_file: Path) -> None:
    """How the session ended, for whoever called it: nothing when it did its job, else the error that says why.

    Raises:
        SweepInterrupted: interrupted before the end.
        SweepFailedError: no trial finished, or model selection failed.
    """
    records = outcome.records
    if not outcome.finished:
        raise SweepInterrupted(f"sweep {session.state.sweep_id} was interrupted; its journal has every finished "
                               f"trial and the running ones' checkpoints. Continue with: {session.resume_command}")
    if not any(r.status in (TrialStatus.completed, TrialStatus.early_stopped) for r in records):
        failed = [r for r in records if r.error]
        reason = failed[0].error if failed else "no trial reported a result"
        raise SweepFailedError(f"no trial finished ({len(records)} started). First error: {reason}")
    if outcome.selection_error:
        raise SweepFailedError(f"the search finished and is logged, but model selection failed: "
                               f"{outcome.selection_error} (details in {log_file})")


def _print_failures(records: Sequence[TrialRecord], console: Console) -> None:
    failed = [r for r in records if r.status is TrialStatus.failed]
    if not failed:
        return
    groups = {kind: [r for r in failed if r.failure == kind] for kind in KINDS}
    parts = [f"{len(rs)} {kind} (trials {', '.join(str(r.number) for r in rs)}; e.g. {rs[0].error})"
             for kind, rs in groups.items() if rs]
    console.print(f"failed trials by reason: {'; '.join(parts)}", style="red", markup=False)


def _markdown(frame: Any) -> str:
    with contextlib.suppress(ImportError):
        return str(frame.to_markdown(index=False))
    buffer = io.StringIO()
    frame.to_string(buffer, index=False)
    return buffer.getvalue()


def _running(records: Sequence[TrialRecord]) -> bool:
    return any(r.status is TrialStatus.running for r in records)
