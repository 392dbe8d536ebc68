"""The served model's metadata: one typed description, written beside the weights and read back on load."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from finesweep import serving
from finesweep.config import ExperimentConfig, Task
from finesweep.data import EncodedData, Split
from finesweep.serving import ServingMeta


def encoded(task: Task, names: tuple) -> EncodedData:
    import numpy as np

    split = Split({"input_ids": np.zeros((2, 4), dtype=np.int32)}, np.zeros(2))
    return EncodedData(split, split, None, names, task)


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    from finesweep.cli import compose

    return compose("demo", ["data.max_length=48"]).config


def test_meta_of_a_classification_sweep_round_trips(config: ExperimentConfig) -> None:
    meta = ServingMeta.of(config, encoded(Task.classification, ("negative", "neutral", "positive")))
    assert meta == ServingMeta("classification", ("negative", "neutral", "positive"), "text", None, 48,
                               "val/accuracy")
    assert ServingMeta.from_json(meta.to_json()) == meta
    signature = meta.signature()
    assert signature.inputs.input_names() == ["text"]
    assert signature.outputs.input_names() == ["label", "score"]


def test_meta_of_a_regression_pair_sweep(config: ExperimentConfig) -> None:
    pairs = dataclasses.replace(config, data=dataclasses.replace(config.data, text_column="premise",
                                                                 text_pair_column="hypothesis"))
    meta = ServingMeta.of(pairs, encoded(Task.regression, ()))
    assert (meta.task, meta.label_names, meta.text_pair_column) == ("regression", (), "hypothesis")
    assert meta.signature().inputs.input_names() == ["premise", "hypothesis"]
    assert meta.signature().outputs.input_names() == ["prediction"]
    assert ServingMeta.from_json(meta.to_json()) == meta


def test_the_served_file_imports_nothing_from_finesweep() -> None:
    """MLflow runs serving.py wherever the model is loaded; finesweep need not be installed there."""
    tree = ast.parse(Path(serving.__file__).read_text())
    imported = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # annotations only
        for child in ast.walk(node):
            if isinstance(child, ast.ImportFrom) and child.module:
                imported.append(child.module)
            elif isinstance(child, ast.Import):
                imported.extend(alias.name for alias in child.names)
    assert imported and not [m for m in imported if m.split(".")[0] == "finesweep"], imported
