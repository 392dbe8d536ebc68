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
import difflib
import enum
import math
import typing
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import optuna

from finesweep.config import ExperimentConfig, Sampler, field_type, has_key
from finesweep.errors import SearchSpaceError

SWEEP_SECTIONS = ("objective", "search", "scheduler", "space", "name", "defaults")
"""Top-level config keys that describe the sweep itself and so cannot be searched."""

TOKENISATION_KEYS = ("model.name_or_path",)
"""Keys outside ``data.`` whose value changes the tokenised data."""

NOT_TOKENISATION_KEYS = ("data.batch_size",)
"""Keys inside ``data.`` that do not change the tokenised data."""


class Distribution(str, enum.Enum):
    """The distributions a searched value may follow."""

    uniform = "uniform"
    float = "float"
    loguniform = "loguniform"
    int = "int"
    categorical = "categorical"


_FIELDS = {  # per distribution; every distribution may also have `when`
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

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values sampled so far (its parents come first)."""
        return all(key in values and values[key] in allowed for key, allowed in self.when)

    @property
    def is_finite(self) -> bool:
        """Whether the value set is finite: categorical, int, or float with a step."""
        return self.distribution in (Distribution.categorical, Distribution.int) or (
            self.distribution in (Distribution.uniform, Distribution.float) and self.step is not None
        )

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        """The equivalent Optuna distribution."""
        if self.distribution is Distribution.categorical:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.distribution is Distribution.int:
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.distribution is Distribution.loguniform, step=self.step)

    def grid_values(self) -> List[Any]:
        """Every value of a finite parameter, in order."""
        if self.distribution is Distribution.categorical:
            return list(self.choices)
        if self.distribution is Distribution.int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


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
            values[param.key] = trial.suggest_categorical(param.key, list(dist.choices))
        elif isinstance(dist, optuna.distributions.IntDistribution):
            values[param.key] = trial.suggest_int(param.key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
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


def _branches(params: List[Param], values: Dict[str, List[Any]], chosen: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
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
    extra = set(spec) - _FIELDS[dist] - {"distribution", "when"}
    if extra:
        raise SearchSpaceError(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, extra)))} for distribution "
            f"{dist.value}. Allowed: {', '.join(sorted(_FIELDS[dist]))}.")
    param = _categorical(where, key, spec) if dist is Distribution.categorical else _numeric(where, key, dist, spec)
    if affects_tokenisation(key) and dist is not Distribution.categorical:
        raise SearchSpaceError(
            f"{where}: data is tokenised once per sweep for each value of {key}, so it can only be "
            f"searched as categorical, got {dist.value}. Use {{distribution: categorical, choices: [...]}}.")
    _check_types(where, key, param, config)
    if "when" in spec:
        param = dataclasses.replace(param, when=_conditions(where, spec["when"], earlier))
    return param


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
    if key.split(".")[0] in SWEEP_SECTIONS or not has_key(config, key):
        known = _leaf_keys(config)
        section = key.rsplit(".", 1)[0] + "."
        siblings = [k for k in known if k.startswith(section) and "." not in k[len(section):]]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            hint = f"Did you mean {close[0]}?"
        elif siblings:
            hint = f"Keys under {section[:-1]}: {', '.join(k[len(section):] for k in siblings)}."
        else:
            hint = "Use a dotted path into the composed config, e.g. optim.lr."
        raise SearchSpaceError(f"space.{key}: unknown config key {key!r}. {hint}")


def _leaf_keys(config: Any, prefix: str = "") -> List[str]:
    keys = []
    for f in dataclasses.fields(config):
        if f.name in SWEEP_SECTIONS:
            continue
        value = getattr(config, f.name)
        path = f"{prefix}{f.name}"
        keys.extend(_leaf_keys(value, path + ".") if dataclasses.is_dataclass(value) else [path])
    return keys


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
    target = args[0] if len(args) == 1 else annotation
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
