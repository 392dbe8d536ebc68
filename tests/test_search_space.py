"""Search-space parsing: every distribution, every bad input, grid enumeration, Optuna mapping."""

from __future__ import annotations

from typing import Any, Dict

import optuna
import pytest

from finesweep.cli import compose
from finesweep.config import ExperimentConfig
from finesweep.errors import SearchSpaceError
from finesweep.search_space import Distribution, Param, grid, grid_size, iter_grid, parse_space, suggest


@pytest.fixture(scope="module")
def base() -> ExperimentConfig:
    return compose("demo", []).config


GOOD = [
    ("loguniform", {"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3}},
     Param("optim.lr", Distribution.loguniform, low=1e-5, high=1e-3)),
    ("uniform", {"optim.weight_decay": {"distribution": "uniform", "low": 0, "high": 0.1}},
     Param("optim.weight_decay", Distribution.uniform, low=0.0, high=0.1)),
    ("float-step", {"optim.warmup_ratio": {"distribution": "float", "low": 0.0, "high": 0.2, "step": 0.05}},
     Param("optim.warmup_ratio", Distribution.float, low=0.0, high=0.2, step=0.05)),
    ("int", {"scheduler.max_epochs": {"distribution": "int", "low": 1, "high": 4}},
     None),  # a sweep section: rejected below, listed here to keep the table honest
    ("int-step", {"data.batch_size": {"distribution": "categorical", "choices": [8, 16]}},
     Param("data.batch_size", Distribution.categorical, choices=(8, 16))),
    ("int-log", {"trainer.seed": {"distribution": "int", "low": 1, "high": 64, "log": True}},
     Param("trainer.seed", Distribution.int, low=1, high=64, log=True)),
    ("enum-choices", {"optim.schedule": {"distribution": "categorical", "choices": ["linear", "cosine"]}},
     Param("optim.schedule", Distribution.categorical, choices=("linear", "cosine"))),
]


@pytest.mark.parametrize("space,expected", [(s, e) for _, s, e in GOOD if e], ids=[i for i, _, e in GOOD if e])
def test_parses_each_distribution(base: ExperimentConfig, space: Dict[str, Any], expected: Param) -> None:
    assert parse_space(space, base) == (expected,)


BAD = [
    ("unknown-key", {"optim.learning_rate": {"distribution": "uniform", "low": 0, "high": 1}},
     r"space\.optim\.learning_rate: unknown config key 'optim\.learning_rate'\. Keys under optim: lr, weight_decay, "
     r"warmup_ratio, schedule\."),
    ("typo-key", {"optim.weight_decy": {"distribution": "uniform", "low": 0, "high": 1}},
     r"unknown config key 'optim\.weight_decy'\. Did you mean optim\.weight_decay\?"),
    ("sweep-section-key", {"scheduler.max_epochs": {"distribution": "int", "low": 1, "high": 4}},
     r"space\.scheduler\.max_epochs: unknown config key"),
    ("low-gt-high", {"optim.lr": {"distribution": "uniform", "low": 0.1, "high": 0.01}},
     r"space\.optim\.lr: low must be <= high, got low=0\.1, high=0\.01\. Swap the bounds\."),
    ("loguniform-zero", {"optim.lr": {"distribution": "loguniform", "low": 0, "high": 0.1}},
     r"space\.optim\.lr: loguniform needs low > 0, got low=0\. Use a positive bound such as 1e-6\."),
    ("loguniform-negative", {"optim.lr": {"distribution": "loguniform", "low": -1, "high": 0.1}},
     r"loguniform needs low > 0, got low=-1"),
    ("unknown-distribution", {"optim.lr": {"distribution": "normal", "low": 0, "high": 1}},
     r"space\.optim\.lr: unknown distribution 'normal'\. Use one of uniform, float, loguniform, int, categorical\."),
    ("empty-choices", {"data.batch_size": {"distribution": "categorical", "choices": []}},
     r"space\.data\.batch_size: categorical needs a non-empty list of choices, got choices=\[\]\."),
    ("missing-choices", {"data.batch_size": {"distribution": "categorical"}},
     r"categorical needs a non-empty list of choices, got choices=None"),
    ("duplicate-choices", {"data.batch_size": {"distribution": "categorical", "choices": [16, 16]}},
     r"categorical choices must be distinct, got \[16, 16\]"),
    ("not-a-mapping", {"optim.lr": 0.1},
     r"space\.optim\.lr: each entry must be a mapping with a distribution, got 0\.1\."),
    ("unknown-field", {"optim.lr": {"distribution": "uniform", "low": 0, "hgih": 1}},
     r"space\.optim\.lr: unknown field\(s\) hgih for distribution uniform\. Allowed: high, low, step\."),
    ("missing-high", {"optim.lr": {"distribution": "uniform", "low": 0}},
     r"space\.optim\.lr: uniform needs a numeric high, got high=None\."),
    ("string-bound", {"optim.lr": {"distribution": "uniform", "low": "a", "high": 1}},
     r"uniform needs a numeric low, got low='a'"),
    ("bad-step", {"optim.lr": {"distribution": "float", "low": 0, "high": 1, "step": 0}},
     r"step must be a number > 0, got step=0"),
    ("step-not-dividing", {"optim.lr": {"distribution": "float", "low": 0, "high": 1, "step": 0.3}},
     r"step must divide high - low, got low=0, high=1, step=0\.3"),
    ("int-float-bounds", {"trainer.seed": {"distribution": "int", "low": 0.5, "high": 3}},
     r"int needs integer bounds, got low=0\.5, high=3"),
    ("int-log-step", {"trainer.seed": {"distribution": "int", "low": 1, "high": 8, "log": True, "step": 2}},
     r"int with log needs low >= 1 and no step"),
    ("int-key-float-dist", {"data.batch_size": {"distribution": "uniform", "low": 8, "high": 64}},
     r"space\.data\.batch_size: data\.batch_size holds whole numbers, got distribution uniform\."),
    ("enum-bad-choice", {"optim.schedule": {"distribution": "categorical", "choices": ["linear", "step"]}},
     r"space\.optim\.schedule: optim\.schedule must be one of linear, cosine, constant, got 'step'\."),
    ("tokenisation-key-continuous", {"data.max_length": {"distribution": "int", "low": 16, "high": 64}},
     r"space\.data\.max_length: data is tokenised once per sweep for each value of data\.max_length, so it can "
     r"only be searched as categorical, got int\."),
]


@pytest.mark.parametrize("space,message", [(s, m) for _, s, m in BAD], ids=[i for i, _, _ in BAD])
def test_rejects_bad_space_with_pinned_message(base: ExperimentConfig, space: Dict[str, Any], message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        parse_space(space, base)


def test_grid_enumerates_every_combination_once(base: ExperimentConfig) -> None:
    params = parse_space({
        "optim.lr": {"distribution": "categorical", "choices": [1e-4, 1e-3]},
        "optim.warmup_ratio": {"distribution": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        "trainer.seed": {"distribution": "int", "low": 1, "high": 5, "step": 2},
    }, base)
    combos = list(iter_grid(params))
    assert grid(params)["optim.warmup_ratio"] == [0.0, 0.1, 0.2]
    assert grid(params)["trainer.seed"] == [1, 3, 5]
    assert grid_size(params) == len(combos) == 18
    assert len({tuple(sorted(c.items())) for c in combos}) == 18


def test_grid_over_continuous_range_is_an_error(base: ExperimentConfig) -> None:
    params = parse_space({"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3}}, base)
    with pytest.raises(SearchSpaceError, match=r"space\.optim\.lr: the grid sampler needs a finite set of values, got "
                                               r"a continuous loguniform range \[1e-05, 0\.001\]\. Add a step"):
        grid(params)


def test_optuna_distributions_and_define_by_run(base: ExperimentConfig) -> None:
    params = parse_space({
        "optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
        "optim.warmup_ratio": {"distribution": "float", "low": 0.0, "high": 0.2, "step": 0.05},
        "trainer.seed": {"distribution": "int", "low": 1, "high": 64, "log": True},
        "data.batch_size": {"distribution": "categorical", "choices": [16, 32]},
    }, base)
    dists = [p.to_optuna() for p in params]
    assert dists[0] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert dists[1] == optuna.distributions.FloatDistribution(0.0, 0.2, step=0.05)
    assert dists[2] == optuna.distributions.IntDistribution(1, 64, log=True)
    assert dists[3] == optuna.distributions.CategoricalDistribution((16, 32))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), params)
        assert 1e-5 <= values["optim.lr"] <= 1e-3
        assert round(values["optim.warmup_ratio"] / 0.05, 9).is_integer()
        assert values["data.batch_size"] in (16, 32)
        assert set(values) == {p.key for p in params}
