"""The command line: a thin layer over the Python API (``finesweep.api``) and the commands that read what
sweeps left (``finesweep.commands``).

``finesweep run SWEEP [OVERRIDE ...]`` composes ``conf/`` + the sweep file + overrides with Hydra
(``config/compose.py``), crosses into typed dataclasses once, validates everything, prepares the data once,
and only then starts Ray and MLflow.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import List, Optional, Sequence, Tuple

from rich.console import Console
from rich.markup import escape

import finesweep
from finesweep import api, commands
from finesweep.config import ExperimentConfig
from finesweep.config.compose import display, location_overrides, locations
from finesweep.config.recipe import mode_point, recipe
from finesweep.config.schema import BATCH_FACTORS
from finesweep.config.space import Param
from finesweep.errors import FinesweepError, SweepFailedError, SweepInterrupted, UserError

DEFAULT_UI_PORT = 5000
DEFAULT_SERVE_PORT = 5001


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``finesweep`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # keep MLflow's migration notes off the terminal
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars between live views
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow prints "View run ... at: URL" for every run it ends, into the live
    # view; the sweep's journal gets the parent run's URL instead (tracking/projector.py).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    console = Console(highlight=False, soft_wrap=True)
    try:
        return int(args.func(args, console) or 0)
    except SweepInterrupted as exc:  # the live view has said how to continue
        return exc.exit_code
    except FinesweepError as exc:
        if isinstance(exc, UserError) and os.environ.get("FINESWEEP_FULL_ERROR") == "1":
            raise
        label = "sweep failed" if isinstance(exc, SweepFailedError) else "error"
        Console(stderr=True, highlight=False).print(f"[red]{label}:[/red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


# --- commands -------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """finesweep run: validate, prepare data once, run the sweep, log it, print the winners."""
    api.run(args.sweep, args.overrides, console=console)
    return 0


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    """finesweep resume: continue an interrupted sweep from its journal (or extend a finished one)."""
    ref, overrides = _split_ref(args.items)
    api.resume(ref, overrides, console=console)
    return 0


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    """finesweep show: print the composed config and the search space; validate; start nothing."""
    from finesweep.report.terminal import space_table

    notes = Console(file=io.StringIO(), record=True, soft_wrap=True)
    composed = api.show(args.sweep, args.overrides, console=notes)
    config = composed.config
    console.print(f"# composed config of {display(composed.sweep_file)}")
    console.print(composed.yaml_text, markup=False)
    console.print(space_table(composed.params))
    console.print(f"{config.search.sampler.value} sampler, {composed.planned_trials} trials, "
                  f"{config.search.max_concurrent} at a time; {config.scheduler.kind.value} scheduler over "
                  f"{config.scheduler.budget} {config.scheduler.unit.value}; {objective_line(config)}; "
                  f"{_first_trials(config, composed.params)}", markup=False)
    console.print(trial_shape(config, [p.key for p in composed.params]), markup=False)
    console.print(notes.export_text(), end="", markup=False)
    console.print("[green]valid[/green]: nothing was started.")
    return 0


def objective_line(config: ExperimentConfig) -> str:
    """``objective: max val/accuracy``, every objective of a multi-objective sweep, and its constraints."""
    objective = config.objective
    terms = ", ".join(f"{mode.value} {metric}" for metric, mode in objective.terms)
    bounds = "; ".join(" and ".join(f"{metric} {sign} {bound:g}" for sign, bound in ((">=", low), ("<=", high))
                                    if bound is not None) for metric, (low, high) in objective.bounds.items())
    return (f"objectives (Pareto front): {terms}" if objective.multi else f"objective: {terms}") + (
        f"; constraints: {bounds}" if bounds else "")


def trial_shape(config: ExperimentConfig, searched: Sequence[str]) -> str:
    """What one trial runs on, and the examples of one optimiser step (searched factors named, not valued)."""
    cluster = config.cluster
    workers = (f"{cluster.workers_per_trial} workers ({cluster.strategy.value}, {cluster.placement.value}), each "
               f"{cluster.worker_cpus:g} CPU(s) and {cluster.worker_gpus:g} GPU(s)" if cluster.distributed else
               f"1 process, {cluster.cpus_per_trial:g} CPU(s) and {cluster.gpus_per_trial:g} GPU(s)")
    values = (config.data.batch_size, cluster.workers_per_trial, config.trainer.accumulate_grad_batches)
    factors = list(zip(BATCH_FACTORS, values, ("per device", "workers", "accumulated"), strict=True))
    if any(key in searched for key, _, _ in factors):
        product = " x ".join(key if key in searched else f"{value} {what}" for key, value, what in factors)
        return f"each trial: {workers}; effective batch: {product} (searched)"
    return (f"each trial: {workers}; effective batch {config.effective_batch} = "
            + " x ".join(f"{value} {what}" for _, value, what in factors))


def _first_trials(config: ExperimentConfig, params: Sequence[Param]) -> str:
    known = len(config.search.enqueue)
    mode = mode_point(params)
    same = config.search.start_from_config and mode == recipe(config, params, strict=False)
    own = "the config's own values, the prior's mode" if mode and same else "the config's own values"
    first = ([] if not mode or same else ["the prior's mode"]) + (
        [f"the recipe ({own})"] if config.search.start_from_config else []) + (
        [f"{known} enqueued configuration(s)"] if known else [])
    return f"first trial(s): {' then '.join(first)}" if first else "no recipe trial (search.start_from_config=false)"


def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    """finesweep sync: send the events MLflow did not take (during an outage) from the sweeps' journals."""
    ref, overrides = _split_ref(args.items)
    return commands.sync(locations(overrides), ref, args.timeout, console)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """finesweep report: a sweep's figures in one offline HTML file (and PNGs), logged to its parent run."""
    ref, overrides = _split_ref(args.items)
    return commands.report(locations(overrides), ref, console)


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    """finesweep serve: a registered model (default: the latest sweep's) as a REST endpoint on 127.0.0.1."""
    ref, overrides = _split_ref(args.items)
    return commands.serve(locations(overrides), ref, args.host, args.port, args.expose, console)


def cmd_select(args: argparse.Namespace, console: Console) -> int:
    """finesweep select: register another point of a multi-objective sweep's Pareto front, training nothing."""
    ref, overrides = _split_ref(args.items)
    return commands.select_point(locations(overrides), ref, args.trial, args.timeout, console)


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    """finesweep ls: past sweeps in the tracking store, and the command that resumes an unfinished one."""
    return commands.ls(locations(args.overrides), location_overrides(args.overrides), console)


def cmd_ui(args: argparse.Namespace, console: Console) -> int:
    """finesweep ui: the MLflow UI for the configured store, on 127.0.0.1 unless told otherwise."""
    return commands.ui(locations(args.overrides), args.host, args.port, args.expose, console)


def _split_ref(items: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """RUN (optional, first, no '=') and the overrides after it."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    return None, list(items)


# --- argument parsing -----------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finesweep", description="Hyperparameter sweeps for fine-tuning pretrained models: Hydra configs, "
        "Ray Tune + Optuna + ASHA scheduling, PyTorch Lightning trials, MLflow results.")
    parser.add_argument("--version", action="version", version=f"finesweep {finesweep.__version__}")
    commands_ = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides_help = "Hydra overrides applied last, e.g. optim.lr=3e-5 search.num_trials=32 model=minilm"
    for name, func, text in (("run", cmd_run, "run a sweep and log it to MLflow"),
                             ("show", cmd_show, "print the composed config and search space, validate, start nothing")):
        sub = commands_.add_parser(name, help=text, description=text)
        sub.add_argument("sweep", metavar="SWEEP", help="a name from sweeps/ (without .yaml) or a path to a sweep YAML")
        sub.add_argument("overrides", metavar="OVERRIDE", nargs="*", help=overrides_help)
        sub.set_defaults(func=func)
    ls = commands_.add_parser("ls", help="list past sweeps in the tracking store",
                             description="List past sweeps: name, start time, status, trials, best value.")
    ls.add_argument("overrides", metavar="OVERRIDE", nargs="*", help="e.g. tracking.uri=sqlite:////abs/mlflow.db")
    ls.set_defaults(func=cmd_ls)
    ui = commands_.add_parser("ui", help="start the MLflow UI for the tracking store",
                             description="Start the MLflow UI for the configured tracking store.")
    ui.add_argument("overrides", metavar="OVERRIDE", nargs="*", help="e.g. tracking.uri=sqlite:////abs/mlflow.db")
    _server_flags(ui)
    ui.set_defaults(func=cmd_ui)
    resume = commands_.add_parser(
        "resume", help="continue an interrupted sweep (or extend a finished one with search.num_trials=N)",
        description="Continue a sweep from its log: finished trials stay, running ones go on from their last "
                    "checkpoint, the same MLflow runs go on. RUN is a sweep id, a parent run id (or a prefix) or a "
                    "sweep name; none = the latest unfinished sweep.")
    resume.add_argument("items", metavar="[RUN] [OVERRIDE ...]", nargs="*",
                        help="tracking.*, cluster.*, search.num_trials (to extend), search.max_concurrent, "
                             "search.max_retries")
    resume.set_defaults(func=cmd_resume)
    sync = commands_.add_parser("sync", help="send to MLflow what it did not take during an outage",
                               description="Send the events of sweeps' logs that MLflow has not taken yet, each once.")
    sync.add_argument("items", metavar="[RUN] [OVERRIDE ...]", nargs="*", help="e.g. tracking.uri=http://host:5000")
    sync.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default 120)")
    sync.set_defaults(func=cmd_sync)
    report = commands_.add_parser(
        "report", help="build a sweep's report: one offline HTML file and PNGs, logged to its parent run",
        description="Build the report of a sweep (default: the latest): optimisation history, learning curves, "
                    "importance, slices, parallel coordinates, strategies, the schedule, the winner.")
    report.add_argument("items", metavar="[RUN] [OVERRIDE ...]", nargs="*", help="e.g. cluster.storage_path=...")
    report.set_defaults(func=cmd_report)
    select = commands_.add_parser(
        "select", help="register another point of a multi-objective sweep's Pareto front as a new model version",
        description="Register the trial --trial of a finished multi-objective sweep's Pareto front (see its parent "
                    "run's final/pareto_front.json) as a new version of the sweep's registered model, from the "
                    "weights it kept. RUN is a sweep id, a parent run id (or a prefix) or a sweep name; none = the "
                    "latest sweep.")
    select.add_argument("items", metavar="[RUN] [OVERRIDE ...]", nargs="*", help="e.g. cluster.storage_path=...")
    select.add_argument("--trial", type=int, required=True, help="the trial number of the front point to register")
    select.add_argument("--timeout", type=float, default=120.0, help="give up sending to MLflow after this many "
                        "seconds (default 120)")
    select.set_defaults(func=cmd_select)
    serve = commands_.add_parser(
        "serve", help="serve a registered model as a REST endpoint (default: the latest sweep's winner)",
        description="Serve a registered model with MLflow's model server. MODEL is NAME, NAME/VERSION or "
                    "models:/NAME/VERSION; none = the latest sweep's registered model, latest version.")
    serve.add_argument("items", metavar="[MODEL] [OVERRIDE ...]", nargs="*", help="e.g. tracking.uri=...")
    _server_flags(serve, port=DEFAULT_SERVE_PORT)
    serve.set_defaults(func=cmd_serve)
    return parser


def _server_flags(parser: argparse.ArgumentParser, port: int = DEFAULT_UI_PORT) -> None:
    parser.add_argument("--port", type=int, default=port, help="port (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s: this machine "
                        "only; another needs --expose)")
    parser.add_argument("--expose", action="store_true",
                        help="allow a non-loopback --host (nothing authenticates: anyone who reaches it can use it)")


if __name__ == "__main__":
    sys.exit(main())
