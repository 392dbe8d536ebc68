"""Reading past sweeps and registered models back from the tracking store (``finesweep ls``, ``serve``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from mlflow.tracking import MlflowClient

from finesweep.errors import UserError
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
    experiment_id: str = ""
    registered: str = ""
    """``name/version`` of the model registered for it, or ""."""


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
                    run.data.tags.get(STATE_TAG, ""), run.info.experiment_id,
                    run.data.tags.get("finesweep.registered_model", ""))


def latest_registered(uri: str, name: Optional[str]) -> Tuple[str, List[str]]:
    """``models:/NAME/VERSION`` to serve and its input columns: the latest version of ``name``, by default
    the model of the latest sweep that registered one; ``name`` may also be ``NAME/VERSION`` or a models:/ URI.

    Raises:
        UserError: nothing registered, or no such model.
    """
    from mlflow.models import get_model_info

    client = MlflowClient(tracking_uri=uri)
    if name is None:
        found = next((row.registered for row in list_sweeps(uri) if row.registered), "")
        if not found:
            raise UserError(f"no sweep in {uri} has registered a model yet. Run a sweep to its end, or name one: "
                            "finesweep serve NAME[/VERSION].")
        name = found.split("/")[0]
    name = name.removeprefix("models:/")
    model, _, version = name.partition("/")
    versions = client.search_model_versions(f"name = '{model}'")
    if not versions:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise UserError(f"no registered model {model!r} in {uri} (registered: {known}).")
    if version and version not in {v.version for v in versions}:
        raise UserError(f"model {model!r} has no version {version} (versions: "
                        f"{', '.join(sorted((v.version for v in versions), key=int))}).")
    chosen = f"models:/{model}/{version or max(int(v.version) for v in versions)}"
    return chosen, list(get_model_info(chosen).signature.inputs.input_names())
