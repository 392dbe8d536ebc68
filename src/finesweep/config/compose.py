"""Composing a sweep: the only module that touches Hydra's runtime.

``compose`` merges ``conf/`` (Hydra config groups), the sweep file and the user's overrides, crosses into
the typed schema once (``OmegaConf.to_object``: every section's rules run) and checks every value the
search space can produce. ``stored`` does the same for the config a sweep's journal holds (a resume),
without composing again. The command line and the Python API both come through here; nothing after
this module sees Hydra or OmegaConf.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib.util
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

import finesweep
from finesweep.config import preflight
from finesweep.config.overrides import key_hint, leaf_keys, value_at
from finesweep.config.prior import with_priors
from finesweep.config.recipe import check_start
from finesweep.config.sampler_choice import settled
from finesweep.config.schema import ExperimentConfig
from finesweep.config.space import parse_space
from finesweep.config.sweep import RESUMABLE, Sweep
from finesweep.errors import ConfigError, SearchSpaceError, UserError, one_line


def compose(sweep: str, overrides: Sequence[str]) -> Sweep:
    """Compose conf/ + sweep file + overrides, convert to the typed config and validate all of it.

    Every value the search space can produce is checked against the config's rules here, so a
    sweep that composes cannot hand a trial an invalid config.

    Args:
        sweep: a name from ``sweeps/`` (without .yaml) or a path to a sweep YAML.
        overrides: Hydra overrides (``optim.lr=3e-5``, ``model=hub``), applied last.

    Raises:
        UserError: any rule broken; the message names the sweep file and the key.
    """
    sweep_file = resolve_sweep(sweep)
    document = read_document(sweep_file, display(sweep_file))
    with blame(sweep_file):
        cfg = _compose(document, [f"name={sweep_file.stem}", *overrides])
        config = _typed(cfg)
        preflight.check_objective(config)
        params = with_priors(config, parse_space(config.space, config), config.space)
        config = settled(config, params)
        preflight.check_budget(config, params)
        preflight.check_values(config, params)
        check_start(config, params)
    return Sweep(config, params, sweep_file, OmegaConf.to_yaml(cfg, resolve=True))


def stored(config_yaml: str, sweep_file: Path, overrides: Sequence[str]) -> Sweep:
    """The sweep a journal holds (its config as composed then), plus a resume's overrides.

    The composed config was stored resolved, so nothing is composed again: a changed ``conf/`` or sweep
    file does not change a running sweep. It crosses into the typed schema exactly as ``compose`` does,
    and every searched value is checked again. An override that repeats the value the sweep ran with is
    no change and is accepted (the command that started the sweep, with ``run`` changed to ``resume``).

    Raises:
        UserError: an override changes the sweep itself (space, objective, data, model ...).
    """
    base = _typed(_merged(config_yaml, []))
    dotted = [o for o in overrides if "." in _key(o)]
    config = _typed(_merged(config_yaml, dotted))
    _refuse_changes(base, config, dotted)
    groups = [o for o in overrides if "." not in _key(o)]
    if groups:  # a config-group choice (data=csv): compose again and see whether it changes anything
        if not sweep_file.is_file():
            raise ConfigError(f"{groups[0]}: a resume checks a config-group choice against the sweep file the sweep "
                              f"ran with, and {sweep_file} is gone. Leave {groups[0]} out: the sweep goes on as it "
                              "was.")
        _refuse_changes(base, compose(str(sweep_file), [*groups, *dotted]).config, overrides)
    if "start_from_config" not in (yaml.safe_load(config_yaml) or {}).get("search", {}):
        # a sweep from before the recipe was a first trial: it goes on as it ran
        config = dataclasses.replace(config, search=dataclasses.replace(config.search, start_from_config=False))
    params = with_priors(config, parse_space(config.space, config), config.space)
    config = settled(config, params)
    preflight.check_values(config, params)
    return Sweep(config, params, sweep_file, config_yaml)


@dataclass(frozen=True)
class Locations:
    """Where a project's results are: the MLflow store and the sweeps' journals (no data or model paths)."""

    tracking_uri: str
    artifact_root: str
    storage_path: str
    uri_given: bool
    """``tracking.uri`` was set on the command line: it also redirects a sweep that logged elsewhere."""


def locations(overrides: Sequence[str]) -> Locations:
    """Resolve ``tracking.uri``, ``tracking.artifact_root`` and ``cluster.storage_path`` alone (the commands
    that read what sweeps left need neither the data nor the model, nor the demo's packages)."""
    cfg = _compose({}, overrides, resolve=False)
    try:
        found = {key: str(OmegaConf.select(cfg, key, throw_on_missing=True))
                 for key in ("tracking.uri", "tracking.artifact_root", "cluster.storage_path")}
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc)) from None
    given = any(o.lstrip("+").startswith("tracking.uri=") for o in overrides)
    return Locations(found["tracking.uri"], found["tracking.artifact_root"], found["cluster.storage_path"], given)


def location_overrides(overrides: Sequence[str]) -> List[str]:
    """The overrides that say where the store and the journals are: what a later resume or sync needs too."""
    return [o for o in overrides if o.lstrip("+").startswith(("tracking.", "cluster.storage_path"))]


def read_document(path: Path, shown_as: str) -> Dict[str, Any]:
    """A sweep file as a mapping, before composition.

    Raises:
        ConfigError: not UTF-8 YAML, or not a mapping.
        SearchSpaceError: ``space`` is not a mapping.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeError, OSError) as exc:
        raise ConfigError(f"{shown_as}: not a readable YAML file: {one_line(exc)}. Fix the syntax "
                          "(a sweep file is UTF-8 YAML).") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{shown_as}: a sweep file must be a mapping (objective:, search:, space: ...), "
                          f"got {type(document).__name__}. See sweeps/demo.yaml.")
    if "objective" in document:
        document["objective"] = objective_section(document["objective"], shown_as)
    if "space" in document and not isinstance(document["space"], dict):
        raise SearchSpaceError(f"{shown_as}: space must map config keys to distributions, got "
                               f"{document['space']!r}. Write e.g. space: {{optim.lr: {{distribution: ...}}}}.")
    return document


def objective_section(written: Any, shown_as: str) -> Any:
    """A sweep file's ``objective`` in the schema's shape (``ObjectiveConfig``): ``{metric, mode}`` as it is; a list
    of them, or ``{metrics: [...], constraints: ...}``, as the first (``metric``, ``mode``) and ``also``.

    Raises:
        ConfigError: an objective without its metric or mode, or with keys it does not know.
    """
    if isinstance(written, dict) and "metrics" in written:
        rest = {k: v for k, v in written.items() if k != "metrics"}
        return {**rest, **objective_section(written["metrics"], shown_as)}
    if not isinstance(written, list):
        return written
    if not written:
        raise ConfigError(f"{shown_as}: objective is an empty list. Write e.g. objective: [{{metric: val/accuracy, "
                          "mode: max}, {metric: inference/latency_ms, mode: min}].")
    terms = [_objective_term(item, index, shown_as) for index, item in enumerate(written)]
    return {**terms[0], "also": terms[1:]}


def _objective_term(item: Any, index: int, shown_as: str) -> Dict[str, Any]:
    example = "{metric: inference/latency_ms, mode: min}"
    if not isinstance(item, dict):
        raise ConfigError(f"{shown_as}: objective[{index}] must be a mapping {example}, got {item!r}. Write it so.")
    for key in ("metric", "mode"):
        if key not in item:
            raise ConfigError(f"{shown_as}: objective[{index}].{key} is required, got {item!r}. Write e.g. {example} "
                              "(mode: max or min).")
    unknown = sorted(set(item) - {"metric", "mode"})
    if unknown:
        raise ConfigError(f"{shown_as}: objective[{index}] has keys an objective does not know ({', '.join(unknown)}), "
                          f"got {item!r}. An objective is {example}; bounds go in objective.constraints.")
    return dict(item)


@contextlib.contextmanager
def blame(sweep_file: Path) -> Iterator[None]:
    """Prefix user errors raised inside with the sweep file they concern."""
    try:
        yield
    except UserError as exc:
        prefix = f"{display(sweep_file)}: "
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


def display(path: Path) -> str:
    """A path as the user typed it: relative to the current folder when inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def package_path(package: str, relative: str = "") -> str:
    """Path of a file inside an installed package, found without importing (running) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed, so its files cannot be used. "
                          f"Install it (pip install {package.replace('_', '-')}) or set the path yourself.")
    return str(Path(list(spec.submodule_search_locations)[0]) / relative)


# --- OmegaConf and Hydra ----------------------------------------------------------------------------

def _typed(cfg: DictConfig) -> ExperimentConfig:
    """Cross the DictConfig boundary once: every section's ``__post_init__`` checks its rules."""
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key}: required, but no value is set. Set it in the sweep file or on the "
                          f"command line ({exc.full_key}=...).") from None
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(one_line(exc)) from None
    if not isinstance(config, ExperimentConfig):
        raise ConfigError(f"the composed config is a {type(config).__name__}, not an experiment config. "
                          "Check conf/config.yaml's defaults (finesweep_schema first).")
    return config


def _merged(config_yaml: str, dotted: Sequence[str]) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(config_yaml),
                                 OmegaConf.from_dotlist([o.lstrip("+") for o in dotted]))
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(one_line(exc)) from None
    if not isinstance(merged, DictConfig):
        raise ConfigError("the stored config is not a mapping. The sweep's journal is damaged.")
    return merged


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _refuse_changes(before: ExperimentConfig, after: ExperimentConfig, overrides: Sequence[str]) -> None:
    for key in leaf_keys(before, sweep_sections=True):
        if key.startswith(RESUMABLE) or value_at(before, key) == value_at(after, key):
            continue
        given = next((o for o in overrides if key.startswith(_key(o))), f"{key}={_shown(value_at(after, key))}")
        raise ConfigError(f"{key}: a resume continues the sweep as it was; only {', '.join(RESUMABLE)} may change, "
                          f"got {given} (the sweep ran with {_shown(value_at(before, key))}). To change {key}, start "
                          "a new sweep with finesweep run.")


def _shown(value: Any) -> str:
    return repr(value.value if isinstance(value, enum.Enum) else value)


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
    chain: List[BaseException] = [exc]
    while True:
        following: Optional[BaseException] = chain[-1].__cause__ or chain[-1].__context__
        if following is None:
            break
        chain.append(following)
    keyed = next((e for e in chain if getattr(e, "full_key", None)), None)
    if keyed is not None:
        full_key = str(getattr(keyed, "full_key", ""))
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


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).expanduser().resolve()))
    if not OmegaConf.has_resolver("pkg_path"):
        OmegaConf.register_new_resolver("pkg_path", package_path)
