"""The names finesweep gives things in MLflow: run tags, the experiment's kind, the runs table's shared view."""

from __future__ import annotations

import json
from typing import Any, Dict

from finesweep.journal.events import SweepStarted

ROLE_TAG = "finesweep.role"
"""``sweep`` on a parent run, ``trial`` on a child run."""
STATUS_TAG = "finesweep.trial_status"
PARENT_TAG = "mlflow.parentRunId"
PHASE_TAG = "finesweep.phase"
KEY_TAG = "finesweep.run_key"
"""A run's identity in the sweep's journal (``<sweep id>`` or ``<sweep id>/trial/<number>``): a run is found
again by it before one is created, so a repeated send never makes a second run."""
STATE_TAG = "finesweep.state"
"""The sweep's folder (its journal), for resume."""

EXPERIMENT_KIND = "finetuning"
"""``mlflow.experimentKind`` of a sweep's experiment: the UI shows it as model training."""

VIEW_KEY = "finesweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
"""The experiment tag MLflow's UI reads a shared view from (its "Share" button writes the same tag)."""

UI_VIEW = f"runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
"""Where a link into MLflow's UI lands for an experiment: its training runs (not the GenAI overview), as
``runs_view`` lays them out."""

MAX_PARAM_COLUMNS = 12


def runs_view(started: SweepStarted, parent_id: str) -> Dict[str, Any]:
    """The runs table of the latest sweep: its trials, best first, with their status, the objective and the searched
    values as the first columns.

    MLflow's UI shows Source, Models and Dataset by default, keeps tags and params behind its column picker,
    and folds child runs under a collapsed parent whose own cells read "-". A shared view cannot say which runs
    are expanded (MLflow 3 leaves ``runsExpanded`` out of what it shares), but it can carry the runs table's
    search: filtered to the latest sweep's child runs and sorted by the objective, the table lists them flat, so
    the first screen the link opens shows the trials.
    """
    mode, metric = started.tags["finesweep.objective"].split(" ", 1)
    # a multi-objective sweep: every objective a column, the primary first (``finesweep.objectives``)
    objectives = [term.split(" ", 1)[1] for term in started.tags.get("finesweep.objectives", "").split(", ") if term]
    params = [f"params.`{key}`" for key in list(started.space)[:MAX_PARAM_COLUMNS]]
    columns = [f"tags.`{STATUS_TAG}`", *(f"metrics.`{m}`" for m in objectives or [metric]), *params]
    # columnOrder puts them first, before MLflow's Created, Duration and Models (the table draws only the
    # columns in view, so a tag column at the far right would be out of sight).
    return {"selectedColumns": [*columns, "attributes.`Models`"], "columnOrder": columns,
            "searchFilter": f"tags.`{PARENT_TAG}` = '{parent_id}'", "orderByKey": f"metrics.`{metric}`",
            "orderByAsc": mode == "min"}


def view_state(started: SweepStarted, parent_id: str) -> str:
    """``runs_view`` as the JSON text of the ``VIEW_TAG`` experiment tag."""
    return json.dumps(runs_view(started, parent_id))
