"""The search's prior belief: per searched key, the value the user expects to be good and how sure they are.

A space entry may set ``prior: <value>`` and ``prior_confidence: low | medium | high``; ``search.prior: config``
gives every other searched key the composed config's own value (the recipe in ``conf/``) as its prior. TPE then
proposes from the prior first and weighs its model by it, less with every trial (``search/prior.py``); the prior's
mode is the search's first trial (``recipe.mode_point``). Checked here, before anything starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence, Tuple

from finesweep.config.choices import PriorSource, Sampler
from finesweep.config.overrides import value_at
from finesweep.config.recipe import in_space, span
from finesweep.config.schema import ExperimentConfig
from finesweep.config.space import Param
from finesweep.errors import SearchSpaceError


def with_priors(config: ExperimentConfig, params: Sequence[Param], spec: Dict[str, Any]) -> Tuple[Param, ...]:
    """``params`` with each prior checked against its range and spelled as the space spells it; under
    ``search.prior: config``, keys without their own prior take the composed config's value.

    Args:
        spec: the sweep's ``space`` mapping as written (to tell a confidence set by the user from the default).

    Raises:
        SearchSpaceError: a prior the space cannot produce, a confidence without a prior, or a prior with a sampler
            that does not use one.
    """
    from_config = config.search.prior is PriorSource.config
    out = []
    for param in params:
        written = spec.get(param.key) or {}
        if param.prior is not None:
            out.append(dataclasses.replace(param, prior=_checked(param, param.prior, config, f"space.{param.key}")))
        elif from_config:
            out.append(dataclasses.replace(param, prior=_from_config(param, config)))
        elif "prior_confidence" in written:
            raise SearchSpaceError(
                f"space.{param.key}: prior_confidence says how sure a prior is, and this entry has no prior, got "
                f"prior_confidence={param.prior_confidence.value}. Add prior: <value> or set search.prior=config.")
        else:
            out.append(param)
    if any(p.prior is not None for p in out) and config.search.sampler not in (Sampler.tpe, Sampler.auto):
        source = "search.prior=config" if from_config else f"space.{next(p.key for p in out if p.prior is not None)}"
        raise SearchSpaceError(
            f"{source}: a prior weighs TPE's proposals, and the sampler is {config.search.sampler.value}. "
            "Use search.sampler=tpe, or remove the prior.")
    return tuple(out)


def _checked(param: Param, value: Any, config: ExperimentConfig, where: str) -> Any:
    found = in_space(param, value, config)
    if found is None:
        raise SearchSpaceError(f"{where}: prior={value!r} is not a value the space can produce ({span(param)}). "
                               "Use a prior inside the range (one of the choices), or widen the range.")
    return found[0]


def _from_config(param: Param, config: ExperimentConfig) -> Any:
    own = value_at(config, param.key)
    found = in_space(param, own, config)
    if found is None:
        raise SearchSpaceError(
            f"search.prior=config: the composed config's {param.key}={own!r} is the prior's mode, and it is not in "
            f"space.{param.key} ({span(param)}). Set {param.key} inside the range, give space.{param.key} its own "
            f"prior:, or widen the range.")
    return found[0]

