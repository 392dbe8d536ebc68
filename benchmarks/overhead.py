"""Orchestration overhead: finesweep vs hand-written scripts, on sleeping trials and on real fine-tuning trials.

Synthetic case: 16 trials of 4 epochs x 0.5 s (2 s each), 2 at a time: the ideal wall-clock is 16 x 2 / 2 = 16 s.
Each variant runs in its own process, from a cold start (ray.init) to ray.shutdown(), and also
reports the time spent inside ``Tuner.fit()`` alone.

- finesweep: the real ``finesweep run`` code path (Hydra composition, validation, a fresh MLflow
  SQLite store with parent + child runs, the live view, OptunaSearch random sampler, FIFO), with
  the synthetic trainable swapped in for the Lightning trial.
- hand-written: ``tune.Tuner`` with ``param_space``, ``num_samples=16``, ``max_concurrent_trials=2``,
  once with Ray's defaults and once with ``reuse_actors=True``.

Real-trial case (``--real``): 8 fine-tuning trials x 2 epochs of MiniLM (full fine-tuning, 480 training
tweets, TPE over lr and weight decay, FIFO, 2 at a time, 1 CPU each), through ``finesweep run`` (the CLI,
in-process) against benchmarks/handwritten_finetune.py (Ray Tune + Optuna + Lightning + MLflow, no
checkpoints, no test split, no registered model). finesweep's time is split into its phases: tokenising,
the search (``Tuner.fit``), model selection (test evaluation, latency, registration) and the report;
"the rest" is start-up, MLflow and shutdown. Each side runs in its own process from a cold start.

Usage: python benchmarks/overhead.py [--real] [--repeats N]   (prints a table and the ratios)
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
    from finesweep.config.compose import compose
    from finesweep.tasks.data import DataCache

    fit_time: Dict[str, float] = {}
    synthetic.timed_run_plan(fit_time)
    sweep = workdir / "overhead.yaml"
    sweep.write_text(SWEEP)
    start = time.perf_counter()
    composed = compose(str(sweep), [])
    runner.run(composed, DataCache({}), Console(file=open(os.devnull, "w")), trainable=trainable)  # raises if it fails
    total = time.perf_counter() - start
    return {"total_s": total, **fit_time}


REAL_SWEEP = """
defaults:
  - override /model: minilm
  - override /data: tweet_sentiment
data: {{max_samples: {samples}, max_length: {length}, batch_size: {batch}}}
objective: {{metric: val/accuracy, mode: max}}
search: {{sampler: tpe, num_trials: {trials}, max_concurrent: {concurrent}, seed: 0}}
scheduler: {{kind: fifo, max_epochs: {epochs}}}
space:
  optim.lr: {{distribution: loguniform, low: 2.0e-5, high: 2.0e-4}}
  optim.weight_decay: {{distribution: uniform, low: 0.0, high: 0.1}}
"""


def run_finesweep_real(workdir: Path) -> Dict[str, float]:
    """``finesweep run`` on the real-trial sweep, its phases timed."""
    import handwritten_finetune as hand

    import finesweep.execution.tuner as tuner
    from finesweep import cli, runner
    from finesweep.config.compose import compose
    from finesweep.execution.trial import resolved_precision
    from finesweep.tasks import preparation

    phases: Dict[str, float] = {}
    for owner, name, phase in ((preparation, "prepare_all", "tokenise_s"), (tuner, "run_plan", "search_s"),
                               (runner, "_select_and_register", "selection_s"), (runner, "_write_report", "report_s")):
        setattr(owner, name, synthetic.timed(getattr(owner, name), phases, phase))
    sweep = workdir / "real.yaml"
    sweep.write_text(REAL_SWEEP.format(samples=hand.MAX_SAMPLES, length=hand.MAX_LENGTH, batch=hand.BATCH,
                                       trials=hand.TRIALS, concurrent=hand.CONCURRENT, epochs=hand.EPOCHS))
    overrides = ["cluster.cpus_per_trial=1", "optim.warmup_ratio=0.1", "trainer.gradient_clip_val=1.0",
                 f"cluster.storage_path={workdir / 'ray'}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
                 f"tracking.artifact_root={workdir / 'artifacts'}"]
    start = time.perf_counter()
    code = cli.main(["run", str(sweep), *overrides])
    total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"finesweep run exited with {code}")
    config = compose(str(sweep), overrides).config
    return {"total_s": total, **phases, "precision": resolved_precision(config),  # type: ignore[dict-item]
            "model": config.model.name_or_path, "csv": config.data.path}  # type: ignore[dict-item]


def real_case(repeats: int) -> None:
    """finesweep vs the hand-written script on 8 real fine-tuning trials; a table and the ratio."""
    ours, theirs = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--variant", "finesweep-real"], capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
        ours.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
        folder = synthetic.workdir()
        out = subprocess.run([sys.executable, str(Path(__file__).with_name("handwritten_finetune.py")),
                              ours[-1]["model"], ours[-1]["csv"], str(folder), "--precision", ours[-1]["precision"]],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
        theirs.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
    fs = min(ours, key=lambda r: r["total_s"])
    hand = min(theirs, key=lambda r: r["total_s"])
    rest = fs["total_s"] - sum(fs.get(k, 0.0) for k in ("tokenise_s", "search_s", "selection_s", "report_s"))
    print(f"8 MiniLM fine-tuning trials x 2 epochs, 2 at a time, precision {fs['precision']}; "
          f"best of {repeats}, cold start to exit")
    print("| variant | total s | tokenise s | search (Tuner.fit) s | selection: test, latency, register s "
          "| report s | the rest s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| hand-written (Ray Tune + Optuna + Lightning + MLflow) | {hand['total_s']:.1f} | - | "
          f"{hand['fit_s']:.1f} | - | - | {hand['total_s'] - hand['fit_s']:.1f} |")
    print(f"| finesweep run | {fs['total_s']:.1f} | {fs.get('tokenise_s', 0):.1f} | {fs.get('search_s', 0):.1f} | "
          f"{fs.get('selection_s', 0):.1f} | {fs.get('report_s', 0):.1f} | {rest:.1f} |")
    print(f"finesweep / hand-written: {fs['total_s'] / hand['total_s']:.2f}x total, "
          f"{fs.get('search_s', 0) / hand['fit_s']:.2f}x search")


def child(variant: str) -> None:
    if variant == "finesweep-real":
        result = run_finesweep_real(synthetic.workdir())
        print("RESULT " + json.dumps(result))
        return
    workdir = synthetic.workdir()
    result = (run_finesweep(workdir) if variant == "finesweep"
              else synthetic.handwritten(trainable, TRIALS, CONCURRENT, workdir,
                                         reuse_actors=variant == "hand-written+reuse"))
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["finesweep", "hand-written", "hand-written+reuse", "finesweep-real"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--real", action="store_true", help="the real-trial case only (8 MiniLM trials)")
    args = parser.parse_args()
    if args.variant:
        child(args.variant)
        return
    if args.real:
        real_case(args.repeats)
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
