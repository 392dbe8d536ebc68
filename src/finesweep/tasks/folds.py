"""Cross-validation folds of train + validation, for model selection on small data (``final.cv_folds``).

The folds are made once, on the driver, from the prepared data: every stratum of train + validation
(``Task.strata``: the classes, the regression target's quartiles, or one stratum for token and generative
tasks) is shuffled with a seed and dealt round-robin, so the folds differ in size by at most one row and each
holds its share of every class. The test split never enters a fold. The assignment depends on the rows and
the seed alone, so every finalist is trained and scored on exactly the same folds: their fold scores are paired.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from finesweep.tasks.task import PreparedData, Split


def assign_folds(strata: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of each row.

    Raises:
        ValueError: fewer than 2 folds, or more folds than rows.
    """
    if not 2 <= folds <= len(strata):
        raise ValueError(f"folds must be between 2 and the {len(strata)} rows, got {folds}")
    rng = np.random.default_rng([seed, folds])
    dealt = np.concatenate([rng.permutation(np.flatnonzero(strata == value)) for value in np.unique(strata)])
    # dealing continues across strata: the first rows of a stratum go to the folds the last one left short
    assignment = np.empty(len(strata), dtype=np.int64)
    assignment[dealt] = np.arange(len(dealt)) % folds
    return assignment


def pool(data: PreparedData) -> Split:
    """Train and validation rows together (train first): what the folds divide.

    Raises:
        ValueError: the splits' arrays differ in shape beyond their rows (a task that pads per split).
    """
    features = {}
    for name, array in data.train.features.items():
        other = data.val.features[name]
        if array.shape[1:] != other.shape[1:]:
            raise ValueError(f"cross-validation pools train and validation rows, but feature {name!r} is "
                             f"{array.shape[1:]} per row in train and {other.shape[1:]} in validation")
        features[name] = np.concatenate([array, other])
    return Split(features, np.concatenate([data.train.labels, data.val.labels]))


def pool_assignment(data: PreparedData, folds: int, seed: int) -> np.ndarray:
    """The fold of each pooled row (``pool``), stratified by the data's task."""
    return assign_folds(data.task.strata(pool(data).labels), folds, seed)


def fold_data(data: PreparedData, assignment: np.ndarray, fold: int) -> PreparedData:
    """The data a cross-validation run trains on: fold ``fold`` of the pool validates, the other folds train.
    The test split is left as it was (model selection scores only the winner's models on it)."""
    rows = pool(data)
    held = assignment == fold
    return dataclasses.replace(data, train=_rows(rows, ~held), val=_rows(rows, held))


def _rows(split: Split, mask: np.ndarray) -> Split:
    return Split({name: array[mask] for name, array in split.features.items()}, split.labels[mask])
