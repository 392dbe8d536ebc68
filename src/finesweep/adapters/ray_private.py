"""Ray's private APIs finesweep uses, in one place, checked against the installed Ray on import.

- ASHA's bracket (``ray.tune.schedulers.async_hyperband._Bracket``) and the scheduler's bookkeeping: its rungs
  (``_rungs``: ``[(milestone, {trial_id: value})]``, highest first), ``rf``, ``cutoff``, ``_stop_last_trials``;
  ``ASHAScheduler``'s ``_brackets``, ``_trial_info``, ``_max_t``, ``_reduction_factor``, ``_time_attr``,
  ``_metric``. finesweep's ASHA (``search/asha.py``) breaks ties at a rung's cutoff and replays its rungs on
  resume (ray#30838), which Ray's public scheduler API allows neither of.
- ``ray._private.services.canonicalize_bootstrap_address``: what ``ray.init(address="auto")`` finds, resolved
  before joining, so an unreachable cluster is one clear line (``cluster.address=auto``).
- ``ray._private.utils.get_dashboard_dependency_error``: whether this install can start Ray's dashboard, whose
  state API a local Ray needs for trials of several workers; asked before starting it, so a missing package is one
  clear line and not Ray's traceback.
- ``ray._raylet.Config.initialize``: Ray caches its auth config at import; after finesweep turns token mode on
  for a cluster that has a token, the config is read again, as Ray does for ``address=auto``.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional, Tuple

import ray
from ray.tune.schedulers import ASHAScheduler, async_hyperband

from finesweep import adapters

TESTED_WITH = "2.60"
"""The Ray release (major.minor) these names were read from."""

Bracket: Any = getattr(async_hyperband, "_Bracket", object)
"""ASHA's bracket class, to subclass (``object`` when this Ray has none: ``missing`` says so)."""

Rungs = List[Tuple[float, Dict[str, float]]]


def missing() -> List[str]:
    """What of Ray's private API this Ray lacks (empty when everything finesweep uses is there)."""
    gone = [] if Bracket is not object else ["ray.tune.schedulers.async_hyperband._Bracket"]
    if Bracket is not object:
        bracket = Bracket(1, 4, 2, 0)
        gone += [f"_Bracket.{name}" for name in ("_rungs", "rf", "cutoff", "_stop_last_trials", "on_result")
                 if not hasattr(bracket, name)]
    scheduler = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
    gone += [f"ASHAScheduler.{name}" for name in ("_brackets", "_trial_info", "_max_t", "_reduction_factor",
                                                  "_time_attr", "_metric", "_stop_last_trials")
             if not hasattr(scheduler, name)]
    for module, name in (("ray._private.services", "canonicalize_bootstrap_address"), ("ray._raylet", "Config"),
                         ("ray._private.utils", "get_dashboard_dependency_error")):
        try:
            if not hasattr(importlib.import_module(module), name):
                gone.append(f"{module}.{name}")
        except ImportError:
            gone.append(f"{module}.{name}")
    return gone


def require() -> None:
    """Raise one clear line (``ImportError``) when this Ray lacks what finesweep uses of it."""
    adapters.require("Ray", ray.__version__, TESTED_WITH, missing())


def rungs(bracket: Any) -> Rungs:
    """A bracket's rungs, highest first: (milestone, {trial id: recorded value})."""
    return bracket._rungs  # type: ignore[no-any-return]


def stops_last_trials(bracket: Any) -> bool:
    """Whether the bracket may stop a trial that passed its top rung."""
    return bool(bracket._stop_last_trials)


def brackets(scheduler: ASHAScheduler) -> List[Any]:
    """The scheduler's brackets (one, as finesweep configures ASHA)."""
    return scheduler._brackets


def set_brackets(scheduler: ASHAScheduler, new: List[Any]) -> None:
    """Replace the scheduler's brackets (by finesweep's own, built with ``bracket_settings``)."""
    scheduler._brackets = new


def bracket_settings(scheduler: ASHAScheduler) -> Dict[str, Any]:
    """What the scheduler built its brackets with: ``max_t``, ``reduction_factor``, ``stop_last_trials``."""
    return {"max_t": scheduler._max_t, "reduction_factor": scheduler._reduction_factor,
            "stop_last_trials": scheduler._stop_last_trials}


def bracket_of(scheduler: ASHAScheduler, trial_id: str) -> Optional[Any]:
    """The bracket a trial was added to, or None for a trial the scheduler does not know."""
    return scheduler._trial_info.get(trial_id)


def budget(scheduler: ASHAScheduler) -> Tuple[str, float]:
    """(time attribute, its maximum): what a trial's full budget is measured in, and how much it is."""
    return str(scheduler._time_attr), float(scheduler._max_t)


def metric(scheduler: ASHAScheduler) -> Optional[str]:
    """The metric the scheduler ranks trials by."""
    return scheduler._metric


def auto_address() -> Optional[str]:
    """The address ``ray.init(address="auto")`` would join (``RAY_ADDRESS``, else a cluster on this machine)."""
    from ray._private.services import canonicalize_bootstrap_address

    found = canonicalize_bootstrap_address("auto")
    return str(found) if found else None


def dashboard_unavailable() -> Optional[str]:
    """Why this install cannot start Ray's dashboard (a missing package), or None when it can."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return str(error) if error else None


def reread_auth_config() -> None:
    """Make Ray read its auth settings (``RAY_AUTH_MODE``) from the environment again."""
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


require()
