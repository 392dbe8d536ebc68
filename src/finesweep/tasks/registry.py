"""The tasks finesweep knows, by the name ``data.task`` gives them.

A task module defines one ``Task`` subclass; one line registers it: ``register(MyTask)`` (here for the
built-in ones, in your own module for yours). ``data.task: auto`` is the text tasks' detection: regression
when the labels are non-integer numbers, classification otherwise.
"""

from __future__ import annotations

from typing import Dict, List, Tuple, Type

from finesweep.errors import ConfigError
from finesweep.tasks.task import Task
from finesweep.tasks.text_classification import TextClassification, TextRegression

AUTO = "auto"
"""``data.task: auto``: the task is read from the data (the text tasks decide between them)."""

_TASKS: Dict[str, Type[Task]] = {}


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


def get(name: str) -> Task:
    """The task ``data.task`` names (``auto``: text classification, which reads regression off the labels).

    Raises:
        ConfigError: no task has that name.
    """
    if name == AUTO:
        return TextClassification(detect=True)
    if name not in _TASKS:
        raise ConfigError(f"data.task must name a task finesweep knows ({', '.join(names())}), got {name!r}. "
                          "Use one of those, or register yours with finesweep.tasks.register.")
    return _TASKS[name]()


def names() -> List[str]:
    """``auto`` and every registered task's name."""
    return [AUTO, *_TASKS]


def objective_metrics() -> Tuple[str, ...]:
    """Every metric some registered task reports each epoch and a sweep may optimise."""
    return tuple(dict.fromkeys(m for task in _TASKS.values() for m in task.objective_metrics))


def reporting(metric: str) -> List[str]:
    """The registered tasks whose trials report ``metric``."""
    return [name for name, task in _TASKS.items() if metric in task.objective_metrics]


register(TextClassification)
register(TextRegression)
