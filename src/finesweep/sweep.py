"""A composed sweep: the typed config, its parsed search space, and the file it came from.

The CLI builds one with Hydra (``cli.compose``); everything after it (the checks before Ray starts,
the runner, the benchmarks) receives this plain object and never sees Hydra.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Sequence, Tuple

import finesweep
from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError, SearchSpaceError, UserError, one_line
from finesweep.search_space import Param, parse_space, planned_trials

if TYPE_CHECKING:
    from finesweep.data import DataCache
    from finesweep.state import SweepState

RESUMABLE = ("tracking.", "cluster.", "search.num_trials", "search.max_concurrent", "search.max_retries")
"""What a resume may change; everything else is the sweep itself (a new sweep: finesweep run)."""


@dataclass(frozen=True)
class Sweep:
    """A composed, validated sweep."""

    config: ExperimentConfig
    params: Tuple[Param, ...]
    sweep_file: Path
    yaml_text: str
    """The composed config as YAML (logged as the parent run's ``config.yaml``)."""

    def space_description(self) -> Dict[str, Dict[str, Any]]:
        """The search space as plain data, key -> its fields (logged as ``search_space.json``)."""
        return {param.key: param.describe() for param in self.params}


def read_document(path: Path, shown_as: str) -> Dict[str, Any]:
    """A sweep file as a mapping, before composition.

    Raises:
        ConfigError: not UTF-8 YAML, or not a mapping.
        SearchSpaceError: ``space`` is not a mapping.
    """
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeError, OSError) as exc:
        raise ConfigError(f"{shown_as}: not a readable YAML file: {one_line(exc)}. Fix the syntax "
                          "(a sweep file is UTF-8 YAML).") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{shown_as}: a sweep file must be a mapping (objective:, search:, space: ...), "
                          f"got {type(document).__name__}. See sweeps/demo.yaml.")
    if "space" in document and not isinstance(document["space"], dict):
        raise SearchSpaceError(f"{shown_as}: space must map config keys to distributions, got "
                               f"{document['space']!r}. Write e.g. space: {{optim.lr: {{distribution: ...}}}}.")
    return document


def resumed(folder: Path, overrides: Sequence[str]) -> Sweep:
    """The sweep a log holds: the config it ran with (as composed then), plus a resume's overrides.

    The composed config was stored resolved, so nothing is composed again: a changed ``conf/``
    or sweep file does not change a running sweep. It crosses into the typed schema exactly as
    ``cli.compose`` does, and every searched value is checked again.

    Raises:
        UserError: an override changes the sweep itself (space, objective, data, model ...), or a
            ``search.num_trials`` below what already ran.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from finesweep import preflight
    from finesweep.state import load_state

    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if not key.startswith(RESUMABLE):
            raise ConfigError(f"{key}: a resume continues the sweep as it was; only {', '.join(RESUMABLE)} may "
                              f"change, got {override}. To change {key}, start a new sweep with finesweep run.")
    state = load_state(folder)
    sweep_file = Path(state.header["tags"]["finesweep.sweep_file"])
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(state.header["config_yaml"]),
                              OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
        config: ExperimentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(one_line(exc)) from None
    params = parse_space(config.space, config)
    started = len(state.search_trials())
    if planned_trials(config, params) < started:
        raise ConfigError(f"search.num_trials: the sweep has started {started} trials, got "
                          f"num_trials={config.search.num_trials}. A resume can extend a sweep, not shrink it.")
    preflight.check_values(config, params)
    return Sweep(config, params, sweep_file, state.header["config_yaml"])


def header(sweep: Sweep, data_hash: str, sweep_id: str, folder: Path) -> Dict[str, Any]:
    """The log's first event: everything needed to continue the sweep, and to log it to MLflow later."""
    config = sweep.config
    commit, dirty = git_state(Path.cwd())
    objective = f"{config.objective.mode.value} {config.objective.metric}"
    tags = {"finesweep.version": finesweep.__version__, "mlflow.source.git.commit": commit,
            "finesweep.git_dirty": dirty, "finesweep.sweep_file": str(sweep.sweep_file),
            "finesweep.objective": objective}
    params = {"sampler": config.search.sampler.value, "scheduler": config.scheduler.kind.value,
              "objective": objective, "search_space": json.dumps(sweep.space_description(), sort_keys=True),
              "num_trials": str(config.search.num_trials), "max_concurrent": str(config.search.max_concurrent),
              "seed": str(config.search.seed), "max_epochs": str(config.scheduler.max_epochs),
              "grace_period": str(config.scheduler.grace_period),
              "reduction_factor": str(config.scheduler.reduction_factor),
              "model.name_or_path": config.model.name_or_path, "data.path": config.data.path}
    return {"sweep_id": sweep_id, "name": config.name, "experiment": config.experiment_name,
            "artifact_root": config.tracking.artifact_root, "tracking_uri": config.tracking.uri,
            "folder": str(folder), "tags": tags, "params": params, "config_yaml": sweep.yaml_text,
            "sweep_yaml": sweep.sweep_file.read_text() if sweep.sweep_file.is_file() else "",
            "sweep_file": sweep.sweep_file.name, "space": sweep.space_description(),
            "budget": planned_trials(config, sweep.params), "data_fingerprint": data_hash}


def data_fingerprint(cache: DataCache) -> str:
    """A content hash of every tokenised split: a resume must train on the very same data."""
    from finesweep.state import fingerprint

    arrays = []
    for key in sorted(cache.variants):
        variant = cache.variants[key]
        for split in (variant.train, variant.val, variant.test):
            if split is not None:
                arrays.extend([split.labels, *(split.features[name] for name in sorted(split.features))])
    return fingerprint(arrays)


def check_same_data(state: SweepState, fingerprint_now: str) -> None:
    """A resume must train on the very data the sweep started with.

    Raises:
        UserError: the data (or its tokenisation) changed.
    """
    if state.header.get("data_fingerprint") not in (None, fingerprint_now):
        raise UserError(f"sweep {state.name} ({state.sweep_id}) trained on other data: "
                        f"{state.header['params']['data.path']} (or its tokenisation) changed since the sweep started. "
                        "A resume must see the same data; "
                        "restore the file, or start a new sweep with finesweep run.")


def git_state(folder: Path) -> tuple[str, str]:
    """(commit, dirty flag) of the git checkout holding ``folder``, or ('unknown', 'unknown')."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(bool(status.strip())).lower()
