"""Everything that can be checked before Ray starts, so bad input never costs a trial.

``check_values`` proves that every value the search space can produce makes a valid config (each
parameter at its bounds and choices, and their combinations along every conditional branch);
``check_data`` reads the data file for every data variant; ``check_model`` applies each fine-tuning
variant to the model architecture on PyTorch's meta device. Each raises a ``UserError`` whose
message names the key, the value at fault and the fix.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Sequence

from finesweep.config import ExperimentConfig, Sampler
from finesweep.errors import ConfigError, SearchSpaceError, one_line
from finesweep.overrides import with_overrides
from finesweep.search_space import Param, Probe, probes
from finesweep.sweep import Sweep

MODEL_KEYS = ("model.", "finetune.")
"""Searched keys whose values change what ``check_model`` builds."""


def check_values(config: ExperimentConfig, params: Sequence[Param]) -> List[Probe]:
    """Apply every probe of the space to the config; return the probes (they all passed).

    Raises:
        SearchSpaceError: a value the space can produce breaks a config rule.
    """
    tried = probes(params, exhaustive=config.search.sampler is Sampler.grid)
    for probe in tried:
        try:
            with_overrides(config, probe.values)
        except (ConfigError, ValueError) as exc:
            raise SearchSpaceError(f"{probe.describe()} would make an invalid config: {one_line(exc)} "
                                   f"{_fix(probe)}") from None
    return tried


def check_data(sweep: Sweep) -> None:
    """Validate every data variant a sweep uses (file, columns, labels, splits, objective vs task)."""
    from finesweep import data

    for variant in data.data_variants(sweep.params):
        task = data.check(with_overrides(sweep.config, variant).data)
        data.check_objective(sweep.config.objective.metric, task)


def check_model(sweep: Sweep) -> None:
    """Validate the strategy settings against the model architecture (no weights loaded), per model variant.

    A variant is one distinct combination of searched ``model.*`` / ``finetune.*`` values among the
    probes of ``check_values``: every strategy with its own knobs at their bounds.
    """
    from finesweep.finetune.module import check

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation notes from building the meta model
        for overrides in model_variants(probes(sweep.params, sweep.config.search.sampler is Sampler.grid)):
            variant = with_overrides(sweep.config, overrides)
            try:
                check(variant)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"model.name_or_path: cannot read the model config of "
                                  f"{variant.model.name_or_path!r} ({one_line(exc)}). Point it at a Hugging Face "
                                  "model folder (with config.json) or, when online, a hub id.") from None


def model_variants(tried: Sequence[Probe]) -> List[Dict[str, Any]]:
    """The distinct projections of the probes onto the model and fine-tuning keys, the base config first."""
    variants: Dict[str, Dict[str, Any]] = {repr([]): {}}
    for probe in tried:
        variant = {key: value for key, value in probe.values.items() if key.startswith(MODEL_KEYS)}
        variants.setdefault(repr(sorted(variant.items(), key=repr)), variant)  # values may be unhashable lists
    return list(variants.values())


def _fix(probe: Probe) -> str:
    if probe.param is None:
        return "Narrow the ranges (or add a when condition) so that every combination is valid."
    if probe.label == "choice":
        return "Remove that choice."
    return f"Move {probe.label} inside the valid range."
