"""What a trial's checkpoint folder holds, in one place (torch-free: the driver reads it too).

Every report of a trial (each epoch, or every ``scheduler.report_every`` steps) comes with a folder of::

    best/        the best epoch's weights so far, in the task's own format (a Hugging Face model: safetensors
                 and config.json), what model selection tests and registers
    state.ckpt   Lightning's full training state after this epoch (weights, optimiser, schedule, loops,
                 callbacks, RNG): what a resumed or retried trial continues from, loaded with weights_only
    generations.json   generative tasks, when that report scored generated text: the samples' table

``EpochReport`` (``callbacks.py``) writes it; the driver's checkpoint keeper, model selection and the registry
read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional

BEST = "best"
STATE = "state.ckpt"
GENERATIONS = "generations.json"
"""Beside them when the report's validation generated text (generative tasks): prompt, reference, generation
rows, which the tracking projection logs to the trial's child run as a table."""


def best_weights(checkpoint: str) -> Path:
    """The best-epoch weights inside a trial's checkpoint folder."""
    return Path(checkpoint) / BEST


def training_state(checkpoint: str) -> Path:
    """The resumable training state inside a trial's checkpoint folder."""
    return Path(checkpoint) / STATE


def generations(checkpoint: str) -> List[Dict[str, str]]:
    """The generated texts saved with a report (``GENERATIONS``); empty when it has none or they are gone."""
    try:
        rows = json.loads((Path(checkpoint) / GENERATIONS).read_text())
    except (OSError, ValueError):
        return []
    return [dict(row) for row in rows] if isinstance(rows, list) else []


def drop_training_state(checkpoint: Optional[str]) -> None:
    """Delete a finished trial's training state (weights + optimiser moments), keeping its best weights."""
    if checkpoint:
        training_state(checkpoint).unlink(missing_ok=True)


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder by hard links where the filesystem allows (instant, no extra disk), else by copying."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            try:
                (target / item.name).hardlink_to(item)
            except OSError:
                shutil.copy2(item, target / item.name)
