"""What a stopped sweep continues, read from its journal: the trials that were running, ASHA's rungs, the
Optuna study, and the re-training runs model selection already has.

Everything here is decided from the journal alone (``replay.py``), so a resume on another machine that sees
``cluster.storage_path`` decides the same.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import optuna
from optuna.trial import TrialState

from finesweep.config import ExperimentConfig, progress_of
from finesweep.config.space import Param
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.journal.replay import SweepState
from finesweep.search.asha import RecordingASHA
from finesweep.search.moasha import InfeasibleStopper
from finesweep.search.searcher import (
    STOPPED_STATE,
    Numbering,
    PastTrial,
    Rerun,
    constraint_values,
    rebuild_study,
    told_state,
)


def settle_search(state: SweepState, config: ExperimentConfig, scheduler: Any, by_number: Dict[int, TrialRecord],
                  end: Callable[[TrialRecord], None]) -> List[Rerun]:
    """Settle the search trials a stopped sweep left running: replay the journal's results into ASHA (its rungs
    come back), end the ones it has finished with, and return the ones to continue.

    A trial the replayed ASHA stops (or that had reached its full budget) ends here, through ``end``,
    as it would have if the driver had lived a moment longer: it is not run again.
    """
    results = sorted((seen, seq, t.number, metrics) for t in state.search_trials()
                     for seen, seq, metrics in zip(t.seen, t.seqs, t.history, strict=True))
    decisions: Dict[int, str] = {}
    if isinstance(scheduler, (RecordingASHA, InfeasibleStopper)):
        for _, _, number, metrics in results:
            decisions[number] = scheduler.replay(number, [metrics])
    reruns = []
    for trial in state.search_trials():
        if trial.finished:
            continue
        record = by_number[trial.number]
        epochs = trial.epochs
        if epochs >= config.scheduler.budget or decisions.get(trial.number) == "STOP":
            stopped = epochs < config.scheduler.budget
            record.status = TrialStatus.early_stopped if stopped else TrialStatus.completed
            end(record)
            continue
        reruns.append(Rerun(trial.number, trial.params, trial.optuna_number, trial.resumable_checkpoint(),
                            trial.attempts))
    return reruns


def rebuilt_study(config: ExperimentConfig, params: Sequence[Param], records: Sequence[TrialRecord],
                  stopped: Optional[TrialState] = None) -> optuna.Study:
    """The Optuna study of the search so far, rebuilt from its trials (running ones stay RUNNING).

    Args:
        stopped: the state of trials ASHA stopped early; None = as the searcher told them
            (``searcher.STOPPED_STATE``). COMPLETE gives each its best epoch, as the leaderboard ranks them.
    """
    return rebuild_study([mode for _, mode in config.objective.terms], params,
                         [_past_trial(r, config, stopped) for r in records if r.optuna_number is not None])


def retraining(state: SweepState, points: Sequence[Dict[str, Any]], config: ExperimentConfig,
               numbering: Numbering) -> Tuple[List[TrialRecord], List[Rerun], List[Rerun], Dict[int, TrialRecord]]:
    """Sort model selection's re-training points: (ended runs to reuse, runs to continue, new runs, known records)."""
    earlier = {_key(t.params): t for t in state.trials.values() if t.phase == "final"}
    done: List[TrialRecord] = []
    reruns: List[Rerun] = []
    fresh: List[Rerun] = []
    known: Dict[int, TrialRecord] = {}
    for point in points:
        trial = earlier.get(_key(point))
        if trial is None:
            fresh.append(Rerun(numbering.take(), dict(point)))
            continue
        record = trial.record(config.objective.metric, config.objective.mode)
        if trial.finished:
            done.append(record)
        else:
            known[trial.number] = record
            reruns.append(Rerun(trial.number, trial.params, None, trial.resumable_checkpoint(), trial.attempts))
    return done, reruns, fresh, known


def _past_trial(record: TrialRecord, config: ExperimentConfig, stopped: Optional[TrialState]) -> PastTrial:
    states = {TrialStatus.completed: TrialState.COMPLETE, TrialStatus.early_stopped: stopped or STOPPED_STATE,
              TrialStatus.failed: TrialState.FAIL, TrialStatus.running: TrialState.RUNNING}
    objective = config.objective
    state = told_state(states[record.status], objective.multi)
    if state is TrialState.COMPLETE and record.best_value is None:
        state = TrialState.FAIL
    metric = objective.metric
    intermediate = ({} if objective.multi else  # several objectives report no intermediate values
                    {progress_of(m, i + 1): m[metric] for i, m in enumerate(record.history)
                     if metric in m and not math.isnan(m[metric])})
    values = record.values(objective.metrics) if objective.multi else None
    if state is TrialState.COMPLETE and values is not None and any(math.isnan(v) for v in values):
        state, values = TrialState.FAIL, None  # what Optuna made of a NaN value when the trial was told
    constraints = (constraint_values(record.at_best, objective)
                   if objective.constraints and record.best_value is not None else None)
    steps = ({str(progress_of(m, i + 1)): [float(m.get(k, math.nan)) for k in objective.metrics]
              for i, m in enumerate(record.history) if objective.metric in m and not math.isnan(m[objective.metric])}
             if objective.multi else None)
    return PastTrial(int(record.optuna_number or 0), _searched(record.params, config), state, record.best_value,
                     intermediate, values, constraints, dict(record.sampler_attrs), steps)


def _searched(params: Dict[str, Any], config: ExperimentConfig) -> Dict[str, Any]:
    # A retry after running out of memory adds batch settings that were not sampled: not Optuna's.
    return {k: v for k, v in params.items() if k in config.space}


def _key(params: Dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


