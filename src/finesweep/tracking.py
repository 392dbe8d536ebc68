"""The only module that knows MLflow: one parent run per sweep, one nested child run per trial.

All logging happens on the driver, from events the tuner forwards (records.py). Trials never talk
to MLflow: when ASHA stops a trial, Ray raises ``SystemExit`` inside it, which would leave an
in-trial logger's run FAILED or RUNNING without its last epoch. The driver knows why a trial ended.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

import finesweep
from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError
from finesweep.records import TrialRecord, TrialStatus
from finesweep.selection import Selection, test_summary

if TYPE_CHECKING:  # serving.py imports torch-free but MLflow-model machinery; only register() needs it
    from finesweep.serving import ServingMeta

ROLE_TAG = "finesweep.role"
STATUS_TAG = "finesweep.trial_status"
PARENT_TAG = "mlflow.parentRunId"
PHASE_TAG = "finesweep.phase"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


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


class SweepTracker:
    """Logs a sweep to MLflow as it runs. A ``SweepListener``.

    Args:
        config: the validated experiment config.
        space: the search space as plain data (logged as JSON).
        sweep_file: the sweep YAML the user ran (logged as an artifact).
        composed_yaml: the composed config as YAML text (logged as an artifact).
    """

    def __init__(self, config: ExperimentConfig, space: Dict[str, Any], sweep_file: Path,
                 composed_yaml: str) -> None:
        self.config = config
        self.space = space
        self.sweep_file = sweep_file
        self.composed_yaml = composed_yaml
        self._client: Optional[MlflowClient] = None
        self.experiment_id = ""
        self.parent_id = ""
        self._children: Dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; opening a new SQLite store runs its migrations (~2 s), so it is lazy."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.config.tracking.uri)
        return self._client

    def prepare(self) -> None:
        """Open the store (creating its tables on first use) and create or reuse the experiment."""
        self.experiment_id = _experiment_id(self.client, self.config)

    def start(self) -> str:
        """Create the parent run (preparing the store first if needed); return its run id."""
        if not self.experiment_id:
            self.prepare()
        run = self.client.create_run(self.experiment_id, run_name=self.config.name, tags=self._parent_tags())
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in self._parent_params().items()])
        self.client.log_text(self.parent_id, self.composed_yaml, "config.yaml")
        self.client.log_artifact(self.parent_id, str(self.sweep_file), "sweep")
        self.client.log_text(self.parent_id, json.dumps(self.space, indent=2), "search_space.json")
        return self.parent_id

    def trial_started(self, record: TrialRecord) -> None:
        tags = {PARENT_TAG: self.parent_id, ROLE_TAG: "trial", STATUS_TAG: TrialStatus.running.value,
                "finesweep.trial_id": record.trial_id, PHASE_TAG: record.phase}
        prefix = "trial" if record.phase == "search" else record.phase
        run = self.client.create_run(self.experiment_id, run_name=f"{prefix}-{record.number:03d}", tags=tags)
        self._children[record.trial_id] = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in record.params.items()]
        if params:
            self.client.log_batch(run.info.run_id, params=params)

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        step = int(metrics.get("epoch", record.epochs_run))
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        self.client.log_batch(self._children[record.trial_id], metrics=batch)

    def trial_ended(self, record: TrialRecord) -> None:
        run_id = self._children[record.trial_id]
        tags = {STATUS_TAG: record.status.value, "finesweep.epochs_run": str(record.epochs_run)}
        if record.checkpoint:
            tags["finesweep.checkpoint"] = record.checkpoint
        if record.error:
            tags["finesweep.error"] = record.error[:5000]
        if record.best_value is not None:
            tags["finesweep.best_epoch"] = str(record.best_epoch)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        failed = record.status is TrialStatus.failed
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))

    def note(self, tag: str, text: str) -> None:
        """Set a tag on the parent run (e.g. why model selection failed)."""
        self.client.set_tag(self.parent_id, tag, text[:5000])

    def finish(self, records: Sequence[TrialRecord], best: Optional[TrialRecord], interrupted: bool) -> None:
        """Close dangling child runs, record the winner on the parent and end it."""
        for record in records:
            if record.status is TrialStatus.running and record.trial_id in self._children:
                record.status, record.error = TrialStatus.failed, "sweep interrupted before the trial ended"
                self.trial_ended(record)
        if best is not None:
            self._log_best(best)
        status = RunStatus.KILLED if interrupted else (RunStatus.FINISHED if best else RunStatus.FAILED)
        self.client.set_terminated(self.parent_id, RunStatus.to_string(status))

    def log_selection(self, selection: "Selection", board: List[Dict[str, Any]]) -> None:
        """Record model selection on the parent: test metrics, mean +- std, leaderboard, latency."""
        metric = self.config.objective.metric
        metrics = dict(selection.test_metrics)
        metrics[f"final/val/{metric}/mean"] = selection.winner.mean
        metrics[f"final/val/{metric}/std"] = selection.winner.std
        for name, (mean, std) in test_summary(selection.winner).items():
            metrics[f"final/{name}/mean"], metrics[f"final/{name}/std"] = mean, std
        metrics["inference/latency_ms_per_example"] = selection.latency_ms
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              tags=[RunTag("finesweep.inference_device", selection.device),
                                    RunTag("finesweep.final_runs", str(len(selection.winner.runs)))])
        import pandas as pd

        frame = pd.DataFrame(board)
        self.client.log_text(self.parent_id, frame.to_csv(index=False), "final/leaderboard.csv")
        self.client.log_text(self.parent_id, frame.to_markdown(index=False) if _has_tabulate() else frame.to_string(),
                             "final/leaderboard.md")

    def register(self, weights: Path, tokenizer_source: str, meta: ServingMeta) -> str:
        """Log the winner as an MLflow model on the parent run and register it; return 'name/version'."""
        import mlflow

        name = self.config.registered_model_name
        with tempfile.TemporaryDirectory(prefix="finesweep-model-") as folder:
            package = _model_package(Path(folder), weights, tokenizer_source, meta)
            mlflow.set_tracking_uri(self.config.tracking.uri)
            with mlflow.start_run(run_id=self.parent_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=_serving_source(), artifacts={"model": str(package)},
                    registered_model_name=name, signature=meta.signature(),
                    pip_requirements=["mlflow", "torch", "transformers", "safetensors", "pandas", "numpy"])
        version = str(info.registered_model_version)
        self.client.set_tag(self.parent_id, "finesweep.registered_model", f"{name}/{version}")
        return f"{name}/{version}"

    def _log_best(self, best: TrialRecord) -> None:
        metric = self.config.objective.metric
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(f"best/{metric}", float(best.best_value or 0.0), int(time.time() * 1000), 0)],
            params=[Param(f"best.{k}", _param_value(v)) for k, v in best.params.items()],
            tags=[RunTag("finesweep.best_run_id", self._children[best.trial_id]),
                  RunTag("finesweep.best_epoch", str(best.best_epoch))])
        if best.checkpoint and Path(best.checkpoint).is_dir():
            self.client.log_artifacts(self.parent_id, best.checkpoint, "best_model")

    def _parent_tags(self) -> Dict[str, str]:
        commit, dirty = git_state(Path.cwd())
        return {ROLE_TAG: "sweep", "finesweep.version": finesweep.__version__,
                "mlflow.source.git.commit": commit, "finesweep.git_dirty": dirty,
                "finesweep.sweep_file": str(self.sweep_file), "finesweep.objective": self._objective()}

    def _parent_params(self) -> Dict[str, str]:
        cfg = self.config
        return {
            "sampler": cfg.search.sampler.value, "scheduler": cfg.scheduler.kind.value,
            "objective": self._objective(), "search_space": _param_value(json.dumps(self.space, sort_keys=True)),
            "num_trials": str(cfg.search.num_trials), "max_concurrent": str(cfg.search.max_concurrent),
            "seed": str(cfg.search.seed), "max_epochs": str(cfg.scheduler.max_epochs),
            "grace_period": str(cfg.scheduler.grace_period), "reduction_factor": str(cfg.scheduler.reduction_factor),
            "model.name_or_path": cfg.model.name_or_path, "data.path": cfg.data.path,
        }

    def _objective(self) -> str:
        return f"{self.config.objective.mode.value} {self.config.objective.metric}"


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
    for child in children:
        if child.data.tags.get(PHASE_TAG, "search") == "search":
            counts[child.data.tags.get(STATUS_TAG, TrialStatus.running.value)] += 1
    objective = run.data.tags.get("finesweep.objective", "")
    metric = objective.split(" ", 1)[-1]
    return SweepRow(experiment, run.info.run_name or "", run.info.run_id, run.info.start_time / 1000.0,
                    run.info.status, counts, objective, run.data.metrics.get(f"best/{metric}"))


def git_state(folder: Path) -> tuple[str, str]:
    """(commit, dirty flag) of the git checkout holding ``folder``, or ('unknown', 'unknown')."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(bool(status.strip())).lower()


def _experiment_id(client: MlflowClient, config: ExperimentConfig) -> str:
    name = config.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # An explicit artifact location: SQLite's default (./mlruns) would collide with a file store.
        location = f"{config.tracking.artifact_root.rstrip('/')}/{name}"
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.experiment: MLflow experiment {name!r} is deleted. "
                          f"Restore it (mlflow experiments restore) or set tracking.experiment to a new name.")
    return experiment.experiment_id


def _model_package(folder: Path, weights: Path, tokenizer_source: str, meta: ServingMeta) -> Path:
    from transformers import AutoTokenizer

    from finesweep.serving import META_FILE

    for item in weights.iterdir():
        if item.is_file():
            shutil.copy2(item, folder / item.name)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    (folder / META_FILE).write_text(meta.to_json())
    return folder


def _serving_source() -> str:
    spec = importlib.util.find_spec("finesweep.serving")
    return str(spec.origin) if spec and spec.origin else ""


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
