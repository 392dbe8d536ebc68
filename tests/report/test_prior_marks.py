"""The prior on the report's slice plot: a dashed line at each key's prior, in the panel of that key."""

from __future__ import annotations

import math
from typing import Any

import optuna

from finesweep.config import Confidence, ExperimentConfig
from finesweep.config.space import Distribution, Param
from finesweep.report.facts import SweepFacts
from finesweep.report.figures import slices
from finesweep.report.terminal import space_table

LR = Param("optim.lr", Distribution.loguniform, low=1e-5, high=1e-2, prior=5e-5, prior_confidence=Confidence.high)
BATCH = Param("data.batch_size", Distribution.categorical, choices=(16, 32), prior=32)
DECAY = Param("optim.weight_decay", Distribution.uniform, low=0.0, high=0.1)


def study() -> optuna.Study:
    found = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    found.optimize(lambda t: -abs(math.log10(t.suggest_float("optim.lr", 1e-5, 1e-2, log=True)) + 4)
                   + 0 * t.suggest_categorical("data.batch_size", [16, 32])
                   + t.suggest_float("optim.weight_decay", 0.0, 0.1), n_trials=8)
    return found


def facts_with(*params: Param) -> Any:
    facts: Any = SweepFacts.__new__(SweepFacts)
    facts.config, facts.params, facts.trials = ExperimentConfig(), params, []
    return facts


def test_each_prior_is_a_dashed_line_in_its_keys_panel_and_the_caption_says_so() -> None:
    drawn = slices(facts_with(LR, BATCH, DECAY), study())
    assert drawn.figure is not None
    lines = [t for t in drawn.figure.data if t.name and t.name.startswith("prior")]
    assert len(lines) == 2 and all(t.line.dash == "dash" for t in lines)
    layout = drawn.figure.layout
    by_axis = {getattr(layout, "xaxis" + t.xaxis[1:]).title.text: t for t in lines}
    assert set(by_axis) == {"optim.lr", "data.batch_size"}, "each line in the panel titled with its key"
    assert list(by_axis["optim.lr"].x) == [5e-5, 5e-5] and list(by_axis["data.batch_size"].x) == [32, 32]
    assert by_axis["optim.lr"].name == "prior (high)"
    assert "dashed line is each key's prior" in drawn.caption


def test_without_a_prior_the_slice_plot_is_optunas_own() -> None:
    drawn = slices(facts_with(DECAY, Param("optim.lr", Distribution.loguniform, low=1e-5, high=1e-2),
                              Param("data.batch_size", Distribution.categorical, choices=(16, 32))), study())
    assert drawn.figure is not None and not any((t.name or "").startswith("prior") for t in drawn.figure.data)
    assert "prior" not in drawn.caption


def test_show_prints_each_keys_prior_and_its_confidence() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(space_table([LR, BATCH, DECAY]))
    text = console.export_text()
    assert "prior (confidence)" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "5e-05 (high)" in rows["optim.lr"] and "32 (medium)" in rows["data.batch_size"]
    assert "none" in rows["optim.weight_decay"]
    console = Console(record=True, width=200)
    console.print(space_table([DECAY]))
    assert "prior" not in console.export_text()
