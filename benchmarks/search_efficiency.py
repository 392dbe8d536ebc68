"""Search efficiency on LCBench: does finesweep's TPE + ASHA find a good configuration with less compute?

Each (task, seed) is searched by every method with the same budget, the epochs of 50 full trials
(50 x 52 = 2,600), on YAHPO Gym's LCBench surrogate (benchmarks/lcbench.py): a trial "trains" by
reading its configuration's validation curve and reports it at epochs 4, 12, 36 and 52 (``REPORTS``).

finesweep's methods go through its real search path: the sweep file is composed by ``finesweep.config.compose.compose``
(LCBench's 7 hyperparameters are not finesweep config keys, so the key and type checks are switched off
for them), then ``tuner.search_plan`` (StudySearcher over an Optuna study, RecordingASHA) and
``tuner.run_plan`` (the Ray Tune assembly of ``finesweep run`` and its event bridge), on one local Ray
session for the whole table; MLflow is off (nothing listens but the benchmark's collector):

- random: random search, no early stopping (the baseline);
- random+ASHA, TPE (no early stopping), TPE+ASHA (stopped trials told as PRUNED, TPE fitted one rung at a time,
  ``finesweep.search.fidelity``) and finesweep's default, GP+ASHA (``search.sampler: auto``: Optuna's Gaussian
  process fitted one rung at a time);
- with ``--ablation``: TPE+ASHA with Optuna's TPE over the PRUNED trials as they are (complete ones first, then by
  how far they got), with the stopped trials told COMPLETE with their last value (as Ray's OptunaSearch does), and
  with ASHA's first rung at 12 epochs.

Hand-written Optuna, in-process, no Ray: TPE with HyperbandPruner, and with SuccessiveHalvingPruner.

Measured per (task, seed, method), from the results in the order they arrived, cut at the budget:
- speed-up: random's budget (2,600 epochs) / the epochs the method spent until its best first reached
  random search's final best (a method that never reaches it counts the whole budget: speed-up 1);
- normalised regret at 10%, 25% and 100% of the budget: (y* - best) / (y* - y_median), where y* is the
  best value any method ever saw on the task and y_median the median over 1,000 random configurations of
  their best epoch (0 = the best seen, 1 = a typical random configuration).
The table gives the median and the inter-quartile range over tasks x seeds.

With ``--peers``, other libraries' searches (``benchmarks/peers``: Syne Tune, DEHB, SMAC3, NePS) run on the same
tasks, seeds, budget and surrogate, each in its own loop and virtual environment; with ``--priors``, finesweep's
TPE+ASHA and NePS's PriorBand run with a good and a misleading prior (``lcbench.prior``).

Usage:
  python benchmarks/search_efficiency.py            # 10 tasks x 5 seeds: finesweep's and Optuna's rows, the plot
  python benchmarks/search_efficiency.py --peers --priors --runs runs.json   # the README's tables (make peers first)
  python benchmarks/search_efficiency.py --quick    # 2 tasks x 2 seeds; exit 1 unless the default beats random
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lcbench  # noqa: E402  (beside this file)
import peers  # noqa: E402
from peers import spent_epochs  # noqa: E402  (the one cost rule, shared with the peers' files)

ROOT = Path(__file__).resolve().parents[1]
MAX_EPOCHS = lcbench.EPOCHS
BUDGET = 50 * MAX_EPOCHS
GRACE, FACTOR = 4, 3  # ASHA's rungs at 4, 12 and 36 epochs (Optuna's Hyperband and SHA: the same rungs)
REPORTS = (4, 12, 36, 52)
"""Epochs a trial reports at: the rungs and the end. Every report costs Ray Tune a few milliseconds on the
driver; 4 reports instead of 52 keep the whole table under 20 minutes, and every method sees the same ones."""
CONCURRENT = 2
FRACTIONS = (0.1, 0.25, 1.0)
TASKS = ["3945", "7593", "34539", "126025", "126026", "126029", "146212", "167104", "167149", "167152"]

Result = Tuple[int, int, float]
"""(trial number, epoch, validation accuracy) in arrival order."""


@dataclass(frozen=True)
class Method:
    name: str
    sampler: str = "tpe"
    scheduler: str = "asha"
    stopped_told: str = "PRUNED"
    rungwise: bool = True
    """TPE or GP under ASHA fitted one rung at a time (finesweep's), or Optuna's TPE over every trial."""
    grace: int = GRACE
    """ASHA's grace period in epochs (its first rung)."""
    prior: str = "none"
    """``good`` or ``misleading``: every searched key's prior (``lcbench.prior``, medium confidence)."""
    peer: Optional[str] = None
    """Another library's search (``peers.PEERS``), run in its own environment."""
    run: Optional[Callable[..., List[Result]]] = field(default=None, compare=False)


def trainable(config: Dict[str, Any], task: str) -> None:
    """Report the surrogate's curve at REPORTS, like a finesweep trial reports its epochs."""
    from ray import tune

    from finesweep.search.searcher import params_of

    curve = lcbench.curve(task, params_of(config))
    for epoch in REPORTS:
        tune.report({"val/accuracy": float(curve.accuracy[epoch - 1]), "val/loss": float(curve.loss[epoch - 1]),
                     "epoch": float(epoch)})


class Collector:
    """A SweepListener that keeps every result in arrival order, and ends the search once the budget is spent.

    Ending it: the searcher's trial budget drops to the trials it has, so it proposes nothing more;
    trials still running finish (their results past the budget are cut afterwards).
    """

    def __init__(self, searcher: Any, budget: int) -> None:
        self.results: List[Result] = []
        self.searcher, self.budget = searcher, budget
        self._last: Dict[int, int] = {}
        self.spent = 0

    def trial_started(self, record: Any) -> None:
        pass

    def trial_result(self, record: Any, metrics: Dict[str, float]) -> None:
        epoch = int(metrics["epoch"])
        self.results.append((record.number, epoch, float(metrics["val/accuracy"])))
        self.spent += epoch - self._last.get(record.number, 0)
        self._last[record.number] = epoch
        if self.spent >= self.budget:
            self.searcher.budget = min(self.searcher.budget, self.searcher.asked())

    def trial_ended(self, record: Any) -> None:
        pass

    def trial_retrying(self, record: Any) -> None:
        pass


def sweep_yaml(task: str, method: Method, seed: int, trials: int) -> str:
    """The sweep file finesweep composes for one search."""
    scheduler = (f"{{kind: asha, max_epochs: {MAX_EPOCHS}, grace_period: {method.grace}, reduction_factor: {FACTOR}}}"
                 if method.scheduler == "asha" else f"{{kind: fifo, max_epochs: {MAX_EPOCHS}}}")
    def value(v: Any) -> str:  # YAML reads 1e-05 as a string: floats need a dot
        return f"{v:.9e}" if isinstance(v, float) else json.dumps(v)

    prior = {} if method.prior == "none" else lcbench.prior(task, method.prior)
    entries = {key: {**spec, **({"prior": prior[key], "prior_confidence": "medium"} if prior else {})}
               for key, spec in lcbench.space().items()}
    space = "\n".join(f"  {key}: {{{', '.join(f'{k}: {value(v)}' for k, v in spec.items())}}}"
                      for key, spec in entries.items())
    return (f"# LCBench task {task}: {method.name}\n"
            "objective: {metric: val/accuracy, mode: max}\n"
            f"search: {{sampler: {method.sampler}, num_trials: {trials}, max_concurrent: {CONCURRENT}, "
            f"seed: {seed}, start_from_config: false}}\n"  # LCBench's space is not finesweep's config: no recipe
            f"scheduler: {scheduler}\nspace:\n{space}\n")


def run_finesweep(task: str, method: Method, seed: int, workdir: Path) -> List[Result]:
    """One search through compose -> search_plan -> run_plan (Ray Tune), cut at the budget."""
    from optuna.trial import TrialState

    import finesweep.config.preflight
    import finesweep.config.space
    import finesweep.execution.tuner as tuner
    import finesweep.search.samplers
    from finesweep.config.compose import compose
    from finesweep.search.searcher import Numbering

    # ASHA spends ~10 epochs a trial on average: enough trials that the budget, not the count, ends it.
    trials = 50 if method.scheduler == "fifo" else 400
    slug = "".join(c if c.isalnum() else "-" for c in method.name.lower())
    path = workdir / f"lcbench-{task}-{slug}-{seed}.yaml"
    path.write_text(sweep_yaml(task, method, seed, trials))
    with ExitStack() as stack:  # LCBench's hyperparameters are not keys of finesweep's config
        for target in (finesweep.config.space._check_key, finesweep.config.space._check_types,
                       finesweep.config.preflight.check_values):
            stack.enter_context(mock.patch.object(sys.modules[target.__module__], target.__name__))
        sweep = compose(str(path), [f"cluster.storage_path={workdir / 'ray'}", "cluster.cpus_per_trial=1"])
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(tuner, "STOPPED_STATE", TrialState[method.stopped_told]))
        if not method.rungwise:
            stack.enter_context(mock.patch.object(finesweep.search.samplers, "fidelity_rungs", lambda config: None))
        plan = tuner.search_plan(sweep.config, sweep.params, Numbering())
        collector = Collector(plan.searcher, BUDGET)
        tuner.run_plan(sweep.config, plan, trainable, [collector], task=task)
    return cut(collector.results, BUDGET)


def run_optuna(task: str, pruner_name: str, seed: int) -> List[Result]:
    """What an Optuna user writes by hand: TPE and a pruner, in-process, one trial at a time."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (optuna.pruners.HyperbandPruner(min_resource=GRACE, max_resource=MAX_EPOCHS, reduction_factor=FACTOR)
              if pruner_name == "hyperband" else
              optuna.pruners.SuccessiveHalvingPruner(min_resource=GRACE, reduction_factor=FACTOR))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    space = lcbench.space()
    results: List[Result] = []
    spent = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        config = {}
        for key, spec in space.items():
            if spec["distribution"] == "int":
                config[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
            else:
                config[key] = trial.suggest_float(key, spec["low"], spec["high"],
                                                  log=spec["distribution"] == "loguniform")
        curve = lcbench.curve(task, config)
        best = -math.inf
        for epoch in REPORTS:
            value = float(curve.accuracy[epoch - 1])
            spent += epoch - (results[-1][1] if results and results[-1][0] == trial.number else 0)
            results.append((trial.number, epoch, value))
            best = max(best, value)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    while spent < BUDGET:
        study.optimize(objective, n_trials=1)
    return cut(results, BUDGET)


# --- what a search's results say -----------------------------------------------------------------

def cut(results: Sequence[Result], budget: int) -> List[Result]:
    """The results that fit in the budget (in arrival order)."""
    return [r for r, spent in zip(results, spent_epochs(results), strict=True) if spent <= budget]


def best_by(results: Sequence[Result], epochs: float) -> float:
    """The best value seen once ``epochs`` epochs were spent (NaN before the first result)."""
    best = math.nan
    for (_, _, value), spent in zip(results, spent_epochs(results), strict=True):
        if spent > epochs:
            break
        best = value if math.isnan(best) else max(best, value)
    return best


def epochs_to_reach(results: Sequence[Result], target: float) -> Optional[int]:
    """Epochs spent when the best first reached ``target``; None if it never did."""
    for (_, _, value), spent in zip(results, spent_epochs(results), strict=True):
        if value >= target:
            return spent
    return None


def regret(best: float, optimum: float, typical: float) -> float:
    """(y* - best) / (y* - y_typical), at least 0."""
    return max(0.0, (optimum - best) / (optimum - typical)) if optimum > typical else 0.0


@functools.lru_cache(maxsize=None)
def typical_value(task: str, samples: int = 1000, seed: int = 12345) -> float:
    """The median over random configurations of their best epoch: what regret 1 means."""
    rng = np.random.default_rng(seed)
    values = [float(lcbench.curve(task, lcbench.random_config(rng)).accuracy.max()) for _ in range(samples)]
    return float(np.median(values))


OURS = "GP+ASHA (finesweep's default)"
TPE_ASHA = "TPE+ASHA"
METHODS = (
    Method("random", sampler="random", scheduler="fifo"),
    Method("random+ASHA", sampler="random"),
    Method("TPE", scheduler="fifo"),
    Method(TPE_ASHA),
    Method(OURS, sampler="auto"),
    Method("Optuna TPE+Hyperband (by hand)", run=lambda task, seed, _: run_optuna(task, "hyperband", seed)),
    Method("Optuna TPE+SHA (by hand)", run=lambda task, seed, _: run_optuna(task, "sha", seed)),
)
"""finesweep's default is ``search.sampler: auto``, a GP fitted one ASHA rung at a time on this flat space
(``config/sampler_choice.py``); TPE+ASHA is ``sampler: tpe``, the default before it."""
SLOW_PEERS = ("Syne Tune MOBSTER", "Syne Tune DyHPO")
"""Peers whose Gaussian-process refits with their authors' settings take 6-10 minutes a search on 2 cores (5-8 hours
for the table): only with ``--slow-peers``."""
PEERS = tuple(Method(name, peer=name) for name in peers.PEERS if name not in SLOW_PEERS)
"""With ``--peers``: other libraries' multi-fidelity searches, on the same tasks, seeds, budget and surrogate."""
PRIORS = (Method(f"{TPE_ASHA}, good prior", prior="good"), Method(f"{TPE_ASHA}, misleading prior", prior="misleading"),
          Method("NePS PriorBand, good prior", peer="NePS PriorBand", prior="good"),
          Method("NePS PriorBand, misleading prior", peer="NePS PriorBand", prior="misleading"))
"""With ``--priors``: finesweep (TPE: a prior settles ``auto`` to TPE) and PriorBand given a good prior (a
configuration from the best 5% of a 1,000-row random table of the task, ``lcbench.prior``) and a misleading one
(from its worst 25%), medium confidence."""
ABLATION = Method("TPE+ASHA, Optuna's TPE over PRUNED trials", rungwise=False)
"""With ``--ablation``: stopped trials PRUNED but TPE fitted over every trial, as Optuna's TPE ranks them (the
rung-wise fit switched off), to tell the two halves of the rung-wise TPE apart (about 3.5 more minutes)."""
RAY_OPTUNA = Method("TPE+ASHA, stopped told COMPLETE (as Ray's OptunaSearch)", rungwise=False, stopped_told="COMPLETE")
"""With ``--ablation``: stopped trials told COMPLETE with their last value, as Ray Tune's OptunaSearch tells them."""
LATE_START = Method("TPE+ASHA, grace period 12", grace=12)
"""With ``--ablation``: TPE+ASHA with ASHA's first rung at 12 epochs instead of 4 (rungs 12, 36, 52): how
much of a search's end depends on how well the first rung ranks configurations (Hyper-Tune's bracket question)."""


def search_all(tasks: Sequence[str], seeds: int, methods: Sequence[Method], peer_results: Optional[Path] = None,
               known: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every method on every (task, seed): the results. finesweep's in one Ray session, then each peer's in its
    own environment (``peers.run_peer``; ``peer_results`` keeps and reuses their files). A search in ``known``
    (an earlier run's ``--runs`` file) is not run again."""
    import ray

    from finesweep.execution.cluster import DRIVER_ENV

    os.environ.update({**DRIVER_ENV, "FINESWEEP_PROJECT": str(ROOT)})  # as `finesweep run` sets them
    workdir = Path(tempfile.mkdtemp(prefix="fs-lcbench-"))
    runs: Dict[str, Any] = {key: run for key, run in (known or {}).items()
                            if any(key.endswith(f"/{m.name}") for m in methods)}
    ours = [m for m in methods if m.peer is None
            and any(f"{t}/{s}/{m.name}" not in runs for t in tasks for s in range(seeds))]
    if ours:
        ray.init(num_cpus=CONCURRENT, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for task in tasks:
            for seed in range(seeds):
                for method in ours:
                    if f"{task}/{seed}/{method.name}" in runs:
                        continue
                    start = time.perf_counter()
                    results = (run_finesweep(task, method, seed, workdir) if method.run is None
                               else method.run(task, seed, workdir))
                    runs[f"{task}/{seed}/{method.name}"] = {"results": results, "seconds": time.perf_counter() - start}
                    print(f"{task} seed {seed} {method.name}: {len(results)} results, "
                          f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    finally:
        if ours:
            ray.shutdown()
    for method in (m for m in methods if m.peer is not None):
        assert method.peer is not None
        if all(f"{t}/{s}/{method.name}" in runs for t in tasks for s in range(seeds)):
            continue
        try:
            found = peers.run_peer(method.peer, tasks, seeds, BUDGET, method.prior, peer_results)
        except RuntimeError as exc:  # a peer that cannot run here (ifBO without its weights) is left out, said why
            print(f"{method.name}: not measured: {str(exc).strip().splitlines()[-1]}", file=sys.stderr, flush=True)
            continue
        for key, run in found.items():
            runs[f"{key}/{method.name}"] = {"results": [tuple(r) for r in run["results"]], "seconds": run["seconds"]}
        print(f"{method.name}: {sum(r['seconds'] for r in found.values()):.0f} s", file=sys.stderr, flush=True)
    return runs


def measure(runs: Dict[str, Any], tasks: Sequence[str], seeds: int, methods: Sequence[Method]) -> Dict[str, Any]:
    """Speed-ups and regrets per (task, seed, method)."""
    rows: Dict[str, Dict[str, List[float]]] = {m.name: {"speedup": [], "reached": [], **{f"regret@{f:g}": []
                                                                                          for f in FRACTIONS}}
                                               for m in methods}
    for task in tasks:
        optimum = max(v for key, run in runs.items() if key.startswith(f"{task}/") for _, _, v in run["results"])
        typical = typical_value(task)
        for seed in range(seeds):
            target = best_by(runs[f"{task}/{seed}/random"]["results"], BUDGET)
            for method in methods:
                results = runs[f"{task}/{seed}/{method.name}"]["results"]
                reached = epochs_to_reach(results, target)
                rows[method.name]["speedup"].append(BUDGET / (reached or BUDGET))
                rows[method.name]["reached"].append(float(reached is not None))
                for fraction in FRACTIONS:
                    rows[method.name][f"regret@{fraction:g}"].append(
                        regret(best_by(results, fraction * BUDGET), optimum, typical))
    return rows


def table(rows: Dict[str, Dict[str, List[float]]], tasks: int, seeds: int) -> str:
    """The README's markdown table: median [IQR] per method."""
    def cell(values: List[float], digits: int) -> str:
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return f"{median:.{digits}f} [{q1:.{digits}f}-{q3:.{digits}f}]"

    lines = [f"LCBench surrogate, {tasks} tasks x {seeds} seeds, budget {BUDGET} epochs (50 full trials), "
             f"{CONCURRENT} trials at a time; median [IQR]",
             "| method | speed-up over random | reached random's best | regret @10% | regret @25% | regret @100% |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {cell(row['speedup'], 1)}x | {100 * np.mean(row['reached']):.0f}% | "
                     + " | ".join(cell(row[f"regret@{f:g}"], 3) for f in FRACTIONS) + " |")
    return "\n".join(lines)


def plot(runs: Dict[str, Any], tasks: Sequence[str], seeds: int, methods: Sequence[Method], path: Path) -> None:
    """Median normalised regret against the budget spent, one line per method."""
    import plotly.graph_objects as go

    grid = np.linspace(0.02, 1.0, 50) * BUDGET
    figure = go.Figure()
    for method in methods:
        curves = []
        for task in tasks:
            optimum = max(v for key, run in runs.items() if key.startswith(f"{task}/") for _, _, v in run["results"])
            typical = typical_value(task)
            for seed in range(seeds):
                results = runs[f"{task}/{seed}/{method.name}"]["results"]
                curves.append([regret(best_by(results, g), optimum, typical) for g in grid])
        dash = "dash" if method.prior != "none" else "dot" if method.peer is not None else "solid"
        figure.add_scatter(x=grid / MAX_EPOCHS, y=np.nanmedian(np.array(curves, dtype=float), axis=0), name=method.name,
                           mode="lines", line={"dash": dash, "width": 3 if method.name == OURS else 2})
    figure.update_layout(title="LCBench: median normalised regret by compute spent", template="plotly_white",
                         xaxis_title="compute spent (full-trial equivalents, 52 epochs each)",
                         yaxis_title="normalised regret (log)", yaxis_type="log", width=900, height=520)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_image(str(path))


def prior_table(rows: Dict[str, Dict[str, List[float]]]) -> str:
    """Each search with a prior against itself without one, paired by task and seed: how many times faster it
    reaches random search's final best (its speed-up over random with the prior / without), and its final regret."""
    def cell(values: List[float], digits: int) -> str:
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return f"{median:.{digits}f} [{q1:.{digits}f}-{q3:.{digits}f}]"

    lines = ["| search | prior | speed-up over random | x faster than without the prior (paired) | "
             "reached random's best | regret @25% | regret @100% |", "|---|---|---:|---:|---:|---:|---:|"]
    for method in PRIORS:
        base = TPE_ASHA if method.peer is None else method.peer
        if method.name not in rows or base not in rows:
            continue
        for name, label in ((base, "none"), (method.name, method.prior)):
            row = rows[name]
            ratio = [w / wo for w, wo in zip(row["speedup"], rows[base]["speedup"], strict=True)]
            lines.append(f"| {base} | {label} | {cell(row['speedup'], 1)}x | {cell(ratio, 2)}x | "
                         f"{100 * np.mean(row['reached']):.0f}% | {cell(row['regret@0.25'], 3)} | "
                         f"{cell(row['regret@1'], 3)} |")
    return "\n".join(dict.fromkeys(lines))  # each search's no-prior row once


def chosen_methods(args: argparse.Namespace) -> List[Method]:
    """The rows a run measures: finesweep's and Optuna's, then the peers and prior searches asked for."""
    methods = [*METHODS[:5], RAY_OPTUNA, ABLATION, LATE_START, *METHODS[5:]] if args.ablation else list(METHODS)
    if args.peers:
        methods += PEERS
    if args.slow_peers:
        methods += [Method(name, peer=name) for name in SLOW_PEERS]
    if args.priors:
        methods += [m for m in PEERS if m.peer == "NePS PriorBand" and m not in methods] + list(PRIORS)
    return methods


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 tasks x 2 seeds; exit 1 unless the default beats random")
    parser.add_argument("--tasks", type=int, default=len(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ablation", action="store_true",
                        help="also TPE+ASHA without the rung-wise fit, as Ray's OptunaSearch, and with grace 12")
    parser.add_argument("--peers", action="store_true", help="also Syne Tune, DEHB, SMAC3 and NePS (make peers)")
    parser.add_argument("--slow-peers", action="store_true", help="also Syne Tune's MOBSTER and DyHPO (hours)")
    parser.add_argument("--priors", action="store_true",
                        help="also finesweep and NePS PriorBand with a good and a misleading prior")
    parser.add_argument("--peer-results", type=Path, default=None,
                        help="a folder to keep the peers' results in and reuse them from")
    parser.add_argument("--runs", type=Path, default=None,
                        help="a JSON file to keep every search's results in; searches already there are not run again")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "search_efficiency.png")
    args = parser.parse_args(argv)
    tasks, seeds = (TASKS[:2], 2) if args.quick else (TASKS[:args.tasks], args.seeds)
    start = time.perf_counter()
    methods = chosen_methods(args)
    known = json.loads(args.runs.read_text()) if args.runs and args.runs.is_file() else {}
    runs = search_all(tasks, seeds, methods, args.peer_results, known)
    methods = [m for m in methods if all(f"{t}/{s}/{m.name}" in runs for t in tasks for s in range(seeds))]
    if args.runs:
        args.runs.write_text(json.dumps({**known, **runs}))
    runs = {key: {**run, "results": [tuple(r) for r in run["results"]]} for key, run in runs.items()}
    rows = measure(runs, tasks, seeds, methods)
    print(table({name: row for name, row in rows.items() if name not in {m.name for m in PRIORS}}, len(tasks), seeds))
    if args.priors:
        print("\n" + prior_table(rows))
    if not args.quick:
        plot(runs, tasks, seeds, methods, args.plot)
    spent = {m.name: sum(r["seconds"] for k, r in runs.items() if k.endswith(f"/{m.name}")) for m in methods}
    print("seconds per method: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in spent.items()))
    print(f"whole table: {time.perf_counter() - start:.0f} s")
    ours, random = rows[OURS], rows["random"]
    better = np.median(ours["regret@0.25"]) < np.median(random["regret@0.25"]) and np.median(ours["speedup"]) > 1
    print(f"{OURS} beats random on the median" if better else f"{OURS} does NOT beat random on the median")
    return 0 if better else 1


if __name__ == "__main__":
    raise SystemExit(main())
