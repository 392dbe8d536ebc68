"""Trial throughput: one MiniLM trial's training samples per second through finesweep vs a hand-written loop.

finesweep: ``finesweep.execution.trial.fit``, the code a Ray worker runs for a trial (the LightningModule, the
reporting and checkpointing callback ``EpochReport``, the data module over the tokenised arrays the
driver ships through Ray's object store), in this process; Ray itself is not in the loop (its cost per
epoch is one ``tune.report``, measured by benchmarks/overhead.py).
Hand-written: the same model, tensors, batches (shuffled, cut to each batch's longest row), AdamW with
the same warmup schedule, gradient clipping and autocast, in a plain PyTorch loop with no validation,
no checkpoint and no reporting.

Both run 2 epochs of full fine-tuning on 800 tweets (batch 32, 48 tokens), on ``cluster.cpus_per_trial``
threads, in 32-bit and in finesweep's ``precision: auto``. Training samples per second counts the
training steps only (a Lightning callback times them in finesweep); the epoch column adds what finesweep
does around them (validation, the checkpoint each epoch, reporting).

Usage: python benchmarks/trial_throughput.py [--quick]   (--quick: the tiny test model, 1 epoch)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2


def sweep_overrides(precision: str, model: Optional[str], data_path: Optional[str]) -> List[str]:
    overrides = ["finetune=full", "data.max_samples=1000", "data.max_length=48", "data.batch_size=32",
                 f"scheduler.max_epochs={EPOCHS}", "scheduler.kind=fifo", f"trainer.precision={precision}",
                 "cluster.cpus_per_trial=2", "optim.lr=5e-5", "optim.warmup_ratio=0.1"]
    if model:
        overrides.append(f"model.name_or_path={model}")
    if data_path:
        overrides += ["data=csv", f"data.path={data_path}", "data.label_column=label"]
    return overrides


def through_finesweep(config: Any, cache: Any) -> Dict[str, float]:
    """finesweep's trial code, with a callback that times the training batches."""
    import lightning.pytorch as pl

    import finesweep.execution.trial as trial

    timer = _TrainTimer(pl)
    real_trainer = trial._trainer

    def timed_trainer(*args: Any, callbacks: List[Any], **kwargs: Any) -> Any:
        # first: its epoch end comes before the checkpoint's
        return real_trainer(*args, callbacks=[timer, *callbacks], **kwargs)

    trial._trainer = timed_trainer
    try:
        start = time.perf_counter()
        trial.fit(config, cache, lambda metrics, saved: None)
        total = time.perf_counter() - start
    finally:
        trial._trainer = real_trainer
    samples = len(cache.for_config(config).train) * config.scheduler.max_epochs
    return {"train_samples_s": samples / timer.seconds, "epoch_s": total / config.scheduler.max_epochs}


class _TrainTimer:
    """Sums the time spent in training epochs (batches, backward, optimiser), nothing else.

    Lightning validates at the end of a training epoch, before ``on_train_epoch_end`` (where the
    checkpoint is written): the clock stops when validation starts, or at the epoch's end without one.
    """

    def __new__(cls, pl: Any) -> Any:
        class Timer(pl.Callback):  # type: ignore[misc]
            seconds = 0.0
            _start: Optional[float] = None

            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                self._start = time.perf_counter()

            def on_validation_start(self, trainer: Any, module: Any) -> None:
                self._stop()

            def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
                self._stop()

            def _stop(self) -> None:
                if self._start is not None:
                    Timer.seconds += time.perf_counter() - self._start
                    self._start = None

        return Timer()


def by_hand(config: Any, cache: Any, precision: str) -> Dict[str, float]:
    """A minimal PyTorch loop over the same tensors."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, get_scheduler

    data = cache.for_config(config)
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_trial)))
    torch.manual_seed(config.trainer.seed)
    model = AutoModelForSequenceClassification.from_pretrained(config.model.name_or_path,
                                                               num_labels=data.num_labels)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    batch = config.data.batch_size
    steps = math.ceil(len(data.train) / batch) * config.scheduler.max_epochs
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=int(config.optim.warmup_ratio * steps),
                             num_training_steps=steps)
    features, labels = data.train.features, data.train.labels
    bf16 = precision == "bf16-mixed"
    start = time.perf_counter()
    for epoch in range(config.scheduler.max_epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch)).numpy()
        for first in range(0, len(order), batch):
            idx = order[first:first + batch]
            width = max(1, int(features["attention_mask"][idx].sum(axis=1).max()))
            inputs = {k: torch.from_numpy(v[idx, :width].astype(np.int64)) for k, v in features.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**inputs, labels=torch.from_numpy(labels[idx])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.trainer.gradient_clip_val or math.inf)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"train_samples_s": len(labels) * config.scheduler.max_epochs / seconds,
            "epoch_s": seconds / config.scheduler.max_epochs}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the model and CSV given, 1 epoch")
    parser.add_argument("--model", help="a local model folder (default: MiniLM, the demo's)")
    parser.add_argument("--data", help="a local CSV with text,label columns (default: the demo's tweets)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FINESWEEP_PROJECT", str(ROOT))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from finesweep.config.compose import compose
    from finesweep.execution.trial import resolved_precision
    from finesweep.tasks.preparation import prepare_all

    global EPOCHS
    EPOCHS = 1 if args.quick else EPOCHS
    auto = resolved_precision(compose("demo", sweep_overrides("auto", args.model, args.data)).config)
    rows = []
    for precision in dict.fromkeys(["32-true", auto]):
        config = compose("demo", sweep_overrides(precision, args.model, args.data)).config
        cache = prepare_all(config, ())  # tokenised once, as the driver does
        hand = by_hand(config, cache, precision)
        ours = through_finesweep(config, cache)
        rows.append((precision, ours, hand))
    print(f"one trial, full fine-tuning, {EPOCHS} epoch(s); precision auto = {auto} on this machine")
    print("| precision | finesweep train samples/s | hand-written samples/s | ratio | finesweep s/epoch "
          "(incl. validation, checkpoint) | hand-written s/epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    for precision, ours, hand in rows:
        print(f"| {precision} | {ours['train_samples_s']:.1f} | {hand['train_samples_s']:.1f} | "
              f"{ours['train_samples_s'] / hand['train_samples_s']:.2f}x | {ours['epoch_s']:.1f} | "
              f"{hand['epoch_s']:.1f} |")
    if len(rows) == 2:
        gain = rows[1][1]["train_samples_s"] / rows[0][1]["train_samples_s"]
        print(f"{auto} vs 32-true through finesweep: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
