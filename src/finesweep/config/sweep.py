"""A composed sweep: the typed config, its parsed search space, and the file it came from.

``compose.compose`` builds one with Hydra (``compose.stored`` from a sweep's journal); everything after it
(the checks before Ray starts, the runner, the benchmarks) receives this plain object and never sees Hydra.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from finesweep.config.schema import ExperimentConfig
from finesweep.config.space import Param, planned_trials

RESUMABLE = ("tracking.", "cluster.", "search.num_trials", "search.max_concurrent", "search.max_retries")
"""What a resume may change; everything else is the sweep itself (a new sweep: finesweep run)."""


@dataclass(frozen=True)
class Sweep:
    """A composed, validated sweep."""

    config: ExperimentConfig
    params: Tuple[Param, ...]
    sweep_file: Path
    yaml_text: str
    """The composed config as YAML (logged as the parent run's ``config.yaml``)."""

    def space_description(self) -> Dict[str, Dict[str, Any]]:
        """The search space as plain data, key -> its fields (logged as ``search_space.json``)."""
        return {param.key: param.describe() for param in self.params}

    @property
    def planned_trials(self) -> int:
        """Search trials the sweep runs: every grid combination once, otherwise ``search.num_trials``."""
        return planned_trials(self.config, self.params)


def git_state(folder: Path) -> Tuple[str, str]:
    """(commit, dirty flag) of the git checkout holding ``folder``, or ('unknown', 'unknown')."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(bool(status.strip())).lower()
