"""Orchestration overhead: finesweep vs a minimal hand-written Ray Tune script, same trainable.

16 trials of 4 epochs x 0.5 s (2 s each), 2 at a time: the ideal wall-clock is 16 x 2 / 2 = 16 s.
Each variant runs in its own process, from a cold start (ray.init) to ray.shutdown(), and also
reports the time spent inside ``Tuner.fit()`` alone.

- finesweep: the real ``finesweep run`` code path (Hydra composition, validation, a fresh MLflow
  SQLite store with parent + child runs, the live view, OptunaSearch random sampler, FIFO), with
  the synthetic trainable swapped in for the Lightning trial.
- hand-written: ``tune.Tuner`` with ``param_space``, ``num_samples=16``, ``max_concurrent_trials=2``,
  once with Ray's defaults and once with ``reuse_actors=True``.

Usage: python benchmarks/overhead.py   (prints a table and the ratios)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

TRIALS, CONCURRENT, EPOCHS, EPOCH_SECONDS = 16, 2, 4, 0.5
IDEAL_S = TRIALS * EPOCHS * EPOCH_SECONDS / CONCURRENT
ROOT = Path(__file__).resolve().parents[1]

SWEEP = f"""
objective: {{metric: val/accuracy, mode: max}}
search: {{sampler: random, num_trials: {TRIALS}, max_concurrent: {CONCURRENT}, seed: 0}}
scheduler: {{kind: fifo, max_epochs: {EPOCHS}}}
space:
  optim.lr: {{distribution: loguniform, low: 1.0e-5, high: 1.0e-2}}
"""


def trainable(config: Dict[str, Any], **_: Any) -> None:
    """~2 s of 'training': 4 epochs of 0.5 s, one report per epoch, like a finesweep trial."""
    from ray import tune

    lr = float(config["optim.lr"])
    for epoch in range(1, EPOCHS + 1):
        time.sleep(EPOCH_SECONDS)
        score = 1.0 - abs(math.log10(lr) + 3.5) / 10 + 0.01 * epoch
        tune.report({"val/accuracy": score, "val/loss": 1 - score, "train/loss": 1 - score,
                     "val/f1_macro": score, "epoch": float(epoch)})


def run_finesweep(workdir: Path) -> Dict[str, float]:
    from rich.console import Console

    import finesweep.tuner as tuner
    from finesweep import runner
    from finesweep.cli import compose
    from finesweep.data import DataCache

    fit_time: Dict[str, float] = {}
    real_run_plan = tuner.run_plan

    def timed_run_plan(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real_run_plan(*args, **kwargs)
        finally:
            fit_time["fit_s"] = time.perf_counter() - start

    tuner.run_plan = timed_run_plan
    sweep = workdir / "overhead.yaml"
    sweep.write_text(SWEEP)
    start = time.perf_counter()
    composed = compose(str(sweep), [])
    code = runner.run(composed, DataCache({}), Console(file=open(os.devnull, "w")), trainable=trainable)
    total = time.perf_counter() - start
    assert code == 0
    return {"total_s": total, **fit_time}


def run_handwritten(workdir: Path, reuse_actors: bool) -> Dict[str, float]:
    import ray
    from ray import tune

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    fit_start = time.perf_counter()
    tuner = tune.Tuner(
        trainable,
        param_space={"optim.lr": tune.loguniform(1e-5, 1e-2)},
        tune_config=tune.TuneConfig(metric="val/accuracy", mode="max", num_samples=TRIALS,
                                    max_concurrent_trials=CONCURRENT, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0),
    )
    results = tuner.fit()
    fit = time.perf_counter() - fit_start
    assert len(results) == TRIALS and not results.errors
    ray.shutdown()
    return {"total_s": time.perf_counter() - start, "fit_s": fit}


def child(variant: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    os.chdir(workdir)
    os.environ.update({"FINESWEEP_PROJECT": str(ROOT), "RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_AIR_NEW_OUTPUT": "0"})
    result = (run_finesweep(workdir) if variant == "finesweep"
              else run_handwritten(workdir, reuse_actors=variant == "hand-written+reuse"))
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["finesweep", "hand-written", "hand-written+reuse"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.variant:
        child(args.variant)
        return
    rows: Dict[str, Dict[str, float]] = {}
    for variant in ("hand-written", "hand-written+reuse", "finesweep"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--variant", variant], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
        rows[variant] = {k: min(r[k] for r in runs) for k in runs[0]}
    print(f"{TRIALS} trials x {EPOCHS * EPOCH_SECONDS:.1f} s, {CONCURRENT} at a time; ideal {IDEAL_S:.1f} s")
    print(f"{'variant':<20} {'total (cold) s':>15} {'Tuner.fit s':>12} {'total/ideal':>12}")
    for variant, row in rows.items():
        print(f"{variant:<20} {row['total_s']:>15.1f} {row['fit_s']:>12.1f} {row['total_s'] / IDEAL_S:>12.2f}")
    best_hand = min(rows["hand-written"]["total_s"], rows["hand-written+reuse"]["total_s"])
    fs = rows["finesweep"]
    print(f"finesweep / best hand-written (total): {fs['total_s'] / best_hand:.2f}x   (target <= 1.10)")
    print(f"finesweep / hand-written+reuse (fit):  {fs['fit_s'] / rows['hand-written+reuse']['fit_s']:.2f}x")
    print(f"finesweep total / ideal: {fs['total_s'] / IDEAL_S:.2f}x (target <= 1.25); "
          f"fit / ideal: {fs['fit_s'] / IDEAL_S:.2f}x")


if __name__ == "__main__":
    main()
