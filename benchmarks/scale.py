"""Scale: 100, 300 and 1,000 trials through `finesweep run`, 32 at a time, against a hand-written Ray Tune script.

Every trial reports 3 times and sleeps 0.5 s before each report (1.5 s a trial). Ray is started with 32
logical CPUs (``num_cpus=32``: fake resources on a 2-core machine; finesweep's own local ``ray.init`` is
given the same through a wrapper), and each trial asks for 1.

- finesweep: ``runner.run``, the code of ``finesweep run`` (composition, the sweep's journal, the live
  view drawn on a terminal console (rich Live, written to /dev/null), MLflow's default SQLite store with a
  parent and a child run per trial, the report at the end), random search, FIFO, model selection off.
- hand-written: ``tune.Tuner`` with the same trainable, ``param_space``, ``num_samples``,
  ``max_concurrent_trials=32`` and ``reuse_actors=True``, no MLflow.

Each variant runs in its own process, from ``ray.init`` to shutdown. Driver time per result is the time the
driver spends in finesweep's Ray Tune callbacks (the event bridge and every listener behind it: the log,
the live view, the MLflow queue) divided by the results; results per second is results / Tuner.fit time;
peak RSS is the driver process's (ru_maxrss).

Usage: python benchmarks/scale.py [--quick]   (--quick: 100 trials only)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import synthetic  # beside this file

CONCURRENT, REPORTS, SLEEP_S = 32, 3, 0.5

trainable = synthetic.sleeping_trainable(REPORTS, SLEEP_S)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_finesweep(trials: int, workdir: Path) -> Dict[str, float]:
    import ray
    from rich.console import Console

    import finesweep.execution.tuner as tuner
    from finesweep import runner
    from finesweep.config.compose import compose
    from finesweep.tasks.data import DataCache

    ray.init = functools.partial(ray.init, num_cpus=CONCURRENT)  # finesweep's local Ray, with fake CPUs
    driver = {"callback_s": 0.0, "results": 0, "fit_s": 0.0}
    bridge = tuner._EventBridge
    for name in ("on_trial_start", "on_trial_result", "on_checkpoint", "on_trial_complete"):
        setattr(bridge, name, _timed(getattr(bridge, name), driver, counts=name == "on_trial_result"))
    synthetic.timed_run_plan(driver)
    sweep = workdir / "scale.yaml"
    sweep.write_text(synthetic.SWEEP.format(trials=trials, concurrent=CONCURRENT, reports=REPORTS))
    console = Console(file=open(os.devnull, "w"), force_terminal=True, width=160)  # the live view is drawn
    start = time.perf_counter()
    runner.run(compose(str(sweep), []), DataCache({}), console, trainable=trainable)  # raises if it fails
    total = time.perf_counter() - start
    lost = _missing_steps(workdir, trials)
    return {"total_s": total, "fit_s": driver["fit_s"], "callback_s": driver["callback_s"],
            "results": driver["results"], "rss_mb": _peak_rss_mb(), "lost": lost}


def _timed(method: Any, driver: Dict[str, float], counts: bool) -> Any:
    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            driver["callback_s"] += time.perf_counter() - start
            driver["results"] += counts

    return timed


def _missing_steps(workdir: Path, trials: int) -> int:
    """Trials whose MLflow child run lacks a metric step, or has them out of order (0 = nothing lost)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (experiment,) = client.search_experiments(filter_string="name = 'scale'")
    children = [r for r in client.search_runs([experiment.experiment_id], max_results=5000)
                if "mlflow.parentRunId" in r.data.tags]
    missing = trials - len(children)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")]
        missing += steps != list(range(1, REPORTS + 1))
    return missing


def child(variant: str, trials: int) -> None:
    workdir = synthetic.workdir()
    if variant == "finesweep":
        result = run_finesweep(trials, workdir)
    else:
        result = {**synthetic.handwritten(trainable, trials, CONCURRENT, workdir, num_cpus=CONCURRENT),
                  "results": trials * REPORTS, "rss_mb": _peak_rss_mb()}
    print("RESULT " + json.dumps(result))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["finesweep", "hand-written"])
    parser.add_argument("--trials", type=int, nargs="*", default=[100, 300, 1000])
    parser.add_argument("--quick", action="store_true", help="100 trials only")
    args = parser.parse_args(argv)
    if args.variant:
        child(args.variant, args.trials[0])
        return 0
    rows: List[Any] = []
    for trials in ([100] if args.quick else args.trials):
        measured = {}
        for variant in ("hand-written", "finesweep"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--trials", str(trials)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stdout[-2000:] + out.stderr[-4000:])
            measured[variant] = json.loads(out.stdout.split("RESULT ", 1)[1])
        rows.append((trials, measured["finesweep"], measured["hand-written"]))
    ideal = {trials: trials * REPORTS * SLEEP_S / CONCURRENT for trials, _, _ in rows}
    print(f"trials of {REPORTS} reports x {SLEEP_S} s, {CONCURRENT} at a time (fake CPUs); cold start to shutdown")
    print("| trials | ideal s | hand-written s | finesweep s | ratio | finesweep results/s | driver ms/result "
          "| driver peak RSS MB | lost steps |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for trials, ours, hand in rows:
        print(f"| {trials} | {ideal[trials]:.0f} | {hand['total_s']:.1f} | {ours['total_s']:.1f} | "
              f"{ours['total_s'] / hand['total_s']:.2f}x | {ours['results'] / ours['fit_s']:.0f} | "
              f"{1000 * ours['callback_s'] / ours['results']:.2f} | {ours['rss_mb']:.0f} | {ours['lost']} |")
    return 0 if all(ours["lost"] == 0 for _, ours, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
