"""TPE and GP fitted one rung at a time: the rungs, a trial's score at a rung, which rung the model is shown, and
what it proposes from there; and the per-trial seeds that make two sweeps' seeds independent."""

from __future__ import annotations

import math
from typing import Dict, List
from unittest import mock

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from finesweep.config import Sampler, SearchConfig
from finesweep.config.compose import compose
from finesweep.config.space import Distribution, Param, parse_space
from finesweep.search.fidelity import RungGPSampler, RungTPESampler, rung_gamma, rungs, score_at
from finesweep.search.gp_acquisition import CandidateGPSampler
from finesweep.search.samplers import make_sampler, sampler_factory
from finesweep.search.searcher import Numbering, StudySearcher, new_study, params_of, proposal_seed

X = FloatDistribution(0.0, 1.0)


@pytest.mark.parametrize(("grace", "factor", "max_epochs", "expected"), [
    (4, 3, 52, [4, 12, 36, 52]),
    (1, 2, 3, [1, 2, 3]),
    (1, 2, 4, [1, 2, 4]),
    (3, 2, 3, [3]),
    (1, 2.5, 10, [1, 2, 6, 10]),  # 2.5 and 6.25 epochs: ASHA's milestones are reached at epochs 2 and 6
], ids=["lcbench", "demo", "power-of-two", "grace-is-budget", "fractional-factor"])
def test_the_rungs_are_ashas_milestones_then_the_full_budget(grace: int, factor: float, max_epochs: int,
                                                             expected: List[int]) -> None:
    assert rungs(grace, factor, max_epochs) == expected


def frozen(values: Dict[int, float], state: TrialState = TrialState.PRUNED, x: float = 0.5) -> FrozenTrial:
    value = None if state is not TrialState.COMPLETE else max(values.values())
    return optuna.trial.create_trial(params={"x": x}, distributions={"x": X}, state=state, value=value,
                                     intermediate_values=values)


def test_a_trials_score_at_a_rung_is_its_best_epoch_up_to_the_rung() -> None:
    trial = frozen({1: 0.5, 2: 0.7, 3: 0.6, 4: 0.65})
    assert score_at(trial, 1, maximize=True) == 0.5
    assert score_at(trial, 3, maximize=True) == 0.7, "the checkpoint kept is the best epoch so far"
    assert score_at(trial, 3, maximize=False) == 0.5
    assert score_at(trial, 5, maximize=True) is None, "it never got there"
    assert score_at(frozen({2: math.nan}), 2, maximize=True) is None
    assert score_at(frozen({}), 1, maximize=True) is None


def study_of(trials: List[FrozenTrial]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study


def crossing_study(deep: int) -> optuna.Study:
    """Low x starts fast and stalls, high x starts slowly and wins (learning rates do this).

    30 trials stopped at epoch 1, spread over x; ``deep`` trials that reached epoch 9, spread over x too.
    """
    trials = []
    for i in range(30):
        x = (i + 0.5) / 30
        trials.append(frozen({1: 0.3 * (1 - x)}, x=x))
    for i in range(deep):
        x = (i + 0.5) / deep
        trials.append(frozen({1: 0.3 * (1 - x), 3: 0.35, 9: 0.4 + 0.5 * x}, TrialState.COMPLETE, x=x))
    return study_of(trials)


def proposals(study: optuna.Study, min_points: int, n: int = 12, gp: bool = False) -> List[float]:
    drawn = []
    for seed in range(n):
        sampler = (RungGPSampler([1, 3, 9], min_points, seed=seed) if gp else
                   RungTPESampler([1, 3, 9], min_points, rung_gamma, seed=seed, n_startup_trials=min_points,
                                  multivariate=True, group=True, constant_liar=True))
        study.sampler = sampler
        trial = study.ask()
        drawn.append(trial.suggest_float("x", 0.0, 1.0))
        study.tell(trial, state=TrialState.FAIL)
    return drawn


def test_tpe_is_fitted_on_the_highest_rung_that_enough_trials_reached() -> None:
    # 8 trials at the top rung: TPE is shown them, scored at epoch 9, and proposes high x.
    assert sorted(proposals(crossing_study(deep=8), min_points=8))[6] > 0.7
    # Too few at the top (8 < 10): it falls back to epoch 1, where 38 trials say low x.
    assert sorted(proposals(crossing_study(deep=8), min_points=10))[6] < 0.3


def test_the_gp_is_fitted_on_the_highest_rung_that_enough_trials_reached() -> None:
    # the same crossing curves: the GP's expected improvement at epoch 9 lies at high x, at epoch 1 at low x
    assert sorted(proposals(crossing_study(deep=8), min_points=8, n=6, gp=True))[3] > 0.7
    assert sorted(proposals(crossing_study(deep=8), min_points=10, n=6, gp=True))[3] < 0.3
    study = study_of([frozen({1: 0.5}, x=0.5) for _ in range(3)])
    assert RungGPSampler([1, 3], 4, seed=0).sample_relative(study, study.ask(), {"x": X}) == {}, "random start-up"


LR = Param("optim.lr", Distribution.loguniform, 1e-5, 1e-2)


@pytest.mark.parametrize(("sampler", "milestones", "expected"), [
    (Sampler.gp, None, CandidateGPSampler), (Sampler.gp, (1, 3), RungGPSampler),
    (Sampler.auto, (1, 3), RungGPSampler), (Sampler.tpe, (1, 3), RungTPESampler),
])
def test_the_gp_sampler_is_optunas_gp_rung_wise_under_asha(sampler: Sampler, milestones, expected: type) -> None:
    # seed 0's draw is not among ASHA's random third (samplers.ASHA_RANDOM_SHARE); seed 1's is
    config = SearchConfig(sampler=sampler, num_trials=40)
    assert type(make_sampler(config, [LR], seed=0, random_share=1 / 3, milestones=milestones)) is expected
    found = make_sampler(config, [LR], seed=1, random_share=1 / 3, milestones=milestones)
    assert type(found) is optuna.samplers.RandomSampler


def test_no_rung_with_enough_trials_means_random_start_up_proposals() -> None:
    study = study_of([frozen({1: 0.5}, x=0.5) for _ in range(3)])
    sampler = RungTPESampler([1, 3], 4, rung_gamma, seed=0, n_startup_trials=4)
    assert sampler.view(study, study.ask()) is None
    assert sampler.sample_relative(study, study.trials[-1], {"x": X}) == {}, "TPE leaves it to the random sampler"


def test_tpe_sees_the_rung_alone_and_keeps_running_trials_pending() -> None:
    trials = [frozen({1: 0.1 * i}) for i in range(5)]
    trials += [frozen({1: 0.2, 3: 0.3 + 0.1 * i}, TrialState.COMPLETE) for i in range(7)]
    study = study_of(trials)
    running = study.ask({"x": X})  # a trial still running, not yet at a rung
    study.enqueue_trial({"x": 0.5})
    current = study.ask()
    sampler = RungTPESampler([1, 3], 4, rung_gamma, seed=0, n_startup_trials=4, multivariate=True,
                             constant_liar=True)
    view = sampler.view(study, current)
    assert view is not None
    seen = view.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.value for t in seen) == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]), "at epoch 3"
    pending = view.get_trials(states=(TrialState.RUNNING,))
    assert [t.number for t in pending] == [running.number], "the current trial itself is left out"

    split = optuna.samplers._tpe.sampler._split_trials
    with mock.patch.object(optuna.samplers._tpe.sampler, "_split_trials", wraps=split) as spy:
        sampler.sample_relative(study, current, {"x": X})
    (_, shown, n_below), _ = spy.call_args
    assert n_below == rung_gamma(7) == 2, "the good share is rung_gamma's, not Optuna's default (1 of 7)"
    assert len(shown) == 8 and {t.state for t in shown} == {TrialState.COMPLETE, TrialState.RUNNING}


@pytest.mark.parametrize(("n", "good"), [(1, 1), (4, 1), (7, 2), (40, 6), (400, 25)])
def test_the_good_share_is_fifteen_percent_of_a_rung_within_one_and_twenty_five(n: int, good: int) -> None:
    assert rung_gamma(n) == good


def test_two_seeds_of_a_sweep_propose_different_trials_not_the_same_ones_shifted() -> None:
    config = compose("demo", ["search.sampler=random", "search.num_trials=6"]).config
    params = parse_space({"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2}}, config)

    def proposed(seed: int) -> List[float]:
        searcher = StudySearcher(new_study(config.objective.mode), params, sampler_factory(config, params), seed,
                                 6, config.objective.mode, Numbering())
        return [params_of(searcher.suggest(f"t{i}"))["optim.lr"] for i in range(6)]

    first, second = proposed(0), proposed(1)
    assert first == proposed(0), "a seed proposes the same trials every time (resume relies on it)"
    assert not set(first) & set(second), "with seed + trial number, seed 1 re-ran seed 0's trials 1.."
    assert proposal_seed(0, 1) != proposal_seed(1, 0)


def test_the_proposal_seed_is_the_same_in_every_process() -> None:
    # SeedSequence's mixing is specified, not Python's hash: a resumed sweep on another machine agrees.
    assert proposal_seed(0, 0) == 2968811710 and proposal_seed(7, 3) == proposal_seed(7, 3)


@pytest.mark.parametrize("milestones", [None, (1, 3)], ids=["fifo", "asha"])
def test_a_rebuilt_study_proposes_what_the_lost_gp_would_have(milestones) -> None:
    # the GP keeps nothing between proposals (a fresh sampler each, seeded by the trial's index): its next proposal
    # is a function of the seed and the study's trials alone
    config = SearchConfig(sampler=Sampler.gp, num_trials=40)

    def step(study: optuna.Study, index: int) -> float:
        study.sampler = make_sampler(config, [LR], seed=proposal_seed(0, index), milestones=milestones)
        trial = study.ask()
        lr = trial.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
        score = -abs(math.log10(lr) + 3.5)
        for epoch in (1, 2, 3):
            trial.report(score - 0.1 / epoch, epoch)
        study.tell(trial, score)
        return lr

    lost = optuna.create_study(direction="maximize")
    for index in range(12):
        step(lost, index)
    rebuilt = optuna.create_study(direction="maximize")
    rebuilt.add_trials(lost.trials)
    assert step(rebuilt, 12) == step(lost, 12)
    assert isinstance(lost.sampler, optuna.samplers.GPSampler)
