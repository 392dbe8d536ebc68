"""Reading past sweeps and registered models back from the tracking store (``finesweep ls``, ``serve``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from finesweep.adapters import mlflow_private
from finesweep.errors import UserError, one_line
from finesweep.journal.records import TrialStatus
from finesweep.tracking.tags import PARENT_TAG, PHASE_TAG, ROLE_TAG, STATE_TAG, STATUS_TAG


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


def request_example(uri: str, target: str) -> Dict[str, Any]:
    """The example REST request a finesweep model carries in its metadata (its task's); empty when it has none."""
    from mlflow.models import get_model_info

    from finesweep.tracking.registry import REQUEST_KEY

    with mlflow_private.tracking_uri(uri):
        metadata = get_model_info(target).metadata or {}
    example = metadata.get(REQUEST_KEY)
    return dict(example) if isinstance(example, dict) else {}


def resolve_model(uri: str, model: Optional[str]) -> Tuple[str, List[str]]:
    """The model URI to serve and its input columns.

    Args:
        uri: the tracking store.
        model: None (the latest sweep's registered model, latest version); ``NAME`` (its latest version),
            ``NAME/VERSION``, ``NAME/latest``, ``NAME/STAGE``, ``NAME@ALIAS``; or any model URI MLflow accepts:
            the same forms under ``models:/`` (and ``models:/<logged model id>``), ``runs:/RUN_ID/PATH``, a
            folder or another artifact URI.

    Raises:
        UserError: nothing registered yet, no such model, version or alias, or a URI MLflow cannot load.
    """
    from mlflow.models import get_model_info

    client = MlflowClient(tracking_uri=uri)
    target = _model_uri(client, uri, model)
    name, _, which = target.removeprefix("models:/").partition("/") if target.startswith("models:/") else ("", "", "")
    if name and "@" in name:
        name, which = name.split("@", 1)[0], "@" + name.split("@", 1)[1]
    if name and not name.startswith("m-"):  # a registered model, not a logged model's id
        _check_registered(client, uri, name, which)
    try:
        with mlflow_private.tracking_uri(uri):
            info = get_model_info(target)
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load the model {target} from {uri} ({one_line(exc)}). Give a registered model "
                        "(NAME, NAME/VERSION, NAME@ALIAS, models:/...) or another model URI MLflow can load.") from None
    return target, list(info.signature.inputs.input_names()) if info.signature is not None else []


def _model_uri(client: MlflowClient, uri: str, model: Optional[str]) -> str:
    """``model`` as a model URI: a bare name is its latest version, a name with a version is ``models:/``."""
    if model is None:
        found = next((row.registered for row in list_sweeps(uri) if row.registered), "")
        if not found:
            raise UserError(f"no sweep in {uri} has registered a model yet. Run a sweep to its end, or name one: "
                            "finesweep serve NAME[/VERSION].")
        model = found.split("/")[0]
    if ":" in model or Path(model).exists():
        target = model  # a URI (models:/, runs:/, s3://, file:) or a local folder
    else:
        target = f"models:/{model}"
    rest = target.removeprefix("models:/")
    if target.startswith("models:/") and "/" not in rest and "@" not in rest and not rest.startswith("m-"):
        return f"models:/{rest}/{_versions(client, uri, rest)[-1]}"  # a bare name: its latest version
    return target


def _versions(client: MlflowClient, uri: str, name: str) -> List[int]:
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if not versions:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise UserError(f"no registered model {name!r} in {uri} (registered: {known}). Name one of those, or point "
                        "MLFLOW_TRACKING_URI (or tracking.uri=...) at the store that has it.")
    return versions


def _check_registered(client: MlflowClient, uri: str, name: str, which: str) -> None:
    """The version or alias a ``models:/NAME/...`` URI names exists (MLflow's own error says less)."""
    versions = _versions(client, uri, name)
    if which.isdigit() and int(which) not in versions:
        raise UserError(f"model {name!r} has no version {which} (versions: {', '.join(map(str, versions))}). "
                        f"Use one of those, or models:/{name}/latest.")
    if which.startswith("@"):
        try:
            client.get_model_version_by_alias(name, which[1:])
        except MlflowException:
            aliases = sorted({a for m in client.search_registered_models(f"name = '{name}'") for a in m.aliases})
            raise UserError(f"model {name!r} has no alias {which[1:]!r} (aliases: {', '.join(aliases) or 'none'}). "
                            "Set one with MlflowClient().set_registered_model_alias, or give a version.") from None
