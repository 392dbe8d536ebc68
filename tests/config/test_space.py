"""Search-space parsing: every distribution, every bad input, grid enumeration, Optuna mapping."""

from __future__ import annotations

from typing import Any, Dict

import optuna
import pytest

from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.config.preflight import probes
from finesweep.config.space import Distribution, Param, grid, grid_size, iter_grid, parse_space, suggest
from finesweep.errors import SearchSpaceError


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
    ("int", {"trainer.accumulate_grad_batches": {"distribution": "int", "low": 1, "high": 4}},
     Param("trainer.accumulate_grad_batches", Distribution.int, low=1, high=4)),
    ("int-step", {"data.batch_size": {"distribution": "int", "low": 8, "high": 32, "step": 8}},
     Param("data.batch_size", Distribution.int, low=8, high=32, step=8)),
    ("categorical-numbers", {"data.batch_size": {"distribution": "categorical", "choices": [8, 16]}},
     Param("data.batch_size", Distribution.categorical, choices=(8, 16))),
    ("int-log", {"trainer.seed": {"distribution": "int", "low": 1, "high": 64, "log": True}},
     Param("trainer.seed", Distribution.int, low=1, high=64, log=True)),
    ("enum-choices", {"optim.schedule": {"distribution": "categorical", "choices": ["linear", "cosine"]}},
     Param("optim.schedule", Distribution.categorical, choices=("linear", "cosine"))),
]


@pytest.mark.parametrize("space,expected", [(s, e) for _, s, e in GOOD], ids=[i for i, _, _ in GOOD])
def test_parses_each_distribution(base: ExperimentConfig, space: Dict[str, Any], expected: Param) -> None:
    assert parse_space(space, base) == (expected,)


BAD = [
    ("unknown-key", {"optim.learning_rate": {"distribution": "uniform", "low": 0, "high": 1}},
     r"space\.optim\.learning_rate: unknown config key 'optim\.learning_rate'\. Keys under optim: lr, weight_decay, "
     r"warmup_ratio, schedule, min_lr_ratio, num_cycles, decay_ratio, l1\."),
    ("typo-key", {"optim.weight_decy": {"distribution": "uniform", "low": 0, "high": 1}},
     r"unknown config key 'optim\.weight_decy'\. Did you mean optim\.weight_decay\?"),
    ("sweep-section-key", {"scheduler.max_epochs": {"distribution": "int", "low": 1, "high": 4}},
     r"space\.scheduler\.max_epochs: scheduler describes the sweep itself, not a config value, so it cannot be "
     r"searched\. Search config values such as optim\.lr; set the sweep's own values under scheduler:\."),
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
     r"space\.optim\.lr: unknown field\(s\) hgih for distribution uniform\. Allowed: high, low, step; every entry "
     r"also takes prior, prior_confidence, when\."),
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
     r"space\.optim\.schedule: optim\.schedule must be one of linear, cosine, cosine_with_restarts, .*, got 'step'\."),
    ("precision-unknown-to-lightning", {"trainer.precision": {"distribution": "categorical",
                                                             "choices": ["32-true", "8-bit"]}},
     r"space\.trainer\.precision: trainer\.precision must be one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, "
     r"64-true, auto, got '8-bit'\."),
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


@pytest.mark.parametrize("spec,extremes", [
    ({"distribution": "uniform", "low": 0.0, "high": 0.1}, [("low", 0.0), ("high", 0.1)]),
    ({"distribution": "float", "low": 0.0, "high": 1.0, "step": 0.5}, [("low", 0.0), ("high", 1.0)]),
    ({"distribution": "loguniform", "low": 1e-5, "high": 1e-3}, [("low", 1e-5), ("high", 1e-3)]),
    ({"distribution": "int", "low": 1, "high": 8, "step": 3}, [("low", 1), ("high", 7)]),  # 1, 4, 7: 8 is never drawn
    ({"distribution": "int", "low": 2, "high": 2}, [("low", 2)]),
    ({"distribution": "categorical", "choices": [1, 2, 3]}, [("choice", 1), ("choice", 2), ("choice", 3)]),
], ids=["uniform", "float-step", "loguniform", "int-step", "int-single", "categorical"])
def test_extremes_are_the_values_a_sampler_can_reach_at_the_edges(base: ExperimentConfig, spec: Dict[str, Any],
                                                                   extremes: list) -> None:
    key = "data.batch_size" if spec["distribution"] in ("int", "categorical") else "optim.weight_decay"
    (param,) = parse_space({key: spec}, base)
    assert param.extremes() == extremes
    if param.is_finite:
        assert {v for _, v in extremes} <= set(param.grid_values()), "every extreme is a value the grid takes"


def test_probes_cover_each_value_alone_then_every_branch_of_extremes(base: ExperimentConfig) -> None:
    params = parse_space({
        "finetune.strategy": {"distribution": "categorical", "choices": ["freeze", "full"]},
        "finetune.freeze_layers": {"distribution": "int", "low": 1, "high": 3, "when": {"finetune.strategy": "freeze"}},
        "optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
    }, base)
    found = probes(params, exhaustive=False)
    singles = [(p.param.key, p.label, p.values) for p in found if p.param is not None]
    assert singles == [
        ("finetune.strategy", "choice", {"finetune.strategy": "freeze"}),
        ("finetune.strategy", "choice", {"finetune.strategy": "full"}),
        ("finetune.freeze_layers", "low", {"finetune.strategy": "freeze", "finetune.freeze_layers": 1}),
        ("finetune.freeze_layers", "high", {"finetune.strategy": "freeze", "finetune.freeze_layers": 3}),
        ("optim.lr", "low", {"optim.lr": 1e-5}),
        ("optim.lr", "high", {"optim.lr": 1e-3}),
    ], "each parameter alone, its `when` parent set so it is active"
    combos = [p.values for p in found if p.param is None]
    # freeze: 2 depths x 2 lrs; full: no depth x 2 lrs
    assert len(combos) == 6 and all(("finetune.freeze_layers" in c) == (c["finetune.strategy"] == "freeze")
                                    for c in combos)
    assert {(c.get("finetune.freeze_layers"), c["optim.lr"]) for c in combos} == {
        (1, 1e-5), (1, 1e-3), (3, 1e-5), (3, 1e-3), (None, 1e-5), (None, 1e-3)}


def test_grid_probes_walk_every_grid_point(base: ExperimentConfig) -> None:
    params = parse_space({"optim.lr": {"distribution": "categorical", "choices": [1e-4, 1e-3]},
                          "data.batch_size": {"distribution": "int", "low": 8, "high": 32, "step": 8}}, base)
    combos = [p.values for p in probes(params, exhaustive=True) if p.param is None]
    assert combos == list(iter_grid(params)) and len(combos) == 8


def test_probes_stop_at_the_limit(base: ExperimentConfig) -> None:
    space = {f"finetune.lora.{k}": {"distribution": "categorical", "choices": v}
             for k, v in {"r": [2, 4, 8], "alpha": [8, 16, 32], "dropout": [0.0, 0.1, 0.2]}.items()}
    params = parse_space(space, base)
    assert len([p for p in probes(params, exhaustive=False, limit=5) if p.param is None]) == 5
    assert len([p for p in probes(params, exhaustive=False) if p.param is None]) == 27


def test_list_choices_reach_optuna_as_text_and_come_back_as_lists(base: ExperimentConfig) -> None:
    """Optuna's choices must be scalars (for persistent storage too); a list of modules is searched as its JSON."""
    params = parse_space({"finetune.lora.target_modules": {"distribution": "categorical",
                                                           "choices": [["query"], ["query", "value"]]}}, base)
    (param,) = params
    assert param.to_optuna() == optuna.distributions.CategoricalDistribution(('["query"]', '["query", "value"]'))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        value = suggest(trial, params)["finetune.lora.target_modules"]
        assert isinstance(value, list) and isinstance(trial.params["finetune.lora.target_modules"], str)
        seen.add(tuple(value))
    assert seen == {("query",), ("query", "value")}
