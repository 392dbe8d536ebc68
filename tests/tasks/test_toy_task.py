"""A kind of fine-tuning finesweep has never seen, added as the Task interface promises: one module, one line.

Everything between the two ``--- the toy task`` markers below is all it takes: a ``Task`` subclass for tables of
numbers fine-tuned with a small plain-PyTorch network (not a Hugging Face model), its served model, and one
registration line. The test runs a real sweep of it end to end through the Python API (local Ray, Lightning
fits, ASHA, the journal, MLflow, model selection, the registry), and loads the registered model.

This file is also the served model's code: MLflow logs it "from code" and runs it where the model loads, so its
top level only defines things (and names the predictor with ``set_model``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Tuple

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import finesweep
from finesweep import tasks
from finesweep.config import DataConfig, ExperimentConfig
from finesweep.errors import DataError
from finesweep.tasks import Inspection, LayerMap, PreparedData, Task
from finesweep.tasks.data import read_table, split_indices, take

# --- the toy task ----------------------------------------------------------------------------------------------


class ToyNet(nn.Module):
    """A small MLP: an input projection (its "embeddings"), a stack of blocks, a head."""

    def __init__(self, inputs: int, width: int, blocks: int, classes: int) -> None:
        super().__init__()
        self.shape = {"inputs": inputs, "width": width, "blocks": blocks, "classes": classes}
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.embed(x))
        for block in self.blocks:
            hidden = hidden + torch.relu(block(hidden))
        return self.head(hidden)  # type: ignore[no-any-return]

    @classmethod
    def load(cls, folder: Path, classes: int = 0) -> ToyNet:
        """Weights and shape saved by ``save``; ``classes`` > 0 puts a new head on a pretrained body."""
        from safetensors.torch import load_file

        shape = json.loads((folder / "config.json").read_text())
        net = cls(**{**shape, "classes": classes or shape["classes"]})
        weights = load_file(str(folder / "model.safetensors"))
        net.load_state_dict({k: v for k, v in weights.items() if not (classes and k.startswith("head."))},
                            strict=not classes)
        return net

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.shape))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))


class NumericClassification(Task):
    """Classify rows of numbers (every column but the label) with a pretrained ``ToyNet``."""

    name: ClassVar[str] = "toy_numeric"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/accuracy")

    def inspect(self, data: DataConfig) -> Inspection:
        _, labels, _ = self._table(data)
        train, val, test = (len(idx) for idx in split_indices(labels, data))
        return Inspection(self, (train, val, test))

    def prepare(self, config: ExperimentConfig) -> PreparedData:
        features, labels, names = self._table(config.data)
        splits = split_indices(labels, config.data)
        train, val, test = (take({"x": features}, labels, idx) for idx in splits)
        return PreparedData(train, val, test, self, names)

    def _table(self, data: DataConfig) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
        frame = read_table(data, {"data.label_column": data.label_column}).dropna()
        columns = [c for c in frame.columns if c != data.label_column]
        if not columns or not all(pd.api.types.is_numeric_dtype(frame[c]) for c in columns):
            raise DataError(f"data.path: {self.name} needs numeric feature columns, got {columns}. Drop the others.")
        names = tuple(sorted(frame[data.label_column].astype(str).unique()))
        labels = frame[data.label_column].astype(str).map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
        split_indices(labels, data)  # enough rows for every split
        return frame[columns].to_numpy(np.float32), labels, names

    def build_model(self, config: ExperimentConfig, data: PreparedData) -> nn.Module:
        return ToyNet.load(Path(config.model.name_or_path), classes=len(data.label_names))

    def architecture(self, config: ExperimentConfig) -> nn.Module:
        return ToyNet(**json.loads((Path(config.model.name_or_path) / "config.json").read_text()))

    def save_trained(self, model: nn.Module, folder: Path) -> None:
        model.save(folder)  # type: ignore[operator]

    def load_trained(self, folder: Path, data: PreparedData) -> nn.Module:
        return ToyNet.load(folder)

    def layer_map(self, model: nn.Module) -> LayerMap:
        def names(prefix: str) -> Tuple[str, ...]:
            return tuple(n for n, _ in model.named_parameters() if n.startswith(prefix))

        blocks = tuple(names(f"blocks.{i}.") for i in range(len(model.blocks)))  # type: ignore[arg-type]
        return LayerMap(embeddings=names("embed."), layers=blocks, other=(), head=names("head."))

    def forward(self, model: nn.Module, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return model(features["x"])  # type: ignore[no-any-return]

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.float(), labels, label_smoothing=smoothing)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=-1)

    def metrics(self, data: PreparedData, prefix: str) -> Any:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"accuracy": MulticlassAccuracy(len(data.label_names), average="micro")},
                                prefix=prefix)

    def serving_meta(self, config: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
        columns = [c for c in pd.read_csv(config.data.path, nrows=1).columns if c != config.data.label_column]
        return {"columns": columns, "label_names": list(data.label_names)}

    def signature(self, meta: Mapping[str, Any]) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        return ModelSignature(Schema([ColSpec("double", c) for c in meta["columns"]]),  # type: ignore[arg-type]
                              Schema([ColSpec("string", "label")]))  # type: ignore[arg-type]

    def package(self, folder: Path, preprocessor: str, meta: Mapping[str, Any]) -> None:
        (folder / "meta.json").write_text(json.dumps(dict(meta)))

    def predictor_source(self) -> Path:
        return Path(__file__)

    def describe(self, data: PreparedData) -> str:
        return f"{data.sizes()}, {len(data.label_names)}-class numeric rows"


class ToyPredictor(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """The served model: feature columns in, the predicted class out."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["model"])
        self.meta = json.loads((folder / "meta.json").read_text())
        self.net = ToyNet.load(folder).eval()

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        x = torch.tensor(model_input[self.meta["columns"]].to_numpy(np.float32))
        with torch.no_grad():
            classes = self.net(x).argmax(dim=-1).tolist()
        return pd.DataFrame({"label": [self.meta["label_names"][i] for i in classes]})


mlflow.models.set_model(ToyPredictor())
tasks.register(NumericClassification)

# --- the toy task ends ----------------------------------------------------------------------------------------

SWEEP = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: tpe, num_trials: 5, max_concurrent: 2, seed: 0}
scheduler: {kind: asha, max_epochs: 3, grace_period: 1, reduction_factor: 2}
optim: {lr: 1.0e-2}
final: {cv_folds: 2}   # model selection on folds of a task that only the Task interface knows
space:
  finetune.strategy: {distribution: categorical, choices: [full, head_only, freeze]}
  finetune.freeze_layers: {distribution: int, low: 1, high: 2, when: {finetune.strategy: freeze}}
  optim.lr: {distribution: loguniform, low: 3.0e-3, high: 3.0e-2}
"""


def toy_data(folder: Path, rows: int = 240) -> Tuple[Path, Path]:
    """A table whose class is which of two sums is larger, and a "pretrained" ToyNet that has never seen it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).round(4)
    label = np.where(x[:, 0] + x[:, 1] > x[:, 2] + x[:, 3], "up", "down")
    table = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "label": label})
    table.to_csv(folder / "toy.csv", index=False)
    torch.manual_seed(0)
    ToyNet(4, 16, 2, 2).save(folder / "toy-net")
    return folder / "toy.csv", folder / "toy-net"


def test_the_toy_task_is_one_module_and_one_registration_line() -> None:
    source = Path(__file__).read_text().split("# --- the toy task")[1]
    assert source.count("tasks.register(") == 1
    assert "toy_numeric" in tasks.names() and tasks.get("toy_numeric").name == "toy_numeric"
    assert "val/accuracy" in tasks.registry.objective_metrics()


def test_bad_toy_data_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "words.csv").write_text("a,b,label\nx,1,up\ny,2,down\n")
    with pytest.raises(DataError, match=r"^data\.path: toy_numeric needs numeric feature columns, got \['a', 'b'\]"):
        tasks.get("toy_numeric").inspect(DataConfig(path=str(tmp_path / "words.csv"), task="toy_numeric"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_new_task_runs_a_real_sweep_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import accuracy_score

    from e2e import in_process

    in_process(__name__, tmp_path, monkeypatch)
    csv, net = toy_data(tmp_path)
    (tmp_path / "toy.yaml").write_text(SWEEP)

    result = finesweep.run(tmp_path / "toy.yaml", [f"model.name_or_path={net}", "data=csv", f"data.path={csv}",
                                                   "data.task=toy_numeric", "data.batch_size=16"])

    assert result.status == "FINISHED" and result.metric == "val/accuracy"
    search = [t for t in result.trials if t.phase == "search"]
    assert len(search) == 5 and {t.status.value for t in search} <= {"completed", "early_stopped"}
    assert result.best_value is not None and result.best_value > 0.8, "the network learns the toy rule"
    assert set(result.best_params) <= {"finetune.strategy", "finetune.freeze_layers", "optim.lr"}
    folds = [t for t in result.trials if t.phase == "final"]
    assert folds and sorted({t.params["data.fold"] for t in folds}) == [0, 1], "each finalist on both folds"
    assert result.verdict.startswith("winner vs recipe: ") and "2 folds" in result.verdict
    client = MlflowClient(result.tracking_uri)
    children = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(children) == 5 + len(folds) and set(result.child_run_ids.values()) == {r.info.run_id for r in children}
    assert result.registered_model == "toy/1" and result.report is not None and result.report.is_file()

    # The registered model answers the held-out rows as the sweep's one test evaluation scored them.
    mlflow.set_tracking_uri(result.tracking_uri)
    served = mlflow.pyfunc.load_model(result.model_uri)
    test = tasks.get("toy_numeric").prepare(result.best_config).test
    assert test is not None
    rows = pd.DataFrame(test.features["x"], columns=["a", "b", "c", "d"]).astype("float64")
    predicted = served.predict(rows)["label"].tolist()
    truth = [("down", "up")[i] for i in test.labels]
    assert result.metrics["test/accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    assert finesweep.load(result.sweep_id).best_params == result.best_params
