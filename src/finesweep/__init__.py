"""finesweep: hyperparameter sweeps for fine-tuning pretrained models.

The public Python API (the ``finesweep`` command is a thin layer over it)::

    import finesweep

    result = finesweep.run("demo", overrides=["search.num_trials=8"])   # -> finesweep.SweepResult
    finesweep.resume(result.sweep_id, overrides=["search.num_trials=16"])
    finesweep.load("demo").best_params
    finesweep.show("demo")                                               # compose and validate only

Errors are ``finesweep.errors`` types. The API loads lazily: ``import finesweep`` (which every Ray worker
does) imports neither Ray, MLflow nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["SweepResult", "TrialSummary", "errors", "load", "resume", "run", "show"]

if TYPE_CHECKING:
    from finesweep import errors
    from finesweep.api import load, resume, run, show
    from finesweep.result import SweepResult, TrialSummary

_LAZY = {"run": "finesweep.api", "resume": "finesweep.api", "load": "finesweep.api", "show": "finesweep.api",
         "SweepResult": "finesweep.result", "TrialSummary": "finesweep.result", "errors": "finesweep.errors"}


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'finesweep' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name == "errors" else getattr(module, name)
