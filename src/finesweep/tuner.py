"""The only module that assembles Ray Tune objects: searcher, scheduler, Tuner and the event bridge.

Deciding (Optuna sampler through ``OptunaSearch``, ASHA), executing (Ray actors, reused between
trials so each worker imports torch/Lightning once) and reporting (``SweepListener``s fed by
``_EventBridge``) are separate pieces.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from finesweep.config import ExperimentConfig, SchedulerKind
from finesweep.metrics import REPORTED_METRICS
from finesweep.records import SweepListener, TrialRecord, TrialStatus
from finesweep.samplers import make_sampler
from finesweep.search_space import Param, planned_trials, suggest

POINT_KEY = "__finesweep_point__"


def run_sweep(config: ExperimentConfig, params: Sequence[Param], trainable: Callable[..., None],
              listeners: Sequence[SweepListener], **trainable_kwargs: Any) -> List[TrialRecord]:
    """Run the search on the Ray cluster Ray is connected to; return what happened to each trial.

    Args:
        config: the validated experiment config (handed to every trial as ``base``).
        params: the parsed search space.
        trainable: function ``(sampled: dict, **trainable_kwargs) -> None`` reporting once per epoch.
        listeners: receive trial events on the driver, in order.
        trainable_kwargs: large read-only inputs, put once into Ray's object store.
    """
    scheduler = _scheduler(config)
    tune_config = tune.TuneConfig(
        metric=config.objective.metric,
        mode=config.objective.mode.value,
        search_alg=_searcher(config, params),
        scheduler=scheduler,
        num_samples=planned_trials(config, params),
        max_concurrent_trials=config.search.max_concurrent,
        reuse_actors=True,  # warm workers: ~0.01 s per trial instead of ~5.5 s
    )
    bridge = _EventBridge(config, scheduler, listeners, phase="search", first_number=0)
    _fit(config, tune.with_parameters(trainable, **trainable_kwargs), tune_config, bridge, {}, "search")
    return bridge.records


def run_points(config: ExperimentConfig, points: Sequence[Dict[str, Any]], trainable: Callable[..., None],
               listeners: Sequence[SweepListener], first_number: int, **trainable_kwargs: Any) -> List[TrialRecord]:
    """Run fixed configurations for their full budget (no searcher, no early termination).

    The final phase uses this to re-train the best configurations with fresh seeds.
    """
    tune_config = tune.TuneConfig(metric=config.objective.metric, mode=config.objective.mode.value,
                                  max_concurrent_trials=config.search.max_concurrent, reuse_actors=True)
    bridge = _EventBridge(config, FIFOScheduler(), listeners, phase="final", first_number=first_number)
    wrapped = tune.with_parameters(_run_point, inner=trainable, **trainable_kwargs)
    _fit(config, wrapped, tune_config, bridge, {POINT_KEY: tune.grid_search(list(points))}, "final")
    return bridge.records


def _run_point(config: Dict[str, Any], *, inner: Callable[..., None], **trainable_kwargs: Any) -> None:
    inner(config[POINT_KEY], **trainable_kwargs)


def _fit(config: ExperimentConfig, trainable: Any, tune_config: tune.TuneConfig, bridge: "_EventBridge",
         param_space: Dict[str, Any], phase: str) -> None:
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": config.cluster.cpus_per_trial, "gpu": config.cluster.gpus_per_trial}),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=f"{config.name}-{phase}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=config.cluster.storage_path,
            callbacks=[bridge],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # trials only save improvements
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()


def _searcher(config: ExperimentConfig, params: Sequence[Param]) -> OptunaSearch:
    sampler = make_sampler(config.search, params)
    return OptunaSearch(space=functools.partial(_define_by_run, params=tuple(params)), sampler=sampler,
                        metric=config.objective.metric, mode=config.objective.mode.value)


def _define_by_run(trial: Any, params: Sequence[Param]) -> None:
    # OptunaSearch captures every suggest_* call; returning None keeps exactly those values.
    suggest(trial, params)


def _scheduler(config: ExperimentConfig) -> TrialScheduler:
    sched = config.scheduler
    if sched.kind is SchedulerKind.fifo:
        return FIFOScheduler()
    return _RecordingASHA(time_attr="epoch", max_t=sched.max_epochs, grace_period=sched.grace_period,
                          reduction_factor=sched.reduction_factor)


class _RecordingASHA(ASHAScheduler):  # type: ignore[misc]
    """ASHA in epochs that remembers which trials it stopped before their full budget."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: Dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.stopped_early.add(trial.trial_id)
        return decision


class _EventBridge(tune.Callback):  # type: ignore[misc]
    """Turns Ray Tune's callbacks into ``TrialRecord`` events for the listeners."""

    def __init__(self, config: ExperimentConfig, scheduler: TrialScheduler, listeners: Sequence[SweepListener],
                 phase: str, first_number: int) -> None:
        self.config = config
        self.scheduler = scheduler
        self.listeners = list(listeners)
        self.phase = phase
        self.first_number = first_number
        self.records: List[TrialRecord] = []
        self._by_id: Dict[str, TrialRecord] = {}

    def __getstate__(self) -> Dict[str, Any]:
        # Ray pickles the run config for experiment restore; listeners hold live MLflow clients and
        # the terminal, which belong to this process only.
        return {**self.__dict__, "listeners": []}

    def on_trial_start(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:
        params = dict(trial.config.get(POINT_KEY, trial.config))
        record = TrialRecord(trial.trial_id, self.first_number + len(self.records), params, phase=self.phase)
        self.records.append(record)
        self._by_id[trial.trial_id] = record
        for listener in self.listeners:
            listener.trial_started(record)

    def on_trial_result(self, iteration: int, trials: List[Trial], trial: Trial, result: Dict,
                        **info: Any) -> None:
        record = self._by_id[trial.trial_id]
        metrics = {k: float(result[k]) for k in (*REPORTED_METRICS, "epoch") if k in result}
        record.add_result(metrics, self.config.objective.metric, self.config.objective.mode)
        for listener in self.listeners:
            listener.trial_result(record, metrics)

    def on_trial_complete(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:
        stopped: set[str] = getattr(self.scheduler, "stopped_early", set())
        status = TrialStatus.early_stopped if trial.trial_id in stopped else TrialStatus.completed
        self._end(trial, status, None)

    def on_trial_error(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, TrialStatus.failed, _error_text(trial))

    def _end(self, trial: Trial, status: TrialStatus, error: Optional[str]) -> None:
        record = self._by_id.get(trial.trial_id)
        if record is None or record.status is not TrialStatus.running:
            return
        record.status, record.error = status, error
        checkpoint = trial.checkpoint
        record.checkpoint = checkpoint.path if checkpoint is not None else None
        for listener in self.listeners:
            listener.trial_ended(record)


def _error_text(trial: Trial) -> str:
    error = trial.get_error() if hasattr(trial, "get_error") else None
    text = str(error) if error else "trial failed"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
