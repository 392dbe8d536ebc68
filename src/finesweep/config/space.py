"""The ``space`` section of a sweep file: typed YAML -> frozen ``Param``s -> Optuna distributions.

A sweep file declares each searched value by its dotted key into the composed config::

    space:
      optim.lr: {distribution: loguniform, low: 1.0e-5, high: 3.0e-4}
      data.batch_size: {distribution: categorical, choices: [16, 32]}

``parse_space`` is the one pure function that turns that mapping into ``Param``s, checking every
rule once, before anything starts. No Ray import here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import optuna

from finesweep.config.choices import Confidence, Sampler
from finesweep.config.overrides import SWEEP_SECTIONS, field_type, has_key, key_hint, leaf_keys
from finesweep.config.schema import ExperimentConfig
from finesweep.errors import SearchSpaceError

TOKENISATION_KEYS = ("model.name_or_path",)
"""Keys outside ``data.`` whose value changes the tokenised data."""

NOT_TOKENISATION_KEYS = ("data.batch_size", "data.fold", "data.augment", "data.mixup", "data.cutmix",
                         "data.val_max_rows", "data.generate_every_epoch", "data.metric")
"""Keys inside ``data.`` that do not change the prepared data (a trial batches, augments, validates or scores
generated text with them)."""

NOT_SEARCHABLE = {"data.fold": "is set by model selection on its cross-validation runs (final.cv_folds)"}
"""Config keys a sweep may not search, and why."""


class Distribution(str, enum.Enum):
    """The distributions a searched value may follow."""

    uniform = "uniform"
    float = "float"
    loguniform = "loguniform"
    int = "int"
    categorical = "categorical"


PRIOR_FIELDS = {"prior", "prior_confidence"}
"""Fields every distribution may have: the prior's mode and how sure it is (``config/prior.py`` checks them)."""

_FIELDS = {  # per distribution; every distribution may also have `when` and the PRIOR_FIELDS
    Distribution.uniform: {"low", "high", "step"},
    Distribution.float: {"low", "high", "step"},
    Distribution.loguniform: {"low", "high"},
    Distribution.int: {"low", "high", "step", "log"},
    Distribution.categorical: {"choices"},
}


@dataclass(frozen=True)
class Param:
    """One searched config value."""

    key: str
    distribution: Distribution
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    choices: Tuple[Any, ...] = ()
    when: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()
    """Conditions: the parameter exists only while each named categorical holds one of the values."""
    prior: Any = None
    """The mode of the search's prior belief about this value (None: no prior), as the space spells it."""
    prior_confidence: Confidence = Confidence.medium
    """How narrow the prior is around ``prior`` (``search/prior.py`` says what each level means)."""

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values sampled so far (its parents come first)."""
        return all(key in values and values[key] in allowed for key, allowed in self.when)

    @property
    def is_finite(self) -> bool:
        """Whether the value set is finite: categorical, int, or float with a step."""
        return self.distribution in (Distribution.categorical, Distribution.int) or (
            self.distribution in (Distribution.uniform, Distribution.float) and self.step is not None
        )

    def describe(self) -> Dict[str, Any]:
        """The parameter as plain data: its distribution and the fields it sets (``when`` as a mapping)."""
        described: Dict[str, Any] = {"distribution": self.distribution.value}
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None:
                described[name] = getattr(self, name)
        if self.log:
            described["log"] = True
        if self.choices:
            described["choices"] = list(self.choices)
        if self.when:
            described["when"] = {key: list(values) for key, values in self.when}
        if self.prior is not None:
            described.update(prior=self.prior, prior_confidence=self.prior_confidence.value)
        return described

    @property
    def bounds(self) -> Tuple[float, float]:
        """(low, high) of a numeric parameter."""
        if self.low is None or self.high is None:
            raise TypeError(f"space.{self.key}: a {self.distribution.value} parameter has no bounds")
        return self.low, self.high

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        """The equivalent Optuna distribution (non-scalar choices, such as lists, as their JSON text)."""
        if self.distribution is Distribution.categorical:
            return optuna.distributions.CategoricalDistribution(tuple(self.to_optuna_value(c) for c in self.choices))
        low, high = self.bounds
        if self.distribution is Distribution.int:
            return optuna.distributions.IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(
            low, high, log=self.distribution is Distribution.loguniform, step=self.step)

    def to_optuna_value(self, value: Any) -> Any:
        """A value as Optuna stores it: Optuna's choices must be None, bool, int, float or str."""
        return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)

    def from_optuna_value(self, value: Any) -> Any:
        """The config value behind what Optuna stored."""
        return next((c for c in self.choices if self.to_optuna_value(c) == value), value)

    def extremes(self) -> List[Tuple[str, Any]]:
        """The values that bound what the sampler can propose: (label, value) for each choice, or low and high.

        With a step, "high" is the largest value actually on the step grid.
        """
        if self.distribution is Distribution.categorical:
            return [("choice", choice) for choice in self.choices]
        low, high = self.bounds
        if self.step is not None:
            high = self.grid_values()[-1]
        if self.distribution is Distribution.int:
            low, high = int(low), int(high)
        return [("low", low)] if low == high else [("low", low), ("high", high)]

    def grid_values(self) -> List[Any]:
        """Every value of a finite parameter, in order."""
        if self.distribution is Distribution.categorical:
            return list(self.choices)
        low, high = self.bounds
        if self.distribution is Distribution.int:
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        if self.step is None:
            raise TypeError(f"space.{self.key}: a continuous range has no grid values")
        count = int(math.floor((high - low) / self.step + 1e-9)) + 1
        return [round(low + i * self.step, 12) for i in range(count)]


def parse_space(space: Mapping[str, Any], config: ExperimentConfig) -> Tuple[Param, ...]:
    """Parse and check a sweep's ``space`` mapping against the composed config.

    Raises:
        SearchSpaceError: the first rule broken, naming the key, the value and the fix.
    """
    params: List[Param] = []
    for key, spec in space.items():
        params.append(_parse_param(str(key), spec, config, params))
    return tuple(params)


def suggest(trial: Any, params: Sequence[Param]) -> Dict[str, Any]:
    """Define-by-run: ask an Optuna trial (or Ray's captor of one) for every active parameter."""
    values: Dict[str, Any] = {}
    for param in params:
        if not param.is_active(values):
            continue
        dist = param.to_optuna()
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            values[param.key] = param.from_optuna_value(trial.suggest_categorical(param.key, list(dist.choices)))
        elif isinstance(dist, optuna.distributions.IntDistribution):
            values[param.key] = trial.suggest_int(param.key, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, optuna.distributions.FloatDistribution):
            values[param.key] = trial.suggest_float(param.key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def grid(params: Sequence[Param]) -> Dict[str, List[Any]]:
    """The grid of a finite space: key -> every value.

    Raises:
        SearchSpaceError: a parameter is a continuous range.
    """
    for param in params:
        if not param.is_finite:
            raise SearchSpaceError(
                f"space.{param.key}: the grid sampler needs a finite set of values, got a continuous "
                f"{param.distribution.value} range [{param.low}, {param.high}]. "
                "Add a step, use categorical choices, or use sampler random or tpe.")
    if not params:
        raise SearchSpaceError("space: the grid sampler needs at least one searched key, got none. "
                               "Add entries under space.")
    return {param.key: param.grid_values() for param in params}


def grid_size(params: Sequence[Param]) -> int:
    """Number of combinations the grid sampler runs (each conditional branch counted separately)."""
    if not is_conditional(params):
        return math.prod(len(values) for values in grid(params).values())
    return sum(1 for _ in iter_grid(params))


def is_conditional(params: Sequence[Param]) -> bool:
    """Whether any parameter exists only under a value of another."""
    return any(param.when for param in params)


def planned_trials(config: ExperimentConfig, params: Sequence[Param]) -> int:
    """Trials a sweep runs: every grid combination once, otherwise ``search.num_trials``."""
    if config.search.sampler is Sampler.grid:
        return grid_size(params)
    return int(config.search.num_trials or 0)


def iter_grid(params: Sequence[Param]) -> Iterator[Dict[str, Any]]:
    """Every combination of a finite space, as dotted-key dicts holding only active parameters."""
    values = grid(params)
    yield from _branches(list(params), values, {})


def walk_branches(params: Sequence[Param], values: Mapping[str, Sequence[Any]]) -> Iterator[Dict[str, Any]]:
    """Every combination of the given values of each parameter, along every conditional branch."""
    yield from _branches(list(params), values, {})


def _branches(params: List[Param], values: Mapping[str, Sequence[Any]],
              chosen: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    if not params:
        yield dict(chosen)
        return
    head, rest = params[0], params[1:]
    if not head.is_active(chosen):
        yield from _branches(rest, values, chosen)
        return
    for value in values[head.key]:
        yield from _branches(rest, values, {**chosen, head.key: value})


def affects_tokenisation(key: str) -> bool:
    """Whether changing this key changes the tokenised data (so it is prepared per value)."""
    return key in TOKENISATION_KEYS or (key.startswith("data.") and key not in NOT_TOKENISATION_KEYS)


def _parse_param(key: str, spec: Any, config: ExperimentConfig, earlier: Sequence[Param] = ()) -> Param:
    where = f"space.{key}"
    _check_key(key, config)
    if not isinstance(spec, Mapping) or "distribution" not in spec:
        raise SearchSpaceError(
            f"{where}: each entry must be a mapping with a distribution, got {spec!r}. "
            "Write e.g. {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}.")
    dist = _distribution(where, spec["distribution"])
    extra = set(spec) - _FIELDS[dist] - {"distribution", "when"} - PRIOR_FIELDS
    if extra:
        raise SearchSpaceError(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, extra)))} for distribution "
            f"{dist.value}. Allowed: {', '.join(sorted(_FIELDS[dist]))}; every entry also takes "
            f"{', '.join(sorted({'when'} | PRIOR_FIELDS))}.")
    param = _categorical(where, key, spec) if dist is Distribution.categorical else _numeric(where, key, dist, spec)
    if affects_tokenisation(key) and dist is not Distribution.categorical:
        raise SearchSpaceError(
            f"{where}: data is tokenised once per sweep for each value of {key}, so it can only be "
            f"searched as categorical, got {dist.value}. Use {{distribution: categorical, choices: [...]}}.")
    _check_types(where, key, param, config)
    if "when" in spec:
        param = dataclasses.replace(param, when=_conditions(where, spec["when"], earlier))
    return dataclasses.replace(param, prior=spec.get("prior"), prior_confidence=_confidence(where, spec))


def _confidence(where: str, spec: Mapping[str, Any]) -> Confidence:
    given = spec.get("prior_confidence", Confidence.medium.value)
    try:
        return Confidence(given)
    except ValueError:
        allowed = ", ".join(c.value for c in Confidence)
        raise SearchSpaceError(f"{where}: prior_confidence must be one of {allowed}, got {given!r}. "
                               "Use e.g. prior_confidence: medium.") from None


def _conditions(where: str, when: Any, earlier: Sequence[Param]) -> Tuple[Tuple[str, Tuple[Any, ...]], ...]:
    if not isinstance(when, Mapping) or not when:
        raise SearchSpaceError(f"{where}: when must map a categorical key to its value(s), got when={when!r}. "
                               "Write e.g. when: {finetune.strategy: freeze}.")
    parents = {p.key: p for p in earlier if p.distribution is Distribution.categorical}
    conditions = []
    for key, allowed in when.items():
        if key not in parents:
            raise SearchSpaceError(
                f"{where}: when refers to {key!r}, which is not a categorical key listed before it in space "
                f"(known: {', '.join(parents) or 'none'}). Declare {key} as categorical above this entry.")
        values = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
        unknown = [v for v in values if v not in parents[key].choices]
        if unknown or not values:
            raise SearchSpaceError(
                f"{where}: when {key} = {unknown[0] if unknown else values!r} can never hold, {key} takes "
                f"{list(parents[key].choices)}. Use one of those values.")
        conditions.append((str(key), values))
    return tuple(conditions)


def _check_key(key: str, config: ExperimentConfig) -> None:
    section = key.split(".")[0]
    if section in SWEEP_SECTIONS:
        raise SearchSpaceError(f"space.{key}: {section} describes the sweep itself, not a config value, so it cannot "
                               "be searched. Search config values such as optim.lr; set the sweep's own values "
                               f"under {section}:.")
    if key in NOT_SEARCHABLE:
        raise SearchSpaceError(f"space.{key}: {key} {NOT_SEARCHABLE[key]}, so it cannot be searched. "
                               "Remove it from space.")
    if not has_key(config, key):
        raise SearchSpaceError(f"space.{key}: unknown config key {key!r}. {key_hint(key, leaf_keys(config))}")


def _distribution(where: str, name: Any) -> Distribution:
    try:
        return Distribution(name)
    except ValueError:
        allowed = ", ".join(d.value for d in Distribution)
        raise SearchSpaceError(f"{where}: unknown distribution {name!r}. Use one of {allowed}.") from None


def _categorical(where: str, key: str, spec: Mapping[str, Any]) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str) or len(choices) == 0:
        raise SearchSpaceError(
            f"{where}: categorical needs a non-empty list of choices, got choices={choices!r}. "
            "Write e.g. choices: [16, 32].")
    if len(set(map(repr, choices))) != len(choices):
        raise SearchSpaceError(f"{where}: categorical choices must be distinct, got {list(choices)}. "
                               "Remove the repeated values.")
    return Param(key, Distribution.categorical, choices=tuple(choices))


def _numeric(where: str, key: str, dist: Distribution, spec: Mapping[str, Any]) -> Param:
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SearchSpaceError(f"{where}: {dist.value} needs a numeric {bound}, got {bound}={value!r}. "
                                   f"Write e.g. {{distribution: {dist.value}, low: 1, high: 10}}.")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    if low > high:
        raise SearchSpaceError(f"{where}: low must be <= high, got low={low}, high={high}. Swap the bounds.")
    if dist is Distribution.loguniform and low <= 0:
        raise SearchSpaceError(f"{where}: loguniform needs low > 0, got low={low}. "
                               "Use a positive bound such as 1e-6.")
    if dist is Distribution.int:
        return _int_param(where, key, low, high, step, log)
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SearchSpaceError(f"{where}: step must be a number > 0, got step={step!r}. Use e.g. step: 0.05.")
    if step is not None and not _divides(high - low, step):
        raise SearchSpaceError(f"{where}: step must divide high - low, got low={low}, high={high}, "
                               f"step={step}. Adjust high to low + k * step.")
    return Param(key, dist, low=float(low), high=float(high), step=None if step is None else float(step))


def _int_param(where: str, key: str, low: Any, high: Any, step: Any, log: bool) -> Param:
    if not (float(low).is_integer() and float(high).is_integer()):
        raise SearchSpaceError(f"{where}: int needs integer bounds, got low={low}, high={high}. "
                               "Use whole numbers or distribution float.")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise SearchSpaceError(f"{where}: int step must be a whole number >= 1, got step={step!r}. Use e.g. step: 2.")
    if log and (low < 1 or (step or 1) != 1):
        raise SearchSpaceError(f"{where}: int with log needs low >= 1 and no step, got low={low}, "
                               f"step={step}. Drop the step or log, and keep low >= 1.")
    return Param(key, Distribution.int, low=int(low), high=int(high), step=step, log=log)


def _divides(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-9


def _check_types(where: str, key: str, param: Param, config: ExperimentConfig) -> None:
    annotation = field_type(config, key)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) is typing.Union and len(args) == 1
    target = args[0] if optional else annotation
    values = param.choices if param.distribution is Distribution.categorical else (param.low, param.high)
    for value in values:
        problem = _type_problem(target, value)
        if problem:
            raise SearchSpaceError(f"{where}: {key} {problem}, got {value!r}. "
                                   "Use values of the config key's type.")
    if target is int and param.distribution in (Distribution.uniform, Distribution.float, Distribution.loguniform):
        raise SearchSpaceError(f"{where}: {key} holds whole numbers, got distribution {param.distribution.value}. "
                               "Use distribution int or categorical.")


def _type_problem(target: Any, value: Any) -> Optional[str]:
    if typing.get_origin(target) in (list, List):
        (item,) = typing.get_args(target) or (Any,)
        if not isinstance(value, list) or not value:
            return "must be a non-empty list"
        return next((f"must list values that each {p[5:]}" for p in (_type_problem(item, v) for v in value) if p),
                    None)
    if isinstance(target, type) and issubclass(target, enum.Enum):
        allowed = [m.value for m in target]
        return None if value in allowed else f"must be one of {', '.join(allowed)}"
    if target is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if target is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok or (isinstance(value, float) and value.is_integer()) else "must be a whole number"
    if target is str:
        return None if isinstance(value, str) else "must be a string"
    if target is bool:
        return None if isinstance(value, bool) else "must be true or false"
    return None
