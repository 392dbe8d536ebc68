"""Image classification: a folder of labelled images (or a table of image paths) and an ImageNet-style model.

The images are found and checked (``images.py``), then decoded and resized once, on the driver, to the model's
input size (``data.image_size`` overrides it) as uint8 arrays ``(N, 3, S, S)``. Up to ``data.map_above_mb`` they
travel to the trials through Ray's object store like tokenised text; above it they are written once to
memory-mapped files under ``cluster.storage_path`` that every trial reads without a copy (``mapped.py``); a
resumed sweep finds them there and decodes nothing again. ``data.map_above_mb`` sets the threshold. Normalisation
with the model's own mean and std, and augmentation (``augment.py``), happen in the trial. Models: Hugging Face or
timm (``vision_models.py``).

Reports ``val/accuracy``, ``val/f1_macro`` (macro over classes, as scikit-learn), ``val/top5_accuracy`` with
more than 5 classes, and ``val/loss``; the registered model's per-class table goes on the parent run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.tasks import images, vision_models
from finesweep.tasks.breakdown import class_breakdown
from finesweep.tasks.images import ImageRows, Resize
from finesweep.tasks.mapped import MappedArray, create_mapped, finish_mapped, open_mapped
from finesweep.tasks.packaging import package_beside
from finesweep.tasks.task import Batch, Inspection, PreparedData, Split, Task

if TYPE_CHECKING:
    import torch
    from mlflow.models import ModelSignature
    from torch import nn
    from torchmetrics import MetricCollection

    from finesweep.tasks.layers import LayerMap

# data.map_above_mb's default, 1 GiB, is about 7,100 images at 224 px. 50,000 images at 224 px are 7.5 GB: in the
# object store that is 7.5 GB of shared memory on every node that runs a trial (plus the driver's copy while it is
# put there); memory-mapped it is 7.5 GB of disk under cluster.storage_path and only the page cache's share of
# memory, one copy per node for every trial.


TOP_K = 5


class ImageClassification(Task):
    """One label per image, from a Hugging Face or timm image model with a new head.

    Args:
        mean, std: the model's normalisation, applied in ``forward`` (``prepare`` sets them for the model).
        size: pixels per side of the prepared images.
    """

    name: ClassVar[str] = "image_classification"
    predictor_module: ClassVar[str] = "finesweep.tasks.image_predictor"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/accuracy", "val/f1_macro",
                                                    "val/top5_accuracy")
    points_metrics: ClassVar[Tuple[str, ...]] = ("val/accuracy", "val/f1_macro", "val/top5_accuracy")
    lora_task_type: ClassVar[Optional[str]] = None
    pip_requirements: ClassVar[Tuple[str, ...]] = ("mlflow", "torch", "transformers", "timm", "safetensors",
                                                   "pandas", "numpy", "pillow")

    def __init__(self, mean: Sequence[float] = vision_models.IMAGENET_MEAN,
                 std: Sequence[float] = vision_models.IMAGENET_STD, size: int = 224) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.size = size

    # --- data -------------------------------------------------------------------------------------

    def inspect(self, data: DataConfig) -> Inspection:
        rows = images.find(data)
        train, val, test = (len(index) for index in rows.splits)
        return Inspection(self, (train, val, test))

    def prepare(self, config: ExperimentConfig) -> PreparedData:
        rows = images.find(config.data)
        spec = vision_models.preprocessing(config.model.name_or_path, config.data.image_size)
        total = len(rows.paths) * 3 * spec.resize.size ** 2
        folder = _mapped_folder(config, rows, spec.resize) if total > config.data.map_above_mb * 2 ** 20 else None
        splits = [_split(rows, index, spec.resize, folder, name)
                  for name, index in zip(("train", "val", "test"), rows.splits, strict=True)]
        task = ImageClassification(spec.mean, spec.std, spec.resize.size)
        return PreparedData(train=splits[0], val=splits[1], test=splits[2], task=task, label_names=rows.label_names)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """What splits and folds are stratified by: the classes."""
        return labels

    # --- the model --------------------------------------------------------------------------------

    def build_model(self, config: ExperimentConfig, data: PreparedData) -> nn.Module:
        return vision_models.build(config.model.name_or_path, data.label_names, config.model.dropout)

    def architecture(self, config: ExperimentConfig) -> nn.Module:
        return vision_models.architecture(config.model.name_or_path, config.model.dropout)

    def save_trained(self, model: nn.Module, folder: Path) -> None:
        vision_models.save(model, folder)

    def load_trained(self, folder: Path, data: PreparedData) -> nn.Module:
        return vision_models.load(folder)

    def layer_map(self, model: nn.Module) -> LayerMap:
        return vision_models.layer_map(model)

    # --- training ---------------------------------------------------------------------------------

    def collate(self, split: Split, indices: Sequence[int]) -> Batch:
        """A batch of uint8 images as they were prepared (normalised in ``forward``, on the model's device)."""
        import torch

        pixels = np.asarray(split.features["pixel_values"][np.asarray(indices)])
        return {"features": {"pixel_values": torch.from_numpy(pixels)},
                "labels": torch.from_numpy(np.asarray(split.labels[np.asarray(indices)]))}

    def train_transform(self, data: DataConfig, prepared: PreparedData) -> Optional[Callable[[Batch], Batch]]:
        from finesweep.tasks.augment import TrainTransform

        return TrainTransform(data, len(prepared.label_names), self.size) if TrainTransform.wanted(data) else None

    def forward(self, model: nn.Module, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        pixels = features["pixel_values"]
        scaled = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.float()
        mean = torch.tensor(self.mean, device=scaled.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=scaled.device).view(1, 3, 1, 1)
        normalised = (scaled - mean) / std
        if vision_models.is_hf(model):
            logits: torch.Tensor = model(pixel_values=normalised).logits
            return logits
        output: torch.Tensor = model(normalised)
        return output

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        from torch import nn

        # MixUp / CutMix give class probabilities instead of ids: cross entropy takes either.
        return nn.functional.cross_entropy(outputs.float(), labels, label_smoothing=smoothing)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """The scores of every class: the metrics take their argmax, top-5 accuracy the five best."""
        return outputs.float()

    def metrics(self, data: PreparedData, prefix: str) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        classes = len(data.label_names)
        metrics: Dict[str, Any] = {"accuracy": MulticlassAccuracy(classes, average="micro"),
                                   "f1_macro": MulticlassF1Score(classes, average="macro")}
        if classes > TOP_K:
            metrics["top5_accuracy"] = MulticlassAccuracy(classes, top_k=TOP_K, average="micro")
        return MetricCollection(metrics, prefix=prefix)

    def breakdown(self, batches: Sequence[Tuple[np.ndarray, np.ndarray]], data: PreparedData) -> List[Dict[str, Any]]:
        """Accuracy, precision, F1 and support of each class."""
        return class_breakdown(batches, data.label_names)

    # --- serving ----------------------------------------------------------------------------------

    def serving_meta(self, config: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
        spec = vision_models.preprocessing(config.model.name_or_path, config.data.image_size)
        return {"task": self.name, "label_names": list(data.label_names), "size": spec.resize.size,
                "crop_pct": spec.resize.crop_pct, "mean": list(spec.mean), "std": list(spec.std),
                "library": "timm" if vision_models.is_timm(config.model.name_or_path) else "transformers",
                "objective": config.objective.metric}

    def signature(self, meta: Mapping[str, Any]) -> ModelSignature:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
        from mlflow.types.schema import Array

        inputs = Schema([ColSpec("string", "image", required=False),  # a file path, or base64 (data URI or bare)
                         ColSpec("binary", "image_bytes", required=False)])  # the file's bytes (base64 in JSON)
        outputs = Schema([ColSpec("string", "label"), ColSpec("double", "score"),
                          ColSpec(Array("string"), "top_labels"), ColSpec(Array("double"), "top_scores")])
        params = ParamSchema([ParamSpec("top_k", "long", 1)])
        return ModelSignature(inputs, outputs, params)

    def package(self, folder: Path, preprocessor: str, meta: Mapping[str, Any]) -> None:
        package_beside(folder, meta)

    def request_example(self, meta: Mapping[str, Any]) -> Dict[str, Any]:
        return {"dataframe_records": [{"image": "/abs/path/to/image.jpg"}, {"image": "<the file's bytes in base64>"}],
                "params": {"top_k": 3}}

    # --- the terminal -----------------------------------------------------------------------------

    def describe(self, data: PreparedData) -> str:
        names = data.label_names
        splits = [s for s in (data.train, data.val, data.test) if s is not None]
        size = sum(s.features["pixel_values"].nbytes for s in splits) / 2 ** 20
        mapped = isinstance(data.train.features["pixel_values"], MappedArray)
        return (f"{data.sizes()}, {len(names)}-class image classification ({', '.join(names[:6])}"
                f"{', ...' if len(names) > 6 else ''}) at {self.size} px, {size:.1f} MiB "
                f"{'memory-mapped' if mapped else 'in the object store'}")


def _split(rows: ImageRows, index: np.ndarray, resize: Resize, folder: Optional[Path], name: str) -> Split:
    paths = [rows.paths[i] for i in index]
    shape = (len(paths), 3, resize.size, resize.size)
    if folder is None:
        pixels = np.empty(shape, dtype=np.uint8)
        images.decode(paths, resize, pixels)
        return Split({"pixel_values": pixels}, rows.labels[index])
    target = folder / f"{name}.npy"
    if not target.is_file():  # the same images at the same size were decoded before (an earlier session)
        filling = create_mapped(target, shape, np.uint8)
        images.decode(paths, resize, filling)
        finish_mapped(filling, target)
    return Split({"pixel_values": open_mapped(str(target))}, rows.labels[index])


def _mapped_folder(config: ExperimentConfig, rows: ImageRows, resize: Resize) -> Path:
    """Where the memory-mapped arrays of this data go: named by everything that shapes them (each file's path,
    size and modification time, the split and the resize), so a changed image is decoded again."""
    digest = hashlib.sha256(repr((resize, [len(i) for i in rows.splits])).encode())
    for index in rows.splits:
        for i in index:
            stat = rows.paths[i].stat()
            digest.update(f"{rows.paths[i]}\0{stat.st_size}\0{stat.st_mtime_ns}\0{rows.labels[i]}\n".encode())
    return Path(config.cluster.storage_path) / "prepared" / digest.hexdigest()[:16]
