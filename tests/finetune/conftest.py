"""Fixtures of the fine-tuning tests: the demo sweep pointed at the tiny model and tiny CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.finetune.module import FinetuneModule
from finesweep.tasks import PreparedData, Split, get
from finesweep.tasks.text_classification import TextClassification

MakeConfig = Callable[..., ExperimentConfig]
"""make_config("finetune.strategy=freeze", ...) -> the config; see the make_config fixture."""
Reports = List[Dict[str, float]]

BASE_OVERRIDES = ("data.label_column=label", "data.max_samples=null", "data.max_length=32", "data.batch_size=16",
                  "optim.lr=1e-2", "scheduler.max_epochs=3", "search.start_from_config=false")


@pytest.fixture()
def make_config(tiny_model: Path, tiny_csv: Path) -> MakeConfig:
    """``make_config("finetune.strategy=freeze", ...)``: the demo config on tiny data, plus overrides."""

    def make(*overrides: str, model: Optional[Path] = None, csv: Optional[Path] = None) -> ExperimentConfig:
        paths = [f"model.name_or_path={model or tiny_model}", f"data.path={csv or tiny_csv}"]
        return compose("demo", [*paths, *BASE_OVERRIDES, *overrides]).config

    return make


def three_classes(labels: Tuple[str, ...] = ("negative", "neutral", "positive")) -> PreparedData:
    """Data of a 3-class text task, for modules that are built but not fit (the splits are never read)."""
    import numpy as np

    split = Split({"input_ids": np.zeros((1, 4), dtype=np.int32)}, np.zeros(1, dtype=np.int64))
    return PreparedData(split, split, None, TextClassification(), labels)


def module_for(config: ExperimentConfig, total_steps: int = 10) -> FinetuneModule:
    """The module a trial of ``config`` would train on 3-class data (the pretrained model, a new 3-class head)."""
    return FinetuneModule.for_trial(config, three_classes(), total_steps)


def prepared(config: ExperimentConfig) -> PreparedData:
    """The data of ``config``, prepared by its task as the driver does."""
    return get(config.data.task).prepare(config)
