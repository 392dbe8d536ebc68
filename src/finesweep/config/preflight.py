"""Everything that can be checked before Ray starts, so bad input never costs a trial.

``check_values`` proves that every value the search space can produce makes a valid config (each
parameter at its bounds and choices, and their combinations along every conditional branch);
``check_data`` reads the data file for every data variant; ``check_model`` applies each fine-tuning
variant to the model architecture on PyTorch's meta device. Each raises a ``UserError`` whose
message names the key, the value at fault and the fix.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from finesweep.config.choices import Sampler
from finesweep.config.overrides import with_overrides
from finesweep.config.schema import ExperimentConfig
from finesweep.config.space import Param, grid_size, iter_grid, walk_branches
from finesweep.errors import ConfigError, SearchSpaceError, one_line
from finesweep.tasks import registry as tasks
from finesweep.tasks.preparation import inspect_all
from finesweep.tasks.task import Inspection


@dataclass(frozen=True)
class Probe:
    """One set of values the space can produce, to check before any trial runs.

    ``param`` and ``label`` name the parameter at fault when the probe tests one parameter alone
    (at ``low``, ``high`` or one ``choice``, its ``when`` parents set so that it is active).
    """

    values: Dict[str, Any]
    param: Optional[Param] = None
    label: str = ""

    def describe(self) -> str:
        """What the probe tried, for an error message."""
        if self.param is not None:
            value = self.values[self.param.key]
            what = f"choice {value!r}" if self.label == "choice" else f"{self.label}={value}"
            return f"space.{self.param.key}: {what}"
        return "space: the combination " + ", ".join(f"{k}={v!r}" for k, v in self.values.items())


PROBE_LIMIT = 4096
"""Combinations probed at most; the one-parameter probes are always complete."""


def probes(params: Sequence[Param], exhaustive: bool, limit: int = PROBE_LIMIT) -> List[Probe]:
    """What to check so that no value a sampler can propose breaks a rule.

    First every parameter alone at each extreme (every choice, low and high), with its parents set to
    make it active; then combinations, so rules across keys are checked too: every grid point when
    ``exhaustive`` (a grid), otherwise every combination of extremes along every conditional
    branch. Combinations stop after ``limit``.
    """
    by_key = {p.key: p for p in params}
    singles = [Probe({**_activate(p, by_key), p.key: value}, p, label) for p in params for label, value in p.extremes()]
    if exhaustive:
        combos: Iterator[Dict[str, Any]] = iter_grid(params)
    else:
        combos = walk_branches(params, {p.key: [v for _, v in p.extremes()] for p in params})
    return singles + [Probe(values) for values in itertools.islice(combos, limit)]


def _activate(param: Param, by_key: Mapping[str, Param]) -> Dict[str, Any]:
    """Values of ``param``'s ancestors that make it active (each parent at its first allowed value)."""
    values: Dict[str, Any] = {}
    for key, allowed in param.when:
        values.update(_activate(by_key[key], by_key))
        values[key] = allowed[0]
    return values


MODEL_KEYS = ("model.", "finetune.")
"""Searched keys whose values change what ``check_model`` builds."""


def check_budget(config: ExperimentConfig, params: Sequence[Param]) -> None:
    """A grid runs each combination once: ``search.num_trials``, when given, must be the grid's size.

    Raises:
        ConfigError: it is not.
    """
    if config.search.sampler is Sampler.grid:
        size = grid_size(params)
        if config.search.num_trials is not None and config.search.num_trials != size:
            raise ConfigError(f"search.num_trials: the grid has {size} combinations and runs each once, got "
                              f"num_trials={config.search.num_trials}. Remove num_trials or set it to {size}.")


def check_objective(config: ExperimentConfig) -> None:
    """Every objective and constrained metric must be one some task's trials report (or a deployment cost), and
    ``data.task`` a task finesweep knows.

    Raises:
        ConfigError: an unknown metric or task.
    """
    metrics = tasks.objective_metrics()
    named = [("objective.metric" if i == 0 else f"objective[{i}].metric", m)
             for i, m in enumerate(config.objective.metrics)]
    named += [(f"objective.constraints.{m}", m) for m in config.objective.constraints]
    for key, metric in named:
        if metric not in metrics:
            raise ConfigError(f"{key} must be a metric every trial reports ({', '.join(metrics)}), "
                              f"got {metric!r}. Pick one of those.")
    tasks.get(config.data.task)


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


def check_data(config: ExperimentConfig, params: Sequence[Param]) -> Inspection:
    """Validate every data variant a sweep uses (file, columns, labels, splits, objective vs task, folds); return
    what the inspection found (the task, the split sizes).

    Raises:
        UserError: the data, the objective or ``final.cv_folds`` does not fit.
    """
    found = inspect_all(config, params)
    check_folds(config.final.folds(found.rows[1]), found.pool)
    return found


def check_folds(folds: int, pool: int) -> None:
    """Cross-validation needs at least one row per fold.

    Raises:
        ConfigError: more folds than train + validation rows.
    """
    if folds > pool:
        raise ConfigError(f"final.cv_folds: every fold needs a row of the {pool} train + validation rows, got "
                          f"cv_folds={folds}. Use at most {pool} folds (5 is usual).")


def check_model(config: ExperimentConfig, params: Sequence[Param]) -> None:
    """Validate the strategy settings against the model architecture (no weights loaded), per model variant.

    A variant is one distinct combination of searched ``model.*`` / ``finetune.*`` values among the
    probes of ``check_values``: every strategy with its own knobs at their bounds.
    """
    from finesweep.finetune.module import check

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation notes from building the meta model
        for overrides in model_variants(probes(params, config.search.sampler is Sampler.grid)):
            variant = with_overrides(config, overrides)
            try:
                check(variant, tasks.get(variant.data.task, variant.data))
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
