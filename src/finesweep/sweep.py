"""A composed sweep: the typed config, its parsed search space, and the file it came from.

The CLI builds one with Hydra (``cli.compose``); everything after it (the checks before Ray starts,
the runner, the benchmarks) receives this plain object and never sees Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError, one_line
from finesweep.search_space import Param, parse_space, planned_trials

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
