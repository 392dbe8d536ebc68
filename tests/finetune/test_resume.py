"""A trial stopped after any epoch and continued from that epoch's checkpoint is the trial that never stopped."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
from safetensors.torch import load_file

from finesweep.config import ExperimentConfig
from finesweep.errors import DivergedError
from finesweep.execution.trial import fit
from finesweep.finetune.layout import BEST, STATE
from finesweep.tasks import DataCache
from finesweep.tasks.preparation import prepare_all

MakeConfig = Callable[..., ExperimentConfig]


class _Killed(Exception):
    """Stands in for the driver (or the node) going away after an epoch."""


def _run(config: ExperimentConfig, cache: DataCache, keep: Path, stop_after: Optional[int] = None,
         resume: Optional[Path] = None) -> List[Dict[str, float]]:
    reports: List[Dict[str, float]] = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        assert folder is not None and (folder / STATE).is_file() and (folder / BEST / "config.json").is_file()
        reports.append(metrics)
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(folder, keep)
        if stop_after is not None and metrics["epoch"] == stop_after:
            raise _Killed()

    try:
        fit(config, cache, report, resume=resume)
    except _Killed:
        pass
    return reports


@pytest.mark.parametrize("overrides", [
    ("finetune.strategy=full",),
    ("finetune.strategy=gradual_unfreeze", "model.dropout=0.3"),
    ("finetune.strategy=lora", "trainer.early_stopping_patience=3"),
], ids=["full", "gradual-unfreeze-with-dropout", "lora"])
def test_resumed_trial_continues_exactly(make_config: MakeConfig, tmp_path: Path, overrides: tuple) -> None:
    config = make_config(*overrides, "scheduler.max_epochs=3", "optim.schedule=cosine", "optim.lr=3e-3")
    cache = prepare_all(config, ())
    straight = _run(config, cache, tmp_path / "straight")
    first = _run(config, cache, tmp_path / "epoch1", stop_after=1)
    assert [m["epoch"] for m in first] == [1.0]
    rest = _run(config, cache, tmp_path / "resumed", resume=tmp_path / "epoch1")
    assert [m["epoch"] for m in rest] == [2.0, 3.0], "the curve continues at the next epoch"
    assert first + rest == straight, "same metrics to the last bit: weights, optimiser, schedule, RNG, batches"
    for name, tensor in load_file(str(tmp_path / "straight" / BEST / "model.safetensors")).items():
        assert torch.equal(tensor, load_file(str(tmp_path / "resumed" / BEST / "model.safetensors"))[name]), name


def test_best_weights_survive_the_restart(make_config: MakeConfig, tmp_path: Path) -> None:
    # lr 1e-9 cannot move val/accuracy: epoch 1 is the best and stays the best after the restart
    config = make_config("optim.lr=1e-9", "scheduler.max_epochs=3")
    cache = prepare_all(config, ())
    _run(config, cache, tmp_path / "epoch1", stop_after=1)
    saved = load_file(str(tmp_path / "epoch1" / BEST / "model.safetensors"))
    _run(config, cache, tmp_path / "resumed", resume=tmp_path / "epoch1")
    final = load_file(str(tmp_path / "resumed" / BEST / "model.safetensors"))
    assert all(torch.equal(saved[name], final[name]) for name in saved), "no later epoch beat epoch 1"


def test_a_diverging_trial_stops_at_the_first_non_finite_loss(make_config: MakeConfig) -> None:
    config = make_config("optim.lr=1e6", "trainer.gradient_clip_val=null", "scheduler.max_epochs=4",
                         "optim.warmup_ratio=0")
    reports: List[Dict[str, float]] = []
    with pytest.raises(DivergedError, match=r"training loss became (nan|inf) at epoch \d, batch \d+"):
        fit(config, prepare_all(config, ()), lambda metrics, folder: reports.append(metrics))
    assert len(reports) < 4, "it does not burn the rest of its budget"
