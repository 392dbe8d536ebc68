"""Text classification, regression and text pairs with Hugging Face sequence models: the first ``Task``s.

A labelled table (CSV, TSV, JSONL, Parquet) with a text column (and optionally a second one for pairs,
``data.text_pair_column``) is tokenised once with the model's tokenizer and fine-tuned with
``AutoModelForSequenceClassification`` and a new head. Classification trains on cross entropy (label-smoothed
in training only, so ``val/loss`` stays comparable across trials) and reports accuracy and macro-F1; regression
trains the single output on mean squared error and reports RMSE and Pearson's r. ``data.task: auto`` is
regression when the labels are non-integer numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.errors import ConfigError, DataError, one_line
from finesweep.tasks.breakdown import class_breakdown
from finesweep.tasks.data import read_table, split_indices, subsample, take
from finesweep.tasks.packaging import package_beside
from finesweep.tasks.task import Inspection, PreparedData
from finesweep.tasks.transformers_head import TransformersHeadTask

if TYPE_CHECKING:
    import torch
    from mlflow.models import ModelSignature
    from torchmetrics import MetricCollection
    from transformers import PretrainedConfig



class TextClassification(TransformersHeadTask):
    """Sequence classification of a text (or a text pair): one label per row.

    Args:
        detect: ``data.task: auto``: decide between classification and regression from the labels.
    """

    name: ClassVar[str] = "classification"
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    predictor_module: ClassVar[str] = "finesweep.tasks.text_predictor"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/accuracy", "val/f1_macro")
    points_metrics: ClassVar[Tuple[str, ...]] = ("val/accuracy", "val/f1_macro")
    pip_requirements: ClassVar[Tuple[str, ...]] = ("mlflow", "torch", "transformers", "safetensors", "pandas", "numpy")
    regression: ClassVar[bool] = False

    def __init__(self, detect: bool = False) -> None:
        self.detect = detect

    # --- data -------------------------------------------------------------------------------------

    def inspect(self, data: DataConfig) -> Inspection:
        rows = self._rows(data)
        train, val, test = (len(idx) for idx in rows.splits)
        return Inspection(rows.task, (train, val, test))

    def prepare(self, config: ExperimentConfig) -> PreparedData:
        rows = self._rows(config.data)
        features = _tokenise(rows.frame, config)
        train, val, test = (take(features, rows.labels, idx) for idx in rows.splits)
        return PreparedData(train=train, val=val, test=test, task=rows.task, label_names=rows.label_names)

    def split_rows(self, data: DataConfig) -> Dict[str, pd.DataFrame]:
        """The raw rows of each split (train, val, test), exactly as ``prepare`` splits them."""
        rows = self._rows(data)
        return {name: rows.frame.iloc[idx].reset_index(drop=True)
                for name, idx in zip(("train", "val", "test"), rows.splits, strict=True)}

    def _rows(self, data: DataConfig) -> _Rows:
        frame = read_table(data, {"data.text_column": data.text_column, "data.label_column": data.label_column,
                                  "data.text_pair_column": data.text_pair_column})
        frame = frame.dropna(subset=[c for c in (data.text_column, data.label_column, data.text_pair_column) if c])
        task, _, labels = self._labels_of(frame, data)
        frame = subsample(frame, task.strata(labels), data)
        task, names, labels = self._labels_of(frame, data)
        return _Rows(frame, task, names, labels, split_indices(task.strata(labels), data))

    def _labels_of(self, frame: pd.DataFrame, data: DataConfig) -> Tuple[TextClassification, Tuple[str, ...],
                                                                              np.ndarray]:
        column = frame[data.label_column]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        if self.regression and not numeric:
            raise DataError(f"data.task: regression needs numeric labels, but column {data.label_column!r} holds "
                            f"{column.dtype} values such as {column.iloc[0]!r}. Set data.task=classification.")
        whole = numeric and bool(np.all(np.mod(column.to_numpy(dtype=np.float64), 1) == 0))
        if self.regression or (self.detect and numeric and not whole):
            return TextRegression(), (), column.to_numpy(dtype=np.float32)
        raw = column.astype(str)
        names = tuple(sorted(raw.unique()))
        if len(names) < 2:
            raise DataError(f"data.label_column: column {data.label_column!r} needs at least 2 classes, "
                            f"got {list(names)}. Point data.label_column at the label column.")
        lookup = {name: i for i, name in enumerate(names)}
        return TextClassification(), names, raw.map(lookup).to_numpy(dtype=np.int64)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """What the split is stratified by: the classes."""
        return labels

    # --- the model --------------------------------------------------------------------------------

    def head_config(self, architecture: PretrainedConfig) -> None:
        architecture.problem_type = "regression" if self.regression else "single_label_classification"

    # --- training ---------------------------------------------------------------------------------

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        from torch import nn

        return nn.functional.cross_entropy(outputs.float(), labels, label_smoothing=smoothing)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=-1)

    def metrics(self, data: PreparedData, prefix: str) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        # Macro-F1 averages the classes present in the labels or the predictions (as scikit-learn does).
        classes = self.num_outputs(data)
        return MetricCollection({"accuracy": MulticlassAccuracy(classes, average="micro"),
                                 "f1_macro": MulticlassF1Score(classes, average="macro")}, prefix=prefix)

    def breakdown(self, batches: Sequence[Tuple[np.ndarray, np.ndarray]], data: PreparedData) -> List[Dict[str, Any]]:
        """Accuracy, precision, F1 and support of each class."""
        return class_breakdown(batches, data.label_names)

    # --- serving ----------------------------------------------------------------------------------

    def serving_meta(self, config: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
        return {"task": self.name, "label_names": list(data.label_names), "text_column": config.data.text_column,
                "text_pair_column": config.data.text_pair_column, "max_length": config.data.max_length,
                "objective": config.objective.metric}

    def signature(self, meta: Mapping[str, Any]) -> ModelSignature:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        inputs = [ColSpec("string", meta["text_column"])]
        if meta.get("text_pair_column"):
            inputs.append(ColSpec("string", meta["text_pair_column"]))
        outputs = ([ColSpec("double", "prediction")] if meta["task"] == "regression"
                   else [ColSpec("string", "label"), ColSpec("double", "score")])
        return ModelSignature(Schema(inputs), Schema(outputs))  # type: ignore[arg-type]

    def package(self, folder: Path, preprocessor: str, meta: Mapping[str, Any]) -> None:
        from transformers import AutoTokenizer

        package_beside(folder, meta, AutoTokenizer.from_pretrained(preprocessor))

    def request_example(self, meta: Mapping[str, Any]) -> Dict[str, Any]:
        pair = meta.get("text_pair_column")
        rows = [{meta["text_column"]: text, **({pair: "I felt it too"} if pair else {})}
                for text in ("what a great day", "awful service")]
        return {"dataframe_records": rows}

    def describe(self, data: PreparedData) -> str:
        names = data.label_names
        return (f"{data.sizes()}, {len(names)}-class classification ({', '.join(names[:6])}"
                f"{', ...' if len(names) > 6 else ''})")


class TextRegression(TextClassification):
    """Regression on a text (or a text pair): one numeric target per row, the model's single output."""

    name: ClassVar[str] = "regression"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/rmse", "val/pearson")
    points_metrics: ClassVar[Tuple[str, ...]] = ()
    regression: ClassVar[bool] = True

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """What the split is stratified by: the quartile each target falls in."""
        edges = np.quantile(labels, [0.25, 0.5, 0.75])
        return np.searchsorted(edges, labels, side="right")

    def num_outputs(self, data: PreparedData) -> int:
        return 1

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        from torch import nn

        return nn.functional.mse_loss(outputs.float().squeeze(-1), labels.float())  # smoothing does not apply

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().squeeze(-1)

    def breakdown(self, batches: Sequence[Tuple[np.ndarray, np.ndarray]], data: PreparedData) -> List[Dict[str, Any]]:
        return []  # no classes

    def metrics(self, data: PreparedData, prefix: str) -> MetricCollection:
        from torchmetrics import MeanSquaredError, MetricCollection

        from finesweep.tasks.metrics import Pearson

        return MetricCollection({"rmse": MeanSquaredError(squared=False), "pearson": Pearson()}, prefix=prefix)

    def describe(self, data: PreparedData) -> str:
        splits = [data.train, data.val] + ([data.test] if data.test is not None else [])
        targets = np.concatenate([split.labels for split in splits])
        return f"{data.sizes()}, regression, target mean {targets.mean():.3g}, std {targets.std():.3g}"


@dataclasses.dataclass(frozen=True)
class _Rows:
    """The usable rows of the file, their task and labels, and the stratified split, before tokenising."""

    frame: pd.DataFrame
    task: TextClassification
    label_names: Tuple[str, ...]
    labels: np.ndarray
    splits: Tuple[np.ndarray, np.ndarray, np.ndarray]


def _tokenise(frame: pd.DataFrame, config: ExperimentConfig) -> Dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    data = config.data
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model.name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load a tokenizer from {config.model.name_or_path!r} "
                          f"({one_line(exc)}). Point it at a Hugging Face model folder "
                          "(with config.json) or, when online, a hub id.") from None
    tokenizer.padding_side = "right"  # batches are trimmed from the right (Task.collate)
    texts = frame[data.text_column].astype(str).tolist()
    pairs: Optional[List[str]] = frame[data.text_pair_column].astype(str).tolist() if data.text_pair_column else None
    encoded: Mapping[str, np.ndarray] = tokenizer(
        texts, pairs, truncation=True, max_length=data.max_length, padding="max_length", return_tensors="np")
    return {name: np.ascontiguousarray(array, dtype=np.int32) for name, array in encoded.items()}

