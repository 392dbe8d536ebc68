"""Scoring saved weights (trial.evaluate) and the regression task, end to end through fit."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error
from transformers import AutoModelForSequenceClassification

from finesweep.config import ExperimentConfig, Mode
from finesweep.execution.trial import evaluate, fit, resolved_precision
from finesweep.finetune.datamodule import PreparedDataModule
from finesweep.finetune.layout import BEST
from finesweep.finetune.module import MODEL_METRICS, FinetuneModule
from finesweep.tasks import DataCache, Split
from finesweep.tasks.preparation import prepare_all
from finesweep.tasks.text_classification import TextRegression

from .conftest import prepared

MakeConfig = Callable[..., ExperimentConfig]
Report = Dict[str, float]

UP, DOWN, FILLER = ["good", "great", "love"], ["bad", "awful", "hate"], ["the", "movie", "was", "a", "day", "so"]
"""Words of the tiny model's vocabulary (tests/conftest.py)."""


def write_regression_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """Sentences scored 0.5 + (up words - down words) * 1.25: numbers the model can read off the words."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(rows):
        ups, downs = rng.randint(0, 3), rng.randint(0, 3)
        words = rng.choices(FILLER, k=rng.randint(2, 6)) + rng.choices(UP, k=ups) + rng.choices(DOWN, k=downs)
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{0.5 + (ups - downs) * 1.25}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _fit_keeping_best(config: ExperimentConfig, cache: DataCache, folder: Path) -> Tuple[List[Report], Report]:
    """Fit; keep the last checkpoint's best weights in ``folder``; return every report and the best epoch's."""
    reports: List[Report] = []

    def report(metrics: Report, saved: Optional[Path]) -> None:
        reports.append(metrics)
        assert saved is not None
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(saved / BEST, folder)

    fit(config, cache, report)
    metric, sign = config.objective.metric, (1 if config.objective.mode is Mode.max else -1)
    best = max(reports, key=lambda m: (sign * m[metric], -m["epoch"]))  # the first epoch to reach the best value
    return reports, best


def _predict(folder: Path, split: Split) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    features = {name: torch.from_numpy(array.astype(np.int64)) for name, array in split.features.items()}
    with torch.no_grad():
        return model(**features).logits


def test_evaluate_scores_saved_weights_on_the_test_split_once(make_config: MakeConfig, tmp_path: Path) -> None:
    config = make_config("scheduler.max_epochs=2")
    cache = prepare_all(config, ())
    _, best = _fit_keeping_best(config, cache.without_test(), tmp_path / "best")  # trials never see the test split
    encoded = cache.for_config(config)
    module = PreparedDataModule(encoded, config.data.batch_size, seed=0)

    scores = evaluate(config, encoded, tmp_path / "best", "test", datamodule=module)
    assert set(scores) == {"test/loss", "test/accuracy", "test/f1_macro"}
    assert module.test_loads == 1
    assert encoded.test is not None
    logits, labels = _predict(tmp_path / "best", encoded.test), encoded.test.labels
    predictions = logits.argmax(dim=-1).numpy()
    assert scores["test/accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert scores["test/f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    assert scores["test/loss"] == pytest.approx(float(loss), abs=1e-5)

    again = evaluate(config, encoded, tmp_path / "best", "val", datamodule=module)
    # Trained in bf16 autocast (precision auto on a CPU with bf16), validated the same way; scored again in
    # 32 bits as the model is served: the same weights agree to bf16's precision, not to 1e-5.
    tolerance = 1e-5 if resolved_precision(config) == "32-true" else 2e-3
    assert again == pytest.approx({"val/loss": best["val/loss"], "val/accuracy": best["val/accuracy"],
                                   "val/f1_macro": best["val/f1_macro"]}, abs=tolerance), "the best epoch's weights"
    assert module.test_loads == 1, "scoring the validation split leaves the test split alone"


def test_evaluate_refuses_data_without_a_test_split(make_config: MakeConfig, tmp_path: Path) -> None:
    config = make_config()
    encoded = prepared(config).without_test()
    with pytest.raises(ValueError, match="split='test' needs data with its test split"):
        evaluate(config, encoded, tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'val' or 'test', got 'train'"):
        evaluate(config, encoded, tmp_path, "train")


@pytest.fixture(scope="module")
def regression_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_regression_csv(tmp_path_factory.mktemp("data") / "scores.csv")


def test_regression_trains_one_output_on_mse_and_reports_rmse_and_pearson(
        make_config: MakeConfig, regression_csv: Path, tmp_path: Path) -> None:
    config = make_config("objective.metric=val/rmse", "objective.mode=min", "scheduler.max_epochs=4",
                         "optim.lr=3e-3", csv=regression_csv)
    cache = prepare_all(config, ())
    encoded = cache.for_config(config)
    assert type(encoded.task) is TextRegression and encoded.train.labels.dtype == np.float32
    reports, best = _fit_keeping_best(config, cache, tmp_path / "best")

    assert all(set(m) == {*TextRegression.objective_metrics, *MODEL_METRICS, "model/size_mb", "epoch"}
               for m in reports)
    for metrics in reports:  # val/loss is the mean squared error, so val/rmse is its root
        assert metrics["val/rmse"] == pytest.approx(metrics["val/loss"] ** 0.5, rel=1e-4)
    assert reports[-1]["val/pearson"] > 0.5, "the scores are readable from the words"
    assert reports[-1]["val/rmse"] < reports[0]["val/rmse"]

    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "best")
    assert saved.config.num_labels == 1 and saved.config.problem_type == "regression"
    module = PreparedDataModule(encoded, config.data.batch_size, seed=0)
    scores = evaluate(config, encoded, tmp_path / "best", "test", datamodule=module)
    assert set(scores) == {"test/loss", "test/rmse", "test/pearson"} and module.test_loads == 1
    assert encoded.test is not None
    predictions = _predict(tmp_path / "best", encoded.test).squeeze(-1).numpy()
    assert scores["test/rmse"] == pytest.approx(mean_squared_error(encoded.test.labels, predictions) ** 0.5, rel=1e-4)
    assert scores["test/pearson"] == pytest.approx(pearsonr(encoded.test.labels, predictions).statistic, abs=1e-4)
    assert best["val/rmse"] == min(m["val/rmse"] for m in reports)


def test_regression_loss_is_mean_squared_error(make_config: MakeConfig, regression_csv: Path) -> None:
    config = make_config("trainer.label_smoothing=0.2", csv=regression_csv)  # smoothing has no meaning here
    encoded = prepared(config)
    module = FinetuneModule.for_trial(config, encoded, total_steps=10).eval()
    assert module.model.classifier.out_features == 1
    batch = next(iter(PreparedDataModule(encoded, batch_size=16, seed=0).train_dataloader()))
    with torch.no_grad():
        outputs = module(batch["features"]).squeeze(-1)
        with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached to log to
            loss = module.training_step(batch, 0)
    assert torch.isclose(loss, ((outputs - batch["labels"]) ** 2).mean(), rtol=0, atol=1e-6)
