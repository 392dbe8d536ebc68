"""Conditional search spaces: `when`, define-by-run sampling of active keys only, exact branch-wise grids."""

from __future__ import annotations

import collections
from typing import Any, Dict

import optuna
import pytest

from finesweep.config import ExperimentConfig, Sampler, SearchConfig
from finesweep.config.compose import compose
from finesweep.config.space import grid_size, iter_grid, parse_space, suggest
from finesweep.errors import SearchSpaceError
from finesweep.search.samplers import make_sampler

SPACE: Dict[str, Any] = {
    "finetune.strategy": {"distribution": "categorical", "choices": ["head_only", "freeze", "lora", "full"]},
    "finetune.freeze_layers": {"distribution": "int", "low": 1, "high": 3, "when": {"finetune.strategy": "freeze"}},
    "finetune.lora.r": {"distribution": "categorical", "choices": [4, 8], "when": {"finetune.strategy": "lora"}},
    "finetune.llrd": {"distribution": "categorical", "choices": [0.8, 1.0],
                      "when": {"finetune.strategy": ["freeze", "full"]}},
    "optim.lr": {"distribution": "categorical", "choices": [1e-4, 1e-3]},
}
# head_only: 2 (lr) | freeze: 3 * 2 * 2 | lora: 2 * 2 | full: 2 * 2  -> 2 + 12 + 4 + 4
GRID_SIZE = 22


@pytest.fixture(scope="module")
def base() -> ExperimentConfig:
    return compose("demo", []).config


def expected_keys(values: Dict[str, Any]) -> set:
    strategy = values["finetune.strategy"]
    keys = {"finetune.strategy", "optim.lr"}
    keys |= {"finetune.freeze_layers"} if strategy == "freeze" else set()
    keys |= {"finetune.lora.r"} if strategy == "lora" else set()
    keys |= {"finetune.llrd"} if strategy in ("freeze", "full") else set()
    return keys


def test_when_parses_single_and_list_values(base: ExperimentConfig) -> None:
    params = parse_space(SPACE, base)
    assert params[1].when == (("finetune.strategy", ("freeze",)),)
    assert params[3].when == (("finetune.strategy", ("freeze", "full")),)
    assert params[1].is_active({"finetune.strategy": "freeze"})
    assert not params[1].is_active({"finetune.strategy": "lora"}) and not params[1].is_active({})


@pytest.mark.parametrize("sampler", [Sampler.tpe, Sampler.random])
def test_samplers_emit_only_active_parameters(base: ExperimentConfig, sampler: Sampler) -> None:
    params = parse_space(SPACE, base)
    search = SearchConfig(sampler=sampler, num_trials=40, seed=1)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(search, params))
    seen = set()
    for number in range(40):
        trial = study.ask()
        values = suggest(trial, params)
        assert set(values) == expected_keys(values) == set(trial.params)
        seen.add(values["finetune.strategy"])
        study.tell(trial, number % 7 / 7)
    assert seen == {"head_only", "freeze", "lora", "full"}


def test_grid_expands_each_branch_exactly(base: ExperimentConfig) -> None:
    params = parse_space(SPACE, base)
    combos = list(iter_grid(params))
    assert grid_size(params) == len(combos) == GRID_SIZE
    assert len({tuple(sorted(c.items())) for c in combos}) == GRID_SIZE
    assert all(set(c) == expected_keys(c) for c in combos), "no inactive key in any combination"


def test_grid_sampler_runs_every_branch_once_with_concurrency(base: ExperimentConfig) -> None:
    """Ask/tell like Ray Tune does with 2 trials in flight: every combination once, none twice."""
    params = parse_space(SPACE, base)
    sampler = make_sampler(SearchConfig(sampler=Sampler.grid, seed=0), params)
    study = optuna.create_study(sampler=sampler)
    running: collections.deque = collections.deque()
    seen = []
    for _ in range(GRID_SIZE):
        trial = study.ask()
        seen.append(tuple(sorted(suggest(trial, params).items())))
        running.append(trial)
        if len(running) == 2:
            _tell(study, running.popleft())
    assert len(seen) == len(set(seen)) == GRID_SIZE
    assert set(seen) == {tuple(sorted(c.items())) for c in iter_grid(params)}


def _tell(study: optuna.Study, trial: optuna.Trial) -> None:
    try:
        study.tell(trial, 0.5)
    except RuntimeError:
        pass  # BruteForceSampler calls study.stop() outside optimize(); Ray's OptunaSearch logs the same


BAD = [
    ("unknown-when-key", {"optim.lr": {"distribution": "categorical", "choices": [1e-4],
                                       "when": {"finetune.stratgy": "freeze"}}},
     r"space\.optim\.lr: when refers to 'finetune\.stratgy', which is not a categorical key listed before it"),
    ("unknown-when-value", {**{k: SPACE[k] for k in ("finetune.strategy",)},
                            "finetune.freeze_layers": {"distribution": "int", "low": 1, "high": 3,
                                                       "when": {"finetune.strategy": "frozen"}}},
     r"space\.finetune\.freeze_layers: when finetune\.strategy = 'frozen' can never hold, finetune\.strategy takes "
     r"\['head_only', 'freeze', 'lora', 'full'\]\. Use one of those values\."),
    ("parent-listed-after", {"finetune.freeze_layers": {"distribution": "int", "low": 1, "high": 3,
                                                        "when": {"finetune.strategy": "freeze"}},
                             "finetune.strategy": SPACE["finetune.strategy"]},
     r"when refers to 'finetune\.strategy', which is not a categorical key listed before it in space \(known: none\)"),
    ("not-a-mapping", {"finetune.strategy": SPACE["finetune.strategy"],
                       "finetune.freeze_layers": {"distribution": "int", "low": 1, "high": 3, "when": "freeze"}},
     r"when must map a categorical key to its value\(s\), got when='freeze'"),
]


@pytest.mark.parametrize("space,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_conditions(base: ExperimentConfig, space: Dict[str, Any], message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        parse_space(space, base)
