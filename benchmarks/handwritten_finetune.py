"""What a competent user writes by hand instead of finesweep: Ray Tune + Optuna + Lightning + MLflow.

The real-trial case of benchmarks/overhead.py runs this against ``finesweep run`` on the same sweep:
the same model, CSV, sample size, split sizes, batch size, epochs, precision, TPE over the same two
hyperparameters, trials at a time and CPUs per trial. What it does:

- reads the CSV with pandas, subsamples and splits it 80/10/10 (stratified), tokenises once on the
  driver (no padding) and puts the arrays in Ray's object store;
- each trial: a LightningModule over ``AutoModelForSequenceClassification``, AdamW with linear warmup
  and decay, batches padded to their longest row (``DataCollatorWithPadding``), gradient clipping,
  a validation pass per epoch, reported to Tune with ``tune.report``;
- Optuna's TPE through Ray's ``OptunaSearch``, FIFO, ``MLflowLoggerCallback`` (a run per trial with its
  params and per-epoch metrics, in a SQLite store).

What it does not do, and finesweep does: save a checkpoint per epoch (resume, retries, the winner's
weights), score the winner on a held-out test split, log and register the model with its signature,
measure inference latency, keep a sweep log, write the report.

Usage (as overhead.py runs it): python benchmarks/handwritten_finetune.py MODEL CSV WORKDIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict

TRIALS, CONCURRENT, EPOCHS = 8, 2, 2
MAX_SAMPLES, MAX_LENGTH, BATCH = 600, 48, 32
TEXT, LABEL = "text", "sentiment"


def load(csv: str, model: str) -> Dict[str, Any]:
    """Subsample, split and tokenise once, on the driver."""
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split
    from transformers import AutoTokenizer

    frame = pd.read_csv(csv, encoding_errors="replace").dropna(subset=[TEXT, LABEL])
    frame = frame.sample(n=min(MAX_SAMPLES, len(frame)), random_state=0)
    names = sorted(frame[LABEL].astype(str).unique())
    labels = frame[LABEL].astype(str).map({n: i for i, n in enumerate(names)}).to_numpy()
    texts = frame[TEXT].astype(str).tolist()
    train, rest = train_test_split(np.arange(len(texts)), test_size=0.2, stratify=labels, random_state=0)
    val, _test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=0)
    tokenizer = AutoTokenizer.from_pretrained(model)

    def encode(rows: Any) -> Dict[str, Any]:
        encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=MAX_LENGTH)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": labels[rows].tolist()}

    return {"train": encode(train), "val": encode(val), "num_labels": len(names)}


def trainable(config: Dict[str, Any], data: Any, model_path: str, precision: str) -> None:
    """One trial: Lightning fit, a report per epoch, no checkpoint."""
    import lightning.pytorch as pl
    import torch
    from ray import tune
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_linear_schedule_with_warmup,
    )

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    collate = DataCollatorWithPadding(tokenizer)

    def rows(split: Dict[str, Any]) -> list:
        return [{k: split[k][i] for k in ("input_ids", "attention_mask", "labels")}
                for i in range(len(split["labels"]))]

    train = DataLoader(rows(data["train"]), batch_size=BATCH, shuffle=True, collate_fn=collate)
    val = DataLoader(rows(data["val"]), batch_size=BATCH, collate_fn=collate)
    steps = math.ceil(len(data["train"]["labels"]) / BATCH) * EPOCHS

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModelForSequenceClassification.from_pretrained(model_path,
                                                                            num_labels=data["num_labels"])

        def training_step(self, batch: Dict[str, Any], _: int) -> Any:
            loss = self.model(**batch).loss
            self.log("train/loss", loss, on_epoch=True, on_step=False, batch_size=len(batch["labels"]))
            return loss

        def validation_step(self, batch: Dict[str, Any], _: int) -> None:
            out = self.model(**batch)
            size = len(batch["labels"])
            self.log("val/loss", out.loss, batch_size=size)
            self.log("val/accuracy", (out.logits.argmax(-1) == batch["labels"]).float().mean(), batch_size=size)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
            schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    class Report(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            logged = trainer.callback_metrics
            tune.report({k: float(v) for k, v in logged.items()} | {"epoch": trainer.current_epoch + 1})

    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, precision=precision,
                         gradient_clip_val=1.0, callbacks=[Report()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), train, val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("csv")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    start = time.perf_counter()
    import optuna
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    ray.init(num_cpus=CONCURRENT, include_dashboard=False, log_to_driver=False)
    data = ray.put(load(args.csv, args.model))
    search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0), metric="val/accuracy", mode="max")
    fit_start = time.perf_counter()
    results = tune.Tuner(
        tune.with_parameters(trainable, data=data, model_path=args.model, precision=args.precision),
        param_space={"lr": tune.loguniform(2e-5, 2e-4), "weight_decay": tune.uniform(0.0, 0.1)},
        tune_config=tune.TuneConfig(metric="val/accuracy", mode="max", num_samples=TRIALS, search_alg=search,
                                    max_concurrent_trials=CONCURRENT),
        run_config=tune.RunConfig(storage_path=str(args.workdir / "ray"), verbose=0, callbacks=[
            MLflowLoggerCallback(tracking_uri=f"sqlite:///{args.workdir / 'mlflow.db'}",
                                 experiment_name="handwritten", save_artifact=False)]),
    ).fit()
    fit = time.perf_counter() - fit_start
    best = results.get_best_result()
    ray.shutdown()
    if len(results) != TRIALS or results.errors:
        raise SystemExit(f"hand-written: {len(results)} of {TRIALS} trials, errors {results.errors}")
    print("RESULT " + json.dumps({"total_s": time.perf_counter() - start, "fit_s": fit,
                                  "best": float(best.metrics["val/accuracy"])}))


if __name__ == "__main__":
    main()
