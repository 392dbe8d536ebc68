"""The configurations a search runs first: the recipe (the composed config's own values), then known ones.

The recipe is what the user would have trained without a search: ``conf/`` plus their overrides. With
``search.start_from_config`` (the default) it is the search's first trial, so the search can never report a
winner worse than the recipe on its own split, and the sampler learns from it; ``search.enqueue`` adds more
known configurations (a colleague's best, the paper's setting). Each is checked against the space here,
before anything starts: a value the space cannot produce is a one-line error naming the key.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from finesweep.config.overrides import value_at, with_overrides
from finesweep.config.schema import ExperimentConfig
from finesweep.config.space import Distribution, Param, planned_trials
from finesweep.errors import ConfigError, SearchSpaceError

ENQUEUE_FIX = "Use a value inside the range, or widen space.{key}."


def recipe(config: ExperimentConfig, params: Sequence[Param], strict: bool = True) -> Dict[str, Any]:
    """The config's own value of every searched key on the recipe's branch, spelled as the space spells it.

    Args:
        strict: a value the space cannot produce is an error; else it is kept as the config has it (model
            selection re-trains the recipe as a fixed configuration, whatever the space).

    Raises:
        SearchSpaceError: a value the space cannot produce (outside a range, not a choice), when strict.
    """
    values: Dict[str, Any] = {}
    for param in params:
        if not param.is_active(values):
            continue  # a conditional key off the recipe's branch (e.g. freeze_layers when the strategy is full)
        own = value_at(config, param.key)
        found = in_space(param, own, config)
        if found is None and not strict:
            values[param.key] = own.value if isinstance(own, enum.Enum) else own
            continue
        if found is None:
            raise SearchSpaceError(
                f"search.start_from_config: the recipe's {param.key}={_shown(own)} (the composed config's own value) "
                f"is not in space.{param.key} ({span(param)}). Set {param.key} to a value inside it, widen "
                f"space.{param.key}, or set search.start_from_config=false.")
        values[param.key] = found[0]
    return values


def enqueued(config: ExperimentConfig, params: Sequence[Param]) -> List[Dict[str, Any]]:
    """``search.enqueue``'s points, checked against the space, each key spelled as the space spells it.

    Raises:
        SearchSpaceError: an unknown key, a value off the space, or a conditional key off its branch.
    """
    return [_point(config, params, point, f"search.enqueue[{i}]") for i, point in enumerate(config.search.enqueue)]


def mode_point(params: Sequence[Param]) -> Dict[str, Any]:
    """The prior's mode (``config/prior.py``): every key with a prior at its value, a conditional key only on its
    parent's branch; empty without a prior."""
    values: Dict[str, Any] = {}
    for param in params:
        if param.prior is not None and param.is_active(values):
            values[param.key] = param.prior
    return values


def start_points(config: ExperimentConfig, params: Sequence[Param]) -> List[Dict[str, Any]]:
    """What the search runs before the sampler proposes anything: the prior's mode (where a searched key has a
    prior), the recipe (``search.start_from_config``), then ``search.enqueue``; each distinct point once, empty
    ones (no searched key) left out.

    Raises:
        SearchSpaceError: as ``recipe`` and ``enqueued``.
    """
    points = ([mode_point(params)] + ([recipe(config, params)] if config.search.start_from_config else [])
              + enqueued(config, params))
    distinct: Dict[str, Dict[str, Any]] = {}
    for point in points:
        if point:
            distinct.setdefault(json.dumps(point, sort_keys=True, default=str), point)
    return list(distinct.values())


def check_start(config: ExperimentConfig, params: Sequence[Param]) -> List[Dict[str, Any]]:
    """``start_points``, which must fit in the search's budget.

    Raises:
        SearchSpaceError: as ``start_points``.
        ConfigError: more points than trials.
    """
    points = start_points(config, params)
    budget = planned_trials(config, params)
    if len(points) > budget:
        raise ConfigError(f"search.enqueue: {len(points)} configurations run first (the recipe and search.enqueue), "
                          f"more than the search's {budget} trials, got num_trials={budget}. Raise search.num_trials "
                          f"to at least {len(points)}, or enqueue fewer.")
    return points


def in_space(param: Param, value: Any, config: ExperimentConfig) -> Optional[Tuple[Any]]:
    """``(value as the space spells it,)`` when the space can produce ``value``, else None.

    A choice matches when it sets the config to the same value (``full`` and ``Strategy.full``, a relative
    and an absolute path to the same folder).
    """
    if param.distribution is Distribution.categorical:
        for choice in param.choices:
            if choice == value or _same(config, param.key, choice, value):
                return (choice,)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    low, high = param.bounds
    tolerance = 1e-9 * max(1.0, abs(low), abs(high))
    if not low - tolerance <= value <= high + tolerance:
        return None
    if param.distribution is Distribution.int:
        on_step = float(value).is_integer() and (int(value) - int(low)) % int(param.step or 1) == 0
        return (int(value),) if on_step else None
    if param.step is not None and abs((value - low) / param.step - round((value - low) / param.step)) > 1e-6:
        return None
    return (float(value),)


def span(param: Param) -> str:
    """What a parameter can take, for a message: its choices, or its range."""
    if param.distribution is Distribution.categorical:
        return "choices " + ", ".join(_shown(c) for c in param.choices)
    step = f" in steps of {param.step:g}" if param.step is not None else ""
    log = " (log)" if param.log else ""
    return f"{param.distribution.value} [{param.low:g}, {param.high:g}]{step}{log}"


def _point(config: ExperimentConfig, params: Sequence[Param], point: Mapping[str, Any], where: str) -> Dict[str, Any]:
    by_key = {p.key: p for p in params}
    if not isinstance(point, Mapping) or not point:
        raise SearchSpaceError(f"{where}: each point must map searched keys to values, got {point!r}. "
                               "Write e.g. {optim.lr: 3.0e-5}.")
    unknown = [k for k in point if k not in by_key]
    if unknown:
        raise SearchSpaceError(f"{where}: {unknown[0]} is not a searched key (space has "
                               f"{', '.join(by_key) or 'none'}). Enqueue values of searched keys only.")
    values: Dict[str, Any] = {}
    for param in params:
        if param.key not in point:
            continue
        missing = [key for key, _ in param.when if key not in point]
        if missing:
            raise SearchSpaceError(f"{where}: {param.key} exists only under {missing[0]}, which the point leaves "
                                   f"to the sampler. Give {missing[0]} too.")
        if not param.is_active(values):
            branch = ", ".join(f"{k} in {list(v)}" for k, v in param.when)
            raise SearchSpaceError(f"{where}: {param.key} applies only when {branch}, which this point rules out. "
                                   f"Drop {param.key} from the point or change its parent.")
        found = in_space(param, point[param.key], config)
        if found is None:
            raise SearchSpaceError(f"{where}: {param.key}={_shown(point[param.key])} is not in space.{param.key} "
                                   f"({span(param)}). " + ENQUEUE_FIX.format(key=param.key))
        values[param.key] = found[0]
    return values


def _same(config: ExperimentConfig, key: str, choice: Any, value: Any) -> bool:
    try:
        return bool(value_at(with_overrides(config, {key: choice}), key) == value)
    except (KeyError, ValueError, TypeError):
        return False


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)
