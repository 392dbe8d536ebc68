"""The only module that assembles Ray Tune objects: searcher, scheduler, Tuner and the event bridge.

Deciding (the Optuna study behind ``StudySearcher``, ASHA), executing (Ray actors, reused between
trials so each worker imports torch/Lightning once) and reporting (``SweepListener``s fed by
``_EventBridge``) are separate pieces. The bridge is where a trial's fate is decided once: how it
ended, whether a failure is retried, what the study is told.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from finesweep.config import ExperimentConfig, SchedulerKind, progress_of
from finesweep.config.recipe import start_points
from finesweep.config.space import Param, planned_trials
from finesweep.execution.cluster import node_of, trials_that_fit
from finesweep.execution.distributed import (
    CHECKPOINT_KEY,
    NODES_KEY,
    PIDS_KEY,
    WORKERS_KEY,
    Shared,
    run_distributed_trial,
)
from finesweep.execution.failures import Failure, classify, retry_overrides
from finesweep.journal.records import SweepListener, TrialRecord, TrialStatus
from finesweep.search import asha as asha_module
from finesweep.search.asha import RecordingASHA
from finesweep.search.moasha import InfeasibleStopper, ParetoASHA
from finesweep.search.samplers import sampler_factory
from finesweep.search.searcher import (
    STOPPED_STATE,
    Numbering,
    PointsSearcher,
    Rerun,
    StudySearcher,
    marker_of,
    new_study,
    params_of,
)
from finesweep.tasks.task import REPORTED_PREFIXES

Searchers = Union[StudySearcher, PointsSearcher]

DRIVER_MEMORY = 64 * 2**20
"""What a trial of several workers reserves for itself, the driver of its Train run: no CPU or GPU, which its
workers reserve (Tune asks for some resource, so a little of Ray's ``memory``)."""

@dataclass
class Plan:
    """What one phase of a sweep runs: its searcher, the trials it continues, and what it already knows."""

    searcher: Searchers
    phase: str
    known: Dict[int, TrialRecord] = field(default_factory=dict)
    """Records of the trials this phase may continue (resume, retry), by number."""
    scheduler: Optional[TrialScheduler] = None
    samples: int = 0
    """Upper bound of Tune trials (new ones, reruns and retries); the searcher says when it is done."""


def search_plan(config: ExperimentConfig, params: Sequence[Param], numbering: Numbering, study: Any = None,
                reruns: Sequence[Rerun] = (), known: Optional[Dict[int, TrialRecord]] = None,
                scheduler: Optional[TrialScheduler] = None) -> Plan:
    """The search phase: the study (new, or rebuilt on resume) proposes, queued reruns go first, and its first
    trials run the recipe and the enqueued points (``config.recipe.start_points``)."""
    budget = planned_trials(config, params)
    study = study if study is not None else new_study([mode for _, mode in config.objective.terms])
    searcher = StudySearcher(study, params, sampler_factory(config, params), config.search.seed, budget,
                             config.objective.mode, numbering, reruns, start_points(config, params),
                             objective=config.objective)
    samples = (budget + len(reruns)) * (1 + config.search.max_retries)
    return Plan(searcher, "search", dict(known or {}), scheduler or make_scheduler(config), samples)


def points_plan(config: ExperimentConfig, points: Sequence[Rerun], reruns: Sequence[Rerun] = (),
                known: Optional[Dict[int, TrialRecord]] = None, phase: str = "final") -> Plan:
    """A phase that runs fixed configurations for their full budget (re-training, the baseline)."""
    samples = (len(points) + len(reruns)) * (1 + config.search.max_retries)
    return Plan(PointsSearcher(points, reruns), phase, dict(known or {}), FIFOScheduler(), samples)


def run_plan(config: ExperimentConfig, plan: Plan, trainable: Callable[..., None],
             listeners: Sequence[SweepListener], train_root: Optional[Path] = None,
             **trainable_kwargs: Any) -> List[TrialRecord]:
    """Run one phase on the Ray cluster Ray is connected to; return what happened to each trial it ran.

    Args:
        config: the validated experiment config.
        plan: searcher, scheduler and the trials it continues.
        trainable: ``(config: dict, **trainable_kwargs) -> None``, reporting once per epoch. A trial of several
            workers (``cluster.workers_per_trial``) runs ``run_distributed_trial`` instead, a Train run of them.
        listeners: receive trial events on the driver, in order.
        train_root: the folder of the Ray Train runs of trials of several workers (``cluster.workers_per_trial``);
            None = ``<cluster.storage_path>/train``.
        trainable_kwargs: large read-only inputs, put once into Ray's object store. With several workers per
            trial, ``cache`` reaches it as a ``Shared`` reference the workers read.
    """
    scheduler = plan.scheduler or FIFOScheduler()
    resources: Any = {"cpu": config.cluster.cpus_per_trial, "gpu": config.cluster.gpus_per_trial}
    concurrent = config.search.max_concurrent
    if config.cluster.distributed:  # the trial is a driver; its Train run reserves the workers
        root = train_root or Path(config.cluster.storage_path) / "train"
        trainable = run_distributed_trial  # its workers each run ``fit``, as ``trainable`` would in one process
        trainable_kwargs["cache"] = Shared.of(trainable_kwargs["cache"], root)
        resources = tune.PlacementGroupFactory([{"memory": DRIVER_MEMORY}])
        concurrent = min(concurrent, trials_that_fit(config.cluster))
    bridge = _EventBridge(config, plan, scheduler, listeners)
    # No metric or mode for Tune itself: the searcher and ASHA were given the objective when they were
    # made (ASHA must know it to replay a resumed sweep's results before Tune starts).
    tune_config = tune.TuneConfig(
        search_alg=plan.searcher,
        scheduler=scheduler, num_samples=max(1, plan.samples), max_concurrent_trials=concurrent,
        # warm workers: ~0.01 s per trial instead of ~5.5 s; a Train run's driver ends with its run (its workers
        # are the Train run's own actors, which Tune cannot hand to the next trial)
        reuse_actors=not config.cluster.distributed,
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, **trainable_kwargs), resources),
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=f"{config.name}-{plan.phase}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=config.cluster.storage_path,
            callbacks=[bridge],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # each report carries the latest state
            failure_config=tune.FailureConfig(max_failures=0),  # retries are decided by the bridge
        ),
    )
    tuner.fit()
    return bridge.records


def make_scheduler(config: ExperimentConfig) -> TrialScheduler:
    """FIFO, or ASHA in epochs or steps (``scheduler.unit``; ties at a rung broken by validation loss) that remembers
    which trials it stopped: MO-ASHA (``search/moasha.py``) with several objectives or constraints. With
    ``scheduler.stop_infeasible`` either one stops a trial at its first report that breaks a constraint."""
    sched, objective = config.scheduler, config.objective
    bounds = objective.bounds if objective.constraints else {}
    if sched.kind is SchedulerKind.fifo:
        return (InfeasibleStopper(bounds, time_attr=sched.time_attr, max_t=sched.budget) if sched.stop_infeasible
                else FIFOScheduler())
    settings: Dict[str, Any] = dict(tie_break=asha_module.TIE_BREAK_METRIC, time_attr=sched.time_attr,
                                    max_t=sched.budget, grace_period=sched.grace_period,
                                    reduction_factor=sched.reduction_factor)
    asha = (ParetoASHA([(metric, mode.value) for metric, mode in objective.terms], bounds, sched.stop_infeasible,
                       **settings)
            if objective.multi or bounds else RecordingASHA(**settings))
    asha.set_search_properties(config.objective.metric, config.objective.mode.value)
    return asha


class _EventBridge(tune.Callback):
    """Turns Ray Tune's callbacks into ``TrialRecord`` events, and decides how each trial ends.

    A result is passed on once its checkpoint is saved (``on_checkpoint``), so every result the
    listeners see has the checkpoint a resumed trial continues from. A failed trial is classified
    (error, nan, oom) and, while ``search.max_retries`` allows, queued to run again from its last
    checkpoint (an out-of-memory failure with half the batch size and twice the accumulation).
    """

    def __init__(self, config: ExperimentConfig, plan: Plan, scheduler: TrialScheduler,
                 listeners: Sequence[SweepListener]) -> None:
        self.config = config
        self.plan = plan
        self.scheduler = scheduler
        self.listeners = list(listeners)
        self.records: List[TrialRecord] = []
        self._by_number: Dict[int, TrialRecord] = {}
        self._by_id: Dict[str, TrialRecord] = {}
        self._deferred: Dict[str, Tuple[Dict[str, float], float]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        # Ray pickles the run config for experiment restore; listeners and the searcher hold live
        # clients and the terminal, which belong to this process only.
        return {**self.__dict__, "listeners": [], "plan": None}

    def on_trial_start(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:
        marker = marker_of(trial.config)
        number = int(marker["number"])
        record = self._by_number.get(number) or self.plan.known.get(number)
        if record is None:
            record = TrialRecord(trial.trial_id, number, params_of(trial.config), phase=self.plan.phase,
                                 optuna_number=marker.get("optuna"))
        else:  # the same trial goes on: resumed from the sweep's log, or retried after a failure
            record.trial_id, record.status, record.params = trial.trial_id, TrialStatus.running, params_of(trial.config)
            record.attempts = int(marker.get("attempt", record.attempts))
        if number not in self._by_number:
            self.records.append(record)
        self._by_number[number] = record
        self._by_id[trial.trial_id] = record
        record.effective_batch = self.config.effective_batch_with(record.params)
        record.sampler_attrs = dict(marker.get("sampler_attrs") or record.sampler_attrs)
        for listener in self.listeners:
            listener.trial_started(record)

    def on_trial_result(self, iteration: int, trials: List[Trial], trial: Trial, result: Dict[str, Any],
                        **info: Any) -> None:
        metrics = {k: float(v) for k, v in result.items()
                   if (k in ("epoch", "step") or k.startswith(REPORTED_PREFIXES)) and isinstance(v, (int, float))}
        record = self._by_id.get(trial.trial_id)
        if record is not None:
            record.node, record.device = node_of(result)
            record.node = str(result.get(NODES_KEY) or record.node)  # a trial of several workers: theirs
            record.precision = str(result.get("precision", record.precision))
            record.workers = int(result.get(WORKERS_KEY, 1))
            record.worker_pids = str(result.get(PIDS_KEY, ""))
        if result.get(CHECKPOINT_KEY):  # a trial of several workers: Train persisted rank 0's checkpoint already
            self._result(trial, (metrics, time.time()), str(result[CHECKPOINT_KEY]))
            return
        # ASHA has just decided on this result (schedulers see a result before callbacks do): remember
        # when, so a resume replays results in the order ASHA saw them, not the order they were saved.
        metrics_at = (metrics, time.time())
        if result.get("should_checkpoint"):
            self._deferred[trial.trial_id] = metrics_at  # passed on with its checkpoint
        else:
            self._result(trial, metrics_at, None)

    def on_checkpoint(self, iteration: int, trials: List[Trial], trial: Trial, checkpoint: Any,
                      **info: Any) -> None:
        deferred = self._deferred.pop(trial.trial_id, None)
        if deferred is not None:
            self._result(trial, deferred, checkpoint.path)

    def on_trial_complete(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:
        record = self._by_id.get(trial.trial_id)
        if record is None or record.status is not TrialStatus.running:
            return
        self._flush(trial)
        stopped: set[int] = getattr(self.scheduler, "stopped_early", set())
        status = TrialStatus.early_stopped if record.number in stopped else TrialStatus.completed
        state = STOPPED_STATE if status is TrialStatus.early_stopped else TrialState.COMPLETE
        self.plan.searcher.tell(record.number, record.optuna_number, state)
        self._end(record, status)

    def on_trial_error(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:
        record = self._by_id.get(trial.trial_id)
        if record is None or record.status is not TrialStatus.running:
            return
        self._flush(trial)
        failure = classify(_error_text(trial))
        record.failure, record.error = failure.kind, failure.summary
        overrides = retry_overrides(failure, record, self.config)
        if overrides is not None and record.attempts <= self.config.search.max_retries:
            record.attempts += 1
            record.params = {**record.params, **overrides}
            for listener in self.listeners:
                listener.trial_retrying(record)
            self.plan.searcher.queue.push(Rerun(record.number, record.params, record.optuna_number,
                                                record.checkpoint, record.attempts))
            return
        self.plan.searcher.tell(record.number, record.optuna_number, TrialState.FAIL)
        self._end(record, TrialStatus.failed)

    def _result(self, trial: Trial, metrics_at: Tuple[Dict[str, float], float], checkpoint: Optional[str]) -> None:
        record = self._by_id[trial.trial_id]
        metrics, record.seen_at = metrics_at
        if checkpoint is not None:
            record.checkpoint = checkpoint
        record.add_result(metrics, self.config.objective.metric, self.config.objective.mode)
        value = metrics.get(self.config.objective.metric)
        if value is not None and not math.isnan(value):
            self.plan.searcher.observe(record.number, record.optuna_number, progress_of(metrics), value, metrics)
        for listener in self.listeners:
            listener.trial_result(record, metrics)

    def _flush(self, trial: Trial) -> None:
        # A result whose checkpoint never came (the trial ended while saving) still counts.
        deferred = self._deferred.pop(trial.trial_id, None)
        if deferred is not None:
            self._result(trial, deferred, None)

    def _end(self, record: TrialRecord, status: TrialStatus) -> None:
        record.status = status
        for listener in self.listeners:
            listener.trial_ended(record)


def _error_text(trial: Trial) -> Any:
    """The trial's error: the file Tune writes on the driver at once (its copy in storage comes later)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text(errors="replace")
    return trial.get_error() if hasattr(trial, "get_error") else None


__all__ = ["Failure", "Plan", "RecordingASHA", "make_scheduler", "points_plan", "run_plan", "search_plan"]
