"""Reading past sweeps back from the tracking store (``finesweep ls``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from mlflow.tracking import MlflowClient

from finesweep.records import TrialStatus
from finesweep.tracking.projector import PARENT_TAG, PHASE_TAG, ROLE_TAG, STATE_TAG, STATUS_TAG


@dataclass(frozen=True)
class SweepRow:
    """One past sweep, as ``finesweep ls`` lists it."""

    experiment: str
    run_name: str
    run_id: str
    start_time: float
    status: str
    counts: Dict[str, int]
    objective: str
    best_value: Optional[float]
    state: str
    """The sweep's folder (its log), for resume."""


def list_sweeps(uri: str) -> List[SweepRow]:
    """Every sweep (parent run) in the tracking store, newest first."""
    client = MlflowClient(tracking_uri=uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    parents = client.search_runs(list(experiments), f"tags.`{ROLE_TAG}` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1000)
    return [_row(client, experiments[run.info.experiment_id], run) for run in parents]


def _row(client: MlflowClient, experiment: str, run: Any) -> SweepRow:
    children = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
                                  max_results=10000)
    counts: Dict[str, int] = {s.value: 0 for s in TrialStatus}
    counts["interrupted"] = 0
    for child in children:
        if child.data.tags.get(PHASE_TAG, "search") == "search":
            status = child.data.tags.get(STATUS_TAG, TrialStatus.running.value)
            counts[status] = counts.get(status, 0) + 1
    objective = run.data.tags.get("finesweep.objective", "")
    metric = objective.split(" ", 1)[-1]
    return SweepRow(experiment, run.info.run_name or "", run.info.run_id, run.info.start_time / 1000.0,
                    run.info.status, counts, objective, run.data.metrics.get(f"best/{metric}"),
                    run.data.tags.get(STATE_TAG, ""))
