"""What a stopped sweep continues, read from its log: the trials that were running, ASHA's rungs, the
Optuna study, and the re-training runs model selection already has.

Everything here is decided from the log alone (state.py), so a resume on another machine that sees
``cluster.storage_path`` decides the same.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import optuna
from optuna.trial import TrialState as OptunaState

from finesweep.config import ExperimentConfig
from finesweep.records import TrialRecord, TrialStatus
from finesweep.search_space import Param
from finesweep.searcher import Numbering, PastTrial, Rerun, rebuild_study
from finesweep.state import SweepState


def search_reruns(state: SweepState, config: ExperimentConfig, scheduler: Any, by_number: Dict[int, TrialRecord],
                  end: Callable[[TrialRecord], None]) -> List[Rerun]:
    """Replay the log's results into ASHA (its rungs come back); return the search trials to continue.

    A trial the replayed ASHA stops (or that had reached its full budget) ends here, through ``end``,
    as it would have if the driver had lived a moment longer: it is not run again.
    """
    from finesweep.asha import RecordingASHA

    results = sorted((seen, seq, t.number, metrics) for t in state.search_trials()
                     for seen, seq, metrics in zip(t.seen, t.seqs, t.history, strict=True))
    decisions: Dict[int, str] = {}
    if isinstance(scheduler, RecordingASHA):
        for _, _, number, metrics in results:
            decisions[number] = scheduler.replay(number, [metrics])
    reruns = []
    for trial in state.search_trials():
        if trial.finished:
            continue
        record = by_number[trial.number]
        epochs = int(trial.history[-1].get("epoch", 0)) if trial.history else 0
        if epochs >= config.scheduler.max_epochs or decisions.get(trial.number) == "STOP":
            stopped = epochs < config.scheduler.max_epochs
            record.status = TrialStatus.early_stopped if stopped else TrialStatus.completed
            end(record)
            continue
        reruns.append(Rerun(trial.number, trial.params, trial.optuna_number,
                            trial.checkpoint if trial.checkpoint_epoch == epochs else None, trial.attempts))
    return reruns


def rebuilt_study(config: ExperimentConfig, params: Sequence[Param], records: Sequence[TrialRecord],
                  stopped: Optional[OptunaState] = None) -> optuna.Study:
    """The Optuna study of the search so far, rebuilt from its trials (running ones stay RUNNING).

    Args:
        stopped: the state of trials ASHA stopped early; None = as the searcher told them
            (``tuner.STOPPED_STATE``). COMPLETE gives each its best epoch, as the leaderboard ranks them.
    """
    return rebuild_study(config.objective.mode, params,
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
            epoch = int(trial.history[-1]["epoch"]) if trial.history else 0
            reruns.append(Rerun(trial.number, trial.params, None,
                                trial.checkpoint if trial.checkpoint_epoch == epoch else None, trial.attempts))
    return done, reruns, fresh, known


def _past_trial(record: TrialRecord, config: ExperimentConfig, stopped: Optional[OptunaState]) -> PastTrial:
    from finesweep.tuner import STOPPED_STATE

    states = {TrialStatus.completed: OptunaState.COMPLETE, TrialStatus.early_stopped: stopped or STOPPED_STATE,
              TrialStatus.failed: OptunaState.FAIL, TrialStatus.running: OptunaState.RUNNING}
    state = states[record.status]
    if state is OptunaState.COMPLETE and record.best_value is None:
        state = OptunaState.FAIL
    metric = config.objective.metric
    intermediate = {int(m.get("epoch", i + 1)): m[metric] for i, m in enumerate(record.history)
                    if metric in m and not math.isnan(m[metric])}
    return PastTrial(int(record.optuna_number or 0), _searched(record.params, config), state, record.best_value,
                     intermediate)


def _searched(params: Dict[str, Any], config: ExperimentConfig) -> Dict[str, Any]:
    # A retry after running out of memory adds batch settings that were not sampled: not Optuna's.
    return {k: v for k, v in params.items() if k in config.space}


def _key(params: Dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


