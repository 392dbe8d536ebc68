"""How far a sweep's journal has been sent to MLflow, and the ids MLflow gave (``mlflow.json`` beside the journal)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

CURSOR = "mlflow.json"


@dataclass
class Cursor:
    """How far a sweep's journal has been sent, and the MLflow ids it was given."""

    sent: int = 0
    experiment_id: str = ""
    runs: Dict[str, str] = field(default_factory=dict)
    """run key -> MLflow run id: "sweep" for the parent, "trial/<number>" for each trial."""
    registered: Dict[str, str] = field(default_factory=dict)
    """selection round -> "name/version"."""
    skipped: List[int] = field(default_factory=list)
    """Events MLflow refused for good (logged with the reason); never retried."""

    @classmethod
    def load(cls, folder: Path) -> Cursor:
        """The cursor of a sweep folder (a fresh one when nothing was sent yet)."""
        path = folder / CURSOR
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, folder: Path) -> None:
        """Write atomically: a crash leaves the old cursor or the new one, never half of one."""
        temporary = folder / f".{CURSOR}.tmp"
        temporary.write_text(json.dumps(asdict(self)))
        os.replace(temporary, folder / CURSOR)

    @property
    def parent_id(self) -> str:
        """The sweep's parent run id ("" until MLflow has been reached)."""
        return self.runs.get("sweep", "")

    def latest_registered(self) -> str:
        """``name/version`` of the latest selection round's registered model ("" before one)."""
        return self.registered[max(self.registered, key=int)] if self.registered else ""


def parent_run(folder: Path) -> str:
    """The parent run id of the sweep in ``folder`` ("" before MLflow has it)."""
    return Cursor.load(folder).parent_id
