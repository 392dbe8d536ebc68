"""Load, split and tokenise the labelled data once per sweep, on the driver.

Trials never read or tokenise: they receive ``EncodedData`` (numpy arrays, shared zero-copy through
Ray's object store) and only batch it. When a key that changes tokenisation is searched (the model,
``data.max_length``), every choice is prepared up front and trials pick theirs by fingerprint.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from finesweep.config import DataConfig, ExperimentConfig, Task
from finesweep.errors import ConfigError, DataError, one_line
from finesweep.metrics import task_metrics
from finesweep.overrides import with_overrides
from finesweep.search_space import Distribution, Param, affects_tokenisation

READERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Split:
    """One tokenised split: padded int32 token arrays (rows x max_length) and int64 labels."""

    features: Dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class EncodedData:
    """Train/validation/test splits of one data configuration, tokenised for one model.

    ``test`` is None in what the search's trials receive: the held-out split never leaves the driver
    until the winner is evaluated.
    """

    train: Split
    val: Split
    test: Optional[Split]
    label_names: Tuple[str, ...]
    """Class names in label-id order; empty for regression."""
    task: Task = Task.classification
    """classification (int64 labels) or regression (float32 labels); never auto."""

    @property
    def num_labels(self) -> int:
        """Outputs of the model head: number of classes, or 1 for regression."""
        return 1 if self.task is Task.regression else len(self.label_names)

    def without_test(self) -> "EncodedData":
        """The same data minus the held-out test split."""
        return dataclasses.replace(self, test=None)

    def describe(self) -> str:
        """One line for the terminal: split sizes and what the task is."""
        splits = [self.train, self.val] + ([self.test] if self.test is not None else [])
        sizes = f"{len(self.train)}/{len(self.val)}/{len(self.test or ())} train/val/test rows"
        if self.task is Task.regression:
            targets = np.concatenate([split.labels for split in splits])
            return f"{sizes}, regression, target mean {targets.mean():.3g}, std {targets.std():.3g}"
        return f"{sizes}, {len(self.label_names)}-class classification ({', '.join(self.label_names[:6])}" \
               f"{', ...' if len(self.label_names) > 6 else ''})"


@dataclass(frozen=True)
class DataCache:
    """Every tokenised variant a sweep needs, keyed by the config values that shaped it."""

    variants: Dict[str, EncodedData]

    def for_config(self, config: ExperimentConfig) -> EncodedData:
        """The variant prepared for this trial's config."""
        return self.variants[fingerprint(config)]

    def without_test(self) -> "DataCache":
        """What the search's trials get: every variant without its test split."""
        return DataCache({key: value.without_test() for key, value in self.variants.items()})

    @property
    def task(self) -> Task:
        """The task of the data (the same for every variant)."""
        return next(iter(self.variants.values())).task


def fingerprint(config: ExperimentConfig) -> str:
    """Identity of everything that changes the tokenised data (not the batch size)."""
    return repr((config.model.name_or_path, dataclasses.replace(config.data, batch_size=1)))


def read_table(data: DataConfig) -> pd.DataFrame:
    """Read the data file and check it has the configured columns.

    Raises:
        DataError: missing or unreadable file, unknown format, missing column, too few rows.
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
    _check_columns(frame, data)
    return frame


@dataclass(frozen=True)
class _Rows:
    """The usable rows of the file, their labels and the stratified split, before tokenising."""

    frame: pd.DataFrame
    task: Task
    label_names: Tuple[str, ...]
    labels: np.ndarray
    splits: Tuple[np.ndarray, np.ndarray, np.ndarray]


def _rows(data: DataConfig) -> _Rows:
    frame = _subsample(read_table(data), data)
    task, names, labels = _labels_of(frame, data)
    return _Rows(frame, task, names, labels, _split_indices(_strata(labels, task), data))


def check(data: DataConfig) -> Task:
    """Validate the data file fully (columns, labels, rows per split) without tokenising it."""
    return _rows(data).task


def check_objective(metric: str, task: Task) -> None:
    """The objective must be a metric trials of this task report.

    Raises:
        ConfigError: e.g. val/accuracy on a regression data set.
    """
    reported = task_metrics(task.value)
    if metric not in reported:
        other = Task.classification if task is Task.regression else Task.regression
        raise ConfigError(f"objective.metric: {metric} is not reported for a {task.value} task, got {metric}. "
                          f"Use one of {', '.join(reported)}, or set data.task={other.value}.")


def split_rows(data: DataConfig) -> Dict[str, pd.DataFrame]:
    """The raw rows of each split (train, val, test), exactly as ``prepare`` splits them."""
    rows = _rows(data)
    return {name: rows.frame.iloc[idx].reset_index(drop=True)
            for name, idx in zip(("train", "val", "test"), rows.splits, strict=True)}


def prepare(config: ExperimentConfig) -> EncodedData:
    """Read, subsample, split (stratified) and tokenise the data for one config."""
    rows = _rows(config.data)
    features = _tokenise(rows.frame, config)
    train, val, test = (_take(features, rows.labels, idx) for idx in rows.splits)
    return EncodedData(train=train, val=val, test=test, label_names=rows.label_names, task=rows.task)


def prepare_all(config: ExperimentConfig, params: Sequence[Param]) -> DataCache:
    """Prepare one ``EncodedData`` per combination of searched tokenisation-changing values."""
    variants: Dict[str, EncodedData] = {}
    for override in data_variants(params):
        variant = with_overrides(config, override)
        key = fingerprint(variant)
        if key not in variants:
            variants[key] = prepare(variant)
    return DataCache(variants)


def data_variants(params: Sequence[Param]) -> List[Dict[str, object]]:
    """Every combination of the categorical choices of tokenisation-changing parameters."""
    keyed = [p for p in params if affects_tokenisation(p.key) and p.distribution is Distribution.categorical]
    combos = itertools.product(*(p.choices for p in keyed))
    return [dict(zip([p.key for p in keyed], combo, strict=True)) for combo in combos]


def _read(path: Path, fmt: str, encoding: str) -> pd.DataFrame:
    if fmt == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, sep=sep, encoding=encoding, encoding_errors="replace")
    if fmt == "jsonl":
        return pd.read_json(path, lines=path.suffix.lower() == ".jsonl", encoding=encoding,
                            encoding_errors="replace")
    return pd.read_parquet(path)


def _check_columns(frame: pd.DataFrame, data: DataConfig) -> None:
    wanted = {"data.text_column": data.text_column, "data.label_column": data.label_column}
    if data.text_pair_column:
        wanted["data.text_pair_column"] = data.text_pair_column
    for key, column in wanted.items():
        if column not in frame.columns:
            raise DataError(f"{key}: column {column!r} not in {data.path} (columns: "
                            f"{', '.join(map(str, frame.columns))}). Set {key} to one of them.")


def _subsample(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    frame = frame.dropna(subset=[c for c in (data.text_column, data.label_column, data.text_pair_column) if c])
    if data.max_samples is None or data.max_samples >= len(frame):
        return frame.reset_index(drop=True)
    task, _, labels = _labels_of(frame, data)
    strata = pd.Series(_strata(labels, task), index=frame.index)
    fraction = data.max_samples / len(frame)
    sampled = frame.groupby(strata, group_keys=False).sample(frac=fraction, random_state=data.seed)
    return sampled.sort_index().reset_index(drop=True)


def _labels_of(frame: pd.DataFrame, data: DataConfig) -> Tuple[Task, Tuple[str, ...], np.ndarray]:
    column = frame[data.label_column]
    task = _task_of(column, data)
    if task is Task.regression:
        return task, (), column.to_numpy(dtype=np.float32)
    raw = column.astype(str)
    names = tuple(sorted(raw.unique()))
    if len(names) < 2:
        raise DataError(f"data.label_column: column {data.label_column!r} needs at least 2 classes, "
                        f"got {list(names)}. Point data.label_column at the label column.")
    lookup = {name: i for i, name in enumerate(names)}
    return task, names, raw.map(lookup).to_numpy(dtype=np.int64)


def _task_of(column: pd.Series, data: DataConfig) -> Task:
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if data.task is Task.regression and not numeric:
        raise DataError(f"data.task: regression needs numeric labels, but column {data.label_column!r} holds "
                        f"{column.dtype} values such as {column.iloc[0]!r}. Set data.task=classification.")
    if data.task is not Task.auto:
        return data.task
    whole = numeric and bool(np.all(np.mod(column.to_numpy(dtype=np.float64), 1) == 0))
    return Task.regression if numeric and not whole else Task.classification


def _strata(labels: np.ndarray, task: Task) -> np.ndarray:
    """Split strata: the classes, or for regression the quartile each target falls in."""
    if task is Task.classification:
        return labels
    edges = np.quantile(labels, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, labels, side="right")


def _split_indices(labels: np.ndarray, data: DataConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(data.seed)
    parts: Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]] = ([], [], [])
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * data.test_fraction))
        n_val = int(round(len(idx) * data.val_fraction))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"data: {data.path} has {len(labels)} usable rows, too few for a train and a "
                        f"validation split (val_fraction={data.val_fraction}). Use more rows.")
    return train, val, test


def _tokenise(frame: pd.DataFrame, config: ExperimentConfig) -> Dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    data = config.data
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model.name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load a tokenizer from {config.model.name_or_path!r} "
                          f"({one_line(exc)}). Point it at a Hugging Face model folder "
                          "(with config.json) or, when online, a hub id.") from None
    tokenizer.padding_side = "right"  # batches are trimmed from the right (finetune/datamodule.py)
    texts = frame[data.text_column].astype(str).tolist()
    pairs: Optional[List[str]] = frame[data.text_pair_column].astype(str).tolist() if data.text_pair_column else None
    encoded: Mapping[str, np.ndarray] = tokenizer(
        texts, pairs, truncation=True, max_length=data.max_length, padding="max_length", return_tensors="np")
    return {name: np.ascontiguousarray(array, dtype=np.int32) for name, array in encoded.items()}


def _take(features: Dict[str, np.ndarray], labels: np.ndarray, idx: np.ndarray) -> Split:
    return Split({name: array[idx] for name, array in features.items()}, labels[idx])
