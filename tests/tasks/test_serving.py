"""The served model's metadata: one typed description, written beside the weights and read back on load."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from finesweep.config import ExperimentConfig
from finesweep.tasks import PreparedData, Split, Task
from finesweep.tasks import text_predictor as serving
from finesweep.tasks.text_classification import TextClassification, TextRegression
from finesweep.tasks.text_predictor import ServingMeta


def encoded(task: Task, names: tuple) -> PreparedData:
    import numpy as np

    split = Split({"input_ids": np.zeros((2, 4), dtype=np.int32)}, np.zeros(2))
    return PreparedData(split, split, None, task, names)


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    from finesweep.config.compose import compose

    return compose("demo", ["data.max_length=48"]).config


def test_meta_of_a_classification_sweep_round_trips(config: ExperimentConfig) -> None:
    task = TextClassification()
    described = task.serving_meta(config, encoded(task, ("negative", "neutral", "positive")))
    meta = ServingMeta.from_json(json.dumps(described))
    assert meta == ServingMeta("classification", ("negative", "neutral", "positive"), "text", None, 48,
                               "val/accuracy")
    assert ServingMeta.from_json(meta.to_json()) == meta
    signature = task.signature(described)
    assert signature.inputs.input_names() == ["text"]
    assert signature.outputs.input_names() == ["label", "score"]


def test_meta_of_a_regression_pair_sweep(config: ExperimentConfig) -> None:
    pairs = dataclasses.replace(config, data=dataclasses.replace(config.data, text_column="premise",
                                                                 text_pair_column="hypothesis"))
    task = TextRegression()
    described = task.serving_meta(pairs, encoded(task, ()))
    meta = ServingMeta.from_json(json.dumps(described))
    assert (meta.task, meta.label_names, meta.text_pair_column) == ("regression", (), "hypothesis")
    assert task.signature(described).inputs.input_names() == ["premise", "hypothesis"]
    assert task.signature(described).outputs.input_names() == ["prediction"]
    assert ServingMeta.from_json(meta.to_json()) == meta


def test_the_served_file_imports_nothing_from_finesweep() -> None:
    """MLflow runs the served file wherever the model is loaded; finesweep need not be installed there."""
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
