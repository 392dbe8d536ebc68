"""The ``Task`` interface: everything that differs between kinds of fine-tuning, behind one class.

A sweep's search, scheduling, journal, MLflow runs, report and serving are the same for every kind of
fine-tuning; what differs is behind a ``Task``:

- **data**: reading and checking the data file (what preflight reports), and preparing it once, on the driver,
  into arrays every trial shares (``inspect``, ``prepare``);
- **model**: the model class and its head, built from the pretrained weights for this data, and its layer map
  (embeddings, the ordered blocks, the head) that the fine-tuning strategies work on (``build_model``,
  ``architecture``, ``layer_map``, ``save_trained``, ``load_trained``);
- **training**: the batches, the loss, the metrics (torchmetrics) and which of them may be an objective
  (``collate``, ``forward``, ``loss``, ``predictions``, ``metrics``, ``objective_metrics``);
- **serving**: what the registered model answers, with its MLflow signature (``serving_meta``, ``signature``,
  ``package``, ``predictor_source``);
- and the line ``describe`` prints.

A new kind of fine-tuning is one module with one subclass, and one line: ``finesweep.tasks.register(MyTask)``.
Methods that touch torch or transformers import them inside, so the driver stays light until it trains.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.tasks.layers import LayerMap, transformer_layer_map

if TYPE_CHECKING:
    import torch
    from mlflow.models import ModelSignature
    from torch import nn
    from torchmetrics import MetricCollection

Batch = Dict[str, Any]
"""What a trial trains on: ``{"features": {name: tensor}, "labels": tensor}``."""

REPORTED_PREFIXES = ("train/", "val/", "model/", "probe/", "inference/")
"""What a trial reports each epoch of what its module logs: training and validation metrics, the model's size,
the forgetting probe, the served model's latency."""

COST_METRICS = ("inference/latency_ms", "model/size_mb", "model/trainable_params")
"""What deploying a trial's model costs, which a trial of any task reports and a sweep may optimise or constrain
(``finetune/costs.py`` measures them)."""

PROBE_METRIC = "probe/perplexity_increase"
"""How much a trial forgot (the forgetting probe, ``probe.forgetting``): an objective or constraint where it runs."""


@dataclass(frozen=True)
class Split:
    """One prepared split: arrays with one row per example (``features``) and the labels."""

    features: Dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PreparedData:
    """Train/validation/test splits of one data configuration, prepared for one model by one task.

    ``test`` is None in what the search's trials receive: the held-out split never leaves the driver until
    the winner is evaluated.
    """

    train: Split
    val: Split
    test: Optional[Split]
    task: Task
    """The task that prepared it (the one ``data.task: auto`` decided on): trials train with it."""
    label_names: Tuple[str, ...] = ()
    """Class names in label-id order; empty when the task predicts values."""

    @property
    def num_labels(self) -> int:
        """Outputs of the model's head."""
        return self.task.num_outputs(self)

    def without_test(self) -> PreparedData:
        """The same data minus the held-out test split."""
        return dataclasses.replace(self, test=None)

    def describe(self) -> str:
        """One line for the terminal: split sizes and what is predicted."""
        return self.task.describe(self)

    def sizes(self) -> str:
        """``train/val/test`` row counts, as ``describe`` lines start."""
        return f"{len(self.train)}/{len(self.val)}/{len(self.test or ())} train/val/test rows"


@dataclass(frozen=True)
class Generated:
    """Text a model generated for a fixed sample of a split's prompts, and how it scores against the references."""

    metrics: Dict[str, float]
    """Scores over the sample, unprefixed (``rouge1``, ``rouge2``, ``rougeL``, ``exact_match``, ``bleu``)."""
    rows: List[Dict[str, str]]
    """One per sampled example: ``prompt``, ``reference``, ``generation`` (the MLflow table)."""


class ModelProbe(Protocol):
    """Measures a trial's model besides its task (the forgetting probe, ``finetune/forgetting.py``): prepared once
    on the driver, picklable, called on each trial's best weights."""

    def measure(self, task: Task, model: nn.Module) -> Dict[str, float]:
        """Metrics of ``model`` (``probe/...``), computed without changing it."""


@dataclass(frozen=True)
class Inspection:
    """What reading a data file found, before anything is prepared: the task that fits it and each split's rows."""

    task: Task
    rows: Tuple[int, int, int]
    """Rows of the train, validation and test splits."""

    @property
    def pool(self) -> int:
        """Rows cross-validation folds are made of: train + validation (the test split never enters a fold)."""
        return self.rows[0] + self.rows[1]


class Task(abc.ABC):
    """One kind of fine-tuning (its subclasses are stateless: everything about the data is in ``PreparedData``).

    Attributes:
        name: what ``data.task`` calls it; the registry's key.
        objective_metrics: what a trial of this task reports every epoch that a sweep may optimise.
        lora_task_type: peft's ``TaskType`` for LoRA on this task's models (``SEQ_CLS``, ``TOKEN_CLS`` ...); None
            for models peft has no task type for (image classifiers): a plain ``PeftModel``.
        breakdown_name: what ``breakdown``'s table is called (``per_class``, ``per_entity``).
        new_head: whether the layer map's head is new (a classifier built for the data: LoRA trains it in full
            beside the adapters) or the pretrained model's own (a language model's output layer: LoRA leaves it).
        predictor_module: the module whose file is the served model (``predictor_source``).
        pip_requirements: what the served model needs installed.
        points_metrics: objective metrics that are shares in [0, 1] (accuracy, F1): the terminal shows their
            differences in points (x100), and one validation example moves them by about 100 / rows points.
    """

    name: ClassVar[str] = ""
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss")
    points_metrics: ClassVar[Tuple[str, ...]] = ()
    lora_task_type: ClassVar[Optional[str]] = "SEQ_CLS"
    breakdown_name: ClassVar[str] = "per_class"
    new_head: ClassVar[bool] = True
    predictor_module: ClassVar[str] = ""
    pip_requirements: ClassVar[Tuple[str, ...]] = ("mlflow", "torch", "safetensors", "pandas", "numpy")

    # --- data: read, check and prepare once, on the driver ------------------------------------------

    @abc.abstractmethod
    def inspect(self, data: DataConfig) -> Inspection:
        """Read and check the data file (columns, labels, rows per split) without preparing it.

        Returns:
            The task that fits the data (``data.task: auto`` picks one from the labels) and the split sizes.

        Raises:
            DataError: the file, a column, the labels or the split sizes are wrong (one line, with the fix).
        """

    @abc.abstractmethod
    def prepare(self, config: ExperimentConfig) -> PreparedData:
        """Read, split (seeded, stratified where it means something) and encode the data for one config.

        Called once per data variant, on the driver; trials only batch what it returns.
        """

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """What splits and cross-validation folds are stratified by, one value per example; the default (one
        stratum) splits by examples alone, as token and generative tasks do."""
        return np.zeros(len(labels), dtype=np.int64)

    # --- the model --------------------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, config: ExperimentConfig, data: PreparedData) -> nn.Module:
        """The pretrained model of ``config.model.name_or_path`` with a new head for ``data`` (its classes)."""

    @abc.abstractmethod
    def architecture(self, config: ExperimentConfig) -> nn.Module:
        """The model's architecture without its weights, built under ``torch.device("meta")`` by the caller:
        preflight applies every fine-tuning variant to it before any trial starts."""

    @abc.abstractmethod
    def save_trained(self, model: nn.Module, folder: Path) -> None:
        """Write trained weights (safetensors) and whatever ``load_trained`` needs to read them back."""

    @abc.abstractmethod
    def load_trained(self, folder: Path, data: PreparedData) -> nn.Module:
        """A model saved by ``save_trained``, ready to evaluate or serve (its head as trained)."""

    def layer_map(self, model: nn.Module) -> LayerMap:
        """The model's embeddings, ordered blocks (bottom first) and head, which the strategies work on.

        The default reads Hugging Face transformer models (``base_model``, its ``encoder.layer`` list ...).
        """
        return transformer_layer_map(model)

    # --- training ---------------------------------------------------------------------------------

    def collate(self, split: Split, indices: Sequence[int]) -> Batch:
        """A batch of ``split`` as tensors; with an ``attention_mask``, cut to its longest row (dynamic padding)."""
        import torch

        idx = np.asarray(indices)
        width = None
        if "attention_mask" in split.features:
            width = max(1, int(split.features["attention_mask"][idx].sum(axis=1).max()))
        features = {name: torch.from_numpy(_cut(array[idx], width)) for name, array in split.features.items()}
        return {"features": features, "labels": torch.from_numpy(split.labels[idx])}

    def reported_metrics(self, config: ExperimentConfig) -> Tuple[str, ...]:
        """The objective metrics a trial of ``config`` reports (some depend on settings: a generated-text score
        only when text is generated at each report); the default is all of ``objective_metrics``."""
        return self.objective_metrics

    def loss_weight(self, labels: torch.Tensor) -> int:
        """What ``loss`` averages over in a batch, so a split's loss is the mean over all of them: its examples
        (the default), or its target tokens (generative tasks: then ``val/loss`` is token-averaged)."""
        return len(labels)

    def generates_each_report(self, config: ExperimentConfig) -> bool:
        """Whether every report of a trial also scores generated validation text (``generate``); the winner's is
        scored after the search either way when the task generates."""
        return False

    def generate(self, model: nn.Module, split: Split, data: PreparedData, config: ExperimentConfig,
                 rows: int) -> Optional[Generated]:
        """Generate for a fixed sample (seeded by ``data.seed``) of ``rows`` examples of ``split`` and score the
        text against the references; None = the task does not generate (the default)."""
        return None

    def probe_nll(self, model: nn.Module, input_ids: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
        """The summed negative log-likelihood (natural log) of plain-text token blocks ``(B, L)`` under the
        model's own language-model head, and how many tokens were scored: what the forgetting probe's perplexity
        is made of. None = the task's model has no language-model head (the probe handles encoders itself)."""
        return None

    def train_transform(self, data: DataConfig, prepared: PreparedData) -> Optional[Callable[[Batch], Batch]]:
        """What a trial does to each training batch before the model sees it (image augmentation, MixUp); None =
        nothing. Built in the trial from its own config; validation and test batches never pass through it."""
        return None

    def forward(self, model: nn.Module, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's outputs for a batch's features (what ``loss`` and ``predictions`` read)."""
        logits: torch.Tensor = model(**features).logits
        return logits

    @abc.abstractmethod
    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        """The training loss; ``smoothing`` is ``trainer.label_smoothing`` in training, 0 when evaluating."""

    @abc.abstractmethod
    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """What the metrics compare with the labels (class ids, values)."""

    @abc.abstractmethod
    def metrics(self, data: PreparedData, prefix: str) -> MetricCollection:
        """The evaluation metrics, accumulated over a whole split (names become ``<prefix><name>``)."""

    def num_outputs(self, data: PreparedData) -> int:
        """Outputs of the model's head: the number of classes."""
        return len(data.label_names)

    def breakdown(self, batches: Sequence[Tuple[np.ndarray, np.ndarray]], data: PreparedData) -> List[Dict[str, Any]]:
        """The registered model's scores per class (or entity type) on the test split, one row each, logged on the
        parent run as ``final/<breakdown_name>.csv``; empty = none for this task.

        Args:
            batches: ``(predictions, labels)`` of every test batch, as ``predictions`` and the labels give them.
            data: the prepared data (its label names).
        """
        return []

    # --- serving ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def serving_meta(self, config: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
        """What the served model needs besides its weights (JSON-able): written beside them."""

    @abc.abstractmethod
    def signature(self, meta: Dict[str, Any]) -> ModelSignature:
        """MLflow's signature of the served model: its input columns and its outputs."""

    @abc.abstractmethod
    def package(self, folder: Path, preprocessor: str, meta: Dict[str, Any]) -> None:
        """Add to ``folder`` (which holds the trained weights) what the predictor reads: the preprocessing files
        of the model it was fine-tuned from (``preprocessor``), and ``meta``. Never write through a file that
        is already there: it may be a link into a checkpoint."""

    def request_example(self, meta: Dict[str, Any]) -> Dict[str, Any]:
        """A JSON body for the served model's REST endpoint (``finesweep serve`` prints it as a curl line); empty =
        one made from the signature's input columns."""
        return {}

    def predictor_source(self) -> Path:
        """The file MLflow logs the model "from code" with: it must import nothing from finesweep (it runs
        wherever the model is loaded) and call ``mlflow.models.set_model``. The default is the file of the module
        ``predictor_module`` names.

        Raises:
            FileNotFoundError: no such module is installed.
        """
        spec = importlib.util.find_spec(self.predictor_module) if self.predictor_module else None
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"{self.predictor_module or 'predictor_module'} is not installed with "
                                    f"{type(self).__name__}: set predictor_module or override predictor_source")
        return Path(spec.origin)

    # --- the terminal -----------------------------------------------------------------------------

    @abc.abstractmethod
    def describe(self, data: PreparedData) -> str:
        """One line about the prepared data for the terminal: split sizes and what is predicted."""


def _cut(array: np.ndarray, width: Any) -> np.ndarray:
    cut = array[:, :width] if width is not None and array.ndim == 2 else array
    return cut.astype(np.int64) if np.issubdtype(cut.dtype, np.integer) else cut
