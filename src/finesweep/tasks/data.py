"""Prepared data (``PreparedData``, defined with the ``Task`` that makes it), once per sweep, on the driver.

Trials never read or encode: they receive ``PreparedData`` (numpy arrays, shared zero-copy through Ray's
object store) and only batch it. When a key that changes the prepared data is searched (the model,
``data.max_length``), every choice is prepared up front (``preparation.py``) and a ``DataCache`` holds them;
trials pick theirs by ``variant_key``.

The helpers here are what most tasks' ``prepare`` share: reading a table (CSV, TSV, JSONL, Parquet) with its
columns checked, a seeded stratified subsample, and a seeded stratified train/validation/test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.config.space import NOT_TOKENISATION_KEYS
from finesweep.errors import DataError, one_line
from finesweep.tasks.folds import fold_data, pool_assignment
from finesweep.tasks.task import ModelProbe, PreparedData, Split, Task

READERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class DataCache:
    """Every prepared variant a sweep needs, keyed by the config values that shaped it."""

    variants: Dict[str, PreparedData]
    folds: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Each variant's cross-validation fold of every train + validation row (``with_folds``); empty without."""
    probe: Optional[ModelProbe] = None
    """What measures every trial's best weights besides the task (the forgetting probe), prepared once with the
    data; None = nothing."""

    def for_config(self, config: ExperimentConfig) -> PreparedData:
        """The variant prepared for this trial's config; with ``data.fold`` set, that fold of it validates.

        Raises:
            ValueError: ``data.fold`` is set on a cache without folds, or names a fold it does not have.
        """
        key = variant_key(config)
        fold = config.data.fold
        if fold is None:
            return self.variants[key]
        assignment = self.folds.get(key)
        if assignment is None or fold > int(assignment.max()):
            raise ValueError(f"data.fold={fold}: this data has {0 if assignment is None else assignment.max() + 1} "
                             "cross-validation folds; model selection makes them (final.cv_folds)")
        return fold_data(self.variants[key], assignment, fold)

    def without_test(self) -> DataCache:
        """What the search's trials get: every variant without its test split."""
        return DataCache({key: value.without_test() for key, value in self.variants.items()}, self.folds, self.probe)

    def with_folds(self, folds: int, seed: int) -> DataCache:
        """The same data with ``folds`` stratified cross-validation folds of each variant's train + validation rows
        (seeded: the same rows give the same folds)."""
        return DataCache(self.variants, {key: pool_assignment(value, folds, seed)
                                         for key, value in self.variants.items()}, self.probe)

    @property
    def task(self) -> Task:
        """The task of the data (the same for every variant)."""
        return next(iter(self.variants.values())).task

    def content_hash(self) -> str:
        """A short hash of every prepared array: a resume must train on the very same data."""
        digest = hashlib.sha256()
        for key in sorted(self.variants):
            variant = self.variants[key]
            for split in (variant.train, variant.val, variant.test):
                if split is not None:
                    for array in (split.labels, *(split.features[name] for name in sorted(split.features))):
                        digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()[:16]


def variant_key(config: ExperimentConfig) -> str:
    """Identity of everything that changes the prepared data: not the batch size, the cross-validation fold or
    the on-the-fly augmentation (``space.NOT_TOKENISATION_KEYS``: they are set to their defaults here)."""
    defaults: Dict[str, Any] = {name: field.default for name, field in DataConfig.__dataclass_fields__.items()}
    trial_side = {key.split(".", 1)[1] for key in NOT_TOKENISATION_KEYS}
    same = dataclasses.replace(config.data, **{name: defaults[name] for name in trial_side})
    return repr((config.model.name_or_path, same))


# --- helpers most tasks' prepare share ------------------------------------------------------------------

def read_table(data: DataConfig, columns: Mapping[str, Optional[str]]) -> pd.DataFrame:
    """Read the data file (CSV, TSV, JSONL, Parquet) and check it has the given columns.

    Args:
        columns: config key -> the column it names (None: not used), e.g. ``{"data.text_column": "text"}``.

    Raises:
        DataError: missing or unreadable file, unknown format, missing column.
    """
    path = Path(data.path)
    if not path.is_file():
        raise DataError(f"data.path: file not found, got {data.path}. "
                        "Point data.path at a CSV, JSONL or Parquet file (data.path=/abs/file.csv).")
    fmt = READERS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"data.path: unknown file type {path.suffix!r}, got {data.path}. "
                        f"Use one of {', '.join(sorted(READERS))}.")
    try:
        frame = _read(path, fmt, data.encoding)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure (pandas, pyarrow, codecs) is a bad file
        raise DataError(f"data.path: cannot read {data.path} as {fmt} ({one_line(exc, kind=True)}). "
                        f"Check that the file is valid {fmt}{'' if fmt == 'parquet' else ' in ' + data.encoding}."
                        ) from None
    for key, column in columns.items():
        if column is not None and column not in frame.columns:
            raise DataError(f"{key}: column {column!r} not in {data.path} (columns: "
                            f"{', '.join(map(str, frame.columns))}). Set {key} to one of them.")
    return frame


def subsample(frame: pd.DataFrame, strata: np.ndarray, data: DataConfig) -> pd.DataFrame:
    """``data.max_samples`` rows of the frame, the same share of every stratum (seeded); all of them without it."""
    if data.max_samples is None or data.max_samples >= len(frame):
        return frame.reset_index(drop=True)
    fraction = data.max_samples / len(frame)
    groups = pd.Series(strata, index=frame.index)
    sampled = frame.groupby(groups, group_keys=False).sample(frac=fraction, random_state=data.seed)
    return sampled.sort_index().reset_index(drop=True)


def split_indices(strata: np.ndarray, data: DataConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, validation and test splits: each stratum split by the configured fractions.

    Raises:
        DataError: too few rows for a train and a validation split.
    """
    rng = np.random.default_rng(data.seed)
    parts: Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]] = ([], [], [])
    for cls in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == cls))
        n_test = int(round(len(idx) * data.test_fraction))
        n_val = int(round(len(idx) * data.val_fraction))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"data: {data.path} has {len(strata)} usable rows, too few for a train and a "
                        f"validation split (val_fraction={data.val_fraction}). Use more rows.")
    return train, val, test


def take(features: Dict[str, np.ndarray], labels: np.ndarray, idx: np.ndarray) -> Split:
    """The rows ``idx`` of every array, as a split."""
    return Split({name: array[idx] for name, array in features.items()}, labels[idx])


def _read(path: Path, fmt: str, encoding: str) -> pd.DataFrame:
    if fmt == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, sep=sep, encoding=encoding, encoding_errors="replace")
    if fmt == "jsonl":
        return pd.read_json(path, lines=path.suffix.lower() == ".jsonl", encoding=encoding,
                            encoding_errors="replace")
    return pd.read_parquet(path)
