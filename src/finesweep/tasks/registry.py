"""The tasks finesweep knows, by the name ``data.task`` gives them.

A task module defines one ``Task`` subclass; one line registers it: ``register(MyTask)`` (here for the
built-in ones, in your own module for yours). ``data.task: auto`` reads the task off the data (``detect``): a
folder of images or a table with an image column but no text column is image classification; a CoNLL file, or a
table with word-list and tag-list columns, token classification; a table without a label column that has a chat
column, or prompt and response columns, causal language modelling, and one with source and target columns,
seq2seq; any other table text classification, which is regression when the labels are non-integer numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Type

from finesweep.config import DataConfig
from finesweep.errors import ConfigError
from finesweep.tasks.causal_lm import CausalLM
from finesweep.tasks.image_classification import ImageClassification
from finesweep.tasks.seq2seq import Seq2Seq
from finesweep.tasks.task import COST_METRICS, PROBE_METRIC, Task
from finesweep.tasks.text_classification import TextClassification, TextRegression
from finesweep.tasks.token_classification import TokenClassification
from finesweep.tasks.token_data import CONLL_SUFFIXES

AUTO = "auto"
"""``data.task: auto``: the task is read from the data (the text tasks decide between them)."""

_TASKS: Dict[str, Type[Task]] = {}

TOKENS = TokenClassification.name


def register(task: Type[Task]) -> Type[Task]:
    """Make a task available as ``data.task: <task.name>`` (usable as a class decorator).

    Raises:
        ValueError: the name is empty, ``auto``, or taken by another task.
    """
    if not task.name or task.name == AUTO:
        raise ValueError(f"a task needs a name other than {AUTO!r}, got {task.name!r}: set its `name` class attribute")
    known = _TASKS.get(task.name)
    if known is not None and known.__qualname__ != task.__qualname__:
        raise ValueError(f"task name {task.name!r} is taken by {known.__module__}.{known.__qualname__}, got "
                         f"{task.__module__}.{task.__qualname__}. Give the new task another name.")
    _TASKS.setdefault(task.name, task)
    return task


def get(name: str, data: Optional[DataConfig] = None) -> Task:
    """The task ``data.task`` names; ``auto`` is the one ``detect`` reads off ``data`` (without data: text
    classification, which reads regression off the labels).

    Raises:
        ConfigError: no task has that name.
    """
    if name == AUTO and data is not None:
        name = detect(data)
    if name == AUTO:
        return TextClassification(detect=True)
    if name not in _TASKS:
        raise ConfigError(f"data.task must name a task finesweep knows ({', '.join(names())}), got {name!r}. "
                          "Use one of those, or register yours with finesweep.tasks.register.")
    return _TASKS[name]()


def detect(data: DataConfig) -> str:
    """The task ``data.task: auto`` means for this data: a task's name, or ``auto`` for the text tasks (their own
    detection tells classification from regression). Reads at most a table's first rows."""
    path = Path(data.path)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        return TOKENS if any(p.suffix.lower() in CONLL_SUFFIXES for p in files) else ImageClassification.name
    if path.suffix.lower() in CONLL_SUFFIXES:
        return TOKENS
    columns = _columns(path)
    if data.image_column in columns and data.text_column not in columns:
        return ImageClassification.name
    if data.tokens_column in columns and data.tags_column in columns and data.text_column not in columns:
        return TOKENS
    if data.label_column not in columns:  # generative layouts have no labels; with a label column it stays text
        if data.messages_column in columns or (data.prompt_column in columns and data.response_column in columns):
            return CausalLM.name
        if data.source_column in columns and data.target_column in columns:
            return Seq2Seq.name
    return AUTO


def _columns(path: Path) -> List[str]:
    """A table's column names (empty when it cannot be read: reading it for real says why)."""
    import pandas as pd

    try:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if suffix in (".jsonl", ".json"):
            return list(pd.read_json(path, lines=suffix == ".jsonl", nrows=5 if suffix == ".jsonl" else None).columns)
        return list(pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=5).columns)
    except Exception:  # noqa: BLE001 - detection only: the task that reads the file reports what is wrong
        return []


def names() -> List[str]:
    """``auto`` and every registered task's name."""
    return [AUTO, *_TASKS]


def objective_metrics() -> Tuple[str, ...]:
    """Every metric some registered task reports each epoch and a sweep may optimise."""
    return tuple(dict.fromkeys([*(m for task in _TASKS.values() for m in task.objective_metrics), *COST_METRICS,
                                PROBE_METRIC]))


def reporting(metric: str) -> List[str]:
    """The registered tasks whose trials report ``metric``."""
    return [name for name, task in _TASKS.items() if metric in task.objective_metrics]


register(TextClassification)
register(TextRegression)
register(TokenClassification)
register(ImageClassification)
register(CausalLM)
register(Seq2Seq)
