"""The prior-weighted TPE (πBO): the prior's density against a hand computation, start-up draws from it, the
weight that fades with trials, what a good and a misleading prior do to a search, and that a study rebuilt from the
journal proposes what the lost one would have."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import optuna
import pytest

from finesweep.config import Confidence, Sampler, SchedulerKind, SearchConfig
from finesweep.config.compose import compose
from finesweep.config.recipe import start_points
from finesweep.config.space import Distribution, Param
from finesweep.search.prior import (
    CATEGORICAL_WEIGHT,
    MIN_EVIDENCE,
    STD,
    Prior,
    PriorRungTPESampler,
    PriorTPESampler,
    trust,
)
from finesweep.search.samplers import make_sampler, sampler_factory
from finesweep.search.searcher import Numbering, StudySearcher, new_study, params_of

LOW, HIGH, BEST = 1e-5, 1e-2, 3e-3


def lr(prior: Optional[float] = None, confidence: Confidence = Confidence.medium) -> Param:
    return Param("optim.lr", Distribution.loguniform, low=LOW, high=HIGH, prior=prior, prior_confidence=confidence)


def unit(value: float) -> float:
    return (math.log(value) - math.log(LOW)) / (math.log(HIGH) - math.log(LOW))


def test_a_numeric_prior_is_a_normal_on_the_unit_log_range_truncated_to_it() -> None:
    (key,) = Prior([lr(1e-4, Confidence.high)]).keys.values()
    m, s = unit(1e-4), STD[Confidence.high]
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    for x in (1e-5, 1e-4, 5e-4, 1e-2):
        by_hand = math.log(phi((unit(x) - m) / s) / s / (cdf((1 - m) / s) - cdf(-m / s)))
        assert float(key.log_pdf(np.array([x]))[0]) == pytest.approx(by_hand, rel=1e-9)
    draws = key.sample(np.random.RandomState(0), 4000)
    assert draws.min() >= LOW and draws.max() <= HIGH
    assert np.median([unit(d) for d in draws]) == pytest.approx(m, abs=0.02)
    assert np.std([unit(d) for d in draws]) < s


def test_a_categorical_prior_weighs_its_choice_and_an_int_prior_draws_whole_numbers() -> None:
    batch = Param("data.batch_size", Distribution.categorical, choices=(8, 16, 32, 64), prior=16,
                  prior_confidence=Confidence.low)
    layers = Param("finetune.freeze_layers", Distribution.int, low=2, high=10, step=2, prior=6)
    prior = Prior([batch, layers])
    w = CATEGORICAL_WEIGHT[Confidence.low]
    chosen = prior.keys["data.batch_size"].log_pdf(np.array([1.0, 0.0]))
    assert np.exp(chosen) == pytest.approx([w / (w + 3), 1 / (w + 3)])
    draws = prior.keys["finetune.freeze_layers"].sample(np.random.RandomState(1), 500)
    assert set(draws) <= {2.0, 4.0, 6.0, 8.0, 10.0} and np.mean(draws == 6.0) > 0.3


def test_the_priors_weight_is_whole_until_beta_trials_then_fades_as_beta_over_n() -> None:
    prior = Prior([lr(1e-4)])
    assert [prior.weight(n) for n in (0, 1, 10, 20, 100)] == [1.0, 1.0, 1.0, 0.5, 0.1]


def objective(trial: optuna.Trial) -> float:
    return -abs(math.log10(trial.suggest_float("optim.lr", LOW, HIGH, log=True)) - math.log10(BEST))


def search(params: Sequence[Param], trials: int, seed: int, asha: bool = False,
           budget: Optional[int] = None) -> optuna.Study:
    """The first ``trials`` of a TPE search of ``budget`` trials as finesweep runs one: a fresh sampler per
    proposal, seeded by the trial's index."""
    study = optuna.create_study(direction="maximize")
    config = SearchConfig(sampler=Sampler.tpe, num_trials=budget or trials, seed=seed)
    for index in range(trials):
        study.sampler = make_sampler(config, params, seed=seed * 1000 + index,
                                     milestones=[1, 3] if asha else None)
        study.optimize(objective, n_trials=1)
    return study


def test_startup_proposals_come_from_the_prior_not_uniformly() -> None:
    startup = 10  # TPE's start-up trials in a search of 40 (samplers._tpe: a quarter of the budget, 2 to 10)
    near = [abs(unit(t.params["optim.lr"]) - unit(BEST))
            for seed in range(4) for t in search([lr(BEST, Confidence.high)], startup, seed, budget=40).trials]
    far = [abs(unit(t.params["optim.lr"]) - unit(BEST))
           for seed in range(4) for t in search([lr()], startup, seed, budget=40).trials]
    assert np.median(near) < 0.1 < np.median(far)
    assert isinstance(make_sampler(SearchConfig(num_trials=40), [lr(1e-4)]), PriorTPESampler)
    assert type(make_sampler(SearchConfig(sampler=Sampler.tpe, num_trials=40), [lr()])) is optuna.samplers.TPESampler


def best_distance(study: optuna.Study) -> float:
    return abs(unit(study.best_params["optim.lr"]) - unit(BEST))


def test_a_good_prior_finds_the_optimum_sooner_and_a_misleading_one_is_overcome() -> None:
    good = [best_distance(search([lr(BEST)], 12, seed)) for seed in range(10)]
    none = [best_distance(search([lr()], 12, seed)) for seed in range(10)]
    assert np.mean(good) < 0.7 * np.mean(none)
    # a confident prior at the wrong end of the range: the first trials go there, TPE's model takes over
    misled = search([lr(2e-5, Confidence.high)], 40, 0)
    assert unit(misled.trials[0].params["optim.lr"]) < 0.25
    assert best_distance(misled) < 0.05


def next_lr(study: optuna.Study, asha: bool) -> float:
    """The 17th proposal of a 17-trial search with seed 3."""
    config = SearchConfig(num_trials=17, seed=3)
    study.sampler = make_sampler(config, [lr(1e-4)], seed=3 * 1000 + 16, milestones=[1, 3] if asha else None)
    return float(study.ask().suggest_float("optim.lr", LOW, HIGH, log=True))


@pytest.mark.parametrize("asha", [False, True], ids=["tpe", "rung-wise-tpe"])
def test_a_rebuilt_study_proposes_what_the_lost_one_would_have(asha: bool) -> None:
    lost = search([lr(1e-4)], 16, 3, asha)
    rebuilt = optuna.create_study(direction="maximize")
    rebuilt.add_trials(lost.trials)
    assert next_lr(rebuilt, asha) == next_lr(lost, asha)
    assert isinstance(make_sampler(SearchConfig(num_trials=17), [lr(1e-4)], milestones=[1, 3] if asha else None),
                      PriorRungTPESampler if asha else PriorTPESampler)


def test_the_searchers_first_trial_is_the_priors_mode(tmp_path: Path) -> None:
    path = tmp_path / "prior.yaml"
    path.write_text("objective: {metric: val/accuracy, mode: max}\nsearch: {sampler: tpe, num_trials: 6, seed: 2, "
                    "start_from_config: false}\nscheduler: {kind: asha, max_epochs: 3}\nspace:\n"
                    "  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3, prior: 2.0e-4}\n"
                    "  data.batch_size: {distribution: categorical, choices: [16, 32]}\n")
    sweep = compose(str(path), [])
    assert sweep.config.scheduler.kind is SchedulerKind.asha
    config, params = sweep.config, sweep.params
    searcher = StudySearcher(new_study(config.objective.mode), params, sampler_factory(config, params), 2, 6,
                             config.objective.mode, Numbering(), points=start_points(config, params))
    first: List[float] = [params_of(searcher.suggest(f"t{i}"))["optim.lr"] for i in range(3)]
    assert first[0] == 2e-4 and first[1] != 2e-4


def test_the_prior_weighs_every_proposal_after_startup() -> None:
    """Past TPE's start-up, candidates come from l(x) and from the prior, scored with the prior's weight: a
    confident prior pulls the next proposal toward it until enough trials are in."""
    def after(params: Sequence[Param], seed: int, warm: Callable[[int], float]) -> float:
        study = optuna.create_study(direction="maximize")
        for i in range(10):  # start-up trials spread evenly, told the same objective
            x = LOW * (HIGH / LOW) ** ((i + 0.5) / 10)
            study.add_trial(optuna.trial.create_trial(params={"optim.lr": x}, value=warm(i), distributions={
                "optim.lr": optuna.distributions.FloatDistribution(LOW, HIGH, log=True)}))
        study.sampler = make_sampler(SearchConfig(num_trials=40), params, seed=seed)
        return unit(study.ask().suggest_float("optim.lr", LOW, HIGH, log=True))

    low_best: Callable[[int], float] = lambda i: -float(i)  # noqa: E731  (the lowest rate is the best so far)
    mid = 3e-4  # the middle of the range, where no trial was good
    pulled = [after([lr(mid, Confidence.high)], seed, low_best) for seed in range(8)]
    free = [after([lr()], seed, low_best) for seed in range(8)]
    assert np.mean(np.abs(np.array(pulled) - unit(mid))) < np.mean(np.abs(np.array(free) - unit(mid))) / 2


def told(study: optuna.Study, rates: Sequence[float], pruned: bool = False) -> optuna.Study:
    """``study`` with one finished trial a rate, scored by how close the rate is to BEST (first report: epoch 1)."""
    dist = optuna.distributions.FloatDistribution(LOW, HIGH, log=True)
    for rate in rates:
        score = -abs(unit(rate) - unit(BEST))
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": rate}, distributions={"optim.lr": dist}, intermediate_values={1: score},
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            value=None if pruned else score))
    return study


def test_the_prior_keeps_its_trust_while_the_trials_bear_it_out_and_loses_it_when_they_do_not() -> None:
    rates = [LOW * (HIGH / LOW) ** (i / 11) for i in range(12)]
    fresh = lambda: optuna.create_study(direction="maximize")  # noqa: E731
    assert trust(Prior([lr(2e-5)]), told(fresh(), rates[:MIN_EVIDENCE - 1])) == 1.0, "too few trials to judge"
    assert trust(Prior([lr(BEST)]), told(fresh(), rates)) == 1.0
    assert trust(Prior([lr(2e-5)]), told(fresh(), rates, pruned=True)) == 0.0, "the good trials lie away from it"
    assert trust(Prior([lr(2e-5)]), told(fresh(), rates[:MIN_EVIDENCE])) < 1.0
    # the trust is also the share of start-up proposals drawn from the prior
    misled = search([lr(2e-5, Confidence.high)], 10, 0, budget=40)
    late = [unit(t.params["optim.lr"]) for t in misled.trials[MIN_EVIDENCE + 1:]]
    assert any(abs(u - unit(2e-5)) > 0.4 for u in late), "once the prior is not borne out, proposals leave it"
