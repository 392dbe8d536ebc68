"""Image throughput: training images per second of a finesweep image-classification trial vs a bare PyTorch loop.

Both sides train the same model (``task.build_model``, the same seed) on the same prepared uint8 arrays
(``ImageClassification.prepare``, once), with the same batch size, AdamW (lr, weight decay) and linear
warmup/decay schedule, precision, and torch threads (``cluster.cpus_per_trial``), on the CPU.

finesweep: ``finesweep.execution.trial.fit``, the code a Ray worker runs for a trial (the LightningModule, the data
module, ``EpochReport``'s per-epoch validation, best weights and checkpoint of Lightning's full state), in this
process; Ray is not in the loop (its cost per epoch is one ``tune.report``: benchmarks/overhead.py). Its training
time is taken by a Lightning callback added to the trial's Trainer (as benchmarks/trial_throughput.py does): from
each training epoch's start to its validation's start.
Bare: a plain loop: shuffle per epoch, slice the arrays, ``torch.from_numpy``, normalise with the model's mean and
std, forward, cross entropy, backward, AdamW step, schedule step, zero_grad. Its training time is the loop's;
after each epoch it scores the validation split (loss, accuracy) and saves the weights (``save_pretrained``,
safetensors), as a hand-written script that keeps its best model would.

Two rates per side, each the median of ``--repeats`` runs, after one untimed 1-epoch run per side and model. The
sides alternate, and a ratio is the median of each finesweep run's rate over the bare run's just before it:
- training: training images / seconds in training epochs (the number the 0.95x goal is about);
- trial: training images / seconds of the whole run (model build, every epoch's training, validation and
  saving; finesweep also writes Lightning's full training state each epoch, which the bare loop does not:
  that is what lets a trial resume).
Seconds are wall-clock by default. On a machine other work shares, ``--clock cpu --threads 1`` counts this
process's CPU seconds instead: on one thread they are its working seconds, whatever else runs (waits on disk
are not in them).

Models, built locally with random weights (no downloads): a ViT (192 wide, 6 layers, patch 8) and a Hugging Face
ResNet (32-64-128-256, one basic block per stage) at 64 px, whose compute dominates as in real fine-tuning, and a
tiny ViT (32 wide, 2 layers) at 32 px, where the per-batch cost of the framework shows.

Usage: python benchmarks/image_throughput.py [--epochs 2] [--images-per-class 80] [--repeats 5]
           [--threads N] [--clock wall|cpu] [--precision 32-true|bf16-mixed] [--quick]
  (~4 minutes on 2 CPU cores; --quick: the tiny ViT only, 1 epoch, 1 repeat, ~20 s)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4
COLOURS = ((220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 240, 30))
Clock = Callable[[], float]
CLOCKS: Dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}
"""wall: seconds on the clock (the rate a trial gets); cpu: this process's CPU seconds, which on one thread are its
working seconds whatever else runs on the cores (the fair comparison on a shared machine)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One model to measure: its name in the table, image pixels per side, and how to build it in a folder."""

    name: str
    size: int
    build: Callable[[Path, int], Path]


def vit(hidden: int, layers: int, heads: int) -> Callable[[Path, int], Path]:
    """A ViT builder (patch 8, MLP 4x wide, mean/std 0.5) for images of the size it is given."""

    def build(folder: Path, size: int) -> Path:
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        config = ViTConfig(image_size=size, patch_size=8, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=4 * hidden)
        config.num_labels = CLASSES
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
                          ).save_pretrained(folder)
        return folder

    return build


def resnet(widths: Sequence[int]) -> Callable[[Path, int], Path]:
    """A Hugging Face ResNet builder (basic blocks, one per stage, ImageNet mean/std)."""

    def build(folder: Path, size: int) -> Path:
        from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(embedding_size=widths[0], hidden_sizes=list(widths), depths=[1] * len(widths),
                              layer_type="basic")
        config.num_labels = CLASSES
        ResNetForImageClassification(config).save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0).save_pretrained(folder)
        return folder

    return build


CASES = (Case("ViT 192 wide, 6 layers", 64, vit(192, 6, 3)),
         Case("ResNet 32-64-128-256", 64, resnet((32, 64, 128, 256))),
         Case("tiny ViT 32 wide, 2 layers", 32, vit(32, 2, 2)))
QUICK = CASES[2:]


def image_folder(root: Path, per_class: int, size: int) -> Path:
    """``root/<class>/<i>.png``: a coloured square of the class at a random place on noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in enumerate(COLOURS[:CLASSES]):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            pixels[y:y + size // 2, x:x + size // 2] = colour
            Image.fromarray(pixels, "RGB").save(root / f"class{label}" / f"{i:04d}.png")
    return root


def experiment(model: Path, images: Path, workdir: Path, size: int, args: argparse.Namespace) -> Any:
    """The trial's config, built by hand as the tests build it."""
    from finesweep.config import (
        Accelerator,
        ClusterConfig,
        DataConfig,
        ExperimentConfig,
        Mode,
        ModelConfig,
        ObjectiveConfig,
        Precision,
        SchedulerConfig,
        SearchConfig,
        TrackingConfig,
        TrainerConfig,
    )

    return ExperimentConfig(
        model=ModelConfig(name_or_path=str(model)),
        data=DataConfig(path=str(images), task="image_classification", batch_size=args.batch, image_size=size),
        objective=ObjectiveConfig(metric="val/accuracy", mode=Mode.max), search=SearchConfig(num_trials=1),
        scheduler=SchedulerConfig(max_epochs=args.epochs),
        trainer=TrainerConfig(precision=Precision(args.precision), accelerator=Accelerator.cpu),
        cluster=ClusterConfig(storage_path=str(workdir / "store"), log_dir=str(workdir / "logs"),
                              cpus_per_trial=args.threads),
        tracking=TrackingConfig(uri=f"sqlite:///{workdir}/mlflow.db"), name="image-throughput")


def with_epochs(config: Any, epochs: int) -> Any:
    return dataclasses.replace(config, scheduler=dataclasses.replace(config.scheduler, max_epochs=epochs))


def through_finesweep(config: Any, cache: Any, clock: Clock) -> Dict[str, float]:
    """finesweep's trial: training images/s (its training epochs only) and trial images/s (the whole fit)."""
    import lightning.pytorch as pl

    import finesweep.execution.trial as trial

    timer = train_timer(pl, clock)
    real_trainer = trial._trainer

    def timed_trainer(*args: Any, callbacks: List[Any], **kwargs: Any) -> Any:
        # first: its epoch end comes before the checkpoint's
        return real_trainer(*args, callbacks=[timer, *callbacks], **kwargs)

    trial._trainer = timed_trainer
    try:
        start = clock()
        trial.fit(config, cache, lambda metrics, saved: None)
        total = clock() - start
    finally:
        trial._trainer = real_trainer
    images = len(cache.for_config(config).train) * config.scheduler.max_epochs
    return {"train": images / timer.seconds, "trial": images / total}


def train_timer(pl: Any, clock: Clock) -> Any:
    """A callback that sums the seconds of training epochs (batches, backward, optimiser), nothing else.

    Lightning validates at the end of a training epoch, before ``on_train_epoch_end`` (where the checkpoint is
    written): the clock stops when validation starts, or at the epoch's end without one.
    """

    class Timer(pl.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.seconds = 0.0
            self.start: Optional[float] = None

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.start = clock()

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            self.stop()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.stop()

        def stop(self) -> None:
            if self.start is not None:
                self.seconds += clock() - self.start
                self.start = None

    return Timer()


def bare(config: Any, data: Any, clock: Clock) -> Dict[str, float]:
    """The bare loop over the same arrays: training images/s and trial images/s (model build to last save)."""
    import torch
    from transformers import get_scheduler

    torch.set_num_threads(max(1, int(config.cluster.cpus_per_trial)))
    torch.manual_seed(config.trainer.seed)
    epochs, batch = config.scheduler.max_epochs, config.data.batch_size
    start = clock()
    model = data.task.build_model(config, data)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    steps = math.ceil(len(data.train) / batch) * epochs
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=int(config.optim.warmup_ratio * steps),
                             num_training_steps=steps)
    mean = torch.tensor(data.task.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.task.std).view(1, 3, 1, 1)
    bf16 = config.trainer.precision.value == "bf16-mixed"

    def logits(pixels: np.ndarray) -> Any:
        normalised = (torch.from_numpy(pixels).float().div_(255.0) - mean) / std
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(pixel_values=normalised).logits.float()

    pixels, labels = data.train.features["pixel_values"], data.train.labels
    training = 0.0
    with tempfile.TemporaryDirectory(prefix="fs-bare-") as saved:
        for epoch in range(epochs):
            began = clock()
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch)).numpy()
            for first in range(0, len(order), batch):
                idx = order[first:first + batch]
                loss = torch.nn.functional.cross_entropy(logits(pixels[idx]), torch.from_numpy(labels[idx]))
                torch.autograd.backward(loss)  # loss.backward(), which torch's stubs leave unannotated
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            training += clock() - began
            validate(model, data.val, batch, logits)
            model.save_pretrained(saved, safe_serialization=True)
    trial = clock() - start
    return {"train": len(labels) * epochs / training, "trial": len(labels) * epochs / trial}


def validate(model: Any, split: Any, batch: int, logits: Callable[[np.ndarray], Any]) -> Dict[str, float]:
    """Loss and accuracy on ``split``, in eval mode without gradients."""
    import torch

    model.eval()
    loss = correct = 0.0
    with torch.inference_mode():
        for first in range(0, len(split), batch):
            out = logits(split.features["pixel_values"][first:first + batch])
            target = torch.from_numpy(split.labels[first:first + batch])
            loss += float(torch.nn.functional.cross_entropy(out, target, reduction="sum"))
            correct += float((out.argmax(-1) == target).sum())
    model.train()
    return {"loss": loss / len(split), "accuracy": correct / len(split)}


def measure(case: Case, args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    """Prepare once; warm both sides up; then ``args.repeats`` runs of each, alternating; medians."""
    from finesweep.tasks import DataCache
    from finesweep.tasks.data import variant_key
    from finesweep.tasks.image_classification import ImageClassification

    model = case.build(workdir / "model", case.size)
    images = image_folder(workdir / "images", args.images_per_class, case.size)
    config = experiment(model, images, workdir, case.size, args)
    data = ImageClassification().prepare(config)  # decoded once, as the driver does
    cache = DataCache({variant_key(config): data.without_test()})
    clock = CLOCKS[args.clock]
    bare(with_epochs(config, 1), data, clock)  # warm-up: imports, allocator, oneDNN kernels
    through_finesweep(with_epochs(config, 1), cache, clock)
    runs: Dict[str, List[Dict[str, float]]] = {"bare": [], "finesweep": []}
    for _ in range(args.repeats):  # alternating, so a busy spell on the machine falls on both sides
        runs["bare"].append(bare(config, data, clock))
        runs["finesweep"].append(through_finesweep(config, cache, clock))
    median = {side: {rate: statistics.median(run[rate] for run in measured) for rate in ("train", "trial")}
              for side, measured in runs.items()}
    # each finesweep run against the bare run just before it: a busy spell slows both of a pair
    pairs = list(zip(runs["finesweep"], runs["bare"], strict=True))
    ratios = {rate: [ours[rate] / theirs[rate] for ours, theirs in pairs] for rate in ("train", "trial")}
    ratio = {rate: statistics.median(values) for rate, values in ratios.items()}
    return {"case": case, "train_images": len(data.train), "ratio": ratio, "spread": ratios["train"], **median}


def table(rows: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    import lightning
    import torch

    load = os.getloadavg()[0]  # other processes on the cores make wall-clock rates noisy: shown, not hidden
    lines = [f"machine: {os.cpu_count()} CPU cores (load average {load:.1f} at the end), {args.threads} torch "
             f"thread(s), torch {torch.__version__}, lightning {lightning.__version__}; precision {args.precision}; "
             f"{args.epochs} epoch(s) per run, medians of {args.repeats} runs (ratio: of each run's finesweep/bare, "
             f"against the bare run just before it); {args.clock} clock",
             "| model | image px | batch | train images | bare images/s | finesweep images/s | ratio | "
             "bare trial images/s (incl. validation, save) | finesweep trial images/s (incl. validation, "
             "checkpoint) | trial ratio | training ratios, lowest-highest run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        bare_rates, ours, ratio = row["bare"], row["finesweep"], row["ratio"]
        lines.append(f"| {row['case'].name} | {row['case'].size} | {args.batch} | {row['train_images']} | "
                     f"{bare_rates['train']:.1f} | {ours['train']:.1f} | {ratio['train']:.2f}x | "
                     f"{bare_rates['trial']:.1f} | {ours['trial']:.1f} | {ratio['trial']:.2f}x | "
                     f"{min(row['spread']):.2f}-{max(row['spread']):.2f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="timed epochs per run (default 2; --quick: 1)")
    parser.add_argument("--images-per-class", type=int, help=f"images of each of {CLASSES} classes (default 80: "
                        "256 train / 32 val / 32 test; --quick: 20)")
    parser.add_argument("--repeats", type=int, help="timed runs per side, the table shows the median (default 5; "
                        "--quick: 1)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads on both sides (finesweep: cluster.cpus_per_trial)")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall: seconds on the clock; cpu: "
                        "the process's CPU seconds, for a shared machine (needs --threads 1)")
    parser.add_argument("--quick", action="store_true", help="the tiny ViT only, and tiny defaults")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error(f"--clock cpu counts CPU seconds, which are working seconds only on one thread, got "
                     f"--threads {args.threads}. Add --threads 1, or use --clock wall.")
    for name, full, quick in (("epochs", 2, 1), ("images_per_class", 80, 20), ("repeats", 5, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    os.environ.setdefault("FINESWEEP_PROJECT", str(ROOT))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    rows = []
    for case in QUICK if args.quick else CASES:
        with tempfile.TemporaryDirectory(prefix="fs-image-throughput-") as workdir:
            rows.append(measure(case, args, Path(workdir)))
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
