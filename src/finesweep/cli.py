"""The command line, and the only module that touches Hydra's runtime.

``finesweep run SWEEP [OVERRIDE ...]`` composes ``conf/`` + the sweep file + overrides with Hydra,
crosses into typed dataclasses once, validates everything, prepares the data once, and only then
starts Ray and MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

import finesweep
from finesweep import commands, preflight
from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError, SweepFailedError, UserError, one_line
from finesweep.overrides import key_hint, leaf_keys
from finesweep.search_space import parse_space, planned_trials
from finesweep.sweep import Sweep, read_document

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
    # view; the sweep's log gets the parent run's URL instead (tracking/projector.py).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    console = Console(highlight=False, soft_wrap=True)
    try:
        return int(args.func(args, console) or 0)
    except UserError as exc:
        if os.environ.get("FINESWEEP_FULL_ERROR") == "1":
            raise
        Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except SweepFailedError as exc:
        Console(stderr=True, highlight=False).print(f"[red]sweep failed:[/red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


def compose(sweep: str, overrides: Sequence[str]) -> Sweep:
    """Compose conf/ + sweep file + overrides, convert to typed config and validate all of it.

    Every value the search space can produce is checked against the config's rules here, so a
    sweep that composes cannot hand a trial an invalid config.

    Raises:
        UserError: any rule broken; the message names the sweep file and the key.
    """
    sweep_file = resolve_sweep(sweep)
    document = read_document(sweep_file, _display(sweep_file))
    with blame(sweep_file):
        try:
            cfg = _compose(document, [f"name={sweep_file.stem}", *overrides])
            config: ExperimentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        except MissingMandatoryValue as exc:
            raise ConfigError(f"{exc.full_key}: required, but no value is set. Set it in the sweep file or on the "
                              f"command line ({exc.full_key}=...).") from None
        except (OmegaConfBaseException, ValueError) as exc:
            raise ConfigError(one_line(exc)) from None
        params = parse_space(config.space, config)
        preflight.check_budget(config, params)
        preflight.check_values(config, params)
    return Sweep(config, params, sweep_file, OmegaConf.to_yaml(cfg, resolve=True))


@contextlib.contextmanager
def blame(sweep_file: Path) -> Iterator[None]:
    """Prefix user errors raised inside with the sweep file they concern."""
    try:
        yield
    except UserError as exc:
        prefix = f"{_display(sweep_file)}: "
        if str(exc).startswith(prefix):
            raise
        raise type(exc)(prefix + str(exc)) from None


def resolve_sweep(sweep: str) -> Path:
    """A sweep name (file in sweeps/ without .yaml) or a path -> the sweep file."""
    candidate = Path(sweep).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in sweep:
        if candidate.is_file():
            return candidate.resolve()
        raise UserError(f"sweep file {sweep} not found. Give a path to a sweep YAML or a name from sweeps/.")
    named = project_dir() / "sweeps" / f"{sweep}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in (project_dir() / "sweeps").glob("*.yaml"))
    raise UserError(f"sweep {sweep!r} not found in {project_dir() / 'sweeps'}. "
                    f"Use one of: {', '.join(known) or '(none)'}, or a path to a sweep YAML.")


def project_dir() -> Path:
    """Folder holding conf/ and sweeps/: $FINESWEEP_PROJECT, else the cwd, else the source checkout."""
    for candidate in (os.environ.get("FINESWEEP_PROJECT"), Path.cwd(), Path(finesweep.__file__).parents[2]):
        if candidate and (Path(candidate) / "conf" / "config.yaml").is_file():
            return Path(candidate).resolve()
    raise UserError("no conf/config.yaml found in $FINESWEEP_PROJECT, the current folder or the finesweep "
                    "checkout. Run finesweep from the project folder or set FINESWEEP_PROJECT.")


# --- commands -------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """finesweep run: validate, prepare data once, run the sweep, log it, print the winners."""
    from finesweep import data, runner

    sweep = compose(args.sweep, args.overrides)
    started = time.monotonic()
    with blame(sweep.sweep_file):
        preflight.check_model(sweep)
        with console.status("reading, splitting and tokenising the data once"):
            cache = data.prepare_all(sweep.config, sweep.params)
            data.check_objective(sweep.config.objective.metric, cache.task)
    console.print(f"data ready in {time.monotonic() - started:.1f}s: "
                  + "; ".join(v.describe() for v in cache.variants.values()), markup=False)
    return runner.run(sweep, cache, console, resume_overrides=_location_overrides(args.overrides))


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    """finesweep resume: continue an interrupted sweep from its log (or extend a finished one)."""
    from finesweep import data, runner
    from finesweep.state import locate
    from finesweep.sweep import resumed

    ref, overrides = _split_ref(args.items)
    folder = locate(_locations(overrides)["storage_path"], ref)
    sweep = resumed(folder, overrides)
    with console.status("reading, splitting and tokenising the data once"), blame(sweep.sweep_file):
        cache = data.prepare_all(sweep.config, sweep.params)
    console.print(f"resuming {sweep.config.name} ({folder.name})", markup=False)
    return runner.resume(sweep, folder, cache, console, resume_overrides=_location_overrides(overrides))


def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    """finesweep sync: send the events MLflow did not take (during an outage) from the sweeps' logs."""
    ref, overrides = _split_ref(args.items)
    uri_given = any(o.lstrip("+").startswith("tracking.uri=") for o in overrides)
    return commands.sync(_locations(overrides), ref, uri_given, args.timeout, console)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """finesweep report: a sweep's figures in one offline HTML file (and PNGs), logged to its parent run."""
    ref, overrides = _split_ref(args.items)
    return commands.report(_locations(overrides), ref, console)


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    """finesweep serve: a registered model (default: the latest sweep's) as a REST endpoint on 127.0.0.1."""
    ref, overrides = _split_ref(args.items)
    return commands.serve(_locations(overrides), ref, args.host, args.port, args.expose, console)


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    """finesweep show: print the composed config and the search space; validate; start nothing."""
    from finesweep.view import space_table

    composed = compose(args.sweep, args.overrides)
    with blame(composed.sweep_file):
        preflight.check_data(composed)
        preflight.check_model(composed)
    console.print(f"# composed config of {_display(composed.sweep_file)}")
    console.print(composed.yaml_text, markup=False)
    console.print(space_table(composed.params))
    config = composed.config
    console.print(f"{config.search.sampler.value} sampler, {planned_trials(config, composed.params)} trials, "
                  f"{config.search.max_concurrent} at a time; {config.scheduler.kind.value} scheduler over "
                  f"{config.scheduler.max_epochs} epochs; objective: {config.objective.mode.value} "
                  f"{config.objective.metric}")
    console.print("[green]valid[/green]: nothing was started.")
    return 0


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    """finesweep ls: past sweeps in the tracking store, and the command that resumes an unfinished one."""
    return commands.ls(_locations(args.overrides), _location_overrides(args.overrides), console)


def cmd_ui(args: argparse.Namespace, console: Console) -> int:
    """finesweep ui: the MLflow UI for the configured store, on 127.0.0.1 unless told otherwise."""
    return commands.ui(_locations(args.overrides), args.host, args.port, args.expose, console)


# --- Hydra ----------------------------------------------------------------------------------------

def _compose(document: Dict[str, Any], overrides: Sequence[str], resolve: bool = True) -> DictConfig:
    """Compose with Hydra; ``resolve=False`` leaves interpolations (package paths) unevaluated."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException

    _register_resolvers()
    store = ConfigStore.instance()
    store.store(name="finesweep_schema", node=ExperimentConfig)
    store.store(group="sweep", name="current", node=document, package="_global_")
    try:
        with initialize_config_dir(config_dir=str(project_dir() / "conf"), version_base="1.3", job_name="finesweep"):
            cfg = hydra_compose(config_name="config", overrides=["+sweep=current", *overrides])
    except HydraException as exc:
        raise ConfigError(_hydra_message(exc)) from None
    try:
        if resolve:
            OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        raise ConfigError(str(cause) if isinstance(cause, UserError) else one_line(exc)) from None
    _reject_unknown_keys(cfg, ExperimentConfig)
    return cfg


def _hydra_message(exc: BaseException) -> str:
    """One line out of Hydra's multi-line, chained composition errors: the rule, the value, the fix."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    keyed = next((e for e in chain if getattr(e, "full_key", None)), None)
    if keyed is not None:
        full_key = str(keyed.full_key)  # type: ignore[attr-defined]
        if isinstance(keyed, (ConfigKeyError, ConfigAttributeError)):
            return _unknown_key(full_key)
        message = one_line(keyed).removeprefix(f"{full_key}: ")
        fix = "Use one of those." if "expected one of" in message else "Give a value of that type."
        return f"{full_key}: {message}. {fix}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if "Available options" in str(exc):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1:] if not line.startswith(("Config search path", "provider="))]
        return f"{lines[0]}. {lines[start]} {', '.join(options)}."
    return " ".join(line for line in lines if not line.startswith("To append"))


def _reject_unknown_keys(cfg: Any, schema: type, prefix: str = "") -> None:
    hints = typing.get_type_hints(schema)
    for key in cfg:
        if key not in hints:
            raise ConfigError(_unknown_key(f"{prefix}{key}"))
        if dataclasses.is_dataclass(hints[key]) and isinstance(cfg[key], DictConfig):
            _reject_unknown_keys(cfg[key], hints[key], f"{prefix}{key}.")


def _unknown_key(key: str) -> str:
    return f"{key}: not a config key. {key_hint(key, leaf_keys(ExperimentConfig(), sweep_sections=True))}"


def _locations(overrides: Sequence[str]) -> Dict[str, str]:
    """Where the tracking store and the sweeps' logs are, resolving nothing else (no data or model paths)."""
    cfg = _compose({}, overrides, resolve=False)
    keys = {"uri": "tracking.uri", "artifact_root": "tracking.artifact_root", "storage_path": "cluster.storage_path"}
    try:
        return {name: str(OmegaConf.select(cfg, key, throw_on_missing=True)) for name, key in keys.items()}
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc)) from None


def _split_ref(items: Sequence[str]) -> tuple:
    """RUN (optional, first, no '=') and the overrides after it."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    return None, list(items)


def _location_overrides(overrides: Sequence[str]) -> list:
    """The overrides that say where the store and the logs are: what a later resume or sync needs too."""
    return [o for o in overrides if o.lstrip("+").startswith(("tracking.", "cluster.storage_path"))]


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).expanduser().resolve()))
    if not OmegaConf.has_resolver("pkg_path"):
        OmegaConf.register_new_resolver("pkg_path", package_path)


def package_path(package: str, relative: str = "") -> str:
    """Path of a file inside an installed package, found without importing (running) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed, so its files cannot be used. "
                          f"Install it (pip install {package.replace('_', '-')}) or set the path yourself.")
    return str(Path(list(spec.submodule_search_locations)[0]) / relative)


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


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
