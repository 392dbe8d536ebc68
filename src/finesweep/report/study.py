"""The Optuna study behind the search, kept in RDB storage (SQLite by default) so optuna-dashboard opens it.

The searcher's study lives in the driver's memory and is rebuilt from the sweep's log on resume;
this copies it, as the log tells it, into ``tracking.optuna_storage`` under ``<sweep>-<sweep id>``,
each trial with its finesweep trial number and MLflow run id as user attributes (the child runs
carry ``finesweep.optuna_trial`` the other way). Writing it again replaces it: it is always the
whole study, never half of two sessions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from finesweep.report.facts import SweepFacts


def storage_url(facts: SweepFacts) -> str:
    """``tracking.optuna_storage``; empty = ``optuna.db`` in ``cluster.storage_path``."""
    return facts.config.tracking.optuna_storage or f"sqlite:///{Path(facts.config.cluster.storage_path).resolve()}/optuna.db"


def persist(study: Any, facts: SweepFacts) -> str:
    """Write the study to its RDB storage; return the study's name there."""
    import optuna

    from finesweep.tracking import Cursor

    url = storage_url(facts)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(url)
    name = f"{facts.state.name}-{facts.state.sweep_id}"
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage)
    target = optuna.create_study(study_name=name, storage=storage, direction=study.direction)
    runs = Cursor.load(facts.state.folder).runs
    searched = sorted((t for t in facts.search() if t.record.optuna_number is not None),
                      key=lambda t: int(t.record.optuna_number or 0))
    for trial, facts_of in zip(study.trials, searched, strict=True):  # rebuild_study adds them in this order
        attrs = {"finesweep_trial": facts_of.number, "mlflow_run_id": runs.get(f"trial/{facts_of.number}", "")}
        target.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, state=trial.state,
            value=trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values=trial.intermediate_values, user_attrs=attrs))
    target.set_user_attr("finesweep_sweep_id", facts.state.sweep_id)
    target.set_user_attr("mlflow_parent_run_id", runs.get("sweep", ""))
    target.set_user_attr("objective", f"{facts.mode.value} {facts.metric}")
    return name
