"""The winner as an MLflow model: its weights, tokenizer and ``ServingMeta`` logged "from code" and registered."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

from finesweep.checkpoints import best_weights, link_tree

if TYPE_CHECKING:
    from finesweep.tracking.projector import Projector

log = logging.getLogger("finesweep.tracking")


def register(projector: Projector, event: Dict[str, Any]) -> str:
    """Log the winner as an MLflow "model from code" on the parent run and register it; return 'name/version'."""
    import mlflow

    from finesweep.serving import ServingMeta

    meta = ServingMeta.from_json(json.dumps(event["meta"]))
    said = io.StringIO()
    # MLflow prints "Successfully registered model ..." straight to stderr; it belongs in the sweep's log.
    with tempfile.TemporaryDirectory(prefix="finesweep-model-") as folder, contextlib.redirect_stderr(said):
        package = _model_package(Path(folder), best_weights(event["checkpoint"]), event["tokenizer"], meta)
        mlflow.set_tracking_uri(projector.uri)
        with mlflow.start_run(run_id=projector.parent_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=_serving_source(), artifacts={"model": str(package)},
                registered_model_name=event["name"], signature=meta.signature(),
                pip_requirements=["mlflow", "torch", "transformers", "safetensors", "pandas", "numpy"])
    if said.getvalue().strip():
        log.info("MLflow: %s", " ".join(said.getvalue().split()))
    version = str(info.registered_model_version)
    projector.client.set_model_version_tag(event["name"], version, "finesweep.selection_round", str(event["round"]))
    return f"{event['name']}/{version}"


def _model_package(folder: Path, weights: Path, tokenizer_source: str, meta: Any) -> Path:
    from transformers import AutoTokenizer

    from finesweep.serving import META_FILE

    link_tree(weights, folder)  # the weights on disk, linked (MLflow copies the package into its store)
    with tempfile.TemporaryDirectory(prefix="finesweep-tokenizer-") as side:
        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(side)
        (Path(side) / META_FILE).write_text(meta.to_json())
        for item in Path(side).iterdir():  # never written through a link: it would change the checkpoint
            (folder / item.name).unlink(missing_ok=True)
            shutil.move(str(item), folder / item.name)
    return folder


def _serving_source() -> str:
    import importlib.util

    spec = importlib.util.find_spec("finesweep.serving")
    return str(spec.origin) if spec and spec.origin else ""


