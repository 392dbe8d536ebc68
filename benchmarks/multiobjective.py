"""Multi-objective search on LCBench: does MO-ASHA + MOTPE reach a better accuracy/runtime front for the compute?

Two objectives per trial: maximise the validation accuracy at the last epoch it trained, minimise its training
runtime, the surrogate's ``time`` at that epoch. YAHPO's LCBench ``time`` is *cumulative*: the seconds from the
start of training to the end of that epoch (it rises epoch by epoch), so a trial that ran e epochs costs
``time[e]``. The surrogate's curve dips now and then (a few configurations in a hundred); a running maximum
keeps it from ever falling.

That cumulative cost (``--cost cumulative``, the default) makes a trial MO-ASHA stopped after one epoch look cheap,
and MOTPE, told a stopped trial's low-fidelity values as COMPLETE, chases such configurations. finesweep's real cost
metrics (inference latency, model size) are properties of the configuration, whatever it trained for:
``--cost per-epoch`` measures that kind of cost, the configuration's mean seconds per epoch over its full budget
(``time[MAX_T] / MAX_T``, after the running maximum), the same at every report of the trial from its first on.

Every method searches each (task, seed) with the same compute, ``BUDGET`` epochs summed over trials (the epochs of
``FULL_TRIALS`` full trials), trials one at a time, each reporting epoch by epoch (1..``MAX_T``) until the
scheduler says stop or the budget is spent (the last trial is cut at the epoch the budget runs out):

- MO-ASHA + MOTPE (finesweep): ``ParetoASHA`` (grace 1, reduction factor 3: rungs at 1, 3 and 9 epochs) over
  finesweep's ``StudySearcher`` on a two-objective study; every proposal by ``make_sampler`` with the trial's
  ``proposal_seed``, a third of them at random (``samplers.ASHA_RANDOM_SHARE``), as ``finesweep run`` does. A
  stopped trial is told COMPLETE with its values at its best epoch (``searcher.told_state``, ``StudySearcher``).
- random + MO-ASHA: the same with Optuna's random sampler;
- random, NSGA-II, MOTPE: every trial its full ``MAX_T`` epochs (no early stopping), sampler from ``make_sampler``.

``make_sampler`` sizes the samplers by the trials a sweep asks for: the full trials that fit (50; 10 with
``--quick``), or under MO-ASHA the epochs (every trial costs at least one). So NSGA-II's population is 12 (4 with
``--quick``), and MOTPE starts from 10 random trials (2 with ``--quick``, 10 under MO-ASHA either way). Every
proposal's seed depends on the seed and the trial's number alone, so the random starts of random, NSGA-II and MOTPE
are the same configurations (common random numbers).

No Ray: the scheduler is driven in-process through ``RecordingASHA.replay`` (what resume feeds it) and the searcher
through its ``suggest``/``observe``/``tell``, so the table measures the decisions, not Ray's overhead.

Measured per (task, seed, method): the hypervolume of the front of every ended trial's (accuracy, runtime) point
(each trial at the last epoch it reached), once 25%, 50% and 100% of the budget was spent. Per task, accuracy is read on
[0, 1] (reference 0) and runtime divided by a fixed reference: the largest full-budget (``MAX_T`` epochs) runtime
(or, with ``--cost per-epoch``, the largest per-epoch cost) among ``REFERENCE_SAMPLES`` random configurations,
drawn with one seed before any method runs; a point slower than it adds nothing. So a hypervolume is in [0, 1].
The table gives the median and the inter-quartile range over tasks x seeds, the same for each method's hypervolume
minus random search's on the same (task, seed) (the tasks differ far more than the methods do), and each method's
wall time summed over them.

Usage:
  python benchmarks/multiobjective.py            # 10 tasks x 5 seeds (~9 min with 2 processes on 2 cores)
  python benchmarks/multiobjective.py --quick    # 2 tasks x 2 seeds, a smaller budget (< 1 min)
  python benchmarks/multiobjective.py --cost per-epoch   # the cost a property of the configuration, like a latency
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lcbench  # noqa: E402  (beside this file)
import search_efficiency as se  # noqa: E402  (its tasks, and how compute is counted)

MAX_T = 27
"""A trial's full budget in epochs: ASHA's rungs at 1, 3, 9 and 27 are all whole rungs (52 would add a short one)."""
GRACE, FACTOR = 1, 3
FULL_TRIALS = 50
BUDGET = FULL_TRIALS * MAX_T
"""Epochs each method may train, summed over its trials: 50 full trials, 1,350 epochs (MO-ASHA runs ~200-400
trials in it; its rung decisions, which rank a whole rung each time, are most of the table's time)."""
QUICK_FULL_TRIALS = 10
FRACTIONS = (0.25, 0.5, 1.0)
REFERENCE_SAMPLES, REFERENCE_SEED = 256, 12345
ACCURACY, RUNTIME = "val/accuracy", "train/seconds"
TASKS = se.TASKS
SEEDS = 5

Value = Tuple[float, float]
"""(validation accuracy in [0, 1], cost in seconds) at one epoch."""
Result = Tuple[int, int, Value]
"""(trial number, epoch, value) in arrival order: ``search_efficiency``'s counting of compute reads it as is."""


@dataclass(frozen=True)
class Method:
    name: str
    sampler: str
    asha: bool


METHODS = (
    Method("MO-ASHA + MOTPE (finesweep)", "tpe", asha=True),
    Method("random + MO-ASHA", "random", asha=True),
    Method("random", "random", asha=False),
    Method("NSGA-II", "nsga2", asha=False),
    Method("MOTPE", "tpe", asha=False),
)
BASELINE = "random"


class Cost(Enum):
    """What a trial's runtime objective measures."""

    cumulative = "cumulative"
    """The seconds from the start of training to the end of the last epoch the trial ran: stopping early is cheap."""
    per_epoch = "per-epoch"
    """The configuration's mean seconds per epoch over its full ``MAX_T`` epochs, the same at every report: a
    property of the configuration, like an inference latency."""


COST_TITLES = {Cost.cumulative: "cumulative training seconds up to the trial's last epoch",
               Cost.per_epoch: f"the configuration's mean seconds per epoch over its {MAX_T} epochs"}


@dataclass(frozen=True)
class Run:
    """One search: its results in arrival order, the trials it ran and stopped early, its wall time."""

    results: List[Result]
    trials: int
    stopped: int
    seconds: float


# --- the surrogate, with its runtime -------------------------------------------------------------

def timed_curves(task: str, configs: Sequence[Mapping[str, float]]) -> np.ndarray:
    """(configs, MAX_T, 2): accuracy in [0, 1] and cumulative seconds by epoch (index 0 = epoch 1), one ONNX call.

    ``lcbench.curve`` reads accuracy and loss only; this reads ``time`` too, with the same inputs.
    """
    epochs = np.tile(np.arange(1, MAX_T + 1, dtype=np.float32), len(configs))
    x_cont = np.empty((len(epochs), len(lcbench.CONTINUOUS)), dtype=np.float32)
    x_cont[:, 0] = epochs
    for column, name in enumerate(lcbench.HYPERPARAMETERS, start=1):
        x_cont[:, column] = np.repeat([float(c[name]) for c in configs], MAX_T)
    x_cat = np.full((len(epochs), 1), lcbench._codes()[str(task)], dtype=np.int32)
    session = lcbench._session()
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, {names[0]: x_cat, names[1]: x_cont})[0].reshape(len(configs), MAX_T, -1)
    accuracy = np.clip(out[..., lcbench.TARGETS.index("val_accuracy")] / 100.0, 0.0, 1.0)
    seconds = np.maximum.accumulate(out[..., lcbench.TARGETS.index("time")], axis=1)
    return np.stack([accuracy, seconds], axis=-1).astype(float)


def cost_curves(task: str, configs: Sequence[Mapping[str, float]], cost: Cost) -> np.ndarray:
    """(configs, MAX_T, 2): accuracy in [0, 1] and the cost a trial reports at each epoch (index 0 = epoch 1)."""
    curves = timed_curves(task, configs)
    if cost is Cost.per_epoch:
        curves[..., 1] = curves[:, -1:, 1] / MAX_T  # (configs, 1) broadcast over the epochs
    return curves


def params() -> Tuple[Any, ...]:
    """LCBench's 7 hyperparameters as finesweep ``Param``s."""
    from finesweep.config.space import Distribution, Param

    return tuple(Param(key, Distribution(spec["distribution"]), low=spec["low"], high=spec["high"],
                       log=bool(spec.get("log", False)))
                 for key, spec in lcbench.space().items())


@functools.lru_cache(maxsize=None)
def reference_seconds(task: str, cost: Cost = Cost.cumulative) -> float:
    """The largest full-budget cost among REFERENCE_SAMPLES random configurations: the runtime axis's end."""
    import optuna

    from finesweep.config.space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=REFERENCE_SEED))
    configs = [suggest(study.ask(), params()) for _ in range(REFERENCE_SAMPLES)]
    return float(cost_curves(task, configs, cost)[:, -1, 1].max())


# --- one search ----------------------------------------------------------------------------------

def searcher(method: Method, seed: int, budget: int) -> Any:
    """finesweep's StudySearcher over a two-objective study, proposing as ``samplers.sampler_factory`` would."""
    from finesweep.config import Mode, ObjectiveConfig, ObjectiveTerm, Sampler, SearchConfig
    from finesweep.search import fidelity, samplers
    from finesweep.search.searcher import Numbering, StudySearcher, new_study

    objective = ObjectiveConfig(metric=ACCURACY, mode=Mode.max, also=[ObjectiveTerm(metric=RUNTIME, mode=Mode.min)])
    # Trials the sweep would ask for: the full trials that fit, or under ASHA as many as could (one epoch each).
    trials = budget // GRACE if method.asha else budget // MAX_T
    search = SearchConfig(sampler=Sampler(method.sampler), num_trials=trials, seed=seed, start_from_config=False)
    share = samplers.ASHA_RANDOM_SHARE if method.asha else 0.0
    # under MO-ASHA, MOTPE is fitted one rung at a time, as samplers.sampler_factory does (fidelity.RungMOTPESampler)
    milestones = fidelity.rungs(GRACE, FACTOR, MAX_T) if method.asha else None
    space = params()

    def sampler(proposal_seed: int) -> Any:
        return samplers.make_sampler(search, space, seed=proposal_seed, random_share=share, milestones=milestones,
                                     objective=objective)

    return StudySearcher(new_study([Mode.max, Mode.min]), space, sampler, seed, trials, Mode.max, Numbering(),
                         objective=objective)


def scheduler() -> Any:
    """MO-ASHA as ``tuner.make_scheduler`` builds it for this objective."""
    from finesweep.search.moasha import ParetoASHA

    asha = ParetoASHA(objectives=[(ACCURACY, "max"), (RUNTIME, "min")], constraints={}, stop_infeasible=False,
                      time_attr="epoch", max_t=MAX_T, grace_period=GRACE, reduction_factor=FACTOR)
    asha.set_search_properties(ACCURACY, "max")
    return asha


def search(task: str, method: Method, seed: int, budget: int, cost: Cost = Cost.cumulative) -> Run:
    """One method on one (task, seed): trials one at a time until ``budget`` epochs are spent."""
    from optuna.trial import TrialState

    from finesweep.search.searcher import MARKER, params_of

    start = time.perf_counter()
    study, asha = searcher(method, seed, budget), scheduler() if method.asha else None
    results: List[Result] = []
    spent, trials = 0, 0
    while spent < budget:
        config = study.suggest(f"trial-{trials}")
        number, optuna_number = config[MARKER]["number"], config[MARKER]["optuna"]
        curve = cost_curves(task, [params_of(config)], cost)[0]
        trials += 1
        for epoch in range(1, MAX_T + 1):
            accuracy, seconds = curve[epoch - 1]
            spent += 1
            results.append((number, epoch, (accuracy, seconds)))
            study.observe(number, optuna_number, epoch, accuracy, {ACCURACY: accuracy, RUNTIME: seconds})
            report = {"epoch": float(epoch), ACCURACY: accuracy, RUNTIME: seconds}
            if spent >= budget or (asha is not None and asha.replay(number, [report]) == "STOP"):
                break
        stopped = asha is not None and number in asha.stopped_early
        study.tell(number, optuna_number, TrialState.PRUNED if stopped else TrialState.COMPLETE)
    stopped_count = len(asha.stopped_early) if asha is not None else 0
    return Run(results, trials, stopped_count, time.perf_counter() - start)


# --- what a search's results say -----------------------------------------------------------------

def front_points(results: Sequence[Result], epochs: float) -> List[Value]:
    """The (accuracy, seconds) of every trial that had ended once ``epochs`` epochs were spent, at its last epoch.

    A trial still running then is left out: its point would move (slower, maybe more accurate) and the front
    could shrink; so the hypervolume never falls as the budget grows.
    """
    ends: Dict[int, Tuple[int, Value]] = {}  # trial number -> (epochs spent at its last result, that value)
    for (number, _, value), spent in zip(results, se.spent_epochs(results), strict=True):
        ends[number] = (spent, value)
    return [value for spent, value in ends.values() if spent <= epochs]


def normalised_hypervolume(points: Sequence[Value], reference: float) -> float:
    """Hypervolume of (accuracy, runtime / reference) points against (0, 1), accuracy up and runtime down: [0, 1]."""
    from finesweep.search.pareto import hypervolume

    return hypervolume([(accuracy, -seconds / reference) for accuracy, seconds in points], (0.0, -1.0))


def hypervolumes(results: Sequence[Result], budget: int, reference: float) -> Dict[float, float]:
    """The normalised hypervolume at each fraction of the budget."""
    return {f: normalised_hypervolume(front_points(results, f * budget), reference) for f in FRACTIONS}


# --- the table -----------------------------------------------------------------------------------

def _one(job: Tuple[str, int, int, Tuple[Method, ...], Cost]) -> Dict[str, Any]:
    task, seed, budget, methods, cost = job
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reference = reference_seconds(task, cost)
    out: Dict[str, Any] = {}
    for method in methods:
        run = search(task, method, seed, budget, cost)
        out[method.name] = {"hv": hypervolumes(run.results, budget, reference), "trials": run.trials,
                            "stopped": run.stopped, "spent": se.spent_epochs(run.results)[-1],
                            "seconds": run.seconds}
        print(f"{task} seed {seed} {method.name}: {run.trials} trials, {run.stopped} stopped, "
              f"{run.seconds:.1f} s", file=sys.stderr, flush=True)
    return out


def benchmark(tasks: Sequence[str], seeds: int, budget: int, methods: Sequence[Method] = METHODS,
              jobs: int = 1, cost: Cost = Cost.cumulative) -> Dict[str, List[Dict[str, Any]]]:
    """Every method on every (task, seed): per method, one measurement per (task, seed).

    Each (task, seed) is one job; with ``jobs`` > 1 they run in that many processes.
    """
    work = [(task, seed, budget, tuple(methods), cost) for task in tasks for seed in range(seeds)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            done = list(pool.map(_one, work))
    else:
        done = [_one(job) for job in work]
    return {m.name: [d[m.name] for d in done] for m in methods}


def table(rows: Mapping[str, List[Dict[str, Any]]], tasks: int, seeds: int, budget: int,
          cost: Cost = Cost.cumulative) -> str:
    """The markdown table: median [IQR] per method, its gain over random search on the same (task, seed), and its
    wall time summed over tasks x seeds."""
    def cell(values: Sequence[float], digits: int, sign: str = "") -> str:
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return f"{median:{sign}.{digits}f} [{q1:{sign}.{digits}f} to {q3:{sign}.{digits}f}]"

    baseline = [r["hv"][1.0] for r in rows[BASELINE]]
    lines = [f"LCBench surrogate, {tasks} tasks x {seeds} seeds, budget {budget} epochs ({budget // MAX_T} full "
             f"trials of {MAX_T} epochs), one trial at a time; MO-ASHA grace {GRACE}, reduction factor {FACTOR}; "
             f"runtime cost {cost.value} ({COST_TITLES[cost]}); "
             "hypervolume of (val accuracy, -runtime / reference), median [IQR]",
             "| method | HV @25% | HV @50% | HV @100% | HV @100% minus random's (paired) | trials | stopped early "
             "| wall s (sum) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in rows.items():
        paired = [r["hv"][1.0] - b for r, b in zip(runs, baseline, strict=True)]
        lines.append(f"| {name} | " + " | ".join(cell([r["hv"][f] for r in runs], 3) for f in FRACTIONS)
                     + f" | {cell(paired, 3, '+')} | {np.median([r['trials'] for r in runs]):.0f} | "
                     f"{np.median([r['stopped'] for r in runs]):.0f} | {sum(r['seconds'] for r in runs):.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"2 tasks x 2 seeds, {QUICK_FULL_TRIALS} full trials")
    parser.add_argument("--tasks", type=int, default=len(TASKS))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--full-trials", type=int, default=FULL_TRIALS, help="the budget, in full trials")
    parser.add_argument("--jobs", type=int, default=2, help="processes, one (task, seed) each at a time")
    parser.add_argument("--cost", choices=[c.value for c in Cost], default=Cost.cumulative.value,
                        help="the runtime objective: cumulative seconds at the last epoch run, or the "
                             "configuration's mean seconds per epoch (a property of it, like a latency)")
    args = parser.parse_args(argv)
    tasks, seeds = (TASKS[:2], 2) if args.quick else (TASKS[:args.tasks], args.seeds)
    budget = (QUICK_FULL_TRIALS if args.quick else args.full_trials) * MAX_T
    start = time.perf_counter()
    cost = Cost(args.cost)
    rows = benchmark(tasks, seeds, budget, jobs=args.jobs, cost=cost)
    print(table(rows, len(tasks), seeds, budget, cost))
    print(f"whole table: {time.perf_counter() - start:.0f} s ({args.jobs} processes)")
    return 0 if all(math.isfinite(r["hv"][1.0]) for runs in rows.values() for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
