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
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import synthetic  # beside this file

TRIALS, CONCURRENT, EPOCHS, EPOCH_SECONDS = 16, 2, 4, 0.5
IDEAL_S = TRIALS * EPOCHS * EPOCH_SECONDS / CONCURRENT

SWEEP = synthetic.SWEEP.format(trials=TRIALS, concurrent=CONCURRENT, reports=EPOCHS)
trainable = synthetic.sleeping_trainable(EPOCHS, EPOCH_SECONDS)  # ~2 s: 4 epochs of 0.5 s


def run_finesweep(workdir: Path) -> Dict[str, float]:
    from rich.console import Console

    from finesweep import runner
    from finesweep.cli import compose
    from finesweep.data import DataCache

    fit_time: Dict[str, float] = {}
    synthetic.timed_run_plan(fit_time)
    sweep = workdir / "overhead.yaml"
    sweep.write_text(SWEEP)
    start = time.perf_counter()
    composed = compose(str(sweep), [])
    code = runner.run(composed, DataCache({}), Console(file=open(os.devnull, "w")), trainable=trainable)
    total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"finesweep run exited with {code}")
    return {"total_s": total, **fit_time}


def child(variant: str) -> None:
    workdir = synthetic.workdir()
    result = (run_finesweep(workdir) if variant == "finesweep"
              else synthetic.handwritten(trainable, TRIALS, CONCURRENT, workdir,
                                         reuse_actors=variant == "hand-written+reuse"))
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
