"""Sleeping trials for the orchestration benchmarks (overhead.py, scale.py): what they share.

A synthetic trial sleeps and reports, so a benchmark measures what runs around it: Ray Tune, and in
finesweep's case the sweep's log, the live view and MLflow. Each variant runs in a process of its own.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """
objective: {{metric: val/accuracy, mode: max}}
search: {{sampler: random, num_trials: {trials}, max_concurrent: {concurrent}, seed: 0}}
scheduler: {{kind: fifo, max_epochs: {reports}}}
space:
  optim.lr: {{distribution: loguniform, low: 1.0e-5, high: 1.0e-2}}
"""


def sleeping_trainable(reports: int, seconds: float) -> Callable[..., None]:
    """A trainable that sleeps ``seconds`` before each of its ``reports`` reports, like a trial's epochs.

    A closure, so Ray ships it by value: workers need not import this folder.
    """

    def trainable(config: Dict[str, Any], **_: Any) -> None:
        from ray import tune

        lr = float(config["optim.lr"])
        for epoch in range(1, reports + 1):
            time.sleep(seconds)
            score = 1.0 - abs(math.log10(lr) + 3.5) / 10 + 0.01 * epoch
            tune.report({"val/accuracy": score, "val/loss": 1 - score, "train/loss": 1 - score,
                         "val/f1_macro": score, "epoch": float(epoch)})

    return trainable


def workdir() -> Path:
    """A fresh folder to run in, with the environment finesweep's CLI would set."""
    folder = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    os.chdir(folder)
    os.environ.update({"FINESWEEP_PROJECT": str(ROOT), "RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_AIR_NEW_OUTPUT": "0"})
    return folder


def timed(function: Callable[..., Any], into: Dict[str, float], key: str) -> Callable[..., Any]:
    """``function``, adding the seconds each call takes to ``into[key]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into[key] = into.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def timed_run_plan(into: Dict[str, float]) -> None:
    """Add the time spent in ``tuner.run_plan`` (Tuner.fit and its assembly) to ``into["fit_s"]``."""
    import finesweep.execution.tuner as tuner

    tuner.run_plan = timed(tuner.run_plan, into, "fit_s")


def handwritten(trainable: Callable[..., None], trials: int, concurrent: int, folder: Path,
                reuse_actors: bool = True, num_cpus: Optional[int] = None) -> Dict[str, float]:
    """What a Ray Tune user writes by hand: ``tune.Tuner`` over the same trainable, from ray.init to shutdown."""
    import ray
    from ray import tune

    start = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    fit_start = time.perf_counter()
    results = tune.Tuner(
        trainable,
        param_space={"optim.lr": tune.loguniform(1e-5, 1e-2)},
        tune_config=tune.TuneConfig(metric="val/accuracy", mode="max", num_samples=trials,
                                    max_concurrent_trials=concurrent, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=str(folder / "ray"), verbose=0),
    ).fit()
    fit = time.perf_counter() - fit_start
    if len(results) != trials or results.errors:
        raise SystemExit(f"hand-written: {len(results)} of {trials} trials, errors {results.errors}")
    ray.shutdown()
    return {"total_s": time.perf_counter() - start, "fit_s": fit}
