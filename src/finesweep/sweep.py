"""A composed sweep: the typed config, its parsed search space, and the file it came from.

The CLI builds one with Hydra (``cli.compose``); everything after it (the checks before Ray starts,
the runner, the benchmarks) receives this plain object and never sees Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from finesweep.config import ExperimentConfig
from finesweep.search_space import Param


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
