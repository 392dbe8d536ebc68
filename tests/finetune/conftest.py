"""Fixtures of the fine-tuning tests: the demo sweep pointed at the tiny model and tiny CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from finesweep.cli import compose
from finesweep.config import ExperimentConfig

MakeConfig = Callable[..., ExperimentConfig]
"""make_config("finetune.strategy=freeze", ...) -> the config; see the make_config fixture."""
Reports = List[Dict[str, float]]

BASE_OVERRIDES = ("data.label_column=label", "data.max_samples=null", "data.max_length=32", "data.batch_size=16",
                  "optim.lr=1e-2", "scheduler.max_epochs=3")


@pytest.fixture()
def make_config(tiny_model: Path, tiny_csv: Path) -> MakeConfig:
    """``make_config("finetune.strategy=freeze", ...)``: the demo config on tiny data, plus overrides."""

    def make(*overrides: str, model: Optional[Path] = None, csv: Optional[Path] = None) -> ExperimentConfig:
        paths = [f"model.name_or_path={model or tiny_model}", f"data.path={csv or tiny_csv}"]
        return compose("demo", [*paths, *BASE_OVERRIDES, *overrides]).config

    return make
