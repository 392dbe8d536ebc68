"""Image classification: reading the layouts, every bad-input rule, preparation (object store and memory-mapped),
augmentation, metrics against scikit-learn, layer maps and strategies on ViT / ResNet / timm, and the served
model."""

from __future__ import annotations

import base64
import dataclasses
import pickle
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from finesweep.config import (
    Augment,
    ClusterConfig,
    DataConfig,
    ExperimentConfig,
    FinetuneConfig,
    Mode,
    ModelConfig,
    ObjectiveConfig,
    SearchConfig,
    Strategy,
    TrackingConfig,
)
from finesweep.errors import DataError
from finesweep.tasks import registry
from finesweep.tasks.image_classification import ImageClassification
from finesweep.tasks.images import Resize, find
from finesweep.tasks.mapped import MappedArray
from vision import (
    CLASSES,
    MORE_CLASSES,
    build_tiny_resnet,
    build_tiny_timm,
    build_tiny_vit,
    draw,
    image_folder,
    image_table,
    split_folders,
)

TASK = ImageClassification()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("vision-models")
    return {"vit": build_tiny_vit(root / "vit"), "resnet": build_tiny_resnet(root / "resnet"),
            "timm": build_tiny_timm(root / "timm")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("images") / "shapes", per_class=20)


def config(data_path: Path, model: Path, tmp_path: Path, **data: Any) -> ExperimentConfig:
    size = data.pop("image_size", 32)
    return ExperimentConfig(
        model=ModelConfig(name_or_path=str(model)),
        data=DataConfig(path=str(data_path), batch_size=8, image_size=size, **data),
        objective=ObjectiveConfig(metric="val/accuracy", mode=Mode.max), search=SearchConfig(num_trials=1),
        cluster=ClusterConfig(storage_path=str(tmp_path / "store"), log_dir=str(tmp_path / "logs")),
        tracking=TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db"), name="vision")


# --- layouts ---------------------------------------------------------------------------------------------

def test_image_folder_is_split_stratified_and_every_format_decodes(folder: Path, models: Dict[str, Path],
                                                                    tmp_path: Path) -> None:
    rows = find(DataConfig(path=str(folder)))
    assert rows.label_names == CLASSES and len(rows.paths) == 60 and not rows.given
    assert {p.suffix for p in rows.paths} == {".jpg", ".png", ".webp", ".bmp"}
    train, val, test = rows.splits
    assert (len(train), len(val), len(test)) == (48, 6, 6)
    assert all(np.bincount(rows.labels[idx], minlength=3).tolist() == [n] * 3
               for idx, n in ((train, 16), (val, 2), (test, 2)))
    data = TASK.prepare(config(folder, models["vit"], tmp_path))
    assert data.train.features["pixel_values"].shape == (48, 3, 32, 32)
    assert data.train.features["pixel_values"].dtype == np.uint8
    grey = [i for i, p in enumerate(np.asarray(rows.paths)[train]) if p.suffix == ".bmp"]
    pixels = data.train.features["pixel_values"][grey]
    assert np.array_equal(pixels[:, 0], pixels[:, 1]) and np.array_equal(pixels[:, 1], pixels[:, 2])


def test_split_folders_are_used_as_given_and_test_is_held_out_of_train_without_one(tmp_path: Path) -> None:
    given = split_folders(tmp_path / "given", {"train": 8, "val": 3, "test": 2})
    rows = find(DataConfig(path=str(given)))
    assert rows.given and [len(s) for s in rows.splits] == [24, 9, 6]
    assert all("/val/" in str(rows.paths[i]) for i in rows.splits[1])
    no_test = split_folders(tmp_path / "no-test", {"train": 10, "validation": 3})
    rows = find(DataConfig(path=str(no_test), test_fraction=0.2))
    assert [len(s) for s in rows.splits] == [24, 9, 6]
    assert all("/train/" in str(rows.paths[i]) for i in rows.splits[2])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_table_of_relative_paths(tmp_path: Path, fmt: str) -> None:
    table = image_table(tmp_path, per_class=10, fmt=fmt)
    rows = find(DataConfig(path=str(table)))
    assert rows.label_names == CLASSES and len(rows.paths) == 30
    assert all(p.is_file() and p.is_relative_to(tmp_path) for p in rows.paths)
    assert registry.detect(DataConfig(path=str(table))) == "image_classification"


def test_auto_detects_a_folder_of_images(folder: Path) -> None:
    assert registry.get("auto", DataConfig(path=str(folder))).name == "image_classification"


# --- bad input: one line each, before anything is prepared ------------------------------------------------

def _broken(tmp_path: Path, how: str) -> Path:
    root = image_folder(tmp_path / "data", per_class=5)
    victim = next((root / "square").glob("*.jpg"))
    if how == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif how == "garbage":
        (root / "square" / "fake.png").write_bytes(b"not an image at all")
    elif how == "empty class":
        (root / "empty").mkdir()
    elif how == "one class":
        for other in ("square", "stripes"):
            for file in (root / other).iterdir():
                file.unlink()
            (root / other).rmdir()
    return root


@pytest.mark.parametrize("how, message", [
    ("truncated", r"image .*square/\d+\.jpg is truncated \(its JPEG data ends early\)\. Replace or remove"),
    ("garbage", r"cannot read image .*square/fake\.png \(.*\)\. Replace or remove"),
    ("empty class", r"class folder .*/empty holds no images .* got an empty folder"),
    ("one class", r"needs at least 2 classes, got 1 \(disc\)"),
], ids=["truncated", "garbage", "empty-class", "one-class"])
def test_bad_folders_are_refused_up_front(tmp_path: Path, how: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        TASK.inspect(DataConfig(path=str(_broken(tmp_path, how))))


def test_a_class_too_small_for_every_split_is_refused(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "d", per_class=10)
    for image in sorted((root / "stripes").iterdir())[3:]:
        image.unlink()  # 3 images: 10% of them rounds to no validation image
    with pytest.raises(DataError, match=r"class 'stripes' has no images in the val split, got 3 image\(s\) of it in "
                                        r"all, too few for data\.val_fraction=0\.1 and data\.test_fraction=0\.1\."):
        TASK.inspect(DataConfig(path=str(root)))


def test_a_class_missing_from_a_given_split_is_refused(tmp_path: Path) -> None:
    root = split_folders(tmp_path / "d", {"train": 4, "val": 2})
    for file in (root / "val" / "stripes").iterdir():
        file.unlink()
    (root / "val" / "stripes").rmdir()
    with pytest.raises(DataError, match=r"class 'stripes' has no images in val/ .* got classes disc, square"):
        TASK.inspect(DataConfig(path=str(root)))


@pytest.mark.parametrize("value, message", [
    ("../outside.png", r"data row 0 of column 'image' points outside the data folder .* got '\.\./outside\.png'"),
    ("images/missing.png", r"image file not found, got .*images/missing\.png"),
], ids=["outside", "missing"])
def test_bad_paths_in_a_table_are_refused(tmp_path: Path, value: str, message: str) -> None:
    table = image_table(tmp_path / "t", per_class=4)
    draw("disc", random.Random(0)).save(tmp_path / "outside.png")
    frame = pd.read_csv(table)
    frame.loc[0, "image"] = value
    frame.to_csv(table, index=False)
    with pytest.raises(DataError, match=message):
        TASK.inspect(DataConfig(path=str(table)))


# --- preparation -----------------------------------------------------------------------------------------

def test_resize_squashes_or_crops_the_centre_as_the_processor_says() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8))
    squashed = Resize(16).apply(image)
    assert np.array_equal(squashed, np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC)).transpose(2, 0, 1))
    cropped = Resize(16, crop_pct=0.5).apply(image)  # shorter side 40 -> 32, width 80 -> 64, centre 16 x 16
    expected = image.resize((64, 32), Image.Resampling.BICUBIC).crop((24, 8, 40, 24))
    assert np.array_equal(cropped, np.asarray(expected).transpose(2, 0, 1))


def test_large_data_is_memory_mapped_once_and_pickles_as_its_path(folder: Path, models: Dict[str, Path],
                                                                  tmp_path: Path) -> None:
    in_memory = TASK.prepare(config(folder, models["vit"], tmp_path, map_above_mb=0.2))  # 60 images: 0.18 MiB
    mapped = TASK.prepare(config(folder, models["vit"], tmp_path, map_above_mb=0.1))
    pixels = mapped.train.features["pixel_values"]
    assert isinstance(pixels, MappedArray) and Path(str(pixels.file)).is_relative_to(tmp_path / "store")
    assert np.array_equal(pixels, in_memory.train.features["pixel_values"])
    assert len(pickle.dumps(mapped)) < 20_000 < pixels.nbytes
    assert np.array_equal(pickle.loads(pickle.dumps(pixels)), pixels)
    assert len(pickle.dumps(pixels[[0, 1]])) > 2 * 3 * 32 * 32  # a batch is data, not the file
    stamp = Path(str(pixels.file)).stat().st_mtime_ns
    again = TASK.prepare(config(folder, models["vit"], tmp_path, map_above_mb=0.1))  # a resume decodes nothing
    assert Path(str(again.train.features["pixel_values"].file)).stat().st_mtime_ns == stamp
    assert "memory-mapped" in mapped.describe() and "in the object store" in in_memory.describe()


# --- augmentation ------------------------------------------------------------------------------------------

def test_augmentation_changes_training_batches_only(folder: Path, models: Dict[str, Path], tmp_path: Path) -> None:
    from finesweep.finetune.datamodule import PreparedDataModule

    cfg = config(folder, models["vit"], tmp_path, augment=Augment.crop_flip, mixup=0.4, cutmix=1.0)
    data = TASK.prepare(cfg)
    task = data.task
    transform = task.train_transform(cfg.data, data)
    assert transform is not None
    assert task.train_transform(dataclasses.replace(cfg.data, augment=Augment.none, mixup=0.0, cutmix=0.0),
                                data) is None
    batches = PreparedDataModule(data, 8, seed=0, transform=transform)
    torch.manual_seed(0)
    train = next(iter(batches.train_dataloader()))
    assert train["labels"].shape == (8, 3) and torch.allclose(train["labels"].sum(dim=1), torch.ones(8))
    assert train["features"]["pixel_values"].dtype == torch.float32
    val = next(iter(batches.val_dataloader()))
    assert val["features"]["pixel_values"].dtype == torch.uint8
    assert torch.equal(val["features"]["pixel_values"], torch.from_numpy(data.val.features["pixel_values"][:6]))
    assert val["labels"].dtype == torch.int64


@pytest.mark.parametrize("augment", list(Augment)[1:], ids=lambda a: a.value)
def test_each_augmentation_keeps_shape_and_dtype(augment: Augment) -> None:
    from finesweep.tasks.augment import TrainTransform

    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32), dtype=np.uint8))
    batch = {"features": {"pixel_values": pixels}, "labels": torch.tensor([0, 1, 2, 0])}
    torch.manual_seed(1)
    out = TrainTransform(DataConfig(path="x", augment=augment), 3, 32)(batch)
    images = out["features"]["pixel_values"]
    assert images.shape == pixels.shape and images.dtype == torch.uint8 and not torch.equal(images, pixels)


# --- metrics, checked against scikit-learn ---------------------------------------------------------------

def test_metrics_and_breakdown_match_scikit_learn(tmp_path: Path) -> None:
    from sklearn.metrics import accuracy_score, classification_report, f1_score, top_k_accuracy_score

    from finesweep.tasks import PreparedData, Split

    rng = np.random.default_rng(3)
    names = MORE_CLASSES
    labels = rng.integers(0, len(names), 200)
    logits = rng.normal(size=(200, len(names))) + 2.0 * np.eye(len(names))[labels] * rng.integers(0, 2, (200, 1))
    empty = Split({"pixel_values": np.zeros((0, 3, 2, 2), np.uint8)}, np.zeros(0, np.int64))
    data = PreparedData(empty, empty, None, TASK, names)
    metrics = TASK.metrics(data, prefix="val/")
    for start in range(0, 200, 32):
        chunk = torch.from_numpy(logits[start:start + 32]).float()
        metrics.update(TASK.predictions(chunk), torch.from_numpy(labels[start:start + 32]))
    got = {k: float(v) for k, v in metrics.compute().items()}
    predicted = logits.argmax(1)
    assert got["val/accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    assert got["val/f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-6)
    assert got["val/top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5), abs=1e-6)
    rows = TASK.breakdown([(logits[:100], labels[:100]), (logits[100:], labels[100:])], data)
    report = classification_report(labels, predicted, output_dict=True, zero_division=0)
    for index, row in enumerate(rows):
        theirs = report[str(index)]
        assert row["class"] == names[index] and row["support"] == theirs["support"]
        assert (row["accuracy"], row["precision"], row["f1"]) == pytest.approx(
            (theirs["recall"], theirs["precision"], theirs["f1-score"]))
    assert "val/top5_accuracy" not in TASK.metrics(dataclasses.replace(data, label_names=CLASSES), "val/")


# --- models, layer maps and strategies ---------------------------------------------------------------------

@pytest.mark.parametrize("kind, layers, head", [
    ("vit", 2, ("classifier.weight", "classifier.bias")),
    ("resnet", 2, ("classifier.1.weight", "classifier.1.bias")),
    ("timm", 4, ("fc.weight", "fc.bias")),
], ids=["vit", "resnet", "timm"])
def test_layer_maps_find_the_blocks_or_stages(models: Dict[str, Path], kind: str, layers: int,
                                              head: tuple[str, ...], folder: Path, tmp_path: Path) -> None:
    cfg = config(folder, models[kind], tmp_path)
    data = TASK.prepare(cfg)
    model = data.task.build_model(cfg, data)
    parts = data.task.layer_map(model)
    assert parts.num_layers == layers and parts.head == head and parts.embeddings
    every = [n for n, _ in model.named_parameters()]
    placed = [*parts.embeddings, *(n for layer in parts.layers for n in layer), *parts.other, *parts.head]
    assert sorted(placed) == sorted(every)  # each parameter in exactly one place
    logits = data.task.forward(model, {"pixel_values": torch.from_numpy(data.val.features["pixel_values"][:2])})
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("kind, strategy, targets", [
    ("vit", Strategy.lora, ["q_proj", "v_proj"]),
    ("resnet", Strategy.lora, ["convolution"]),
    ("timm", Strategy.lora, ["conv2"]),
    ("timm", Strategy.gradual_unfreeze, None),
    ("resnet", Strategy.freeze, None),
    ("vit", Strategy.head_only, None),
], ids=["vit-lora", "resnet-lora", "timm-lora", "timm-unfreeze", "resnet-freeze", "vit-head"])
def test_strategies_work_on_transformers_and_cnns(models: Dict[str, Path], folder: Path, tmp_path: Path,
                                                  kind: str, strategy: Strategy, targets: Any) -> None:
    from finesweep.config import LoraConfig
    from finesweep.finetune.module import FinetuneModule, check

    finetune = FinetuneConfig(strategy=strategy, freeze_layers=1, llrd=0.8,
                              lora=LoraConfig(target_modules=targets or ["query"]))
    cfg = dataclasses.replace(config(folder, models[kind], tmp_path), finetune=finetune)
    data = TASK.prepare(cfg)
    check(cfg, data.task)  # preflight on the meta device
    module = FinetuneModule.for_trial(cfg, data, total_steps=10)
    trainable, total = module.trainable_counts()
    assert 0 < trainable < total
    batch = data.task.collate(data.train, range(4))
    loss = module.training_step(batch, 0)
    loss.backward()
    exported = module.export_model()
    folder_out = tmp_path / "saved"
    data.task.save_trained(exported, folder_out)
    reloaded = data.task.load_trained(folder_out, data)
    with torch.no_grad():
        module.model.eval()
        expected = module(batch["features"])
        got = data.task.forward(reloaded.eval(), batch["features"])
    assert torch.allclose(expected, got, atol=1e-4)


# --- serving -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["timm"])  # a Hugging Face ViT is served over REST in test_tasks_e2e.py
def test_the_served_model_answers_like_the_trial(models: Dict[str, Path], folder: Path, tmp_path: Path,
                                                 kind: str) -> None:
    import mlflow

    cfg = config(folder, models[kind], tmp_path)
    data = TASK.prepare(cfg)
    task = data.task
    model = task.build_model(cfg, data).eval()
    package = tmp_path / "package"
    task.save_trained(model, package)
    meta = task.serving_meta(cfg, data)
    task.package(package, str(models[kind]), meta)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/serve.db")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(task.predictor_source()),
                                       artifacts={"model": str(package)}, signature=task.signature(meta))
    served = mlflow.pyfunc.load_model(info.model_uri)
    rows = find(cfg.data)
    paths = [rows.paths[i] for i in rows.splits[1][:3]]
    with torch.no_grad():
        logits = task.forward(model, {"pixel_values": torch.from_numpy(data.val.features["pixel_values"][:3])})
    expected = [CLASSES[i] for i in logits.argmax(-1).tolist()]
    by_path = served.predict(pd.DataFrame({"image": [str(p) for p in paths]}), params={"top_k": 2})
    assert by_path["label"].tolist() == expected
    assert by_path["score"].to_numpy() == pytest.approx(torch.softmax(logits, -1).max(-1).values.numpy(), abs=1e-4)
    assert [len(t) for t in by_path["top_labels"]] == [2, 2, 2]
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    by_base64 = served.predict(pd.DataFrame({"image": [f"data:image;base64,{encoded[0]}", *encoded[1:]]}))
    by_bytes = served.predict(pd.DataFrame({"image_bytes": [p.read_bytes() for p in paths]}))
    assert by_base64["label"].tolist() == by_bytes["label"].tolist() == expected


@pytest.mark.parametrize("processor, settings, expected", [
    ("ViTImageProcessor", {"size": {"height": 64, "width": 64}}, Resize(64)),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}, Resize(224, 0.875)),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}, Resize(384, 1.0)),
    ("BitImageProcessor", {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}},
     Resize(224, 0.875)),
], ids=["vit-squash", "convnext-crop", "convnext-384-no-crop", "dinov2-resize-then-crop"])
def test_the_resize_follows_the_models_own_processor(tmp_path: Path, processor: str, settings: Dict[str, Any],
                                                     expected: Resize) -> None:
    import transformers

    from finesweep.tasks.vision_models import preprocessing

    folder = build_tiny_vit(tmp_path / "model")
    getattr(transformers, processor)(**settings).save_pretrained(folder)
    assert preprocessing(str(folder), None).resize == expected
    assert preprocessing(str(folder), 48).resize.size == 48  # data.image_size wins
