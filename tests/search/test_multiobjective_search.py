"""The searcher with several objectives and constraints: what Optuna is told, and a rebuilt study that proposes
what the lost one would have (resume) for MO-TPE and NSGA-II."""

from __future__ import annotations

import functools
import math
from typing import Dict, List

import pytest
from optuna.trial import TrialState

from finesweep.adapters.optuna_private import sampler_attrs
from finesweep.config import Mode, ObjectiveConfig, ObjectiveTerm, Sampler, SearchConfig
from finesweep.config.compose import compose
from finesweep.config.schema import Bound
from finesweep.config.space import parse_space
from finesweep.search.fidelity import RungMOTPESampler, values_at
from finesweep.search.samplers import make_sampler
from finesweep.search.searcher import (
    CONSTRAINTS_ATTR,
    MARKER,
    STEPS_ATTR,
    STOPPED_STATE,
    Numbering,
    PastTrial,
    StudySearcher,
    constraint_values,
    new_study,
    rebuild_study,
)

OBJECTIVE = ObjectiveConfig(metric="val/accuracy", mode=Mode.max,
                            also=[ObjectiveTerm(metric="inference/latency_ms", mode=Mode.min)],
                            constraints={"inference/latency_ms": Bound(max=5.0)})
MODES = [Mode.max, Mode.min]


@functools.lru_cache(maxsize=1)
def space() -> list:
    return parse_space({"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2},
                        "data.batch_size": {"distribution": "categorical", "choices": [8, 16, 32]}},
                       compose("demo", []).config)


def metrics_of(params: Dict[str, float], epoch: int) -> Dict[str, float]:
    """A made-up trial: accuracy grows with lr and epochs, latency falls with the batch."""
    accuracy = 0.5 + 0.1 * math.log10(params["optim.lr"] / 1e-5) / 3 + 0.05 * epoch
    return {"val/accuracy": accuracy, "inference/latency_ms": 64.0 / params["data.batch_size"], "epoch": epoch}


def searcher(sampler: Sampler, study=None, milestones=None) -> StudySearcher:
    params = space()
    search = SearchConfig(sampler=sampler, num_trials=20, seed=3)
    return StudySearcher(study or new_study(MODES), params,
                         lambda seed: make_sampler(search, params, seed, milestones=milestones, objective=OBJECTIVE),
                         3, 20, Mode.max, Numbering(), objective=OBJECTIVE)


def run(found: StudySearcher, count: int, start: int = 0) -> List[dict]:
    """Propose, report two epochs and tell ``count`` trials; every third one is told as ASHA-stopped."""
    proposals = []
    for number in range(start, start + count):
        config = found.suggest(f"t{number}")
        params = {k: v for k, v in config.items() if k != MARKER}
        proposals.append(params)
        optuna_number = config[MARKER]["optuna"]
        for epoch in (1, 2):
            metrics = metrics_of(params, epoch)
            found.observe(config[MARKER]["number"], optuna_number, epoch, metrics["val/accuracy"], metrics)
        found.tell(config[MARKER]["number"], optuna_number, STOPPED_STATE if number % 3 == 2 else TrialState.COMPLETE)
    return proposals


def values_of(params: Dict[str, float], epoch: int) -> List[float]:
    found = metrics_of(params, epoch)
    return [found["val/accuracy"], found["inference/latency_ms"]]


def test_the_rung_wise_motpe_sees_each_trial_at_its_best_report_up_to_the_highest_rung_with_enough_trials() -> None:
    live = searcher(Sampler.tpe, milestones=(1, 2, 4))
    proposals = run(live, 6)
    done = live.study.get_trials()
    assert done[0].user_attrs[STEPS_ATTR] == {"1": values_of(proposals[0], 1), "2": values_of(proposals[0], 2)}
    assert values_at(done[0], 1, True) == values_of(proposals[0], 1)
    assert values_at(done[0], 2, True) == values_of(proposals[0], 2) and values_at(done[0], 4, True) is None
    sampler = make_sampler(SearchConfig(sampler=Sampler.tpe, num_trials=20, seed=3), space(), 0,
                           milestones=(1, 2, 4), objective=OBJECTIVE)
    assert isinstance(sampler, RungMOTPESampler)
    view = sampler.view(live.study, done[-1])  # proposing the next trial beside trial 5: it sees the other five
    assert view is not None  # rung 4 has no trial; rung 2 has them all, each at its epoch-2 values
    shown = view.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(tuple(t.values) for t in shown) == sorted(tuple(values_of(p, 2)) for p in proposals[:5])


def test_constraint_values_are_optunas_convention() -> None:
    assert constraint_values({"inference/latency_ms": 7.0}, OBJECTIVE) == [2.0]
    assert constraint_values({"inference/latency_ms": 3.0}, OBJECTIVE) == [-2.0]
    assert constraint_values({}, OBJECTIVE)[0] > 1e9  # never reported: infeasible, never NaN


@pytest.mark.parametrize("sampler", [Sampler.tpe, Sampler.nsga2, Sampler.random])
def test_every_trial_is_told_its_values_at_its_best_epoch_and_its_constraints(sampler: Sampler) -> None:
    found = searcher(sampler)
    proposals = run(found, 6)
    trials = found.study.get_trials()
    assert all(t.state is TrialState.COMPLETE for t in trials)  # stopped ones too: MO samplers learn from these
    for trial, params in zip(trials, proposals, strict=True):
        best = metrics_of(params, 2)
        assert trial.values == pytest.approx([best["val/accuracy"], best["inference/latency_ms"]])
        assert trial.user_attrs[CONSTRAINTS_ATTR] == pytest.approx([best["inference/latency_ms"] - 5.0])
        assert trial.intermediate_values == {}  # Optuna reports one objective only


@pytest.mark.parametrize("sampler,milestones", [(Sampler.tpe, None), (Sampler.nsga2, None), (Sampler.tpe, (1, 3)),
                                               (Sampler.gp, None), (Sampler.gp, (1, 3))])
def test_a_study_rebuilt_from_the_log_proposes_what_the_lost_one_would_have(sampler: Sampler, milestones) -> None:
    # NSGA-II's population of 4 (a quarter of 20, at least 4): 10 trials reach its second generation; with ASHA's
    # rungs TPE is the rung-wise MOTPE, which reads each trial's values by step
    live = searcher(sampler, milestones=milestones)
    first = run(live, 10)
    lost_next = run(live, 4, start=10)
    past = [PastTrial(t.number, first[t.number], TrialState.COMPLETE, None, {}, list(t.values),
                      list(t.user_attrs[CONSTRAINTS_ATTR]), sampler_attrs(live.study, t),
                      {str(step): values_of(first[t.number], step) for step in (1, 2)})
            for t in live.study.get_trials()[:10]]
    rebuilt = searcher(sampler, rebuild_study(MODES, space(), past), milestones=milestones)
    rebuilt.numbering.next = 10
    assert run(rebuilt, 4, start=10) == lost_next
