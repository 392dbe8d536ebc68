"""MLflow's private API finesweep uses, in one place, checked against the installed MLflow on import.

- ``mlflow.tracking._tracking_service.utils._use_tracking_uri``: MLflow's fluent API (``log_model``, ``start_run``,
  ``get_model_info``) talks to the process-wide tracking URI, and ``mlflow.set_tracking_uri`` also writes it to
  ``MLFLOW_TRACKING_URI`` in the environment, for the rest of the process and every command it starts. Registering
  the winner or resolving a model for ``serve`` must leave both as they were (a notebook's own MLflow calls, the
  next sweep's store); this context manager sets them and puts back what was there, unset included.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Iterator, List

import mlflow

from finesweep import adapters

TESTED_WITH = "3.17"
"""The MLflow release (major.minor) these names were read from."""

_UTILS = "mlflow.tracking._tracking_service.utils"


def missing() -> List[str]:
    """What of MLflow's private API this MLflow lacks (empty when everything finesweep uses is there)."""
    try:
        utils = importlib.import_module(_UTILS)
    except ImportError:
        return [_UTILS]
    return [] if callable(getattr(utils, "_use_tracking_uri", None)) else [f"{_UTILS}._use_tracking_uri"]


def require() -> None:
    """Raise one clear line (``ImportError``) when this MLflow lacks what finesweep uses of it."""
    adapters.require("MLflow", mlflow.__version__, TESTED_WITH, missing())


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API on ``uri`` for the duration; then the process's tracking URI and its environment as
    they were."""
    utils = importlib.import_module(_UTILS)
    with utils._use_tracking_uri(uri):
        yield


require()
