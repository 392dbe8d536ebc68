"""The kinds of fine-tuning, each behind one ``Task`` interface.

Everything that differs between kinds of fine-tuning (reading and preparing the data, the model and its head,
its layer map, the loss and metrics, what the served model answers) is a ``Task``'s; search, ASHA, resume,
MLflow, the report and serving work on any of them unchanged. Built in: ``classification`` and ``regression`` of
texts and text pairs (``text_classification.py``). Adding one is a module with a ``Task`` subclass and one line::

    finesweep.tasks.register(MyTask)     # then: data.task=my_task
"""

from finesweep.tasks.data import DataCache
from finesweep.tasks.layers import LayerMap, transformer_layer_map
from finesweep.tasks.registry import get, names, register
from finesweep.tasks.task import Batch, Inspection, PreparedData, Split, Task

__all__ = ["Batch", "DataCache", "Inspection", "LayerMap", "PreparedData", "Split", "Task", "get", "names", "register",
           "transformer_layer_map"]
