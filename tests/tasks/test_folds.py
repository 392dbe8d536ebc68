"""Cross-validation folds: stratified, disjoint, covering train + validation exactly, the same for every finalist,
and never a row of the test split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.tasks import PreparedData, Split
from finesweep.tasks.data import variant_key
from finesweep.tasks.folds import assign_folds, fold_data, pool
from finesweep.tasks.preparation import prepare_all
from finesweep.tasks.text_classification import TextClassification, TextRegression


def numbered(train: int, val: int, test: int, classes: int = 3) -> PreparedData:
    """Data whose feature ``row`` is a unique id per row (test ids included), labels cycling over the classes."""
    def split(start: int, rows: int) -> Split:
        ids = np.arange(start, start + rows)
        return Split({"row": ids.reshape(-1, 1), "input_ids": np.ones((rows, 4), np.int32)}, ids % classes)

    return PreparedData(split(0, train), split(train, val), split(train + val, test), TextClassification(),
                        tuple(f"c{i}" for i in range(classes)))


@pytest.mark.parametrize("rows,folds", [(90, 5), (47, 5), (10, 10), (301, 3)])
def test_folds_are_stratified_disjoint_and_cover_every_row_once(rows: int, folds: int) -> None:
    strata = np.arange(rows) % 3
    assignment = assign_folds(strata, folds, seed=0)
    sizes = np.bincount(assignment, minlength=folds)
    assert sizes.sum() == rows and sizes.max() - sizes.min() <= 1, "every row in exactly one fold, sizes even"
    for fold in range(folds):  # each class's share of a fold is its share of the whole, within a row
        share = np.bincount(strata[assignment == fold], minlength=3)
        assert np.all(np.abs(share - np.bincount(strata) / folds) <= 1), share
    assert np.array_equal(assignment, assign_folds(strata, folds, seed=0)), "seeded: the same folds every time"
    assert not np.array_equal(assignment, assign_folds(strata, folds, seed=1)), "another seed, other folds"


def test_a_fold_trains_on_the_other_folds_and_never_sees_a_test_row() -> None:
    data = numbered(train=60, val=15, test=25)
    assignment = assign_folds(TextClassification().strata(pool(data).labels), 5, seed=0)
    pooled = set(range(75))
    test_rows = set(range(75, 100))
    held_out = set()
    for fold in range(5):
        part = fold_data(data, assignment, fold)
        train, val = set(part.train.features["row"][:, 0]), set(part.val.features["row"][:, 0])
        assert not train & val and train | val == pooled, "the fold validates, the other folds train: all 75 rows"
        assert not (train | val) & test_rows, "a test row leaked into a fold"
        assert part.test is data.test, "the test split stays as it was, for the winner's evaluation"
        held_out |= val
    assert held_out == pooled, "every train + validation row validates exactly once"


def test_regression_folds_are_stratified_by_the_targets_quartiles() -> None:
    targets = np.linspace(0.0, 1.0, 100).astype(np.float32)
    assignment = assign_folds(TextRegression().strata(targets), 4, seed=0)
    for fold in range(4):  # 25 targets per quartile over 4 folds: 6 or 7 of each quartile in every fold
        counts = np.histogram(targets[assignment == fold], bins=[0, 0.25, 0.5, 0.75, 1.0])[0]
        assert set(counts.tolist()) <= {6, 7}, counts


def test_tasks_without_classes_fold_by_examples() -> None:
    from finesweep.tasks.task import Task

    labels = np.zeros((12, 5), dtype=np.int64)  # a token task's labels: one per token
    strata = Task.strata(TextClassification(), labels)  # the interface's default: one stratum
    assert strata.shape == (12,) and not strata.any()
    assert sorted(np.bincount(assign_folds(strata, 4, seed=0))) == [3, 3, 3, 3]


@pytest.fixture()
def config(tiny_model: Path, tiny_csv: Path) -> ExperimentConfig:
    return compose("demo", [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
                            "data.max_samples=null", "data.max_length=16"]).config


def test_a_trial_with_data_fold_gets_its_fold_from_the_cache(config: ExperimentConfig) -> None:
    cache = prepare_all(config, ())
    full = cache.for_config(config)
    folded = cache.without_test().with_folds(3, config.data.seed)
    assert list(folded.without_test().folds) == [variant_key(config)]
    sizes = []
    for fold in range(3):
        part = folded.for_config(_fold(config, fold))
        assert part.test is None, "search and re-training runs never receive the test split"
        assert len(part.train) + len(part.val) == len(full.train) + len(full.val)
        sizes.append(len(part.val))
    assert sum(sizes) == len(full.train) + len(full.val)
    assert variant_key(_fold(config, 2)) == variant_key(config), "the fold is not another tokenisation"
    with pytest.raises(ValueError, match=r"data\.fold=1: this data has 0 cross-validation folds"):
        cache.for_config(_fold(config, 1))
    with pytest.raises(ValueError, match=r"data\.fold=3: this data has 3 cross-validation folds"):
        folded.for_config(_fold(config, 3))


def test_the_same_rows_give_every_finalist_the_same_folds(config: ExperimentConfig) -> None:
    cache = prepare_all(config, ())
    first, again = (cache.without_test().with_folds(4, config.data.seed) for _ in range(2))
    for key in first.folds:
        assert np.array_equal(first.folds[key], again.folds[key])


def _fold(config: ExperimentConfig, fold: int) -> ExperimentConfig:
    return dataclasses.replace(config, data=dataclasses.replace(config.data, fold=fold))
