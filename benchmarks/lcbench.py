"""The LCBench surrogate of YAHPO Gym (benchmarks/lcbench/, Apache-2.0), read with onnxruntime alone.

YAHPO's ONNX model maps (OpenML task, epoch, 7 hyperparameters) to 6 targets. Its inputs, as YAHPO Gym's
``BenchmarkSet._config_to_xs`` builds them: ``x_cat`` = [the task id's code from encoding.json] (int32),
``x_cont`` = the raw values of epoch, batch_size, learning_rate, momentum, weight_decay, num_layers,
max_units, max_dropout (float32; any scaling is inside the model). Its outputs: time, val_accuracy (%),
val_cross_entropy, val_balanced_accuracy, test_cross_entropy, test_balanced_accuracy. The yahpo-gym package
itself pins an old numpy, so this is a loader of our own.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np

FOLDER = Path(__file__).resolve().parent / "lcbench"
EPOCHS = 52
CONTINUOUS = ("epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers", "max_units",
              "max_dropout")
TARGETS = ("time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy", "test_cross_entropy",
           "test_balanced_accuracy")
HYPERPARAMETERS = CONTINUOUS[1:]


@dataclass(frozen=True)
class Curve:
    """One configuration's learning curve on one task, epochs 1..52."""

    accuracy: np.ndarray
    """Validation accuracy in [0, 1] by epoch (index 0 = epoch 1)."""
    loss: np.ndarray
    """Validation cross-entropy by epoch."""


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # many small calls, beside Ray's workers
    return onnxruntime.InferenceSession(str(FOLDER / "model.onnx"), sess_options=options)


@functools.lru_cache(maxsize=1)
def _codes() -> Dict[str, int]:
    return {str(k): int(v) for k, v in json.loads((FOLDER / "encoding.json").read_text())["OpenML_task_id"].items()}


def tasks() -> List[str]:
    """The 34 OpenML task ids of the surrogate, in config_space.json's order."""
    space = json.loads((FOLDER / "config_space.json").read_text())
    (task,) = [h for h in space["hyperparameters"] if h["name"] == "OpenML_task_id"]
    return [str(c) for c in task["choices"]]


def space() -> Dict[str, Dict[str, Any]]:
    """The 7 hyperparameters as finesweep sweep entries (distribution, bounds), from config_space.json."""
    entries = {}
    for h in json.loads((FOLDER / "config_space.json").read_text())["hyperparameters"]:
        if h["name"] not in HYPERPARAMETERS:
            continue
        integer = h["type"] == "uniform_int"
        kind = "int" if integer else ("loguniform" if h["log"] else "uniform")
        entry: Dict[str, Any] = {"distribution": kind, "low": h["lower"], "high": h["upper"]}
        if integer and h["log"]:
            entry["log"] = True
        entries[h["name"]] = entry
    return entries


def curve(task: str, config: Mapping[str, float]) -> Curve:
    """The surrogate's validation curve of ``config`` on ``task``: one ONNX call for all 52 epochs."""
    epochs = np.arange(1, EPOCHS + 1, dtype=np.float32)
    x_cont = np.empty((EPOCHS, len(CONTINUOUS)), dtype=np.float32)
    x_cont[:, 0] = epochs
    for column, name in enumerate(CONTINUOUS[1:], start=1):
        x_cont[:, column] = float(config[name])
    x_cat = np.full((EPOCHS, 1), _codes()[str(task)], dtype=np.int32)
    session = _session()
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, {names[0]: x_cat, names[1]: x_cont})[0]
    accuracy = np.clip(out[:, TARGETS.index("val_accuracy")] / 100.0, 0.0, 1.0)
    return Curve(accuracy=accuracy.astype(float), loss=out[:, TARGETS.index("val_cross_entropy")].astype(float))


TABLE_SEED = 2023
"""Seed of the table the priors come from: not a seed any search is measured with (those are 0..4)."""


def random_config(rng: np.random.Generator) -> Dict[str, float]:
    """One configuration drawn uniformly (on the log scale where the key is log) from the space."""
    config: Dict[str, float] = {}
    for key, spec in space().items():
        low, high = float(spec["low"]), float(spec["high"])
        log = spec["distribution"] == "loguniform" or spec.get("log", False)
        value = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if log else float(rng.uniform(low, high))
        config[key] = float(round(value)) if spec["distribution"] == "int" else value
    return config


@functools.lru_cache(maxsize=None)
def table(task: str, rows: int = 1000) -> List[Any]:
    """The surrogate's own table for ``task``: ``rows`` random configurations and their best accuracy, best first."""
    rng = np.random.default_rng(TABLE_SEED)
    configs = [random_config(rng) for _ in range(rows)]
    scored = [(float(curve(task, config).accuracy.max()), config) for config in configs]
    return sorted(scored, key=lambda pair: -pair[0])


def prior(task: str, quality: str) -> Dict[str, float]:
    """A prior for ``task``: a configuration of the table's best 5% (``good``) or worst 25% (``misleading``).

    Picked by a fixed draw inside that slice (its own seed, never a measured search's), so every method and
    every measured seed gets the same prior for the task.
    """
    rows = table(task)
    if quality == "good":
        pool = rows[: len(rows) // 20]
    elif quality == "misleading":
        pool = rows[len(rows) - len(rows) // 4:]
    else:
        raise ValueError(f"prior quality is 'good' or 'misleading', got {quality!r}")
    pick = np.random.default_rng([TABLE_SEED, int(task)]).integers(len(pool))
    return dict(pool[int(pick)][1])
